"""`ptrace.*`: a ptrace event."""

from __future__ import annotations

from alpha.rules.fields.extractors import enum_at, enum_names, int_at, string_at
from alpha.rules.fields.table import ENUM, INT, STRING, add_field
from qsc.common.v1 import process_details_pb2

_PTRACE_REQUESTS = enum_names(process_details_pb2.PtraceRequest.DESCRIPTOR, "PTRACE_REQUEST_")
add_field(
    "ptrace.request",
    ENUM,
    "The ptrace request: attach, seize, traceme, poke_memory, set_registers, other.",
    per_kind={"ptrace": enum_at("ptrace.request", _PTRACE_REQUESTS)},
    choices=tuple(_PTRACE_REQUESTS.values()),
)
add_field(
    "ptrace.raw_request",
    INT,
    "The raw request number passed to ptrace(2).",
    per_kind={"ptrace": int_at("ptrace.raw_request")},
)
add_field(
    "ptrace.target.pid",
    INT,
    "PID of the traced process (for traceme: the parent becoming tracer).",
    per_kind={"ptrace": int_at("ptrace.target.pid")},
)
add_field(
    "ptrace.target.name",
    STRING,
    "Command name of the traced process.",
    per_kind={"ptrace": string_at("ptrace.target.comm")},
)
add_field(
    "ptrace.target.exe",
    STRING,
    "Executable path of the traced process.",
    per_kind={"ptrace": string_at("ptrace.target.exe")},
)
add_field(
    "ptrace.target.uid",
    INT,
    "Real user ID of the traced process.",
    per_kind={"ptrace": int_at("ptrace.target.uid")},
)
