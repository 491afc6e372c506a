"""The field table: every field a rule condition or output may name.

A field has a type, a description and, per detail kind, an extractor from `qsc.common.v1.Event`.
Extractors return None when the field does not apply (wrong kind, unset optional value, ancestor
beyond the known chain, empty string): a comparison on a missing field is false, as in Falco, and
`exists` tests exactly that. Names follow Falco where a Falco user would look for them (`proc.name`,
`proc.aname[2]`, `fd.name`, `fd.sport`...), with the QSC name canonical and the Falco one an alias.

Extractors are resolved per kind at compile time (`Field.extractor(kind)`): the engine evaluates a
rule only on events of the kinds it can match, so `fd.name` on a `file_access` event compiles to a
direct attribute read, with no dispatch per event.
"""

from __future__ import annotations

import enum
import os.path
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from google.protobuf.descriptor import EnumDescriptor

from qsc.common.v1 import (
    auth_details_pb2,
    event_pb2,
    file_details_pb2,
    kernel_details_pb2,
    memory_details_pb2,
    network_details_pb2,
    process_details_pb2,
)

Event = event_pb2.Event
Value = str | int | bool | tuple[str, ...] | tuple[int, ...] | None
Extractor = Callable[[Event], Value]

# The detail kinds, named as the `Event.detail` oneof names them (`process_exec`, `file_access`...).
DETAIL_KINDS: tuple[str, ...] = tuple(
    f.name for f in Event.DESCRIPTOR.oneofs_by_name["detail"].fields
)
ALL_KINDS: frozenset[str] = frozenset(DETAIL_KINDS)


class FieldType(enum.Enum):
    """What a field's values are; decides which operators and literals a condition may use."""

    STRING = "string"
    INT = "int"
    BOOL = "bool"
    # A string from a closed set (a protobuf enum): literals are checked against the set.
    ENUM = "enum"
    # An IPv4 or IPv6 address: literals may be addresses or CIDR networks.
    ADDR = "addr"


@dataclass(frozen=True)
class Field:
    """One field of the table.

    `per_kind` maps a detail kind to its extractor; `generic` serves every kind not in `per_kind`
    (process fields apply to all kinds). `indexed` builds the extractor of `name[n]`.
    """

    name: str
    type: FieldType
    description: str
    per_kind: Mapping[str, Extractor] = field(default_factory=dict)
    generic: Extractor | None = None
    is_list: bool = False
    choices: tuple[str, ...] = ()
    indexed: Callable[[int], Extractor] | None = None
    # Outputs show this field in octal (file modes: 0o4755 means something, 2541 does not).
    octal: bool = False
    # 0: one attribute read; 1: builds a value (joins, tuples, dirname): evaluated late in an `and`.
    cost: int = 0

    @property
    def kinds(self) -> frozenset[str]:
        """The detail kinds on which the field can have a value."""
        if self.generic is not None:
            return ALL_KINDS
        return frozenset(self.per_kind)

    def extractor(self, kind: str, index: int | None = None) -> Extractor | None:
        """The extractor for events of `kind`, or None when the field never applies to it."""
        if index is not None:
            if self.indexed is None:
                raise ValueError(f"{self.name} takes no index")
            return self.indexed(index) if kind in self.kinds else None
        found = self.per_kind.get(kind)
        return found if found is not None else self.generic

    def extract(self, event: Event, index: int | None = None) -> Value:
        """The field's value on any event (dispatches on its kind): for outputs, not hot paths."""
        kind = event.WhichOneof("detail")
        ext = self.extractor(kind, index) if kind is not None else self.generic
        return None if ext is None else ext(event)


# --- helpers building extractors -------------------------------------------------------------


def _str(path: str) -> Extractor:
    get = attrgetter(path)

    def ext(ev: Event) -> Value:
        return get(ev) or None  # proto3 has no unset string: empty means not known

    return ext


def _int(path: str) -> Extractor:
    return attrgetter(path)


def _proc_int(attr: str) -> Extractor:
    get = attrgetter(f"process.{attr}")

    def ext(ev: Event) -> Value:
        # An absent process would read as uid 0 (root): say "not known" instead.
        return get(ev) if ev.HasField("process") else None

    return ext


def _optional_int(detail: str, attr: str) -> Extractor:
    get = attrgetter(detail)

    def ext(ev: Event) -> Value:
        msg = get(ev)
        return getattr(msg, attr) if msg.HasField(attr) else None

    return ext


def _seq(path: str) -> Extractor:
    get = attrgetter(path)

    def ext(ev: Event) -> Value:
        return tuple(get(ev))

    return ext


def _enum_names(desc: EnumDescriptor, prefix: str) -> dict[int, str]:
    # Value 0 is UNSPECIFIED in every enum of the API: it reads as "not known" (None).
    return {v.number: v.name.removeprefix(prefix).lower() for v in desc.values if v.number != 0}


def _enum(path: str, names: Mapping[int, str]) -> Extractor:
    get = attrgetter(path)
    lookup = names.get

    def ext(ev: Event) -> Value:
        return lookup(get(ev))

    return ext


def _seconds(path: str) -> Extractor:
    get = attrgetter(path)

    def ext(ev: Event) -> Value:
        return int(get(ev).seconds)

    return ext


def _dirname(inner: Extractor) -> Extractor:
    def ext(ev: Event) -> Value:
        path = inner(ev)
        return os.path.dirname(path) or None if isinstance(path, str) else None

    return ext


def _basename(inner: Extractor) -> Extractor:
    def ext(ev: Event) -> Value:
        path = inner(ev)
        return os.path.basename(path) or None if isinstance(path, str) else None

    return ext


def _ancestor(attr: str) -> Callable[[int], Extractor]:
    """`proc.aname[n]`-style access: 0 is the process itself, 1 its parent, 2 the grandparent."""

    def build(n: int) -> Extractor:
        if n == 0:
            own = attrgetter(f"process.{attr}")
            if attr in ("comm", "exe"):
                return lambda ev: own(ev) or None
            return lambda ev: own(ev) if ev.HasField("process") else None
        i = n - 1

        def ext(ev: Event) -> Value:
            chain = ev.process.ancestry
            if len(chain) <= i:
                return None
            value = getattr(chain[i], attr)
            return value if attr == "pid" else (value or None)

        return ext

    return build


def _ancestors(attr: str) -> Extractor:
    def ext(ev: Event) -> Value:
        return tuple(getattr(a, attr) for a in ev.process.ancestry)

    return ext


# --- the table ---------------------------------------------------------------------------------

_FIELDS: dict[str, Field] = {}
_ALIASES: dict[str, str] = {}


def _add(
    name: str,
    ftype: FieldType,
    description: str,
    *,
    per_kind: Mapping[str, Extractor] | None = None,
    generic: Extractor | None = None,
    is_list: bool = False,
    choices: Sequence[str] = (),
    indexed: Callable[[int], Extractor] | None = None,
    cost: int = 0,
    aliases: Sequence[str] = (),
    octal: bool = False,
) -> None:
    assert name not in _FIELDS, name
    _FIELDS[name] = Field(
        name=name,
        type=ftype,
        description=description,
        octal=octal,
        per_kind=dict(per_kind or {}),
        generic=generic,
        is_list=is_list,
        choices=tuple(choices),
        indexed=indexed,
        cost=cost,
    )
    for alias in aliases:
        _ALIASES[alias] = name


S, N, B, E, A = FieldType.STRING, FieldType.INT, FieldType.BOOL, FieldType.ENUM, FieldType.ADDR

# evt.*
_add(
    "evt.kind",
    E,
    "The detail kind of the event: process_exec, file_access, network_connection, ...",
    per_kind={k: (lambda kk: lambda ev: kk)(k) for k in DETAIL_KINDS},
    choices=DETAIL_KINDS,
)
_RESULT_KINDS = (
    "ptrace",
    "privilege_change",
    "memfd_create",
    "file_access",
    "permission_change",
    "ownership_change",
    "file_delete",
    "file_rename",
    "file_link",
    "network_connection",
    "socket_create",
    "module_load",
    "bpf_program_load",
)
_add(
    "evt.res",
    N,
    "Return value of the system call: 0 or a descriptor on success, a negative errno on failure.",
    per_kind={k: _int(f"{k}.result") for k in _RESULT_KINDS},
    aliases=("evt.rawres",),
)
_add(
    "evt.failed",
    B,
    "True when the system call failed (evt.res < 0).",
    per_kind={
        k: (lambda g: lambda ev: g(ev) < 0)(attrgetter(f"{k}.result")) for k in _RESULT_KINDS
    },
)
_add("evt.id", S, "The event's UUIDv7.", generic=_str("id"))
_add(
    "evt.hostname",
    S,
    "The host the guardian watches.",
    generic=_str("guardian.host"),
    aliases=("host.name",),
)
_add(
    "evt.time",
    S,
    "When the activity happened, RFC 3339 (for outputs).",
    generic=lambda ev: ev.time.ToJsonString() if ev.HasField("time") else None,
    cost=1,
)

# proc.* : the acting process, on every kind
_add("proc.pid", N, "Process ID (host PID namespace).", generic=_proc_int("pid"))
_add("proc.ppid", N, "Parent process ID.", generic=_proc_int("ppid"))
_add(
    "proc.uid",
    N,
    "Real user ID.",
    generic=_proc_int("uid"),
    aliases=("user.uid",),
)
_add("proc.gid", N, "Real group ID.", generic=_proc_int("gid"), aliases=("group.gid",))
_add("proc.euid", N, "Effective user ID.", generic=_proc_int("euid"))
_add("proc.egid", N, "Effective group ID.", generic=_proc_int("egid"))
_add(
    "proc.auid",
    N,
    "Login (audit) user ID, kept across su and sudo; 4294967295 when unset.",
    generic=_proc_int("auid"),
    aliases=("user.loginuid",),
)
_add(
    "proc.name",
    S,
    "Kernel command name (comm, at most 15 bytes), e.g. `bash`.",
    generic=_str("process.comm"),
    aliases=("proc.comm",),
)
_add(
    "proc.exe",
    S,
    "Absolute path of the executable, e.g. `/usr/bin/bash`; `/memfd:x (deleted)` for memfd.",
    generic=_str("process.exe"),
    aliases=("proc.exepath",),
)


def _args(ev: Event) -> Value:
    return " ".join(ev.process.args[1:]) or None


def _cmdline(ev: Event) -> Value:
    proc = ev.process
    if not proc.comm:
        return None
    return " ".join([proc.comm, *proc.args[1:]])


_add(
    "proc.args",
    S,
    "The arguments after argv[0], joined by spaces (Falco's proc.args).",
    generic=_args,
    cost=1,
)
_add(
    "proc.cmdline",
    S,
    "The name and arguments: `proc.name` then argv[1:], joined by spaces (as in Falco).",
    generic=_cmdline,
    cost=1,
)
_add(
    "proc.argv",
    S,
    "The arguments as a list, argv[0] first; `proc.argv[n]` is one argument.",
    generic=_seq("process.args"),
    is_list=True,
    indexed=lambda n: lambda ev: ev.process.args[n] if len(ev.process.args) > n else None,
    cost=1,
)
_add(
    "proc.argc",
    N,
    "Number of arguments including argv[0] (0 for an exec with an empty argv).",
    generic=lambda ev: len(ev.process.args) if ev.HasField("process") else None,
)
_add(
    "proc.args_truncated",
    B,
    "True when the sensor cut the arguments to its limit.",
    generic=lambda ev: ev.process.args_truncated if ev.HasField("process") else None,
)
_add("proc.cwd", S, "Current working directory, when known.", generic=_str("process.cwd"))
_add(
    "proc.tty",
    S,
    "Controlling terminal (e.g. `pts/0`); missing when the process has none.",
    generic=_str("process.tty"),
)
_add("proc.exec_id", S, "Globally unique ID of this execution.", generic=_str("process.exec_id"))
_add(
    "proc.pexec_id",
    S,
    "`exec_id` of the parent's current execution.",
    generic=_str("process.parent_exec_id"),
)
_add(
    "proc.cgroup",
    S,
    "Path of the process's cgroup v2, e.g. `/system.slice/nginx.service`.",
    generic=_str("process.cgroup"),
)
_add(
    "container.id",
    S,
    "Container ID (64 hex digits) when the process runs in a container; missing on the host.",
    generic=_str("process.container_id"),
)
_add(
    "proc.pname",
    S,
    "Parent's command name.",
    generic=_ancestor("comm")(1),
)
_add(
    "proc.pexe",
    S,
    "Parent's executable path.",
    generic=_ancestor("exe")(1),
    aliases=("proc.pexepath",),
)
_add(
    "proc.aname",
    S,
    "Ancestors' command names, parent first; `proc.aname[n]`: 0 is the process, 1 its parent...",
    generic=_ancestors("comm"),
    is_list=True,
    indexed=_ancestor("comm"),
    cost=1,
)
_add(
    "proc.aexe",
    S,
    "Ancestors' executable paths, parent first; `proc.aexe[n]` as for proc.aname.",
    generic=_ancestors("exe"),
    is_list=True,
    indexed=_ancestor("exe"),
    cost=1,
    aliases=("proc.aexepath",),
)
_add(
    "proc.apid",
    N,
    "Ancestors' PIDs, parent first; `proc.apid[n]` as for proc.aname.",
    generic=_ancestors("pid"),
    is_list=True,
    indexed=_ancestor("pid"),
    cost=1,
)
_add(
    "proc.depth",
    N,
    "Number of known ancestors.",
    generic=lambda ev: len(ev.process.ancestry) if ev.HasField("process") else None,
)

# process_exec
_EXEC = "process_exec"
_add(
    "exec.filename",
    S,
    "Path passed to execve before symlinks were resolved (`fd:<n>` for execveat on a fd).",
    per_kind={_EXEC: _str("process_exec.filename")},
)
_add(
    "exec.memfd",
    B,
    "True when the executable is a memfd (fileless execution).",
    per_kind={_EXEC: attrgetter("process_exec.exe_memfd")},
    aliases=("proc.is_exe_from_memfd",),
)
_add(
    "exec.deleted",
    B,
    "True when the executable file had been deleted at exec time.",
    per_kind={_EXEC: attrgetter("process_exec.exe_deleted")},
)
_add(
    "exec.upper_layer",
    B,
    "True when the executable lives in the writable layer of an overlay (dropped in a container).",
    per_kind={_EXEC: attrgetter("process_exec.exe_upper_layer")},
    aliases=("proc.is_exe_upper_layer",),
)
_add(
    "exec.setuid",
    B,
    "True when the exec changed the effective user or group through a setuid/setgid bit.",
    per_kind={_EXEC: attrgetter("process_exec.setuid_exec")},
)
_DESCRIPTOR_KINDS = _enum_names(process_details_pb2.DescriptorKind.DESCRIPTOR, "DESCRIPTOR_KIND_")
for _stream in ("stdin", "stdout", "stderr"):
    _add(
        f"exec.{_stream}.kind",
        E,
        f"What {_stream} of the new program refers to: file, tty, pipe, inet_socket, ...",
        per_kind={_EXEC: _enum(f"process_exec.{_stream}.kind", _DESCRIPTOR_KINDS)},
        choices=tuple(_DESCRIPTOR_KINDS.values()),
    )
    _add(
        f"exec.{_stream}.path",
        S,
        f"Path of the file, terminal or named pipe that {_stream} refers to.",
        per_kind={_EXEC: _str(f"process_exec.{_stream}.path")},
    )
    _add(
        f"exec.{_stream}.raddr",
        A,
        f"For an inet socket on {_stream}: the remote address.",
        per_kind={_EXEC: _str(f"process_exec.{_stream}.peer.address")},
    )
    _add(
        f"exec.{_stream}.rport",
        N,
        f"For an inet socket on {_stream}: the remote port.",
        per_kind={_EXEC: _int(f"process_exec.{_stream}.peer.port")},
    )


def _stdio_kinds(ev: Event) -> Value:
    ex = ev.process_exec
    names = _DESCRIPTOR_KINDS
    return tuple(
        n
        for n in (names.get(ex.stdin.kind), names.get(ex.stdout.kind), names.get(ex.stderr.kind))
        if n is not None
    )


_add(
    "exec.stdio.kinds",
    E,
    "The kinds of stdin, stdout and stderr, as a list (`intersects (inet_socket)`).",
    per_kind={_EXEC: _stdio_kinds},
    is_list=True,
    choices=tuple(_DESCRIPTOR_KINDS.values()),
    cost=1,
)

# process_exit
_add("exit.code", N, "Exit status.", per_kind={"process_exit": _int("process_exit.exit_code")})
_add(
    "exit.signal",
    N,
    "Signal that terminated the process, 0 for a normal exit.",
    per_kind={"process_exit": _int("process_exit.signal")},
)
_add(
    "exit.core_dumped",
    B,
    "True when the process dumped core.",
    per_kind={"process_exit": attrgetter("process_exit.core_dumped")},
)
_add(
    "exit.duration",
    N,
    "How long the execution ran, in seconds.",
    per_kind={"process_exit": _seconds("process_exit.duration")},
)

# ptrace
_PTRACE_REQUESTS = _enum_names(process_details_pb2.PtraceRequest.DESCRIPTOR, "PTRACE_REQUEST_")
_add(
    "ptrace.request",
    E,
    "The ptrace request: attach, seize, traceme, poke_memory, set_registers, other.",
    per_kind={"ptrace": _enum("ptrace.request", _PTRACE_REQUESTS)},
    choices=tuple(_PTRACE_REQUESTS.values()),
)
_add(
    "ptrace.raw_request",
    N,
    "The raw request number passed to ptrace(2).",
    per_kind={"ptrace": _int("ptrace.raw_request")},
)
_add(
    "ptrace.target.pid",
    N,
    "PID of the traced process (for traceme: the parent becoming tracer).",
    per_kind={"ptrace": _int("ptrace.target.pid")},
)
_add(
    "ptrace.target.name",
    S,
    "Command name of the traced process.",
    per_kind={"ptrace": _str("ptrace.target.comm")},
)
_add(
    "ptrace.target.exe",
    S,
    "Executable path of the traced process.",
    per_kind={"ptrace": _str("ptrace.target.exe")},
)
_add(
    "ptrace.target.uid",
    N,
    "Real user ID of the traced process.",
    per_kind={"ptrace": _int("ptrace.target.uid")},
)

# privilege_change
_PRIV_CALLS = _enum_names(process_details_pb2.PrivilegeCall.DESCRIPTOR, "PRIVILEGE_CALL_")
_add(
    "priv.call",
    E,
    "The setuid-family call: setuid, setreuid, setresuid, setfsuid, setgid, ...",
    per_kind={"privilege_change": _enum("privilege_change.call", _PRIV_CALLS)},
    choices=tuple(_PRIV_CALLS.values()),
)
for _when, _msg in (("old", "old_credentials"), ("new", "new_credentials")):
    for _cred in ("uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid"):
        _add(
            f"priv.{_when}.{_cred}",
            N,
            f"The {_cred} "
            + (
                "before the call."
                if _when == "old"
                else "requested by, or in effect after, the call."
            ),
            per_kind={"privilege_change": _int(f"privilege_change.{_msg}.{_cred}")},
        )

# memfd_create
_add(
    "memfd.name",
    S,
    "Name given to the memfd.",
    per_kind={"memfd_create": _str("memfd_create.name")},
)
_add(
    "memfd.flags",
    N,
    "Raw memfd_create flags (MFD_CLOEXEC=1, MFD_ALLOW_SEALING=2, MFD_EXEC=0x10...).",
    per_kind={"memfd_create": _int("memfd_create.flags")},
)

# files
_PATH_OF = {
    "file_access": _str("file_access.path"),
    "permission_change": _str("permission_change.path"),
    "ownership_change": _str("ownership_change.path"),
    "file_delete": _str("file_delete.path"),
    "file_rename": _str("file_rename.new_path"),
    "file_link": _str("file_link.link_path"),
}
_add(
    "file.path",
    S,
    "The path acted on: opened, chmod/chown'ed, deleted, renamed to (new path), or the new link.",
    per_kind=_PATH_OF,
    aliases=("fd.name",),
)
_add(
    "file.directory",
    S,
    "Directory part of file.path.",
    per_kind={k: _dirname(v) for k, v in _PATH_OF.items()},
    cost=1,
    aliases=("fd.directory",),
)
_add(
    "file.name",
    S,
    "Last component of file.path.",
    per_kind={k: _basename(v) for k, v in _PATH_OF.items()},
    cost=1,
    aliases=("fd.filename",),
)


def _rename_paths(ev: Event) -> Value:
    r = ev.file_rename
    return (r.old_path, r.new_path)


def _link_paths(ev: Event) -> Value:
    lk = ev.file_link
    return (lk.target, lk.link_path)


_add(
    "file.paths",
    S,
    "Every path involved, as a list: both paths of a rename, the target and the new link.",
    per_kind={
        **{
            k: (lambda g: lambda ev: (g(ev),))(attrgetter(f"{k}.path"))
            for k in ("file_access", "permission_change", "ownership_change", "file_delete")
        },
        "file_rename": _rename_paths,
        "file_link": _link_paths,
    },
    is_list=True,
    cost=1,
)
_add(
    "file.oldpath",
    S,
    "For a rename: the path before it.",
    per_kind={"file_rename": _str("file_rename.old_path")},
    aliases=("fd.oldname",),
)
_add(
    "file.newpath",
    S,
    "For a rename: the path after it.",
    per_kind={"file_rename": _str("file_rename.new_path")},
)
_ACCESS_MODES = _enum_names(file_details_pb2.AccessMode.DESCRIPTOR, "ACCESS_MODE_")
_add(
    "file.access",
    E,
    "How the file was opened: read, write, read_write.",
    per_kind={"file_access": _enum("file_access.access", _ACCESS_MODES)},
    choices=tuple(_ACCESS_MODES.values()),
)
_WRITE_MODES = (file_details_pb2.ACCESS_MODE_WRITE, file_details_pb2.ACCESS_MODE_READ_WRITE)
_READ_MODES = (file_details_pb2.ACCESS_MODE_READ, file_details_pb2.ACCESS_MODE_READ_WRITE)
_add(
    "file.write",
    B,
    "True when the file was opened for writing (write or read_write).",
    per_kind={"file_access": lambda ev: ev.file_access.access in _WRITE_MODES},
    aliases=("evt.is_open_write",),
)
_add(
    "file.read",
    B,
    "True when the file was opened for reading (read or read_write).",
    per_kind={"file_access": lambda ev: ev.file_access.access in _READ_MODES},
    aliases=("evt.is_open_read",),
)
_add(
    "file.flags",
    N,
    "Raw flags: open(2) flags for an open, renameat2 flags for a rename.",
    per_kind={"file_access": _int("file_access.flags"), "file_rename": _int("file_rename.flags")},
)
# Names of the open(2) flags an analyst filters on (x86-64 / generic Linux values).
_OPEN_FLAGS = (
    (0o100, "O_CREAT"),
    (0o200, "O_EXCL"),
    (0o1000, "O_TRUNC"),
    (0o2000, "O_APPEND"),
    (0o4000, "O_NONBLOCK"),
    (0o200000, "O_DIRECTORY"),
    (0o400000, "O_NOFOLLOW"),
    (0o2000000, "O_CLOEXEC"),
    (0o20000000, "O_PATH"),
    (0o20200000, "O_TMPFILE"),
)


def _flag_names(ev: Event) -> Value:
    flags = ev.file_access.flags
    return tuple(name for bit, name in _OPEN_FLAGS if flags & bit == bit)


_add(
    "file.flag_names",
    E,
    "Names of the open flags set (O_CREAT, O_TRUNC, O_APPEND, ...), as a list.",
    per_kind={"file_access": _flag_names},
    is_list=True,
    choices=tuple(name for _, name in _OPEN_FLAGS),
    cost=1,
)
_add(
    "file.created",
    B,
    "True when the open created the file.",
    per_kind={"file_access": attrgetter("file_access.created")},
)
_add(
    "file.truncated",
    B,
    "True when the open truncated the file to zero length (O_TRUNC on a write).",
    per_kind={"file_access": attrgetter("file_access.truncated")},
)
_add(
    "file.mode",
    N,
    "The mode requested by chmod (permission and special bits, e.g. 0o4755).",
    per_kind={"permission_change": _int("permission_change.new_mode")},
    octal=True,
)
_add(
    "file.old_mode",
    N,
    "The mode before chmod, when known.",
    per_kind={"permission_change": _optional_int("permission_change", "old_mode")},
    octal=True,
)
_add(
    "file.setuid_added",
    B,
    "True when chmod sets the setuid bit (04000) that was not set before.",
    per_kind={"permission_change": attrgetter("permission_change.setuid_added")},
)
_add(
    "file.setgid_added",
    B,
    "True when chmod sets the setgid bit (02000) that was not set before.",
    per_kind={"permission_change": attrgetter("permission_change.setgid_added")},
)
_add(
    "file.world_writable",
    B,
    "True when the new mode lets others write (0002).",
    per_kind={"permission_change": attrgetter("permission_change.world_writable")},
)
for _attr, _text in (
    ("old_uid", "Owner before chown, when known."),
    ("old_gid", "Group before chown, when known."),
    ("new_uid", "New owner; missing when chown left it unchanged."),
    ("new_gid", "New group; missing when chown left it unchanged."),
):
    _add(
        f"file.{_attr}",
        N,
        _text,
        per_kind={"ownership_change": _optional_int("ownership_change", _attr)},
    )
_add(
    "file.is_dir",
    B,
    "For a removal: true when a directory was removed.",
    per_kind={"file_delete": attrgetter("file_delete.directory")},
)
_add(
    "link.target",
    S,
    "For a link: the symlink's text or the hard link's existing path.",
    per_kind={"file_link": _str("file_link.target")},
    aliases=("evt.arg.target",),
)
_add(
    "link.path",
    S,
    "For a link: the path of the new link.",
    per_kind={"file_link": _str("file_link.link_path")},
    aliases=("evt.arg.linkpath",),
)
_add(
    "link.symbolic",
    B,
    "For a link: true for a symbolic link, false for a hard link.",
    per_kind={"file_link": attrgetter("file_link.symbolic")},
)

# network
_NET = "network_connection"
_FAMILIES = _enum_names(network_details_pb2.AddressFamily.DESCRIPTOR, "ADDRESS_FAMILY_")
_add(
    "net.family",
    E,
    "Address family: inet, inet6, unix, packet, netlink, other.",
    per_kind={
        _NET: _enum(f"{_NET}.family", _FAMILIES),
        "socket_create": _enum("socket_create.family", _FAMILIES),
    },
    choices=tuple(_FAMILIES.values()),
)
_OPERATIONS = _enum_names(
    network_details_pb2.ConnectionOperation.DESCRIPTOR, "CONNECTION_OPERATION_"
)
_add(
    "net.op",
    E,
    "What happened on the socket: connect, accept, listen.",
    per_kind={_NET: _enum(f"{_NET}.operation", _OPERATIONS)},
    choices=tuple(_OPERATIONS.values()),
)
_PROTOCOLS = _enum_names(network_details_pb2.TransportProtocol.DESCRIPTOR, "TRANSPORT_PROTOCOL_")
_add(
    "net.proto",
    E,
    "Transport protocol: tcp, udp, icmp, sctp, raw.",
    per_kind={_NET: _enum(f"{_NET}.protocol", _PROTOCOLS)},
    choices=tuple(_PROTOCOLS.values()),
    aliases=("fd.l4proto",),
)
_add("net.laddr", A, "Local address.", per_kind={_NET: _str(f"{_NET}.local.address")})
_add(
    "net.lport",
    N,
    "Local port.",
    per_kind={_NET: _int(f"{_NET}.local.port")},
    aliases=("fd.lport",),
)
_add(
    "net.raddr",
    A,
    "Remote address (missing for listen).",
    per_kind={_NET: _str(f"{_NET}.remote.address")},
)
_add(
    "net.rport",
    N,
    "Remote port (0 for listen).",
    per_kind={_NET: _int(f"{_NET}.remote.port")},
    aliases=("fd.rport",),
)
_CONNECT = network_details_pb2.CONNECTION_OPERATION_CONNECT


def _server_side(attr: str) -> Extractor:
    # Falco's server/client view: for connect the server is the remote end, for accept and listen
    # it is the local one. `net.dport` is then the service port whichever side we are.
    remote = attrgetter(f"{_NET}.remote.{attr}")
    local = attrgetter(f"{_NET}.local.{attr}")

    def ext(ev: Event) -> Value:
        value = remote(ev) if ev.network_connection.operation == _CONNECT else local(ev)
        return value if attr == "port" else (value or None)

    return ext


def _client_side(attr: str) -> Extractor:
    remote = attrgetter(f"{_NET}.remote.{attr}")
    local = attrgetter(f"{_NET}.local.{attr}")

    def ext(ev: Event) -> Value:
        value = local(ev) if ev.network_connection.operation == _CONNECT else remote(ev)
        return value if attr == "port" else (value or None)

    return ext


_add(
    "net.dport",
    N,
    "Server (destination) port: the remote port of a connect, the local port of accept/listen.",
    per_kind={_NET: _server_side("port")},
    aliases=("fd.sport",),
)
_add(
    "net.daddr",
    A,
    "Server (destination) address: remote for connect, local for accept/listen.",
    per_kind={_NET: _server_side("address")},
    aliases=("fd.sip",),
)
_add(
    "net.sport",
    N,
    "Client (source) port: the local port of a connect, the remote port of an accept.",
    per_kind={_NET: _client_side("port")},
    aliases=("fd.cport",),
)
_add(
    "net.saddr",
    A,
    "Client (source) address: local for connect, remote for accept.",
    per_kind={_NET: _client_side("address")},
    aliases=("fd.cip",),
)
_add(
    "net.blocklists",
    S,
    "Names of the configured blocklists the remote address matched, as a list.",
    per_kind={_NET: _seq(f"{_NET}.blocklists")},
    is_list=True,
    cost=1,
)
_add(
    "socket.type",
    N,
    "Raw socket type (SOCK_STREAM=1, SOCK_DGRAM=2, SOCK_RAW=3, ...).",
    per_kind={"socket_create": _int("socket_create.socket_type")},
)
_add(
    "socket.raw_family",
    N,
    "Raw address family number (AF_PACKET=17, ...).",
    per_kind={"socket_create": _int("socket_create.raw_family")},
)
_add(
    "socket.protocol",
    N,
    "Raw protocol number passed to socket(2).",
    per_kind={"socket_create": _int("socket_create.raw_protocol")},
)
_DIRECTIONS = _enum_names(network_details_pb2.TrafficDirection.DESCRIPTOR, "TRAFFIC_DIRECTION_")
_PATTERNS = _enum_names(network_details_pb2.ScanPattern.DESCRIPTOR, "SCAN_PATTERN_")
_SCAN = "port_scan"
_add(
    "scan.direction",
    E,
    "Inbound (this host is scanned) or outbound (this host scans).",
    per_kind={_SCAN: _enum(f"{_SCAN}.direction", _DIRECTIONS)},
    choices=tuple(_DIRECTIONS.values()),
)
_add(
    "scan.pattern",
    E,
    "Vertical (many ports), horizontal (many hosts) or block.",
    per_kind={_SCAN: _enum(f"{_SCAN}.pattern", _PATTERNS)},
    choices=tuple(_PATTERNS.values()),
)
_add(
    "scan.source",
    A,
    "For an inbound scan: the scanner.",
    per_kind={_SCAN: _str(f"{_SCAN}.source_address")},
)
_add(
    "scan.ports",
    N,
    "Distinct ports in the window.",
    per_kind={_SCAN: _int(f"{_SCAN}.distinct_ports")},
)
_add(
    "scan.hosts",
    N,
    "Distinct hosts in the window.",
    per_kind={_SCAN: _int(f"{_SCAN}.distinct_hosts")},
)
_add(
    "scan.attempts",
    N,
    "Connection attempts in the window.",
    per_kind={_SCAN: _int(f"{_SCAN}.attempts")},
)
_add("scan.window", N, "Window length, seconds.", per_kind={_SCAN: _seconds(f"{_SCAN}.window")})
_XFER = "transfer_volume"
_add(
    "transfer.direction",
    E,
    "Inbound or outbound.",
    per_kind={_XFER: _enum(f"{_XFER}.direction", _DIRECTIONS)},
    choices=tuple(_DIRECTIONS.values()),
)
_add(
    "transfer.bytes",
    N,
    "Bytes transferred in the window.",
    per_kind={_XFER: _int(f"{_XFER}.bytes")},
)
_add(
    "transfer.threshold",
    N,
    "The sensor's threshold that was crossed, bytes per window.",
    per_kind={_XFER: _int(f"{_XFER}.threshold_bytes")},
)
_add("transfer.window", N, "Window length, seconds.", per_kind={_XFER: _seconds(f"{_XFER}.window")})
_add(
    "transfer.connections",
    N,
    "Connections the bytes were spread over.",
    per_kind={_XFER: _int(f"{_XFER}.connections")},
)
_add(
    "transfer.raddr",
    A,
    "The remote address that exchanged the most bytes.",
    per_kind={_XFER: _str(f"{_XFER}.top_remote.address")},
)
_add(
    "transfer.rport",
    N,
    "Port of that remote end.",
    per_kind={_XFER: _int(f"{_XFER}.top_remote.port")},
)
_add(
    "transfer.rbytes",
    N,
    "Bytes exchanged with that remote end.",
    per_kind={_XFER: _int(f"{_XFER}.top_remote_bytes")},
)

# memory_threat
_MEM = "memory_threat"
_THREATS = _enum_names(memory_details_pb2.MemoryThreatKind.DESCRIPTOR, "MEMORY_THREAT_KIND_")
_TRIGGERS = _enum_names(memory_details_pb2.MemoryScanTrigger.DESCRIPTOR, "MEMORY_SCAN_TRIGGER_")
_add(
    "mem.kind",
    E,
    "The threat found: writable_executable, anonymous_executable, memfd_executable, "
    "deleted_executable, traced, "
    "ld_preload.",
    per_kind={_MEM: _enum(f"{_MEM}.kind", _THREATS)},
    choices=tuple(_THREATS.values()),
)
_add(
    "mem.trigger",
    E,
    "What triggered the inspection: periodic, exec, on_demand, syscall.",
    per_kind={_MEM: _enum(f"{_MEM}.trigger", _TRIGGERS)},
    choices=tuple(_TRIGGERS.values()),
)
_add(
    "mem.regions",
    N,
    "Number of offending mappings reported.",
    per_kind={_MEM: lambda ev: len(ev.memory_threat.regions)},
)
_add(
    "mem.paths",
    S,
    "Backing paths of the offending mappings, as a list (empty string for anonymous ones).",
    per_kind={_MEM: lambda ev: tuple(r.path for r in ev.memory_threat.regions)},
    is_list=True,
    cost=1,
)
_add(
    "mem.perms",
    S,
    "Permissions of the offending mappings (`rwxp`...), as a list.",
    per_kind={_MEM: lambda ev: tuple(r.permissions for r in ev.memory_threat.regions)},
    is_list=True,
    cost=1,
)
_add(
    "mem.tracer.name",
    S,
    "For traced: the tracer's command name.",
    per_kind={_MEM: _str(f"{_MEM}.tracer.comm")},
)
_add(
    "mem.tracer.exe",
    S,
    "For traced: the tracer's executable path.",
    per_kind={_MEM: _str(f"{_MEM}.tracer.exe")},
)
_add(
    "mem.preload",
    S,
    "For ld_preload: the libraries preloaded, as a list.",
    per_kind={_MEM: _seq(f"{_MEM}.preloaded_libraries")},
    is_list=True,
    cost=1,
)

# kernel
_MODULE_CALLS = _enum_names(kernel_details_pb2.ModuleLoadCall.DESCRIPTOR, "MODULE_LOAD_CALL_")
_add(
    "module.call",
    E,
    "The system call: init_module or finit_module.",
    per_kind={"module_load": _enum("module_load.call", _MODULE_CALLS)},
    choices=tuple(_MODULE_CALLS.values()),
)
_add(
    "module.name", S, "Module name, when known.", per_kind={"module_load": _str("module_load.name")}
)
_add(
    "module.path",
    S,
    "Module file, for finit_module.",
    per_kind={"module_load": _str("module_load.path")},
)
_add("module.params", S, "Module parameters.", per_kind={"module_load": _str("module_load.params")})
_BPF = "bpf_program_load"
_add(
    "bpf.prog_type",
    S,
    "Program type name: kprobe, tracepoint, xdp, socket_filter, cgroup_skb, ...",
    per_kind={_BPF: _str(f"{_BPF}.program_type")},
)
_add(
    "bpf.raw_prog_type",
    N,
    "Raw program type number.",
    per_kind={_BPF: _int(f"{_BPF}.raw_program_type")},
)
_add(
    "bpf.prog_name",
    S,
    "Program name given by the loader.",
    per_kind={_BPF: _str(f"{_BPF}.program_name")},
)
_add(
    "bpf.insn_count",
    N,
    "Number of instructions.",
    per_kind={_BPF: _int(f"{_BPF}.instruction_count")},
)

# auth_event
_AUTH = "auth_event"
_OUTCOMES = _enum_names(auth_details_pb2.AuthOutcome.DESCRIPTOR, "AUTH_OUTCOME_")
_METHODS = _enum_names(auth_details_pb2.AuthMethod.DESCRIPTOR, "AUTH_METHOD_")
_add(
    "auth.service",
    S,
    "Authenticating service, e.g. sshd.",
    per_kind={_AUTH: _str(f"{_AUTH}.service")},
)
_add(
    "auth.outcome",
    E,
    "Accepted or failed.",
    per_kind={_AUTH: _enum(f"{_AUTH}.outcome", _OUTCOMES)},
    choices=tuple(_OUTCOMES.values()),
)
_add(
    "auth.method",
    E,
    "Password, publickey, keyboard_interactive, gssapi, hostbased, none.",
    per_kind={_AUTH: _enum(f"{_AUTH}.method", _METHODS)},
    choices=tuple(_METHODS.values()),
)
_add(
    "auth.user",
    S,
    "User name as given by the client (attacker-chosen text).",
    per_kind={_AUTH: _str(f"{_AUTH}.user")},
)
_add(
    "auth.invalid_user",
    B,
    "True when the user does not exist on the host.",
    per_kind={_AUTH: attrgetter(f"{_AUTH}.invalid_user")},
)
_add("auth.source", A, "Client address.", per_kind={_AUTH: _str(f"{_AUTH}.source.address")})
_add("auth.source_port", N, "Client port.", per_kind={_AUTH: _int(f"{_AUTH}.source.port")})
_add(
    "auth.failures",
    N,
    "Failed attempts from the same address in the sensor's window, this one included.",
    per_kind={_AUTH: _int(f"{_AUTH}.failures_in_window")},
)
_add(
    "auth.distinct_users",
    N,
    "Distinct user names tried from the same address in the window.",
    per_kind={_AUTH: _int(f"{_AUTH}.distinct_users_in_window")},
)
_add(
    "auth.user_failures",
    N,
    "Failed attempts on the same user in the window, from any address.",
    per_kind={_AUTH: _int(f"{_AUTH}.user_failures_in_window")},
)
_add(
    "auth.user_sources",
    N,
    "Distinct addresses that failed on the same user in the window.",
    per_kind={_AUTH: _int(f"{_AUTH}.user_distinct_sources_in_window")},
)
_add("auth.window", N, "Window length, seconds.", per_kind={_AUTH: _seconds(f"{_AUTH}.window")})
_add(
    "auth.new_source",
    B,
    "For an accepted login: true when the user never logged in from this address before.",
    per_kind={_AUTH: attrgetter(f"{_AUTH}.new_source_address")},
)
_add(
    "auth.key_fingerprint",
    S,
    "Public key fingerprint (SHA256:...).",
    per_kind={_AUTH: _str(f"{_AUTH}.key_fingerprint")},
)


# --- lookup -------------------------------------------------------------------------------------

FIELDS: Mapping[str, Field] = _FIELDS
ALIASES: Mapping[str, str] = _ALIASES


def lookup(name: str) -> Field | None:
    """The field called `name` (canonical or Falco alias), or None."""
    found = _FIELDS.get(name)
    if found is None and name in _ALIASES:
        found = _FIELDS[_ALIASES[name]]
    return found


def all_names() -> Iterator[str]:
    """Every name a condition may use: canonical names then aliases."""
    yield from _FIELDS
    yield from _ALIASES


def describe() -> list[dict[str, Any]]:
    """The table as plain data, for `qsc` help output and documentation."""
    aliases: dict[str, list[str]] = {}
    for alias, target in _ALIASES.items():
        aliases.setdefault(target, []).append(alias)
    return [
        {
            "name": f.name,
            "type": f.type.value + ("[]" if f.is_list else ""),
            "description": f.description,
            "kinds": sorted(f.kinds) if f.generic is None else ["*"],
            "aliases": aliases.get(f.name, []),
            **({"choices": list(f.choices)} if f.choices else {}),
            **({"indexed": True} if f.indexed else {}),
        }
        for f in _FIELDS.values()
    ]
