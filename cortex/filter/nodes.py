"""The filter tree: comparisons joined by AND, OR and NOT, as the parser leaves it.

The tree is normalized when it is built (`cortex.filter.canonical`): AND and OR are flattened,
their children sorted and deduplicated, double negations dropped and `!=` stored as NOT of `=`.
So two filters with the same meaning up to that normalization are equal trees, and every
consumer (memory, SQL, canonical text) handles only `=`, the four orderings and NOT.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Op(StrEnum):
    EQ = "="
    NE = "!="  # parsed, then stored as Not(Comparison(EQ)): `!=` is exactly NOT `=`
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="


ORDERINGS = frozenset({Op.LT, Op.LE, Op.GT, Op.GE})


@dataclass(frozen=True)
class Comparison:
    """`field op value`. `value` is already converted for the field's kind: nanoseconds for
    time, the enum number for severity and category, the integer for seq, the text for string,
    MITRE and blind fields. With `prefix` (string and MITRE fields, op `=`), `value` is what a
    value must start with (`host = "web-*"` has value "web-")."""

    field: str
    op: Op
    value: int | str
    prefix: bool = False


@dataclass(frozen=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    child: Node


Node = Comparison | And | Or | Not
