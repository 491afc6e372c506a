"""`module.*` and `bpf.*`: kernel module and BPF program loads."""

from __future__ import annotations

from alpha.rules.fields.extractors import enum_at, enum_names, int_at, string_at
from alpha.rules.fields.table import ENUM, INT, STRING, add_field
from qsc.common.v1 import kernel_details_pb2

_MODULE_CALLS = enum_names(kernel_details_pb2.ModuleLoadCall.DESCRIPTOR, "MODULE_LOAD_CALL_")
add_field(
    "module.call",
    ENUM,
    "The system call: init_module or finit_module.",
    per_kind={"module_load": enum_at("module_load.call", _MODULE_CALLS)},
    choices=tuple(_MODULE_CALLS.values()),
)
add_field(
    "module.name",
    STRING,
    "Module name, when known.",
    per_kind={"module_load": string_at("module_load.name")},
)
add_field(
    "module.path",
    STRING,
    "Module file, for finit_module.",
    per_kind={"module_load": string_at("module_load.path")},
)
add_field(
    "module.params",
    STRING,
    "Module parameters.",
    per_kind={"module_load": string_at("module_load.params")},
)
_BPF = "bpf_program_load"
add_field(
    "bpf.prog_type",
    STRING,
    "Program type name: kprobe, tracepoint, xdp, socket_filter, cgroup_skb, ...",
    per_kind={_BPF: string_at(f"{_BPF}.program_type")},
)
add_field(
    "bpf.raw_prog_type",
    INT,
    "Raw program type number.",
    per_kind={_BPF: int_at(f"{_BPF}.raw_program_type")},
)
add_field(
    "bpf.prog_name",
    STRING,
    "Program name given by the loader.",
    per_kind={_BPF: string_at(f"{_BPF}.program_name")},
)
add_field(
    "bpf.insn_count",
    INT,
    "Number of instructions.",
    per_kind={_BPF: int_at(f"{_BPF}.instruction_count")},
)
