"""The values an event gives a correlation key, and which steps an event can possibly match.

Keys are the catalogue's fields (`cortex.fields`: host, guardian, user, addresses, file.path,
process.exe) and the process lineage: `exec_id` is the event's own execution; `process_tree`
is its execution and its ancestors' (`Process.ancestry`), so a state anchored at an execution
is joined by the events of that execution and of every descendant. `subject.host` is the host
an event is about: its guardian's, or for the Cortex's own events (`cortex.guardian_lost`...)
the host of the guardian they report on (label `guardian.host`).

`dispatch_values` reads a filter for the `rule.id` / `kind` values it requires, so the engine
looks at the few steps an event can match instead of evaluating every filter on every event.
"""

from __future__ import annotations

from typing import Final

from cortex import fields
from cortex.filter import Filter
from cortex.filter.nodes import And, Comparison, Node, Op, Or
from qsc.common.v1 import event_pb2

MAX_KEY_VALUES: Final = 8  # values of one key taken from one event (paths, ancestry)


def key_values(event: event_pb2.Event, field: str) -> tuple[str, ...]:
    """The values `event` gives the key `field` (empty: the event cannot be grouped by it)."""
    if field == "exec_id":
        return (event.process.exec_id,) if event.process.exec_id else ()
    if field == "process_tree":
        return lineage(event)
    if field == "subject.host":
        host = event.labels.get("guardian.host") or event.guardian.host
        return (host,) if host else ()
    return tuple(str(v) for v in fields.values(event, field))[:MAX_KEY_VALUES]


def lineage(event: event_pb2.Event) -> tuple[str, ...]:
    """The event's execution, then its ancestors' nearest first (known exec ids only)."""
    own = event.process.exec_id
    found = [own] if own else []
    for ancestor in event.process.ancestry:
        if len(found) >= MAX_KEY_VALUES:
            break
        if ancestor.exec_id and ancestor.exec_id not in found:
            found.append(ancestor.exec_id)
    return tuple(found)


def dispatch_values(flt: Filter) -> tuple[str, frozenset[str]] | None:
    """("rule.id" or "kind", what every matching event's value is one of), or None when the
    filter requires neither (the step is then tried on every event). A value ending in `*` is a
    prefix (`rule.id = "alpha.*"`)."""
    if flt.root is None:
        return None
    for name in ("rule.id", "kind"):
        found = _required(flt.root, name)
        if found is not None:
            return name, found
    return None


def _required(node: Node, name: str) -> frozenset[str] | None:
    if isinstance(node, Comparison):
        if node.field == name and node.op is Op.EQ:
            return frozenset({f"{node.value}*" if node.prefix else str(node.value)})
        return None
    if isinstance(node, And):  # any conjunct that pins the field pins it for the whole
        for child in node.children:
            found = _required(child, name)
            if found is not None:
                return found
        return None
    if isinstance(node, Or):  # every branch must pin it
        union: set[str] = set()
        for child in node.children:
            found = _required(child, name)
            if found is None:
                return None
            union |= found
        return frozenset(union)
    return None  # NOT pins nothing


def event_dispatch(event: event_pb2.Event) -> tuple[str, str]:
    """The event's (rule.id, kind) for `dispatch_values` lookups."""
    return event.rule.id, event.WhichOneof("detail") or ""
