"""Normalizing builders for the filter tree and its canonical text.

The builders (`conjunction`, `disjunction`, `negation`, `not_equal`) keep every tree in normal
form: nested AND (or OR) flattened, children deduplicated and sorted by their text, NOT NOT x
reduced to x, `a != v` stored as NOT a = v. `render` writes a tree in the one spelling page
tokens are bound to: single spaces, upper-case keywords, `!=` for a negated equality, enum short
names, RFC 3339 UTC timestamps, double-quoted strings, and parentheses around every nested
group (AIP-160's OR-binds-tighter-than-AND is legal but easy to misread).
"""

from __future__ import annotations

from collections.abc import Iterable

from cortex.fields import FIELDS, FieldKind
from cortex.filter import literals
from cortex.filter.nodes import And, Comparison, Node, Not, Op, Or


def conjunction(children: Iterable[Node]) -> Node:
    return _group(And, children)


def disjunction(children: Iterable[Node]) -> Node:
    return _group(Or, children)


def _group(cls: type[And] | type[Or], children: Iterable[Node]) -> Node:
    flat: dict[str, Node] = {}
    for child in children:
        for part in child.children if isinstance(child, cls) else (child,):
            flat.setdefault(_nested(part), part)  # equal text, equal meaning: keep one
    ordered = tuple(flat[key] for key in sorted(flat))
    return ordered[0] if len(ordered) == 1 else cls(ordered)


def negation(child: Node) -> Node:
    # Comparisons are two-valued (an absent value is "no", never "unknown"), so NOT NOT x is x.
    return child.child if isinstance(child, Not) else Not(child)


def render(node: Node) -> str:
    if isinstance(node, Comparison):
        return f"{node.field} {node.op} {render_value(node)}"
    if isinstance(node, Not):
        inner = node.child
        if isinstance(inner, Comparison) and inner.op is Op.EQ:
            return f"{inner.field} != {render_value(inner)}"
        return f"NOT {_nested(inner)}"
    keyword = " AND " if isinstance(node, And) else " OR "
    return keyword.join(_nested(child) for child in node.children)


def _nested(node: Node) -> str:
    return f"({render(node)})" if isinstance(node, And | Or) else render(node)


def render_value(node: Comparison) -> str:
    kind = FIELDS[node.field].kind
    value = node.value
    if isinstance(value, int):
        if kind is FieldKind.TIME:
            return f'"{literals.format_time(value)}"'
        if kind is FieldKind.SEVERITY:
            return literals.enum_name(literals.SEVERITIES, value)
        if kind is FieldKind.CATEGORY:
            return literals.enum_name(literals.CATEGORIES, value)
        return str(value)
    return literals.quote(value, prefix=node.prefix)
