"""Rule files checked without loading them into the engine (`AlphaService.ValidateRules`).

The loader stops at the first error of a ruleset, so a refused set has exactly one error: file,
line and reason, as the loader names them. A set that loads may carry warnings (a rule that can
never match, one tried on every kind), reported with their place too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from alpha.rules import RuleError, load_texts

MAX_FILES: Final = 256
_PLACED: Final = re.compile(r"(?P<file>.+?):(?P<line>\d+): (?P<reason>.*)", re.DOTALL)


@dataclass(frozen=True)
class Problem:
    file: str
    line: int  # 1-based; 0 when the problem concerns the whole file
    reason: str
    severity: Literal["error", "warning"]


@dataclass(frozen=True)
class Validation:
    problems: tuple[Problem, ...]
    rule_count: int  # rules the checked files define (not those of the loaded files)

    @property
    def valid(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


def _placed(text: str, severity: Literal["error", "warning"]) -> Problem:
    m = _PLACED.fullmatch(text)
    if m is None:
        return Problem("", 0, text, severity)
    return Problem(m["file"], int(m["line"]), m["reason"], severity)


def loaded_texts(files: Sequence[str]) -> list[tuple[str, str]]:
    """The texts of rule files the engine loaded (for "validate as a reload would")."""
    return [(name, Path(name).read_text(encoding="utf-8")) for name in files]


def validate(
    texts: Sequence[tuple[str, str]], *, before: Sequence[tuple[str, str]] = ()
) -> Validation:
    """Check `texts` (name, YAML) as one ruleset, after the `before` files when given."""
    names = {name for name, _ in texts}
    try:
        ruleset = load_texts([*before, *texts])
    except RuleError as err:
        return Validation(
            (Problem(err.file or "", err.line or 0, err.reason, "error"),),
            0,
        )
    warnings = tuple(_placed(w, "warning") for w in ruleset.warnings)
    mine = tuple(w for w in warnings if w.file in names or not w.file)
    count = sum(1 for r in ruleset.rules if r.location.file in names)
    return Validation(tuple(sorted(mine, key=lambda p: (p.file, p.line))), count)
