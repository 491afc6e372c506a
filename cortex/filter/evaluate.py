"""In-memory evaluation of a filter tree against one `qsc.common.v1.Event`.

A field has zero or more values (`cortex.fields.values`); a comparison holds when at least one
value satisfies it, so an event without a value satisfies no comparison, and `NOT c` holds
exactly when `c` does not (the same two-valued logic `cortex.filter.sql` produces in SQL).
Blind fields compare their plain values here: only the store sees them keyed.
"""

from __future__ import annotations

from cortex.fields import values
from cortex.filter.nodes import And, Comparison, Node, Not, Op
from qsc.common.v1 import event_pb2


def matches(node: Node, event: event_pb2.Event) -> bool:
    if isinstance(node, Comparison):
        return any(_holds(node, v) for v in values(event, node.field))
    if isinstance(node, Not):
        return not matches(node.child, event)
    if isinstance(node, And):
        return all(matches(child, event) for child in node.children)
    return any(matches(child, event) for child in node.children)


def _holds(node: Comparison, have: str | int) -> bool:
    want = node.value
    if isinstance(want, str):
        text = str(have)  # blind and string fields hold text; str() is what blind_values indexes
        if node.prefix:
            return text.startswith(want)
        return text == want  # string fields take only = (and its negation)
    if not isinstance(have, int):
        return False  # cannot happen: integer fields hold integers
    if node.op is Op.EQ:
        return have == want
    if node.op is Op.LT:
        return have < want
    if node.op is Op.LE:
        return have <= want
    if node.op is Op.GT:
        return have > want
    if node.op is Op.GE:
        return have >= want
    raise AssertionError(f"unnormalized operator {node.op}")  # `!=` is stored as NOT `=`
