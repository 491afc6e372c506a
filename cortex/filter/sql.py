"""Compiling a filter tree to an SQLite WHERE-clause fragment over the event store.

The schema is fixed (see `cortex.fields`): table `events` (columns named by `fields.COLUMNS`,
joined by `events.rowid`) and `event_terms(event_rowid, field, term)` with one row per MITRE
technique (term: the id as UTF-8) and one per blind value (term: `blind(field, value)`). The
fragment refers to `events` by that name, so use it unaliased.

Every value is a `?` parameter; the SQL text holds only names from the catalogue and constants.
Every comparison compiles to a two-valued expression (never NULL), so NOT in SQL means what NOT
means in memory: a clear column is guarded by "has a value" (not NULL, and not 0 or "", which
`cortex.fields.values` also treats as absent), and term lookups are `rowid IN (...)`, which
is never NULL. The IN form also lets SQLite drive a selective lookup (`process.exe = "..."`)
from an index on `event_terms(field, term)` instead of probing every event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeAlias

from cortex.fields import COLUMNS, FIELDS, MITRE_TERM_FIELD, FieldKind
from cortex.filter.nodes import And, Comparison, Node, Not, Op

SqlParam: TypeAlias = int | str | bytes
Blind: TypeAlias = Callable[[str, str], bytes]

_TERMS: Final = (
    "events.rowid IN (SELECT event_terms.event_rowid FROM event_terms"
    " WHERE event_terms.event_rowid IS NOT NULL AND event_terms.field = ?{})"
)


def compile_node(node: Node, blind: Blind, params: list[SqlParam]) -> str:
    """The SQL of `node`, appending its parameters to `params` in order."""
    if isinstance(node, Comparison):
        if node.field in COLUMNS:
            return _column(node, params)
        return _terms(node, blind, params)
    if isinstance(node, Not):
        return f"NOT {compile_node(node.child, blind, params)}"
    keyword = " AND " if isinstance(node, And) else " OR "
    return "(" + keyword.join(compile_node(c, blind, params) for c in node.children) + ")"


def _column(node: Comparison, params: list[SqlParam]) -> str:
    column = f"events.{COLUMNS[node.field]}"
    kind = FIELDS[node.field].kind
    parts = [f"{column} IS NOT NULL"]
    if kind is FieldKind.STRING:
        parts.append(f"{column} <> ''")
    elif kind is not FieldKind.TIME:  # time 0 is a real instant (the epoch); seq 0 is unset
        parts.append(f"{column} <> 0")
    if node.prefix:
        assert isinstance(node.value, str)
        if node.value:  # "*" alone: any value at all, which the guard already says
            parts.append(f"{column} >= ?")
            params.append(node.value)
            upper = text_successor(node.value)
            if upper is not None:
                parts.append(f"{column} < ?")
                params.append(upper)
    else:
        parts.append(f"{column} {node.op} ?")
        params.append(node.value)
    return "(" + " AND ".join(parts) + ")"


def _terms(node: Comparison, blind: Blind, params: list[SqlParam]) -> str:
    assert isinstance(node.value, str)
    assert node.op is Op.EQ  # the parser allows only = (and != as NOT =) on term fields
    kind = FIELDS[node.field].kind
    params.append(MITRE_TERM_FIELD if kind is FieldKind.MITRE else node.field)
    if kind is FieldKind.BLIND:
        params.append(blind(node.field, node.value))
        return _TERMS.format(" AND event_terms.term = ?")
    term = node.value.encode()
    if not node.prefix:
        params.append(term)
        return _TERMS.format(" AND event_terms.term = ?")
    if not term:
        return _TERMS.format("")  # `mitre = "*"`: any technique
    # A prefix as a range of BLOBs (compared bytewise), not LIKE: LIKE folds ASCII case and
    # gives `%` and `_` a meaning; a range is exact and can use the index.
    params.append(term)
    upper = bytes_successor(term)
    if upper is None:
        return _TERMS.format(" AND event_terms.term >= ?")
    params.append(upper)
    return _TERMS.format(" AND event_terms.term >= ? AND event_terms.term < ?")


def bytes_successor(prefix: bytes) -> bytes | None:
    """The least byte string greater than every string starting with `prefix` (None if there
    is none: the prefix is all 0xFF)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def text_successor(prefix: str) -> str | None:
    """The least string greater than every string starting with `prefix`, in code point order,
    which is the order SQLite's BINARY collation gives UTF-8 text (memcmp). Surrogates cannot be
    in stored text, so U+D7FF is followed by U+E000."""
    stripped = prefix.rstrip("\U0010ffff")
    if not stripped:
        return None
    following = ord(stripped[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:
        following = 0xE000
    return stripped[:-1] + chr(following)
