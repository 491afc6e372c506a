"""Alpha's declarative rules: a Falco-like condition language over `qsc.common.v1.Event`.

- `fields`: the field table (names, types, extractors).
- `lang`: tokenizer and parser of conditions; `compiler`: binding, type checks, closures.
- `loader`: YAML rule files (rules, macros, lists, exceptions, append/override) -> `Ruleset`.
- `engine`: `RuleEngine.evaluate(event)`, kind-indexed, with atomic `reload()`.
- `default/`: the default ruleset.
"""

from __future__ import annotations

from alpha.rules.compiler import Condition, compile_condition
from alpha.rules.engine import EngineStatus, Match, RuleEngine
from alpha.rules.errors import ConditionError, RuleError
from alpha.rules.loader import (
    Rule,
    Ruleset,
    Technique,
    default_rule_files,
    load_default,
    load_files,
    load_texts,
)

__all__ = [
    "Condition",
    "ConditionError",
    "EngineStatus",
    "Match",
    "Rule",
    "RuleEngine",
    "RuleError",
    "Ruleset",
    "Technique",
    "compile_condition",
    "default_rule_files",
    "load_default",
    "load_files",
    "load_texts",
]
