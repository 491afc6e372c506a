"""`Filter`: one parsed filter, evaluated in memory, compiled to SQL, or written canonically."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from cortex.filter import canonical, evaluate, sql
from cortex.filter.nodes import Comparison, Node, Not
from cortex.filter.sql import Blind, SqlParam
from qsc.common.v1 import event_pb2


@dataclass(frozen=True)
class SqlFragment:
    """A WHERE-clause fragment over `events` (unaliased) and its `?` parameters, in order."""

    sql: str
    params: tuple[SqlParam, ...]


@dataclass(frozen=True)
class Filter:
    """A parsed filter (`cortex.filter.parse`). `root` is the normalized tree, None for the
    empty filter, which selects every event. Equal filters have equal canonical text."""

    root: Node | None

    def matches(self, event: event_pb2.Event) -> bool:
        """Whether `event` passes: the same answer as `to_sql` gives over the store."""
        return self._predicate(event)

    @functools.cached_property
    def _predicate(self) -> evaluate.Predicate:
        # Compiled on first use and kept (a frozen dataclass may cache in its __dict__).
        if self.root is None:
            return lambda _e: True
        return evaluate.compile_node(self.root)

    def canonical(self) -> str:
        """The normalized text (empty for everything); `parse(f.canonical()) == f`."""
        return "" if self.root is None else canonical.render(self.root)

    def to_sql(self, blind: Blind) -> SqlFragment:
        """The fragment for `SELECT ... FROM events WHERE <sql>`. `blind(field, value)` is the
        store's blind index of a plain value (the same function that filled `event_terms`)."""
        if self.root is None:
            return SqlFragment("1", ())
        params: list[SqlParam] = []
        text = sql.compile_node(self.root, blind, params)
        return SqlFragment(text, tuple(params))

    @property
    def fields(self) -> frozenset[str]:
        """The fields the filter compares, e.g. for a correlation rule to know what it reads."""
        found: set[str] = set()
        stack = [] if self.root is None else [self.root]
        while stack:
            node = stack.pop()
            if isinstance(node, Comparison):
                found.add(node.field)
            elif isinstance(node, Not):
                stack.append(node.child)
            else:
                stack.extend(node.children)
        return frozenset(found)

    @property
    def is_everything(self) -> bool:
        return self.root is None

    def __str__(self) -> str:
        return self.canonical()


def everything() -> Filter:
    return Filter(None)
