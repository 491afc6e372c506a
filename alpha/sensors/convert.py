"""Sensor observations -> `qsc.common.v1.Event` candidates for the rules engine.

Each observation kind the sensor produces becomes the typed detail the rule fields
(alpha/rules/fields/) read: exec (with the stdio descriptors the reverse-shell rule needs), exit,
ptrace, privilege change, memfd_create, file access, permission and ownership change, delete,
rename, link, network connection, socket creation, module load and BPF program load. Forks carry
no detail kind of their own (the child's exec does), and W+X mmap/mprotect reach the rules as
`memory_threat` events of the memory scanner, which the pipeline triggers from the same batch;
both convert to None.

Pure: facts the observation lacks (the ptrace target, a connect's transport) come from the
`Lookups` the caller passes. `id`, `guardian` and `observed_time` are left to `Guardian.emit`,
`rule`, `severity` and `category` to the pipeline.
"""

from __future__ import annotations

import os.path
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from alpha.sensors.model import (
    BpfDetail,
    ChmodDetail,
    ChownDetail,
    DupDetail,
    EnforceDetail,
    ExecDetail,
    ExitDetail,
    ForkDetail,
    Kind,
    LinkDetail,
    MemfdDetail,
    ModuleDetail,
    NamespaceDetail,
    NetDetail,
    Observation,
    OpenDetail,
    ProcessInfo,
    PtraceDetail,
    RenameDetail,
    SetIdDetail,
    SocketDetail,
    Stdio,
    TcpCloseDetail,
    UnlinkDetail,
    UtimesDetail,
    VmWriteDetail,
    XattrDetail,
)
from qsc.common.v1 import (
    event_pb2,
    file_details_pb2,
    kernel_details_pb2,
    network_details_pb2,
    process_details_pb2,
    process_pb2,
)

Event = event_pb2.Event
ProcessLookup = Callable[[int], ProcessInfo | None]
# (pid, fd) -> "tcp", "udp" or "" (not known): the transport of a connecting socket.
ProtocolLookup = Callable[[int, int], str]

UNSET_AUID: Final = 4294967295
AT_REMOVEDIR: Final = 0x200
BPF_PROG_LOAD: Final = 5
_O_ACCMODE: Final = 0o3
_O_CREAT: Final = 0o100
_O_EXCL: Final = 0o200
_O_TRUNC: Final = 0o1000


@dataclass(frozen=True)
class Lookups:
    """What conversion may ask the host: processes by pid (the sensor's process table) and the
    transport of a socket. The defaults know nothing, for pure use (tests, replays)."""

    process: ProcessLookup = lambda _pid: None
    protocol: ProtocolLookup = lambda _pid, _fd: ""


NO_LOOKUPS: Final = Lookups()

# --- enums -----------------------------------------------------------------------------------

_P = process_details_pb2
_DESCRIPTOR: Final[Mapping[str, _P.DescriptorKind.ValueType]] = {
    "closed": _P.DESCRIPTOR_KIND_CLOSED,
    "file": _P.DESCRIPTOR_KIND_FILE,
    "tty": _P.DESCRIPTOR_KIND_TTY,
    "pipe": _P.DESCRIPTOR_KIND_PIPE,
    "inet_socket": _P.DESCRIPTOR_KIND_INET_SOCKET,
    "unix_socket": _P.DESCRIPTOR_KIND_UNIX_SOCKET,
    "other": _P.DESCRIPTOR_KIND_OTHER,
}
_PTRACE: Final[Mapping[int, _P.PtraceRequest.ValueType]] = {
    16: _P.PTRACE_REQUEST_ATTACH,
    0x4206: _P.PTRACE_REQUEST_SEIZE,
    0: _P.PTRACE_REQUEST_TRACEME,
    4: _P.PTRACE_REQUEST_POKE_MEMORY,  # POKETEXT
    5: _P.PTRACE_REQUEST_POKE_MEMORY,  # POKEDATA
    6: _P.PTRACE_REQUEST_SET_REGISTERS,  # POKEUSER
    13: _P.PTRACE_REQUEST_SET_REGISTERS,  # SETREGS
    15: _P.PTRACE_REQUEST_SET_REGISTERS,  # SETFPREGS
    0x4205: _P.PTRACE_REQUEST_SET_REGISTERS,  # SETREGSET
}
_PRIV_CALL: Final[Mapping[str, _P.PrivilegeCall.ValueType]] = {
    "setuid": _P.PRIVILEGE_CALL_SETUID,
    "setreuid": _P.PRIVILEGE_CALL_SETREUID,
    "setresuid": _P.PRIVILEGE_CALL_SETRESUID,
    "setfsuid": _P.PRIVILEGE_CALL_SETFSUID,
    "setgid": _P.PRIVILEGE_CALL_SETGID,
    "setregid": _P.PRIVILEGE_CALL_SETREGID,
    "setresgid": _P.PRIVILEGE_CALL_SETRESGID,
    "setfsgid": _P.PRIVILEGE_CALL_SETFSGID,
}
_N = network_details_pb2
_FAMILY: Final[Mapping[str, _N.AddressFamily.ValueType]] = {
    "inet": _N.ADDRESS_FAMILY_INET,
    "inet6": _N.ADDRESS_FAMILY_INET6,
    "unix": _N.ADDRESS_FAMILY_UNIX,
    "af17": _N.ADDRESS_FAMILY_PACKET,
    "af16": _N.ADDRESS_FAMILY_NETLINK,
}
# socket(2) families by AF_* number (socket_create reports the number, not a sockaddr).
_AF_NUMBER: Final[Mapping[int, _N.AddressFamily.ValueType]] = {
    1: _N.ADDRESS_FAMILY_UNIX,
    2: _N.ADDRESS_FAMILY_INET,
    10: _N.ADDRESS_FAMILY_INET6,
    16: _N.ADDRESS_FAMILY_NETLINK,
    17: _N.ADDRESS_FAMILY_PACKET,
}
_AF_PACKET: Final = 17
SOCK_TYPE_MASK: Final = 0xF  # the rest of socket(2)'s type are SOCK_NONBLOCK/SOCK_CLOEXEC
_SOCK_TYPES: Final[Mapping[int, str]] = {
    1: "stream",
    2: "dgram",
    3: "raw",
    4: "rdm",
    5: "seqpacket",
    6: "dccp",
    10: "packet",
}
_PROTOCOL: Final[Mapping[str, _N.TransportProtocol.ValueType]] = {
    "tcp": _N.TRANSPORT_PROTOCOL_TCP,
    "udp": _N.TRANSPORT_PROTOCOL_UDP,
}
_K = kernel_details_pb2
_MODULE_CALL: Final[Mapping[str, _K.ModuleLoadCall.ValueType]] = {
    "init_module": _K.MODULE_LOAD_CALL_INIT_MODULE,
    "finit_module": _K.MODULE_LOAD_CALL_FINIT_MODULE,
}
# enum bpf_prog_type (include/uapi/linux/bpf.h), as `bpf.prog_type` names them.
BPF_PROG_TYPES: Final[tuple[str, ...]] = (
    "unspec",
    "socket_filter",
    "kprobe",
    "sched_cls",
    "sched_act",
    "tracepoint",
    "xdp",
    "perf_event",
    "cgroup_skb",
    "cgroup_sock",
    "lwt_in",
    "lwt_out",
    "lwt_xmit",
    "sock_ops",
    "sk_skb",
    "cgroup_device",
    "sk_msg",
    "raw_tracepoint",
    "cgroup_sock_addr",
    "lwt_seg6local",
    "lirc_mode2",
    "sk_reuseport",
    "flow_dissector",
    "cgroup_sysctl",
    "raw_tracepoint_writable",
    "cgroup_sockopt",
    "tracing",
    "struct_ops",
    "ext",
    "lsm",
    "sk_lookup",
    "syscall",
    "netfilter",
)
_MODULE_SUFFIXES: Final = (".ko.xz", ".ko.zst", ".ko.gz", ".ko")

# --- the process ------------------------------------------------------------------------------


def _u32(value: int | None, default: int = 0) -> int:
    """A uid/gid for a uint32 field: unknown (None, -1) becomes `default`."""
    return default if value is None or value < 0 else value & 0xFFFFFFFF


def process_to_proto(obs: Observation, boot_epoch_ns: int) -> process_pb2.Process:
    """The acting process: the table's view when it had one, else the observation's facts."""
    info = obs.process
    if info is None:
        return process_pb2.Process(
            pid=obs.pid,
            ppid=max(obs.ppid, 0),
            uid=_u32(obs.uid),
            gid=_u32(obs.gid),
            euid=_u32(obs.euid, _u32(obs.uid)),
            egid=_u32(obs.gid),
            auid=UNSET_AUID,
            comm=obs.comm,
        )
    proc = process_pb2.Process(
        pid=info.pid,
        ppid=max(info.ppid, 0),
        # The caller's real ids at the event (the kernel's), which setuid calls change.
        uid=_u32(obs.uid, _u32(info.uid)),
        gid=_u32(obs.gid, _u32(info.gid)),
        euid=_u32(info.euid if info.euid is not None else obs.euid, _u32(obs.uid)),
        egid=_u32(info.egid, _u32(obs.gid, _u32(info.gid))),
        auid=_u32(info.auid, UNSET_AUID),
        tty=info.tty,
        comm=info.comm or obs.comm,
        exe=info.exe,
        args=info.args,
        cwd=info.cwd,
        exec_id=info.exec_id,
        parent_exec_id=info.parent_exec_id,
        cgroup=info.cgroup,
        container_id=info.container_id,
    )
    if info.start_boot_ns:
        proc.start_time.FromNanoseconds(boot_epoch_ns + info.start_boot_ns)
    for i, anc in enumerate(info.ancestry):
        ref = proc.ancestry.add(pid=anc.pid, exec_id=anc.exec_id, comm=anc.comm, exe=anc.exe)
        if i == 0:  # the parent's command line only: enough for proc.pcmdline, events stay small
            ref.args.extend(anc.args)
    return proc


def process_ref(pid: int, info: ProcessInfo | None, boot_epoch_ns: int) -> process_pb2.ProcessRef:
    ref = process_pb2.ProcessRef(pid=max(pid, 0))
    if info is not None:
        ref.exec_id, ref.comm, ref.exe, ref.uid = info.exec_id, info.comm, info.exe, _u32(info.uid)
        if info.start_boot_ns:
            ref.start_time.FromNanoseconds(boot_epoch_ns + info.start_boot_ns)
    return ref


# --- details ------------------------------------------------------------------------------------


def _stdio(target: process_details_pb2.StdioDescriptor, stdio: Stdio) -> None:
    target.kind = _DESCRIPTOR.get(stdio.kind, _P.DESCRIPTOR_KIND_UNSPECIFIED)
    target.path = stdio.path
    if stdio.peer_address:
        target.peer.address = stdio.peer_address
        target.peer.port = stdio.peer_port


def _exec(event: Event, obs: Observation, d: ExecDetail) -> str:
    msg = event.process_exec
    msg.filename = d.filename
    msg.exe_deleted = d.exe_deleted
    msg.exe_memfd = d.from_memfd
    msg.setuid_exec = d.setuid_exec
    _stdio(msg.stdin, d.stdio[0])
    _stdio(msg.stdout, d.stdio[1])
    _stdio(msg.stderr, d.stdio[2])
    if d.cap_effective is not None:
        msg.effective_capabilities.extend(capability_names(d.cap_effective))
        msg.all_capabilities = d.cap_effective & ALL_CAPS == ALL_CAPS
    if d.cap_permitted is not None:
        msg.permitted_capabilities.extend(capability_names(d.cap_permitted))
    msg.environment.extend(d.environment)
    msg.environment_complete = d.environment_complete
    # The exec's own view of the new image wins over a table entry read a moment later.
    proc = event.process
    if d.exe:
        proc.exe = d.exe
    if d.args:
        del proc.args[:]
        proc.args.extend(d.args)
    proc.args_truncated = d.args_truncated
    if d.cwd:
        proc.cwd = d.cwd
    return f"{proc.comm or '?'} executed {proc.exe or d.filename}"


def _exit(event: Event, obs: Observation, d: ExitDetail) -> str:
    msg = event.process_exit
    if d.exit_code is not None:
        msg.exit_code = max(-(2**31), min(d.exit_code, 2**31 - 1))
    if d.signal is not None:
        msg.signal = d.signal
    info = obs.process
    if info is not None and info.start_boot_ns and obs.boot_ns >= info.start_boot_ns:
        msg.duration.FromNanoseconds(obs.boot_ns - info.start_boot_ns)
    return f"{event.process.comm or '?'} exited ({d.exit_code if d.exit_code is not None else '?'})"


def _ptrace(event: Event, obs: Observation, d: PtraceDetail, lookups: Lookups, epoch: int) -> str:
    msg = event.ptrace
    msg.request = _PTRACE.get(d.request, _P.PTRACE_REQUEST_OTHER)
    msg.raw_request = d.request & 0xFFFFFFFF
    # TRACEME names no target: the parent becomes the tracer.
    target = obs.ppid if d.request == 0 else d.target_pid
    msg.target.CopyFrom(process_ref(target, lookups.process(target), epoch))
    msg.result = obs.ret if obs.ret is not None else 0
    return f"{event.process.comm or '?'} {d.request_name} pid {target}"


_UID_NAMES: Final = ("uid", "euid", "suid", "fsuid")


def _credentials(
    syscall: str, ids: tuple[int | None, ...], uid: int, euid: int, gid: int
) -> tuple[process_details_pb2.Credentials, process_details_pb2.Credentials]:
    """(before, requested) credentials. The saved and filesystem ids are not observed: they are
    taken to equal the effective ones before the call, as they do outside set*id programs."""
    old = process_details_pb2.Credentials(
        uid=uid, euid=euid, suid=euid, fsuid=euid, gid=gid, egid=gid, sgid=gid, fsgid=gid
    )
    new = process_details_pb2.Credentials()
    new.CopyFrom(old)
    names = ("gid", "egid", "sgid", "fsgid") if syscall.endswith("gid") else _UID_NAMES
    real, eff, saved, fs = names
    before_real = getattr(old, real)

    def put(name: str, value: int | None) -> None:
        if value is not None:
            setattr(new, name, value & 0xFFFFFFFF)

    args = (*ids, None, None, None)
    base = syscall.removesuffix("gid").removesuffix("uid")
    if base == "set":  # setuid: a privileged caller sets all three, others only the effective
        if euid == 0:
            put(real, args[0])
            put(saved, args[0])
        put(eff, args[0])
        put(fs, args[0])
    elif base == "setre":
        put(real, args[0])
        put(eff, args[1])
        put(fs, args[1])
        if args[0] is not None or (args[1] is not None and args[1] != before_real):
            put(saved, getattr(new, eff))
    elif base == "setres":
        put(real, args[0])
        put(eff, args[1])
        put(saved, args[2])
        put(fs, args[1])
    elif base == "setfs":
        put(fs, args[0])
    return old, new


def _setid(event: Event, obs: Observation, d: SetIdDetail) -> str | None:
    call = _PRIV_CALL.get(obs.syscall)
    if call is None:
        return None
    msg = event.privilege_change
    msg.call = call
    proc = event.process
    old, new = _credentials(obs.syscall, d.ids, proc.uid, proc.euid, proc.gid)
    msg.old_credentials.CopyFrom(old)
    msg.new_credentials.CopyFrom(new)
    msg.result = obs.ret if obs.ret is not None else 0
    shown = ", ".join("-1" if i is None else str(i) for i in d.ids)
    return f"{proc.comm or '?'} {obs.syscall}({shown})"


def _open(event: Event, obs: Observation, d: OpenDetail) -> str:
    msg = event.file_access
    msg.path = d.abs_path or d.path
    mode = d.flags & _O_ACCMODE
    msg.access = (
        file_details_pb2.ACCESS_MODE_READ
        if mode == 0
        else file_details_pb2.ACCESS_MODE_WRITE
        if mode == 1
        else file_details_pb2.ACCESS_MODE_READ_WRITE
    )
    msg.flags = d.flags & 0xFFFFFFFF
    ok = obs.ret is not None and obs.ret >= 0
    # Whether O_CREAT created the file is not observed; O_CREAT|O_EXCL succeeding proves it.
    msg.created = ok and d.flags & (_O_CREAT | _O_EXCL) == _O_CREAT | _O_EXCL
    msg.truncated = ok and mode != 0 and bool(d.flags & _O_TRUNC)
    msg.result = obs.ret if obs.ret is not None else 0
    if d.kernel_path and d.path != msg.path:
        msg.requested_path = d.path
    verb = "read" if mode == 0 else "wrote"
    return f"{event.process.comm or '?'} opened {msg.path} ({verb})"


def _chmod(event: Event, obs: Observation, d: ChmodDetail) -> str:
    msg = event.permission_change
    msg.path = d.abs_path or d.path
    msg.new_mode = d.mode & 0o7777
    # The old mode is not observed: a special bit in the new mode counts as added.
    msg.setuid_added = d.setuid
    msg.setgid_added = d.setgid
    msg.world_writable = d.world_writable
    msg.result = obs.ret if obs.ret is not None else 0
    return f"{event.process.comm or '?'} chmod {msg.new_mode:o} {msg.path}"


def _chown(event: Event, obs: Observation, d: ChownDetail) -> str:
    msg = event.ownership_change
    msg.path = d.abs_path or d.path
    if d.uid is not None:
        msg.new_uid = d.uid
    if d.gid is not None:
        msg.new_gid = d.gid
    msg.result = obs.ret if obs.ret is not None else 0
    return f"{event.process.comm or '?'} chown {d.uid}:{d.gid} {msg.path}"


def _unlink(event: Event, obs: Observation, d: UnlinkDetail) -> str:
    msg = event.file_delete
    msg.path = d.abs_path or d.path
    msg.directory = bool(d.flags & AT_REMOVEDIR)
    msg.result = obs.ret if obs.ret is not None else 0
    return f"{event.process.comm or '?'} removed {msg.path}"


def _rename(event: Event, obs: Observation, d: RenameDetail) -> str:
    msg = event.file_rename
    msg.old_path = d.old_abs_path or d.old_path
    msg.new_path = d.new_abs_path or d.new_path
    msg.flags = d.flags & 0xFFFFFFFF
    msg.result = obs.ret if obs.ret is not None else 0
    return f"{event.process.comm or '?'} renamed {msg.old_path} to {msg.new_path}"


def _link(event: Event, obs: Observation, d: LinkDetail) -> str:
    msg = event.file_link
    msg.target = d.target_abs_path or d.target
    msg.link_path = d.link_abs_path or d.link_path
    msg.symbolic = d.symbolic
    msg.result = obs.ret if obs.ret is not None else 0
    verb = "symlinked" if d.symbolic else "hard-linked"
    return f"{event.process.comm or '?'} {verb} {msg.link_path} -> {msg.target}"


def _socket(event: Event, obs: Observation, d: SocketDetail) -> str:
    msg = event.socket_create
    msg.family = _AF_NUMBER.get(d.family, _N.ADDRESS_FAMILY_OTHER)
    msg.raw_family = d.family & 0xFFFFFFFF
    msg.socket_type = d.type & SOCK_TYPE_MASK
    msg.raw_protocol = d.protocol & 0xFFFFFFFF
    msg.result = obs.ret if obs.ret is not None else 0
    who = event.process.comm or "?"
    kind = _SOCK_TYPES.get(msg.socket_type, f"type {msg.socket_type}")
    if d.family == _AF_PACKET:
        # The protocol is an ethertype in network byte order: htons(ETH_P_ALL) shows as 0x0003.
        ethertype = int.from_bytes((d.protocol & 0xFFFF).to_bytes(2, "little"), "big")
        return f"{who} opened a {kind} packet socket (ethertype {ethertype:#06x})"
    return f"{who} opened a {kind} socket of family {d.family}"


def _net(event: Event, obs: Observation, d: NetDetail, lookups: Lookups) -> str:
    msg = event.network_connection
    connect = obs.kind is Kind.CONNECT
    msg.operation = (
        network_details_pb2.CONNECTION_OPERATION_CONNECT
        if connect
        else network_details_pb2.CONNECTION_OPERATION_ACCEPT
    )
    msg.family = _FAMILY.get(d.family, network_details_pb2.ADDRESS_FAMILY_OTHER)
    inet = d.family in ("inet", "inet6")
    if inet:
        # accept(2) only works on stream sockets: TCP. A connect may be UDP: the kernel said
        # which at the call; /proc (asked only without it) is too late for a closed socket.
        proto = "tcp" if not connect else d.protocol or lookups.protocol(obs.pid, d.fd)
        msg.protocol = _PROTOCOL.get(proto, network_details_pb2.TRANSPORT_PROTOCOL_UNSPECIFIED)
    msg.remote.address = d.address
    msg.remote.port = d.port
    msg.result = obs.ret if obs.ret is not None else 0
    peer = f"[{d.address}]:{d.port}" if d.family == "inet6" else f"{d.address}:{d.port}"
    if not inet:
        peer = d.address or d.family
    verb = "connect to" if connect else "accepted from"
    return f"{event.process.comm or '?'} {verb} {peer}"


def module_name(path: str) -> str:
    """`/tmp/x/rootkit.ko.xz` -> `rootkit` (the kernel's own name is inside the image)."""
    name = os.path.basename(path)
    for suffix in _MODULE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _module(event: Event, obs: Observation, d: ModuleDetail) -> str:
    msg = event.module_load
    msg.call = _MODULE_CALL.get(obs.syscall, _K.MODULE_LOAD_CALL_UNSPECIFIED)
    if d.file:
        msg.path = d.file
        msg.name = module_name(d.file)
    msg.params = d.params
    msg.result = obs.ret if obs.ret is not None else 0
    what = d.file or f"an image of {d.image_len} bytes"
    return f"{event.process.comm or '?'} {obs.syscall or 'module load'} {what}"


def _bpf(event: Event, obs: Observation, d: BpfDetail) -> str | None:
    if d.cmd != BPF_PROG_LOAD:
        return None  # attach and link commands have no detail kind of their own
    msg = event.bpf_program_load
    prog_type = d.prog_type
    msg.program_type = (
        BPF_PROG_TYPES[prog_type] if 0 <= prog_type < len(BPF_PROG_TYPES) else f"type_{prog_type}"
    )
    msg.raw_program_type = prog_type & 0xFFFFFFFF
    msg.program_name = d.prog_name
    msg.instruction_count = d.insn_cnt & 0xFFFFFFFF
    msg.result = obs.ret if obs.ret is not None else 0
    return f"{event.process.comm or '?'} loaded a {msg.program_type} BPF program"


def _memfd(event: Event, obs: Observation, d: MemfdDetail) -> str:
    msg = event.memfd_create
    msg.name = d.name
    msg.flags = d.flags & 0xFFFFFFFF
    msg.result = obs.ret if obs.ret is not None else 0
    return f"{event.process.comm or '?'} memfd_create({d.name!r})"


# --- the converter -------------------------------------------------------------------------------


# Capabilities by number (include/uapi/linux/capability.h), through CAP_CHECKPOINT_RESTORE.
CAPABILITIES: Final = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip
ALL_CAPS: Final = (1 << len(CAPABILITIES)) - 1


def capability_names(mask: int) -> list[str]:
    return [
        CAPABILITIES[i] if i < len(CAPABILITIES) else f"CAP_{i}" for i in range(64) if mask >> i & 1
    ]


# CLONE_NEW* flags, by the names /proc/PID/ns uses.
NAMESPACE_FLAGS: Final = (
    (0x10000000, "user"),
    (0x00020000, "mnt"),
    (0x20000000, "pid"),
    (0x40000000, "net"),
    (0x04000000, "uts"),
    (0x08000000, "ipc"),
    (0x02000000, "cgroup"),
    (0x00000080, "time"),
)
CLONE_NEW_MASK: Final = sum(flag for flag, _ in NAMESPACE_FLAGS)
_NS_CALL: Final = {
    "unshare": _P.NAMESPACE_CALL_UNSHARE,
    "setns": _P.NAMESPACE_CALL_SETNS,
    "clone": _P.NAMESPACE_CALL_CLONE,
}


def namespace_names(flags: int) -> list[str]:
    return [name for flag, name in NAMESPACE_FLAGS if flags & flag]


def _vm_write(
    event: Event, obs: Observation, d: VmWriteDetail, lookups: Lookups, epoch: int
) -> str:
    msg = event.process_memory_write
    msg.target.CopyFrom(process_ref(d.target_pid, lookups.process(d.target_pid), epoch))
    msg.local_iovecs = d.local_iovecs
    msg.remote_iovecs = d.remote_iovecs
    msg.result = obs.ret if obs.ret is not None else 0
    return f"{event.process.comm or '?'} wrote the memory of pid {d.target_pid}"


def _xattr(event: Event, obs: Observation, d: XattrDetail) -> str:
    msg = event.file_attribute_change
    msg.path = d.resolved or d.path
    msg.name = d.name
    msg.value_size = d.value_size
    msg.flags = d.flags
    msg.result = obs.ret if obs.ret is not None else 0
    return f"{event.process.comm or '?'} set {d.name} on {msg.path or f'fd {d.dfd}'}"


_STREAMS: Final = ("stdin", "stdout", "stderr")


def _dup(event: Event, obs: Observation, d: DupDetail) -> str:
    msg = event.descriptor_redirect
    msg.old_fd = d.oldfd
    msg.new_fd = d.newfd
    msg.call = obs.syscall
    _stdio(msg.target, d.target)
    stream = _STREAMS[d.newfd] if 0 <= d.newfd < 3 else f"fd {d.newfd}"
    peer = f"{d.target.peer_address}:{d.target.peer_port}"
    return f"{event.process.comm or '?'} pointed its {stream} at a socket to {peer}"


def _namespace(event: Event, obs: Observation, d: NamespaceDetail) -> str:
    msg = event.namespace_change
    msg.call = _NS_CALL[d.call]
    msg.flags = d.flags
    msg.namespaces.extend(namespace_names(d.flags))
    msg.fd = d.fd
    msg.child_pid = d.child_pid
    if d.call == "clone":
        msg.result = d.child_pid
    else:
        msg.result = obs.ret if obs.ret is not None else 0
    names = ",".join(msg.namespaces) or "any"
    return f"{event.process.comm or '?'} {d.call} namespaces {names}"


def _utimes(event: Event, obs: Observation, d: UtimesDetail) -> str:
    msg = event.file_timestamp_change
    msg.path = d.resolved or d.path
    if d.atime_ns is not None:
        msg.access_time.FromNanoseconds(d.atime_ns)
    if d.mtime_ns is not None:
        msg.modification_time.FromNanoseconds(d.mtime_ns)
        msg.backdated_seconds = (obs.time_ns - d.mtime_ns) // 1_000_000_000
    msg.result = obs.ret if obs.ret is not None else 0
    return f"{event.process.comm or '?'} set the times of {msg.path}"


def enforcement_event(obs: Observation, boot_epoch_ns: int, rule_ids: Sequence[str]) -> Event:
    """The event of a kernel enforcement: always emitted, whatever the rules say."""
    d = obs.detail
    assert isinstance(d, EnforceDetail)
    event = Event()
    event.time.FromNanoseconds(obs.time_ns)
    event.process.CopyFrom(process_to_proto(obs, boot_epoch_ns))
    msg = event.enforcement
    msg.action = _P.ENFORCEMENT_ACTION_KILL
    msg.check = d.check
    msg.dry_run = d.dry_run
    msg.rule_ids.extend(rule_ids)
    msg.signal = d.signal
    msg.result = d.result
    verb = "would have killed" if d.dry_run else "killed"
    event.summary = f"{verb} {event.process.comm or '?'} (pid {obs.pid}): {d.check}"
    return event


def observation_to_event(
    obs: Observation, boot_epoch_ns: int, lookups: Lookups = NO_LOOKUPS
) -> Event | None:
    """The candidate event for one observation, or None for kinds without a detail of their
    own (fork; memprot, which the memory scanner reports). `boot_epoch_ns` is the wall clock of
    the boot (process start times count from it)."""
    d = obs.detail
    if isinstance(d, TcpCloseDetail | EnforceDetail):  # not candidates: see enforcement_event
        return None
    event = Event()
    event.time.FromNanoseconds(obs.time_ns)
    event.process.CopyFrom(process_to_proto(obs, boot_epoch_ns))
    summary: str | None
    if isinstance(d, ExecDetail):
        summary = _exec(event, obs, d)
    elif isinstance(d, ExitDetail):
        summary = _exit(event, obs, d)
    elif isinstance(d, PtraceDetail):
        summary = _ptrace(event, obs, d, lookups, boot_epoch_ns)
    elif isinstance(d, SetIdDetail):
        summary = _setid(event, obs, d)
    elif isinstance(d, MemfdDetail):
        summary = _memfd(event, obs, d)
    elif isinstance(d, OpenDetail):
        summary = _open(event, obs, d)
    elif isinstance(d, ChmodDetail):
        summary = _chmod(event, obs, d)
    elif isinstance(d, ChownDetail):
        summary = _chown(event, obs, d)
    elif isinstance(d, UnlinkDetail):
        summary = _unlink(event, obs, d)
    elif isinstance(d, RenameDetail):
        summary = _rename(event, obs, d)
    elif isinstance(d, LinkDetail):
        summary = _link(event, obs, d)
    elif isinstance(d, NetDetail):
        summary = _net(event, obs, d, lookups)
    elif isinstance(d, SocketDetail):
        summary = _socket(event, obs, d)
    elif isinstance(d, ModuleDetail):
        summary = _module(event, obs, d)
    elif isinstance(d, BpfDetail):
        summary = _bpf(event, obs, d)
    elif isinstance(d, VmWriteDetail):
        summary = _vm_write(event, obs, d, lookups, boot_epoch_ns)
    elif isinstance(d, XattrDetail):
        summary = _xattr(event, obs, d)
    elif isinstance(d, NamespaceDetail):
        summary = _namespace(event, obs, d)
    elif isinstance(d, DupDetail):
        summary = _dup(event, obs, d)
    elif isinstance(d, UtimesDetail):
        summary = _utimes(event, obs, d)
    elif isinstance(d, ForkDetail) and d.clone_flags & CLONE_NEW_MASK:
        summary = _namespace(event, obs, NamespaceDetail("clone", d.clone_flags, -1, d.child_pid))
    else:  # ForkDetail, MemProtDetail
        summary = None
    if summary is None:
        return None
    event.summary = summary
    return event
