"""In-memory evaluation of a filter tree against one `qsc.common.v1.Event`.

A field has zero or more values (`cortex.fields.values`); a comparison holds when at least one
value satisfies it, so an event without a value satisfies no comparison, and `NOT c` holds
exactly when `c` does not (the same two-valued logic `cortex.filter.sql` produces in SQL).
Blind fields compare their plain values here: only the store sees them keyed.

A tree is compiled once into nested closures (`compile_node`): correlation rules run their
filters on every live event, and walking the tree each time cost three times as much.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Final

from cortex.fields import FIELDS
from cortex.filter.nodes import And, Comparison, Node, Not, Op
from qsc.common.v1 import event_pb2

Predicate = Callable[[event_pb2.Event], bool]
_ORDER: Final = {Op.LT: operator.lt, Op.LE: operator.le, Op.GT: operator.gt, Op.GE: operator.ge}


def matches(node: Node, event: event_pb2.Event) -> bool:
    return compile_node(node)(event)


def compile_node(node: Node) -> Predicate:
    """A function of an event that says whether `node` holds for it."""
    if isinstance(node, Comparison):
        return _comparison(node)
    if isinstance(node, Not):
        inner = compile_node(node.child)
        return lambda e: not inner(e)
    parts = tuple(compile_node(child) for child in node.children)
    if isinstance(node, And):
        return lambda e: all(p(e) for p in parts)
    return lambda e: any(p(e) for p in parts)


def _comparison(node: Comparison) -> Predicate:
    values_of = FIELDS[node.field].values
    want = node.value
    if isinstance(want, str):
        # Blind and string fields hold text; str() is what blind_values indexes.
        if node.prefix:
            return lambda e: any(str(v).startswith(want) for v in values_of(e))
        return lambda e: any(str(v) == want for v in values_of(e))
    if node.op is Op.EQ:
        return lambda e: any(isinstance(v, int) and v == want for v in values_of(e))
    compare = _ORDER.get(node.op)
    if compare is None:
        raise AssertionError(f"unnormalized operator {node.op}")  # `!=` is stored as NOT `=`
    return lambda e: any(isinstance(v, int) and compare(v, want) for v in values_of(e))
