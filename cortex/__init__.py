"""Cortex: central correlation, Bayesian confidence, encrypted store and SOAR playbooks."""
