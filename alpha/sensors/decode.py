"""Pure decoding of the eBPF sensor's ring-buffer records (alpha/bpf/records.h).

`LAYOUTS` mirrors every C struct field by field; the unit tests compile records.h with the host
C compiler and compare each offset and size with it, and compare the constants below with the
header's #defines. `decode_record(bytes)` returns one of the `Raw*` dataclasses: kernel facts
only (no /proc, no process table), so every kind is testable without a kernel.

The record types are not frozen: a frozen dataclass costs about 1 us more per construction
(every field goes through object.__setattr__), which is a third of the per-event budget at
200,000 events/s. Treat them as immutable.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

# --- constants mirrored from records.h ----------------------------------------------------------

KIND_EXEC: Final = 1
KIND_FORK: Final = 2
KIND_EXIT: Final = 3
KIND_OPEN: Final = 4
KIND_CHMOD: Final = 5
KIND_CHOWN: Final = 6
KIND_UNLINK: Final = 7
KIND_RENAME: Final = 8
KIND_PTRACE: Final = 9
KIND_CONNECT: Final = 10
KIND_ACCEPT: Final = 11
KIND_MEMFD: Final = 12
KIND_MODULE: Final = 13
KIND_BPF: Final = 14
KIND_SETID: Final = 15
KIND_MEMPROT: Final = 16
KIND_SOCKET: Final = 17
KIND_LINK: Final = 18
KIND_TCP_CLOSE: Final = 19
KIND_VM_WRITE: Final = 20
KIND_XATTR: Final = 21
KIND_NAMESPACE: Final = 22
KIND_UTIMES: Final = 23
KIND_ENFORCE: Final = 24
KIND_OPEN_RESOLVED: Final = 25
KIND_DUP: Final = 26
KIND_MAX: Final = 27

KIND_NAMES: Final[dict[int, str]] = {
    KIND_EXEC: "exec",
    KIND_FORK: "fork",
    KIND_EXIT: "exit",
    KIND_OPEN: "open",
    KIND_CHMOD: "chmod",
    KIND_CHOWN: "chown",
    KIND_UNLINK: "unlink",
    KIND_RENAME: "rename",
    KIND_PTRACE: "ptrace",
    KIND_CONNECT: "connect",
    KIND_ACCEPT: "accept",
    KIND_MEMFD: "memfd_create",
    KIND_MODULE: "module_load",
    KIND_BPF: "bpf",
    KIND_SETID: "setid",
    KIND_MEMPROT: "memprot",
    KIND_SOCKET: "socket",
    KIND_LINK: "link",
    KIND_TCP_CLOSE: "tcp_close",
    KIND_VM_WRITE: "vm_write",
    KIND_XATTR: "xattr",
    KIND_NAMESPACE: "namespace",
    KIND_UTIMES: "utimes",
    KIND_ENFORCE: "enforce",
    KIND_OPEN_RESOLVED: "open_resolved",
    KIND_DUP: "dup",
}

# records.h SC_*: index = our syscall number.
SYSCALL_NAMES: Final[tuple[str, ...]] = (
    "",
    "execve",
    "execveat",
    "open",
    "openat",
    "openat2",
    "creat",
    "chmod",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "chown",
    "lchown",
    "fchown",
    "fchownat",
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "ptrace",
    "connect",
    "accept",
    "accept4",
    "memfd_create",
    "init_module",
    "finit_module",
    "bpf",
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setfsuid",
    "setfsgid",
    "mmap",
    "mprotect",
    "pkey_mprotect",
    "socket",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "process_vm_writev",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "setxattrat",
    "unshare",
    "setns",
    "utimensat",
    "utimes",
    "utime",
    "dup2",
    "dup3",
)

CNT_FILTERED: Final = 0
CNT_EXEC_NO_STASH: Final = 1
CNT_MAX: Final = 2

PATH_LEN: Final = 256
ARGS_LEN: Final = 1024
ARG_LEN: Final = 256
MAX_ARGS: Final = 32
SOCKADDR_LEN: Final = 128
BPF_NAME_LEN: Final = 16
COMM_LEN: Final = 16

EXEC_F_ARGS_TRUNCATED: Final = 1
EXEC_F_NO_STASH: Final = 2

ID_F_KERNEL: Final = 1
ID_F_EXE_COMPLETE: Final = 2
ID_F_EXE_PSEUDO: Final = 4
ID_F_EXE_DELETED: Final = 8
ID_F_EXE_TRUNCATED: Final = 16
ID_F_NO_EXE: Final = 32
ID_F_LOGINUID: Final = 64
EXE_LEN: Final = 512
NAME_LEN: Final = 256
EXE_DEPTH: Final = 32
TTY_LEN: Final = 32
XATTR_NAME_LEN: Final = 64
EXIT_F_CODE_KNOWN: Final = 1
ENV_LEN: Final = 512
ENV_ENTRY_LEN: Final = 192
ENV_SCAN_LEN: Final = 4096
MAX_ENV: Final = 128
ENV_KEY_LEN: Final = 16
ENV_F_SCANNED: Final = 1
ENV_F_INCOMPLETE: Final = 2
ENV_F_TRUNCATED: Final = 4
PATH_R_PENDING: Final = 1
PATH_R_KEEP: Final = 2
TCPC_F_OWNER: Final = 1

# --- layouts: (field, struct format) in C order; payloads follow the 64-byte header -----------

HEADER_FIELDS: Final = (
    ("ts_ns", "Q"),
    ("cgroup_id", "Q"),
    ("ret", "q"),
    ("kind", "I"),
    ("syscall", "I"),
    ("tid", "I"),
    ("tgid", "I"),
    ("uid", "I"),
    ("gid", "I"),
    ("comm", f"{COMM_LEN}s"),
)

PAYLOAD_FIELDS: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    # args (ARGS_LEN + ARG_LEN bytes) follows, cut to args_len on the wire.
    "rec_exec": (
        ("old_pid", "I"),
        ("argc", "I"),
        ("args_len", "I"),
        ("flags", "I"),
        ("dirfd", "i"),
        ("at_flags", "I"),
        ("filename", f"{PATH_LEN}s"),
        ("euid", "I"),
        ("egid", "I"),
        ("auid", "I"),
        ("sessionid", "I"),
        ("ppid", "I"),
        ("id_flags", "I"),
        ("exe_len", "I"),
        ("exe_depth", "I"),
        ("tty", f"{TTY_LEN}s"),
        ("cap_effective", "Q"),
        ("cap_permitted", "Q"),
        ("env_count", "I"),
        ("env_flags", "I"),
        ("env_len", "I"),
        ("env_kept", "I"),
        ("env", f"{ENV_LEN + ENV_ENTRY_LEN}s"),
        *(
            (f"stdio[{n}].{name}", code)
            for n in range(3)
            for name, code in (
                ("kind", "B"),
                ("_pad", "B"),
                ("port", "H"),
                ("_pad2", "I"),
                ("addr", "16s"),
            )
        ),
        ("exe", f"{EXE_LEN + NAME_LEN}s"),
    ),
    "rec_fork": (("child_pid", "I"), ("_pad", "I"), ("clone_flags", "Q")),
    "rec_exit": (("exit_code", "i"), ("flags", "I")),
    # path (PATH_LEN bytes) follows, cut to path_len on the wire.
    "rec_path": (
        ("dfd", "i"),
        ("mode", "I"),
        ("flags", "Q"),
        ("uid", "I"),
        ("gid", "I"),
        ("path_len", "I"),
        ("resolve", "I"),
    ),
    "rec_resolved": (
        ("dfd", "i"),
        ("mode", "I"),
        ("flags", "Q"),
        ("path_flags", "I"),
        ("depth", "I"),
        ("raw", f"{PATH_LEN}s"),
        ("path", f"{PATH_LEN}s"),
    ),
    "rec_two_paths": (
        ("olddfd", "i"),
        ("newdfd", "i"),
        ("flags", "I"),
        ("_pad", "I"),
        ("oldpath", f"{PATH_LEN}s"),
        ("newpath", f"{PATH_LEN}s"),
    ),
    "rec_ptrace": (("request", "q"), ("target", "q"), ("addr", "Q"), ("data", "Q")),
    "rec_sock": (
        ("fd", "i"),
        ("addrlen", "I"),
        ("uaddr", "Q"),
        ("ulen", "Q"),
        ("protocol", "I"),
        ("_pad", "I"),
        ("addr", f"{SOCKADDR_LEN}s"),
    ),
    "rec_module": (
        ("fd", "i"),
        ("flags", "I"),
        ("len", "Q"),
        ("params_len", "I"),
        ("_pad", "I"),
        ("params", f"{PATH_LEN}s"),
    ),
    "rec_bpf": (
        ("cmd", "i"),
        ("size", "I"),
        ("prog_type", "I"),
        ("insn_cnt", "I"),
        ("prog_flags", "I"),
        ("_pad", "I"),
        ("prog_name", f"{BPF_NAME_LEN}s"),
    ),
    "rec_setid": (("a0", "I"), ("a1", "I"), ("a2", "I"), ("_pad", "I")),
    "rec_memprot": (("addr", "Q"), ("len", "Q"), ("prot", "Q"), ("flags", "Q"), ("fd", "q")),
    "rec_socket": (("family", "i"), ("type", "i"), ("protocol", "i"), ("_pad", "I")),
    "rec_vm_write": (("target", "q"), ("liovcnt", "Q"), ("riovcnt", "Q"), ("flags", "Q")),
    "rec_xattr": (
        ("dfd", "i"),
        ("size", "I"),
        ("flags", "I"),
        ("at_flags", "I"),
        ("name", f"{XATTR_NAME_LEN}s"),
        ("path", f"{PATH_LEN}s"),
    ),
    "rec_ns": (("flags", "Q"), ("fd", "i"), ("_pad", "I")),
    "rec_dup": (
        ("oldfd", "i"),
        ("newfd", "i"),
        ("flags", "I"),
        ("kind", "B"),
        ("_pad", "B"),
        ("port", "H"),
        ("addr", "16s"),
    ),
    "rec_utimes": (
        ("dfd", "i"),
        ("at_flags", "I"),
        ("atime_sec", "q"),
        ("atime_nsec", "q"),
        ("mtime_sec", "q"),
        ("mtime_nsec", "q"),
        ("base_flags", "I"),
        ("base_len", "I"),
        ("base_depth", "I"),
        ("path_len", "I"),
        ("path", f"{PATH_LEN}s"),
        ("base", f"{EXE_LEN + NAME_LEN}s"),
    ),
    "rec_enforce": (("check", "I"), ("mode", "I"), ("signal", "i"), ("result", "i")),
    "rec_tcp_close": (
        ("cookie", "Q"),
        ("bytes_acked", "Q"),
        ("bytes_received", "Q"),
        ("open_ns", "Q"),
        ("segs_out", "I"),
        ("segs_in", "I"),
        ("family", "H"),
        ("sport", "H"),
        ("dport", "H"),
        ("oldstate", "H"),
        ("flags", "I"),
        ("_pad", "I"),
        ("saddr", "16s"),
        ("daddr", "16s"),
    ),
}

# Trailing variable-length arrays: struct -> (field, capacity).
TRAILING: Final[dict[str, tuple[str, int]]] = {
    "rec_exec": ("args", ARGS_LEN + ARG_LEN),
    "rec_path": ("path", PATH_LEN),
}


def _fmt(fields: tuple[tuple[str, str], ...]) -> str:
    return "<" + "".join(f for _, f in fields)


_HDR: Final = struct.Struct(_fmt(HEADER_FIELDS))
HEADER_SIZE: Final = _HDR.size
_PAYLOAD: Final = {name: struct.Struct(_fmt(fields)) for name, fields in PAYLOAD_FIELDS.items()}


def layout(name: str) -> list[tuple[str, int, int]]:
    """(field, offset, size) of every field of a C struct, as this module reads it."""
    out: list[tuple[str, int, int]] = []
    fields = HEADER_FIELDS if name == "rec_hdr" else PAYLOAD_FIELDS[name]
    base = 0 if name == "rec_hdr" else HEADER_SIZE
    fmt = "<"
    for field, code in fields:
        out.append((field, base + struct.calcsize(fmt), struct.calcsize("<" + code)))
        fmt += code
    if name in TRAILING:
        trailing, capacity = TRAILING[name]
        out.append((trailing, base + struct.calcsize(fmt), capacity))
    return out


def struct_size(name: str) -> int:
    """sizeof(struct name) as this module expects it."""
    if name == "rec_hdr":
        return HEADER_SIZE
    return HEADER_SIZE + _PAYLOAD[name].size + TRAILING.get(name, ("", 0))[1]


# --- records ------------------------------------------------------------------------------------


class DecodeError(ValueError):
    """A record too short, or of an unknown kind."""


@dataclass(slots=True)
class Header:
    ts_ns: int  # CLOCK_BOOTTIME
    cgroup_id: int
    ret: int
    kind: int
    syscall: str
    tid: int
    tgid: int
    uid: int
    gid: int
    comm: str


@dataclass(slots=True)
class RawExec:
    hdr: Header
    old_pid: int
    filename: str
    args: tuple[str, ...]
    args_truncated: bool
    no_stash: bool  # exec seen without its execve entry: args unknown
    dirfd: int
    at_flags: int
    identity: KernelIdentity | None  # None: the kernel layout was unknown, ask /proc


@dataclass(slots=True)
class KernelIdentity:
    """The new image as the task said at exec, before it could exit."""

    exe: str  # as /proc/PID/exe would show it; "" when the task had none or the walk failed
    exe_complete: bool  # False: the path is cut (too deep) or unreadable: prefer /proc
    euid: int
    egid: int
    auid: int | None  # None: unset ((u32)-1) or the kernel has no audit
    sessionid: int | None
    ppid: int
    tty: str  # e.g. "pts/0"; "" when the process has no controlling terminal
    cap_effective: int = 0
    cap_permitted: int = 0
    # fds 0-2 at exec: (kind, peer address, peer port); kind as alpha.sensors.model.Stdio
    # names it, "unknown" when the kernel could not tell.
    stdio: tuple[tuple[str, str, int], ...] = ()
    # The watched environment entries ("NAME=value"), and whether the whole environment was
    # scanned (False: too many entries, one too long, or more kept than fit).
    env: tuple[str, ...] = ()
    env_complete: bool = True


@dataclass(slots=True)
class RawFork:
    hdr: Header  # the parent
    child_pid: int
    clone_flags: int


@dataclass(slots=True)
class RawExit:
    hdr: Header
    exit_code: int | None


@dataclass(slots=True)
class RawPath:
    """open, chmod, chown, unlink and memfd_create (path = the memfd name)."""

    hdr: Header
    dfd: int
    mode: int
    flags: int
    uid: int
    gid: int
    path: str
    # open only: the path as the caller wrote it when it was relative or not canonical; `path`
    # is then the kernel's name of the file opened (KIND_OPEN_RESOLVED).
    raw_path: str = ""


@dataclass(slots=True)
class RawRename:
    hdr: Header
    olddfd: int
    newdfd: int
    flags: int
    oldpath: str
    newpath: str


@dataclass(slots=True)
class RawPtrace:
    hdr: Header
    request: int
    target: int
    addr: int
    data: int


@dataclass(slots=True)
class RawSock:
    hdr: Header
    fd: int
    family: str
    address: str
    port: int
    protocol: int  # IPPROTO_*, read in the kernel at the call; 0 unknown


@dataclass(slots=True)
class RawModule:
    hdr: Header
    fd: int
    flags: int
    image_len: int
    params: str


@dataclass(slots=True)
class RawBpf:
    hdr: Header
    cmd: int
    size: int
    prog_type: int
    insn_cnt: int
    prog_flags: int
    prog_name: str


@dataclass(slots=True)
class RawSetId:
    hdr: Header
    ids: tuple[int | None, ...]


@dataclass(slots=True)
class RawMemProt:
    hdr: Header
    addr: int
    length: int
    prot: int
    flags: int
    fd: int


@dataclass(slots=True)
class RawSocket:
    hdr: Header  # ret: the new fd, or -errno
    family: int
    type: int  # as passed, flag bits included
    protocol: int


@dataclass(slots=True)
class RawLink:
    hdr: Header  # syscall says hard (link, linkat) or symbolic (symlink, symlinkat)
    olddfd: int
    newdfd: int
    flags: int
    target: str
    linkpath: str

    @property
    def symbolic(self) -> bool:
        return self.hdr.syscall.startswith("sym")


@dataclass(slots=True)
class RawTcpClose:
    hdr: Header  # the owner when owner_known
    cookie: int
    bytes_acked: int
    bytes_received: int
    open_ns: int
    segs_out: int
    segs_in: int
    family: str
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    old_state: int
    owner_known: bool


@dataclass(slots=True)
class RawVmWrite:
    hdr: Header  # ret: bytes written
    target: int
    local_iovecs: int
    remote_iovecs: int
    flags: int


@dataclass(slots=True)
class RawXattr:
    hdr: Header
    dfd: int
    size: int
    flags: int
    at_flags: int
    name: str
    path: str  # "" for fsetxattr


@dataclass(slots=True)
class RawNamespace:
    hdr: Header  # syscall: unshare or setns
    flags: int  # unshare flags, setns nstype
    fd: int  # setns only


@dataclass(slots=True)
class RawDup:
    hdr: Header  # syscall: dup2 or dup3
    oldfd: int
    newfd: int  # 0-2
    flags: int
    stdio: tuple[str, str, int]  # what newfd is after the call: (kind, peer address, port)


UTIME_NOW: Final = (1 << 30) - 1
UTIME_OMIT: Final = (1 << 30) - 2


@dataclass(slots=True)
class RawUtimes:
    hdr: Header
    dfd: int
    at_flags: int
    atime_ns: int | None  # None: unchanged or "now"
    mtime_ns: int | None
    path: str  # as passed; "" for futimens
    base: str | None  # the dirfd's or cwd's path (or the fd's file) walked in the kernel
    base_complete: bool


CHECK_NAMES: Final = {1: "memfd_exec", 2: "socket_stdio_exec", 4: "process_memory_write"}
ENFORCE_DRY_RUN: Final = 1
ENFORCE_KILL: Final = 2


@dataclass(slots=True)
class RawEnforce:
    hdr: Header  # the process killed (or that would have been)
    check: str
    dry_run: bool
    signal: int
    result: int


RawRecord = (
    RawExec
    | RawFork
    | RawExit
    | RawPath
    | RawRename
    | RawPtrace
    | RawSock
    | RawModule
    | RawBpf
    | RawSetId
    | RawMemProt
    | RawSocket
    | RawLink
    | RawTcpClose
    | RawVmWrite
    | RawXattr
    | RawNamespace
    | RawDup
    | RawUtimes
    | RawEnforce
)

# --- helpers ------------------------------------------------------------------------------------


def cstr(raw: bytes) -> str:
    """A NUL-terminated C string; undecodable bytes stay visible as \\xNN escapes."""
    end = raw.find(b"\0")
    if end >= 0:
        raw = raw[:end]
    return raw.decode("utf-8", "backslashreplace")


def split_args(raw: bytes, argc: int) -> tuple[str, ...]:
    """NUL-separated argv as written by the kernel, keeping at most argc entries."""
    if not raw or argc <= 0:
        return ()
    parts = raw.split(b"\0")
    return tuple(p.decode("utf-8", "backslashreplace") for p in parts[:argc])


_AF_UNIX: Final = 1
_AF_INET: Final = 2
_AF_INET6: Final = 10


def decode_sockaddr(raw: bytes) -> tuple[str, str, int]:
    """(family, address, port) of a raw struct sockaddr (family in host order, port network)."""
    if len(raw) < 2:
        return ("", "", 0)
    family = int.from_bytes(raw[:2], "little")
    if family == _AF_INET and len(raw) >= 8:
        port = int.from_bytes(raw[2:4], "big")
        return ("inet", str(ipaddress.IPv4Address(raw[4:8])), port)
    if family == _AF_INET6 and len(raw) >= 24:
        port = int.from_bytes(raw[2:4], "big")
        v6 = ipaddress.IPv6Address(raw[8:24])
        addr = str(v6.ipv4_mapped or v6)  # ::ffff:a.b.c.d: the IPv4 peer of a dual-stack socket
        scope = int.from_bytes(raw[24:28], "little") if len(raw) >= 28 else 0
        return ("inet6", f"{addr}%{scope}" if scope else addr, port)
    if family == _AF_UNIX:
        path = raw[2:]
        if path[:1] == b"\0":  # abstract namespace: the name is the bytes after the NUL
            return ("unix", "@" + path[1:].rstrip(b"\0").decode("utf-8", "backslashreplace"), 0)
        return ("unix", cstr(path), 0)
    return (f"af{family}", "", 0)


def _id(value: int) -> int | None:
    return None if value == 0xFFFFFFFF else value


# --- decoders -----------------------------------------------------------------------------------


# Command names repeat endlessly: decoding each distinct one once is measurably cheaper.
_COMMS: dict[bytes, str] = {}
_COMMS_MAX: Final = 4096


def _comm(raw: bytes) -> str:
    name = _COMMS.get(raw)
    if name is None:
        if len(_COMMS) >= _COMMS_MAX:
            _COMMS.clear()
        name = _COMMS[raw] = cstr(raw)
    return name


def decode_header(buf: bytes) -> Header:
    if len(buf) < HEADER_SIZE:
        raise DecodeError(f"record of {len(buf)} bytes is shorter than its header")
    ts, cg, ret, kind, sc, tid, tgid, uid, gid, comm = _HDR.unpack_from(buf)
    name = SYSCALL_NAMES[sc] if sc < len(SYSCALL_NAMES) else f"sc{sc}"
    return Header(ts, cg, ret, kind, name, tid, tgid, uid, gid, _comm(comm))


def _need(buf: bytes, name: str) -> struct.Struct:
    s = _PAYLOAD[name]
    if len(buf) < HEADER_SIZE + s.size:
        raise DecodeError(f"{name} record of {len(buf)} bytes, need {HEADER_SIZE + s.size}")
    return s


def _exec(h: Header, buf: bytes) -> RawExec:
    s = _need(buf, "rec_exec")
    (old_pid, argc, args_len, flags, dirfd, at_flags, filename, euid, egid, auid, session, ppid,
     id_flags, exe_len, exe_depth, tty, cap_eff, cap_prm, _env_count, env_flags, env_len,
     env_kept, env, *fds, exe) = s.unpack_from(buf, HEADER_SIZE)  # fmt: skip
    start = HEADER_SIZE + s.size
    args = split_args(buf[start : start + args_len], argc)
    identity = None
    if id_flags & ID_F_KERNEL:
        path, complete = exe_path(exe[: min(exe_len, EXE_LEN + NAME_LEN)], exe_depth, id_flags)
        login = bool(id_flags & ID_F_LOGINUID)
        identity = KernelIdentity(
            path,
            complete,
            euid,
            egid,
            _id(auid) if login else None,
            _id(session) if login else None,
            ppid,
            tty_path(cstr(tty)),
            cap_eff,
            cap_prm,
            tuple(_fd(fds[i], fds[i + 2], fds[i + 4]) for i in (0, 5, 10)),
            split_args(env[: min(env_len, ENV_LEN + ENV_ENTRY_LEN)], env_kept),
            bool(env_flags & ENV_F_SCANNED)
            and not env_flags & (ENV_F_INCOMPLETE | ENV_F_TRUNCATED),
        )
    return RawExec(
        h,
        old_pid,
        cstr(filename),
        args,
        bool(flags & EXEC_F_ARGS_TRUNCATED),
        bool(flags & EXEC_F_NO_STASH),
        dirfd,
        at_flags,
        identity,
    )


def exe_path(raw: bytes, depth: int, flags: int) -> tuple[str, bool]:
    """The exe the kernel walked (names leaf first) as /proc/PID/exe shows it, and whether
    the walk reached a root."""
    if flags & ID_F_NO_EXE:
        return "", True
    names = [n.decode("utf-8", "backslashreplace") for n in raw.split(b"\0")[:depth]]
    if not names:
        return "", False
    if flags & ID_F_EXE_PSEUDO:
        return f"/{names[0]} (deleted)", True  # what simple_dname() renders for a memfd
    path = "/" + "/".join(reversed(names))
    if flags & ID_F_EXE_DELETED:
        path += " (deleted)"
    complete = bool(flags & ID_F_EXE_COMPLETE) and not flags & ID_F_EXE_TRUNCATED
    return path, complete


_FD_KINDS: Final = (
    "unknown", "closed", "file", "tty", "pipe", "inet_socket", "inet_socket", "unix_socket",
    "other",
)  # fmt: skip


def _fd(kind: int, port: int, addr: bytes) -> tuple[str, str, int]:
    """One of fds 0-2 as the kernel saw it at exec: (kind, peer address, peer port)."""
    name = _FD_KINDS[kind] if kind < len(_FD_KINDS) else "unknown"
    if kind == 5:
        return (
            name,
            str(ipaddress.IPv4Address(addr[:4])),
            int.from_bytes(port.to_bytes(2, "little"), "big"),
        )
    if kind == 6:
        v6 = ipaddress.IPv6Address(addr)
        return name, str(v6.ipv4_mapped or v6), int.from_bytes(port.to_bytes(2, "little"), "big")
    return name, "", 0


def tty_path(name: str) -> str:
    """A tty's kernel name as ps shows it: pts3 -> pts/3 (devpts names its ttys ptsN)."""
    if name.startswith("pts") and name[3:].isdigit():
        return f"pts/{name[3:]}"
    return name


def _fork(h: Header, buf: bytes) -> RawFork:
    child, _, clone_flags = _need(buf, "rec_fork").unpack_from(buf, HEADER_SIZE)
    return RawFork(h, child, clone_flags)


def _exit(h: Header, buf: bytes) -> RawExit:
    code, flags = _need(buf, "rec_exit").unpack_from(buf, HEADER_SIZE)
    return RawExit(h, code if flags & EXIT_F_CODE_KNOWN else None)


def _path(h: Header, buf: bytes) -> RawPath:
    s = _need(buf, "rec_path")
    dfd, mode, flags, uid, gid, path_len, _ = s.unpack_from(buf, HEADER_SIZE)
    start = HEADER_SIZE + s.size
    path = cstr(buf[start : start + min(path_len, PATH_LEN)])
    return RawPath(h, dfd, mode, flags, uid, gid, path)


def _resolved(h: Header, buf: bytes) -> RawPath:
    dfd, mode, flags, _, _, raw, path = _need(buf, "rec_resolved").unpack_from(buf, HEADER_SIZE)
    h.kind = KIND_OPEN  # an open like any other, named by the kernel
    return RawPath(h, dfd, mode, flags, 0, 0, cstr(path), cstr(raw))


def _rename(h: Header, buf: bytes) -> RawRename:
    olddfd, newdfd, flags, _, old, new = _need(buf, "rec_two_paths").unpack_from(buf, HEADER_SIZE)
    return RawRename(h, olddfd, newdfd, flags, cstr(old), cstr(new))


def _ptrace(h: Header, buf: bytes) -> RawPtrace:
    request, target, addr, data = _need(buf, "rec_ptrace").unpack_from(buf, HEADER_SIZE)
    return RawPtrace(h, request, target, addr, data)


def _sock(h: Header, buf: bytes) -> RawSock:
    fd, addrlen, _, _, protocol, _, addr = _need(buf, "rec_sock").unpack_from(buf, HEADER_SIZE)
    family, address, port = decode_sockaddr(addr[: min(addrlen, SOCKADDR_LEN)])
    return RawSock(h, fd, family, address, port, protocol)


def _module(h: Header, buf: bytes) -> RawModule:
    fd, flags, length, params_len, _, params = _need(buf, "rec_module").unpack_from(
        buf, HEADER_SIZE
    )
    return RawModule(h, fd, flags, length, cstr(params[:params_len]))


def _bpf(h: Header, buf: bytes) -> RawBpf:
    cmd, size, prog_type, insn_cnt, prog_flags, _, name = _need(buf, "rec_bpf").unpack_from(
        buf, HEADER_SIZE
    )
    return RawBpf(h, cmd, size, prog_type, insn_cnt, prog_flags, cstr(name))


_SETID_ARGC: Final = {
    "setuid": 1,
    "setgid": 1,
    "setfsuid": 1,
    "setfsgid": 1,
    "setreuid": 2,
    "setregid": 2,
    "setresuid": 3,
    "setresgid": 3,
}


def _setid(h: Header, buf: bytes) -> RawSetId:
    a0, a1, a2, _ = _need(buf, "rec_setid").unpack_from(buf, HEADER_SIZE)
    argc = _SETID_ARGC.get(h.syscall, 3)
    return RawSetId(h, tuple(_id(a) for a in (a0, a1, a2)[:argc]))


def _memprot(h: Header, buf: bytes) -> RawMemProt:
    addr, length, prot, flags, fd = _need(buf, "rec_memprot").unpack_from(buf, HEADER_SIZE)
    return RawMemProt(h, addr, length, prot, flags, fd)


def _socket(h: Header, buf: bytes) -> RawSocket:
    family, type_, protocol, _ = _need(buf, "rec_socket").unpack_from(buf, HEADER_SIZE)
    return RawSocket(h, family, type_, protocol)


def _link(h: Header, buf: bytes) -> RawLink:
    olddfd, newdfd, flags, _, target, link = _need(buf, "rec_two_paths").unpack_from(
        buf, HEADER_SIZE
    )
    return RawLink(h, olddfd, newdfd, flags, cstr(target), cstr(link))


def _ip(family: int, raw: bytes) -> str:
    if family == _AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    v6 = ipaddress.IPv6Address(raw)
    return str(v6.ipv4_mapped or v6)


def _tcp_close(h: Header, buf: bytes) -> RawTcpClose:
    (cookie, acked, received, open_ns, segs_out, segs_in, family, sport, dport, oldstate, flags,
     _, saddr, daddr) = _need(buf, "rec_tcp_close").unpack_from(buf, HEADER_SIZE)  # fmt: skip
    name = "inet" if family == _AF_INET else "inet6" if family == _AF_INET6 else f"af{family}"
    return RawTcpClose(
        h,
        cookie,
        acked,
        received,
        open_ns,
        segs_out,
        segs_in,
        name,
        _ip(family, saddr),
        sport,
        _ip(family, daddr),
        dport,
        oldstate,
        bool(flags & TCPC_F_OWNER),
    )


def _vm_write(h: Header, buf: bytes) -> RawVmWrite:
    target, liov, riov, flags = _need(buf, "rec_vm_write").unpack_from(buf, HEADER_SIZE)
    return RawVmWrite(h, target, liov, riov, flags)


def _xattr(h: Header, buf: bytes) -> RawXattr:
    dfd, size, flags, at_flags, name, path = _need(buf, "rec_xattr").unpack_from(buf, HEADER_SIZE)
    return RawXattr(h, dfd, size, flags, at_flags, cstr(name), cstr(path))


def _namespace(h: Header, buf: bytes) -> RawNamespace:
    flags, fd, _ = _need(buf, "rec_ns").unpack_from(buf, HEADER_SIZE)
    return RawNamespace(h, flags, fd)


def _dup(h: Header, buf: bytes) -> RawDup:
    oldfd, newfd, flags, kind, _, port, addr = _need(buf, "rec_dup").unpack_from(buf, HEADER_SIZE)
    return RawDup(h, oldfd, newfd, flags, _fd(kind, port, addr))


def _time_ns(sec: int, nsec: int) -> int | None:
    if nsec in (UTIME_NOW, UTIME_OMIT):
        return None
    return sec * 1_000_000_000 + nsec


def _utimes(h: Header, buf: bytes) -> RawUtimes:
    (dfd, at_flags, a_sec, a_nsec, m_sec, m_nsec, base_flags, base_len, base_depth, path_len,
     path, base) = _need(buf, "rec_utimes").unpack_from(buf, HEADER_SIZE)  # fmt: skip
    walked: str | None = None
    complete = False
    if base_flags & ID_F_KERNEL:
        walked, complete = exe_path(
            base[: min(base_len, EXE_LEN + NAME_LEN)], base_depth, base_flags
        )
    return RawUtimes(
        h,
        dfd,
        at_flags,
        _time_ns(a_sec, a_nsec),
        _time_ns(m_sec, m_nsec),
        cstr(path[: min(path_len, PATH_LEN)]) if path_len else "",
        walked,
        complete,
    )


def _enforce(h: Header, buf: bytes) -> RawEnforce:
    check, mode, signal, result = _need(buf, "rec_enforce").unpack_from(buf, HEADER_SIZE)
    name = CHECK_NAMES.get(check, f"check{check}")
    return RawEnforce(h, name, mode != ENFORCE_KILL, signal, result)


_DECODERS: Final[dict[int, Callable[[Header, bytes], RawRecord]]] = {
    KIND_EXEC: _exec,
    KIND_FORK: _fork,
    KIND_EXIT: _exit,
    KIND_OPEN: _path,
    KIND_CHMOD: _path,
    KIND_CHOWN: _path,
    KIND_UNLINK: _path,
    KIND_MEMFD: _path,
    KIND_RENAME: _rename,
    KIND_PTRACE: _ptrace,
    KIND_CONNECT: _sock,
    KIND_ACCEPT: _sock,
    KIND_MODULE: _module,
    KIND_BPF: _bpf,
    KIND_SETID: _setid,
    KIND_MEMPROT: _memprot,
    KIND_SOCKET: _socket,
    KIND_LINK: _link,
    KIND_TCP_CLOSE: _tcp_close,
    KIND_VM_WRITE: _vm_write,
    KIND_XATTR: _xattr,
    KIND_NAMESPACE: _namespace,
    KIND_UTIMES: _utimes,
    KIND_ENFORCE: _enforce,
    KIND_OPEN_RESOLVED: _resolved,
    KIND_DUP: _dup,
}


def decode_record(buf: bytes) -> RawRecord:
    """Decode one ring-buffer record. Raises DecodeError on a short or unknown record."""
    h = decode_header(buf)
    decoder = _DECODERS.get(h.kind)
    if decoder is None:
        raise DecodeError(f"unknown record kind {h.kind}")
    return decoder(h, buf)
