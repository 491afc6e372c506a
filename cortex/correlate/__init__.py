"""Correlation: rules as data (`loader`, `rules`), the engine (`engine`), confidence (`score`).

ruleset = load_files()               # the default rules, or the configured files
engine = Correlator(ruleset)
for hit in engine.observe(event):
    s = score(hit, model)            # posterior, OCSF band, factors strongest first
"""

from cortex.correlate.engine import Correlator, Evidence, Hit
from cortex.correlate.loader import default_files, load_files, load_texts
from cortex.correlate.rules import CorrelationRule, RuleSet, RuleType, Step
from cortex.correlate.score import Factor, Score, VerdictModel, explain, score

__all__ = [
    "CorrelationRule",
    "Correlator",
    "Evidence",
    "Factor",
    "Hit",
    "RuleSet",
    "RuleType",
    "Score",
    "Step",
    "VerdictModel",
    "default_files",
    "explain",
    "load_files",
    "load_texts",
    "score",
]
