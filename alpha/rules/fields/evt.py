"""`evt.*`: the event itself (kind, id, times, result)."""

from __future__ import annotations

from operator import attrgetter

from alpha.rules.fields.extractors import int_at, string_at
from alpha.rules.fields.table import BOOL, DETAIL_KINDS, ENUM, INT, STRING, add_field

add_field(
    "evt.kind",
    ENUM,
    "The detail kind of the event: process_exec, file_access, network_connection, ...",
    per_kind={k: (lambda kk: lambda ev: kk)(k) for k in DETAIL_KINDS},
    choices=DETAIL_KINDS,
)
_RESULT_KINDS = (
    "ptrace",
    "privilege_change",
    "memfd_create",
    "process_memory_write",
    "namespace_change",
    "file_access",
    "permission_change",
    "ownership_change",
    "file_delete",
    "file_rename",
    "file_link",
    "file_attribute_change",
    "file_timestamp_change",
    "network_connection",
    "socket_create",
    "module_load",
    "bpf_program_load",
)
add_field(
    "evt.res",
    INT,
    "Return value of the system call: 0 or a descriptor on success, a negative errno on failure.",
    per_kind={k: int_at(f"{k}.result") for k in _RESULT_KINDS},
    aliases=("evt.rawres",),
)
add_field(
    "evt.failed",
    BOOL,
    "True when the system call failed (evt.res < 0).",
    per_kind={
        k: (lambda g: lambda ev: g(ev) < 0)(attrgetter(f"{k}.result")) for k in _RESULT_KINDS
    },
)
add_field("evt.id", STRING, "The event's UUIDv7.", generic=string_at("id"))
add_field(
    "evt.hostname",
    STRING,
    "The host the guardian watches.",
    generic=string_at("guardian.host"),
    aliases=("host.name",),
)
add_field(
    "evt.time",
    STRING,
    "When the activity happened, RFC 3339 (for outputs).",
    generic=lambda ev: ev.time.ToJsonString() if ev.HasField("time") else None,
    cost=1,
)
