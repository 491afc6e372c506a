"""`mem.*` and `ld_preload.*`: memory_threat events of the memory scanner."""

from __future__ import annotations

from alpha.rules.fields.extractors import enum_at, enum_names, sequence_at, string_at
from alpha.rules.fields.table import ENUM, INT, STRING, add_field
from qsc.common.v1 import memory_details_pb2

_MEM = "memory_threat"
_THREATS = enum_names(memory_details_pb2.MemoryThreatKind.DESCRIPTOR, "MEMORY_THREAT_KIND_")
_TRIGGERS = enum_names(memory_details_pb2.MemoryScanTrigger.DESCRIPTOR, "MEMORY_SCAN_TRIGGER_")
add_field(
    "mem.kind",
    ENUM,
    "The threat found: writable_executable, anonymous_executable, memfd_executable, "
    "deleted_executable, traced, "
    "ld_preload, backdoored_library.",
    per_kind={_MEM: enum_at(f"{_MEM}.kind", _THREATS)},
    choices=tuple(_THREATS.values()),
)
add_field(
    "mem.trigger",
    ENUM,
    "What triggered the inspection: periodic, exec, on_demand, syscall.",
    per_kind={_MEM: enum_at(f"{_MEM}.trigger", _TRIGGERS)},
    choices=tuple(_TRIGGERS.values()),
)
add_field(
    "mem.regions",
    INT,
    "Number of offending mappings reported.",
    per_kind={_MEM: lambda ev: len(ev.memory_threat.regions)},
)
add_field(
    "mem.paths",
    STRING,
    "Backing paths of the offending mappings, as a list (empty string for anonymous ones).",
    per_kind={_MEM: lambda ev: tuple(r.path for r in ev.memory_threat.regions)},
    is_list=True,
    cost=1,
)
add_field(
    "mem.perms",
    STRING,
    "Permissions of the offending mappings (`rwxp`...), as a list.",
    per_kind={_MEM: lambda ev: tuple(r.permissions for r in ev.memory_threat.regions)},
    is_list=True,
    cost=1,
)
add_field(
    "mem.tracer.name",
    STRING,
    "For traced: the tracer's command name.",
    per_kind={_MEM: string_at(f"{_MEM}.tracer.comm")},
)
add_field(
    "mem.tracer.exe",
    STRING,
    "For traced: the tracer's executable path.",
    per_kind={_MEM: string_at(f"{_MEM}.tracer.exe")},
)
add_field(
    "mem.preload",
    STRING,
    "For ld_preload: the libraries preloaded, as a list.",
    per_kind={_MEM: sequence_at(f"{_MEM}.preloaded_libraries")},
    is_list=True,
    cost=1,
)
