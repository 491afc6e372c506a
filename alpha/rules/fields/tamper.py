"""`vmwrite.*`, `xattr.*`, `ns.*`, `utimes.*`, `enforce.*`, `redirect.*`: writes to another
process's memory, security attributes (file capabilities), namespaces, explicitly set file
times, the kernel's enforcement, and standard streams pointed at a socket."""

from __future__ import annotations

from alpha.rules.fields.extractors import enum_at, enum_names, int_at, sequence_at, string_at
from alpha.rules.fields.table import ADDR, BOOL, ENUM, INT, STRING, Event, Value, add_field
from qsc.common.v1 import process_details_pb2

add_field(
    "vmwrite.target.pid",
    INT,
    "PID of the process whose memory process_vm_writev wrote.",
    per_kind={"process_memory_write": int_at("process_memory_write.target.pid")},
)
add_field(
    "vmwrite.target.name",
    STRING,
    "Command name of the process written to.",
    per_kind={"process_memory_write": string_at("process_memory_write.target.comm")},
)
add_field(
    "vmwrite.target.exe",
    STRING,
    "Executable path of the process written to.",
    per_kind={"process_memory_write": string_at("process_memory_write.target.exe")},
)
add_field(
    "xattr.name",
    STRING,
    "The extended attribute set, e.g. `security.capability`.",
    per_kind={"file_attribute_change": string_at("file_attribute_change.name")},
)
add_field(
    "xattr.size",
    INT,
    "Bytes of the attribute's value.",
    per_kind={"file_attribute_change": int_at("file_attribute_change.value_size")},
)

_NS_CALLS = enum_names(process_details_pb2.NamespaceCall.DESCRIPTOR, "NAMESPACE_CALL_")
add_field(
    "ns.call",
    ENUM,
    "How namespaces were created or entered: unshare, setns, clone.",
    per_kind={"namespace_change": enum_at("namespace_change.call", _NS_CALLS)},
    choices=tuple(_NS_CALLS.values()),
)
add_field(
    "ns.types",
    STRING,
    "The namespaces concerned, as a list: user, mnt, pid, net, uts, ipc, cgroup, time.",
    per_kind={"namespace_change": sequence_at("namespace_change.namespaces")},
    is_list=True,
)
add_field(
    "ns.flags",
    INT,
    "The raw CLONE_NEW* flags (unshare, clone) or nstype (setns).",
    per_kind={"namespace_change": int_at("namespace_change.flags")},
)


def _backdated(ev: Event) -> Value:
    msg = ev.file_timestamp_change
    return msg.backdated_seconds if msg.HasField("modification_time") else None


add_field(
    "utimes.backdated",
    INT,
    "How many seconds before the event the new modification time lies (negative: in the "
    "future); missing when the modification time was left alone or set to now.",
    per_kind={"file_timestamp_change": _backdated},
)

add_field(
    "enforce.check",
    STRING,
    "The kernel check that killed (or would have killed) the process.",
    per_kind={"enforcement": string_at("enforcement.check")},
)
add_field(
    "enforce.dry_run",
    BOOL,
    "True when enforcement only reported (dry run).",
    per_kind={"enforcement": lambda ev: ev.enforcement.dry_run},
)
add_field(
    "enforce.rules",
    STRING,
    "The rules with action kill that armed the check, as a list.",
    per_kind={"enforcement": sequence_at("enforcement.rule_ids")},
    is_list=True,
)

_REDIRECT = "descriptor_redirect"
add_field(
    "redirect.fd",
    INT,
    "The standard stream dup2/dup3 replaced with a network socket: 0, 1 or 2; Falco's fd.num.",
    per_kind={_REDIRECT: int_at(f"{_REDIRECT}.new_fd")},
)
add_field(
    "redirect.oldfd",
    INT,
    "The socket's own descriptor, duplicated onto the stream.",
    per_kind={_REDIRECT: int_at(f"{_REDIRECT}.old_fd")},
)
add_field(
    "redirect.raddr",
    ADDR,
    "The remote address of the socket now on the stream.",
    per_kind={_REDIRECT: string_at(f"{_REDIRECT}.target.peer.address")},
)
add_field(
    "redirect.rport",
    INT,
    "The remote port of the socket now on the stream.",
    per_kind={_REDIRECT: int_at(f"{_REDIRECT}.target.peer.port")},
)
