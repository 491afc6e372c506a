"""What the Cortex can select events by: one catalogue, read from `qsc.common.v1.Event` once.

Both halves of the Cortex use it: the event store (`cortex.store`) fills its clear columns and
its blind indexes from `clear_columns` and `blind_values`, and the filter language
(`cortex.filter`) evaluates the same fields on events in memory, so a filter means the same
thing as SQL over the store and as a correlation rule over a live event.

Clear fields are stored as they are (what an analyst sorts and ranges over); blind fields are
the sensitive ones an analyst looks up by equality only, stored as a keyed blind index
(HMAC-SHA256 under the store's `blind-index` key), never as the value.

The store layout the filter language compiles to (`cortex.filter.sql`) is fixed here too:
`COLUMNS` names the `events` column of each single-valued clear field, `clear_columns` gives an
event's values for them (None where `values` has none, so SQL and memory agree on "absent"), and
`index_terms` gives its `event_terms` rows (one per MITRE technique, one per blind value).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from qsc.common.v1 import event_pb2


class FieldKind(StrEnum):
    TIME = "time"  # RFC 3339 in filters; nanoseconds since the epoch in the store
    STRING = "string"
    INT = "int"
    SEVERITY = "severity"  # ordered enum: `severity >= HIGH`
    CATEGORY = "category"  # enum, equality
    MITRE = "mitre"  # repeated technique ids (`T1059.004`); equality, `*` suffix for a prefix
    BLIND = "blind"  # equality only, through the blind index


@dataclass(frozen=True)
class Field:
    """One selectable field: its kind and the values an event has for it (several for
    repeated or multi-path fields; none when the event lacks it)."""

    name: str
    kind: FieldKind
    values: Callable[[event_pb2.Event], tuple[str | int, ...]]
    doc: str


def _one(value: str | int) -> tuple[str | int, ...]:
    return (value,) if value not in ("", 0) else ()


def _time(e: event_pb2.Event) -> tuple[str | int, ...]:
    return (e.time.ToNanoseconds(),) if e.HasField("time") else ()


def _mitre(e: event_pb2.Event) -> tuple[str | int, ...]:
    return tuple(t.id for t in e.rule.techniques if t.id)


def _user(e: event_pb2.Event) -> tuple[str | int, ...]:
    return _one(e.auth_event.user) if e.HasField("auth_event") else ()


def _source_address(e: event_pb2.Event) -> tuple[str | int, ...]:
    kind = e.WhichOneof("detail")
    if kind == "auth_event":
        return _one(e.auth_event.source.address)
    if kind == "network_connection":
        return _one(e.network_connection.local.address)
    if kind == "port_scan":
        return _one(e.port_scan.source_address)
    return ()


def _destination_address(e: event_pb2.Event) -> tuple[str | int, ...]:
    if e.HasField("network_connection"):
        return _one(e.network_connection.remote.address)
    return ()


def _paths(e: event_pb2.Event) -> tuple[str | int, ...]:
    kind = e.WhichOneof("detail")
    if kind is None:
        return ()
    detail = getattr(e, kind)
    found: list[str | int] = []
    for name in ("path", "old_path", "new_path", "target", "link_path"):
        if name in detail.DESCRIPTOR.fields_by_name:
            value = getattr(detail, name)
            if value and value not in found:
                found.append(value)
    return tuple(found)


_FIELDS: Final = (
    Field("time", FieldKind.TIME, _time, 'when it happened (`time >= "2026-12-01T00:00:00Z"`)'),
    Field("guardian", FieldKind.STRING, lambda e: _one(e.guardian.id), "guardian id"),
    Field("host", FieldKind.STRING, lambda e: _one(e.guardian.host), "the guardian's host"),
    Field("seq", FieldKind.INT, lambda e: _one(e.seq), "the guardian's sequence number"),
    Field("category", FieldKind.CATEGORY, lambda e: _one(e.category), "`category = FILE`"),
    Field("severity", FieldKind.SEVERITY, lambda e: _one(e.severity), "`severity >= HIGH`"),
    Field("rule.id", FieldKind.STRING, lambda e: _one(e.rule.id), "the detection rule"),
    Field("mitre", FieldKind.MITRE, _mitre, 'ATT&CK technique (`mitre = "T1059*"`)'),
    Field("kind", FieldKind.STRING, lambda e: _one(e.WhichOneof("detail") or ""), "detail kind"),
    Field("process.exe", FieldKind.BLIND, lambda e: _one(e.process.exe), "executable path"),
    Field("user", FieldKind.BLIND, _user, "the account of an authentication event"),
    Field("source_address", FieldKind.BLIND, _source_address, "source (auth, scan, local)"),
    Field("destination_address", FieldKind.BLIND, _destination_address, "remote address"),
    Field("file.path", FieldKind.BLIND, _paths, "any path the event names"),
)
FIELDS: Final[Mapping[str, Field]] = MappingProxyType({f.name: f for f in _FIELDS})
BLIND_FIELDS: Final = tuple(f.name for f in _FIELDS if f.kind is FieldKind.BLIND)
# Other spellings a filter may use, as the proto's field paths read (`guardian.host`) or as an
# analyst qualifies a field by its event (`auth.source_address`). A filter's canonical text
# uses the names above, so a page token does not care which spelling made it.
ALIASES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "guardian.id": "guardian",
        "guardian.host": "host",
        "rule_id": "rule.id",
        "auth.user": "user",
        "auth.source_address": "source_address",
        "network.source_address": "source_address",
        "network.destination_address": "destination_address",
        "process_exe": "process.exe",
        "file_path": "file.path",
    }
)


def field_named(name: str) -> Field | None:
    """The field `name` (or one of its aliases) stands for; None for an unknown name."""
    return FIELDS.get(ALIASES.get(name, name))


def values(event: event_pb2.Event, field: str) -> tuple[str | int, ...]:
    """The values `event` has for `field` (KeyError for a field not in FIELDS)."""
    return FIELDS[field].values(event)


def blind_values(event: event_pb2.Event) -> dict[str, tuple[str, ...]]:
    """Each blind field's plain values, for the store to index (keyed) and then forget."""
    return {name: tuple(str(v) for v in FIELDS[name].values(event)) for name in BLIND_FIELDS}


# The `events` column of each single-valued clear field. MITRE techniques (repeated) and the
# blind fields live in `event_terms(event_rowid, field, term)` instead.
COLUMNS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "time": "time_ns",
        "guardian": "guardian_id",
        "host": "host",
        "seq": "seq",
        "category": "category",
        "severity": "severity",
        "rule.id": "rule_id",
        "kind": "kind",
    }
)
# `event_terms.field` of the MITRE rows; blind rows use the blind field's name.
MITRE_TERM_FIELD: Final = "mitre"


def clear_columns(event: event_pb2.Event) -> dict[str, str | int | None]:
    """The `events` columns of `event`, keyed by column name. A field without a value is None
    (not 0 or ""), which is what `cortex.filter` expects of the store: "absent" is one thing.

    Read straight from the message, not through `FIELDS` (this runs once per stored event and
    the lookups were a tenth of the store's time); `test_cortex_filter` proves it agrees with
    `FIELDS` on every column."""
    guardian = event.guardian
    rule_id = event.rule.id
    return {
        "time_ns": event.time.ToNanoseconds() if event.HasField("time") else None,
        "guardian_id": guardian.id or None,
        "host": guardian.host or None,
        "seq": event.seq or None,
        "category": event.category or None,
        "severity": event.severity or None,
        "rule_id": rule_id or None,
        "kind": event.WhichOneof("detail"),
    }


_BLIND_VALUES: Final = tuple((name, FIELDS[name].values) for name in BLIND_FIELDS)


def index_terms(
    event: event_pb2.Event, blind: Callable[[str, str], bytes]
) -> tuple[tuple[str, bytes], ...]:
    """The `event_terms` rows of `event` as (field, term): each MITRE technique id as UTF-8, each
    blind value as `blind(field, value)` (the store's keyed HMAC). Duplicates are dropped."""
    rows: dict[tuple[str, bytes], None] = {}  # a dict keeps the order and drops repeats
    for technique in event.rule.techniques:
        if technique.id:
            rows[(MITRE_TERM_FIELD, technique.id.encode())] = None
    for name, values_of in _BLIND_VALUES:
        for value in values_of(event):
            rows[(name, blind(name, str(value)))] = None
    return tuple(rows)
