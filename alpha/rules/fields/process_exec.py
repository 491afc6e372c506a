"""`exec.*`: a process_exec event (with its stdio descriptors)."""

from __future__ import annotations

from operator import attrgetter

from alpha.rules.fields.extractors import enum_at, enum_names, int_at, sequence_at, string_at
from alpha.rules.fields.table import ADDR, BOOL, ENUM, INT, STRING, Event, Value, add_field
from qsc.common.v1 import process_details_pb2

_EXEC = "process_exec"
add_field(
    "exec.filename",
    STRING,
    "Path passed to execve before symlinks were resolved (`fd:<n>` for execveat on a fd).",
    per_kind={_EXEC: string_at("process_exec.filename")},
)
add_field(
    "exec.memfd",
    BOOL,
    "True when the executable is a memfd (fileless execution).",
    per_kind={_EXEC: attrgetter("process_exec.exe_memfd")},
    aliases=("proc.is_exe_from_memfd",),
)
add_field(
    "exec.deleted",
    BOOL,
    "True when the executable file had been deleted at exec time.",
    per_kind={_EXEC: attrgetter("process_exec.exe_deleted")},
)
add_field(
    "exec.upper_layer",
    BOOL,
    "True when the executable lives in the writable layer of an overlay (dropped in a container).",
    per_kind={_EXEC: attrgetter("process_exec.exe_upper_layer")},
    aliases=("proc.is_exe_upper_layer",),
)
add_field(
    "exec.setuid",
    BOOL,
    "True when the exec changed the effective user or group through a setuid/setgid bit.",
    per_kind={_EXEC: attrgetter("process_exec.setuid_exec")},
)
_DESCRIPTOR_KINDS = enum_names(process_details_pb2.DescriptorKind.DESCRIPTOR, "DESCRIPTOR_KIND_")
for _stream in ("stdin", "stdout", "stderr"):
    add_field(
        f"exec.{_stream}.kind",
        ENUM,
        f"What {_stream} of the new program refers to: file, tty, pipe, inet_socket, ...",
        per_kind={_EXEC: enum_at(f"process_exec.{_stream}.kind", _DESCRIPTOR_KINDS)},
        choices=tuple(_DESCRIPTOR_KINDS.values()),
    )
    add_field(
        f"exec.{_stream}.path",
        STRING,
        f"Path of the file, terminal or named pipe that {_stream} refers to.",
        per_kind={_EXEC: string_at(f"process_exec.{_stream}.path")},
    )
    add_field(
        f"exec.{_stream}.raddr",
        ADDR,
        f"For an inet socket on {_stream}: the remote address.",
        per_kind={_EXEC: string_at(f"process_exec.{_stream}.peer.address")},
    )
    add_field(
        f"exec.{_stream}.rport",
        INT,
        f"For an inet socket on {_stream}: the remote port.",
        per_kind={_EXEC: int_at(f"process_exec.{_stream}.peer.port")},
    )


def _stdio_kinds(ev: Event) -> Value:
    ex = ev.process_exec
    names = _DESCRIPTOR_KINDS
    return tuple(
        n
        for n in (names.get(ex.stdin.kind), names.get(ex.stdout.kind), names.get(ex.stderr.kind))
        if n is not None
    )


add_field(
    "exec.stdio.kinds",
    ENUM,
    "The kinds of stdin, stdout and stderr, as a list (`intersects (inet_socket)`).",
    per_kind={_EXEC: _stdio_kinds},
    is_list=True,
    choices=tuple(_DESCRIPTOR_KINDS.values()),
    cost=1,
)

add_field(
    "exec.cap_effective",
    STRING,
    "The new image's effective capabilities as a list of names (CAP_SYS_ADMIN...), read in the "
    "kernel at exec; Falco's thread.cap_effective.",
    per_kind={"process_exec": sequence_at("process_exec.effective_capabilities")},
    is_list=True,
    aliases=("thread.cap_effective",),
)
add_field(
    "exec.cap_permitted",
    STRING,
    "The new image's permitted capabilities, as a list of names.",
    per_kind={"process_exec": sequence_at("process_exec.permitted_capabilities")},
    is_list=True,
    aliases=("thread.cap_permitted",),
)
add_field(
    "exec.all_capabilities",
    BOOL,
    "True when the effective set holds every capability (a privileged container's init).",
    per_kind={"process_exec": lambda ev: ev.process_exec.all_capabilities},
)


def _env_names(ev: Event) -> Value:
    return tuple(e.partition("=")[0] for e in ev.process_exec.environment)


add_field(
    "exec.env",
    STRING,
    'The watched environment entries of the new image as "NAME=value" strings (`[sensor] '
    "exec_env`), read by the kernel from the image's own copy at exec; Falco's proc.env.",
    per_kind={_EXEC: sequence_at("process_exec.environment")},
    is_list=True,
    aliases=("proc.env",),
)
add_field(
    "exec.env_names",
    STRING,
    "The names of the watched environment variables set at exec, as a list.",
    per_kind={_EXEC: _env_names},
    is_list=True,
)
add_field(
    "exec.env_complete",
    BOOL,
    "False when the environment could not be scanned whole at exec (over 128 entries, one "
    "over 4 KiB, or unreadable): a watched variable past that point would be missed.",
    per_kind={_EXEC: attrgetter("process_exec.environment_complete")},
)
