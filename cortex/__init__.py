"""Cortex: central correlation, Bayesian confidence, encrypted store and SOAR playbooks."""

import mesh  # noqa: F401 (first: it sets grpc core's TLS settings before grpc loads)
