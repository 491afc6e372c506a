"""What Alpha's sensors produce: plain observations, sensor status and configuration.

No protobuf here: the rules engine consumes these, and a converter turns them into
`qsc.common.v1.Event`s.

Observations and their details are shared between consumers: treat them as immutable. They are
not `frozen` only because a frozen dataclass costs about 1 us more per construction (each field
goes through object.__setattr__), a third of the per-event budget at 200,000 events/s;
`ProcessInfo`, shared by many observations and built once per exec, is frozen.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from mesh.errors import ConfigError

# --- observations -----------------------------------------------------------------------------


class Kind(enum.StrEnum):
    EXEC = "exec"
    FORK = "fork"
    EXIT = "exit"
    OPEN = "open"
    CHMOD = "chmod"
    CHOWN = "chown"
    UNLINK = "unlink"
    RENAME = "rename"
    PTRACE = "ptrace"
    CONNECT = "connect"
    ACCEPT = "accept"
    MEMFD_CREATE = "memfd_create"
    MODULE_LOAD = "module_load"
    BPF = "bpf"
    SETID = "setid"
    MEMPROT = "memprot"
    SOCKET = "socket"
    LINK = "link"
    TCP_CLOSE = "tcp_close"
    VM_WRITE = "vm_write"
    XATTR = "xattr"
    NAMESPACE = "namespace"
    UTIMES = "utimes"
    ENFORCE = "enforce"
    DUP = "dup"


@dataclass(frozen=True, slots=True)
class Ancestor:
    exec_id: str
    pid: int
    comm: str
    exe: str
    args: tuple[str, ...] = ()  # argv at its exec


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A process as the process table knows it when the observation is made.

    `exec_id` is globally unique (boot id + pid + start time, hashed); it changes at every exec
    and is new for a forked child. `ancestry` lists the nearest ancestors first, bounded.
    """

    pid: int
    ppid: int
    exec_id: str
    parent_exec_id: str
    comm: str
    exe: str
    args: tuple[str, ...]
    cwd: str
    uid: int
    gid: int
    euid: int | None
    start_boot_ns: int
    cgroup: str
    container_id: str
    container_runtime: str
    ancestry: tuple[Ancestor, ...] = ()
    egid: int | None = None
    auid: int | None = None  # login uid; None when unset or unknown
    tty: str = ""  # controlling terminal, e.g. "pts/0"
    identity: str = "proc"  # where exe and ids came from: "kernel" (at exec) or "proc" (after)


@dataclass(frozen=True, slots=True)
class Stdio:
    """What one of fds 0, 1, 2 referred to at exec (as qsc.common.v1.StdioDescriptor)."""

    kind: str  # closed, file, tty, pipe, inet_socket, unix_socket, other, unknown
    path: str = ""  # files, terminals, named pipes
    peer_address: str = ""  # inet sockets: the remote end
    peer_port: int = 0


UNKNOWN_STDIO: Final = (Stdio("unknown"), Stdio("unknown"), Stdio("unknown"))


@dataclass(slots=True)
class ExecDetail:
    filename: str  # as exec'd (bprm filename): /dev/fd/3 for an fexecve
    exe: str  # the kernel's exe_file at exec (else /proc/PID/exe), e.g. "/memfd:x (deleted)"
    args: tuple[str, ...]
    args_truncated: bool
    cwd: str
    dirfd: int  # execveat only
    at_flags: int  # execveat only (AT_EMPTY_PATH = 0x1000)
    from_memfd: bool
    exe_deleted: bool
    setuid_exec: bool  # the new image runs with euid != uid (a setuid binary), from /proc
    stdio: tuple[Stdio, Stdio, Stdio]  # the kernel's fd table at exec (paths from /proc)
    old_pid: int  # the tid that called exec (a non-leader thread's id)
    cap_effective: int | None = None  # the new image's capability sets (kernel-side identity)
    cap_permitted: int | None = None
    # The watched environment entries ("NAME=value", `exec_env`), read by the kernel at exec;
    # complete: the whole environment was scanned (False without kernel-side identity).
    environment: tuple[str, ...] = ()
    environment_complete: bool = False


@dataclass(slots=True)
class ForkDetail:
    child_pid: int
    clone_flags: int
    child_exec_id: str


@dataclass(slots=True)
class ExitDetail:
    exit_code: int | None  # the exit status when known (eBPF: the exit_group() argument)
    signal: int | None = None  # the killing signal, when known (netlink)


@dataclass(slots=True)
class OpenDetail:
    path: str  # as passed
    abs_path: str  # resolved against cwd / dirfd when possible, else the path as passed
    flags: int
    mode: int
    dirfd: int
    write: bool  # O_WRONLY, O_RDWR, O_CREAT, O_TRUNC or O_APPEND
    kernel_path: bool = False  # abs_path is the kernel's name of the file opened, from its fd


@dataclass(slots=True)
class ChmodDetail:
    path: str
    abs_path: str
    mode: int
    dirfd: int  # the fd itself for fchmod
    setuid: bool
    setgid: bool
    world_writable: bool


@dataclass(slots=True)
class ChownDetail:
    path: str
    abs_path: str
    uid: int | None  # None: unchanged (-1)
    gid: int | None
    dirfd: int  # the fd itself for fchown
    flags: int


@dataclass(slots=True)
class UnlinkDetail:
    path: str
    abs_path: str
    dirfd: int
    flags: int  # AT_REMOVEDIR = 0x200


@dataclass(slots=True)
class RenameDetail:
    old_path: str
    new_path: str
    old_abs_path: str
    new_abs_path: str
    flags: int


@dataclass(slots=True)
class LinkDetail:
    target: str  # symlink: the text stored, as passed; hard link: the existing path as passed
    link_path: str  # as passed
    target_abs_path: str  # hard link: resolved against its dirfd; symlink: the target as passed
    link_abs_path: str
    symbolic: bool
    flags: int  # linkat AT_* flags


@dataclass(slots=True)
class PtraceDetail:
    request: int
    request_name: str
    target_pid: int
    addr: int
    data: int


@dataclass(slots=True)
class NetDetail:
    fd: int
    family: str  # inet, inet6, unix, or af<N>
    address: str  # IP text, or a unix path ("@name" for abstract)
    port: int  # 0 for unix
    protocol: str = ""  # tcp, udp, or "" when the kernel did not say (ask /proc)


@dataclass(slots=True)
class SocketDetail:
    family: int  # AF_*
    type: int  # SOCK_* with the SOCK_NONBLOCK/SOCK_CLOEXEC bits as passed
    protocol: int  # as passed (AF_PACKET: an ethertype in network byte order)


@dataclass(slots=True)
class MemfdDetail:
    name: str
    flags: int


@dataclass(slots=True)
class ModuleDetail:
    fd: int  # finit_module
    file: str  # what the fd pointed at, when still readable from /proc
    params: str
    image_len: int  # init_module
    flags: int


@dataclass(slots=True)
class BpfDetail:
    cmd: int
    cmd_name: str
    prog_type: int  # BPF_PROG_LOAD only
    insn_cnt: int
    prog_name: str


@dataclass(slots=True)
class SetIdDetail:
    ids: tuple[int | None, ...]  # the arguments in order; None for -1 (unchanged)


@dataclass(slots=True)
class MemProtDetail:
    addr: int
    length: int
    prot: int
    flags: int  # mmap flags
    fd: int  # mmap fd (-1 anonymous); pkey for pkey_mprotect


@dataclass(slots=True)
class TcpCloseDetail:
    """A TCP socket's end with the kernel's final counters (eBPF, at its move to CLOSE)."""

    family: str  # inet, inet6
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    old_state: int  # 2 (SYN_SENT): a connect refused or timed out; never established
    bytes_acked: int  # sent
    bytes_received: int
    segs_out: int
    segs_in: int
    cookie: int  # sock_diag's cookie when a poll ever saw the socket, else 0
    owner_known: bool  # pid/uid are the owner's; False: whatever task the close ran under
    open_boot_ns: int  # when the owner was first seen (0: never)


@dataclass(slots=True)
class VmWriteDetail:
    target_pid: int
    local_iovecs: int
    remote_iovecs: int


@dataclass(slots=True)
class XattrDetail:
    path: str  # as passed ("" for fsetxattr)
    resolved: str  # absolute, best effort
    name: str  # e.g. security.capability
    value_size: int
    flags: int
    dfd: int


@dataclass(slots=True)
class NamespaceDetail:
    call: str  # unshare, setns, clone
    flags: int  # CLONE_NEW* flags (unshare, clone) or the nstype (setns)
    fd: int = -1  # setns
    child_pid: int = 0  # clone


@dataclass(slots=True)
class DupDetail:
    """dup2/dup3 that left an inet socket on fd 0, 1 or 2 (judged in the kernel after the call)."""

    oldfd: int
    newfd: int
    target: Stdio  # what newfd now is: the socket and its peer
    flags: int = 0  # dup3 flags


@dataclass(slots=True)
class UtimesDetail:
    path: str  # as passed ("" for futimens)
    resolved: str  # absolute: named in the kernel at the call when it was relative
    atime_ns: int | None  # wall-clock ns set; None: unchanged or "now"
    mtime_ns: int | None


# The kernel checks a rule with `action: kill` may name (records.h CHECK_*).
ENFORCE_CHECKS: Final = {"memfd_exec": 1, "socket_stdio_exec": 2, "process_memory_write": 4}


@dataclass(slots=True)
class EnforceDetail:
    check: str  # memfd_exec, socket_stdio_exec, process_memory_write
    dry_run: bool  # True: reported, not killed
    signal: int
    result: int  # bpf_send_signal's return: 0 when the signal was sent


Detail = (
    ExecDetail
    | ForkDetail
    | ExitDetail
    | OpenDetail
    | ChmodDetail
    | ChownDetail
    | UnlinkDetail
    | RenameDetail
    | LinkDetail
    | PtraceDetail
    | NetDetail
    | SocketDetail
    | MemfdDetail
    | ModuleDetail
    | BpfDetail
    | SetIdDetail
    | MemProtDetail
    | TcpCloseDetail
    | VmWriteDetail
    | XattrDetail
    | NamespaceDetail
    | UtimesDetail
    | EnforceDetail
    | DupDetail
)


@dataclass(slots=True)
class Observation:
    """One thing a sensor saw. `pid` is the process (thread group) id, `tid` the thread.

    `uid`/`gid` are the real ids of the caller at the time of the event; `euid` comes from
    /proc when it could be read (None otherwise). `syscall` names the syscall ("" for
    sched/task events and the fallback sensors) and `ret` its return value (None when not a
    syscall or not known).
    """

    kind: Kind
    time_ns: int  # wall clock, ns since the epoch
    boot_ns: int  # CLOCK_BOOTTIME ns: orders events exactly within a host
    pid: int
    tid: int
    ppid: int
    uid: int
    gid: int
    euid: int | None
    comm: str
    syscall: str
    ret: int | None
    process: ProcessInfo | None
    detail: Detail
    source: str  # "ebpf", "netlink" or "proc_poll"


class SensorUnavailable(Exception):  # noqa: N818 - reads as a state, raised to fall back
    """This sensor cannot run here; the message says why (it becomes a degraded reason)."""


# --- configuration ----------------------------------------------------------------------------

PROBES: Final = (
    "exec",  # execve/execveat + sched exec/exit + task_newtask: the process table
    "open",  # open/openat/openat2/creat, filtered by path
    "chmod",
    "chown",
    "unlink",
    "rename",
    "link",  # link/linkat/symlink/symlinkat, filtered by the target's and the link's paths
    "ptrace",
    "net",  # connect, accept
    "socket",  # socket(2) of the families in socket_families
    "memfd",
    "module",  # init_module/finit_module
    "bpf",
    "setid",
    "memprot",  # mmap/mprotect with PROT_WRITE|PROT_EXEC
    "tcp",  # every TCP socket's end with its final byte counters (needs the kernel's BTF)
    "vmwrite",  # process_vm_writev: another process's memory written
    "xattr",  # setxattr family, security.* names (file capabilities)
    "namespace",  # unshare with CLONE_NEW*, setns
    "utimes",  # utimensat/utimes/utime with explicit times
    "dup",  # dup2/dup3 leaving an inet socket on fds 0-2 (needs the kernel's BTF)
)

AF_PACKET: Final = 17
_AF_MAX: Final = 64  # AF_MAX is 46 on Linux 6.x: room to grow, still a sanity bound
_MAX_PREFIX: Final = 255
_MAX_PREFIXES: Final = 64


def _check_prefixes(name: str, values: tuple[str, ...]) -> None:
    if len(values) > _MAX_PREFIXES:
        raise ConfigError(name, f"at most {_MAX_PREFIXES} prefixes")
    for value in values:
        if not value.startswith("/") or len(value.encode()) > _MAX_PREFIX:
            raise ConfigError(name, f"{value!r}: an absolute path of at most {_MAX_PREFIX} bytes")


@dataclass(frozen=True)
class SensorConfig:
    """The `[sensor]` section of Alpha's configuration (env: `QSC_ALPHA_SENSOR__<FIELD>`).

    Path filters run in the kernel: an open is reported when its path starts with one of
    `read_prefixes`, or, opened for writing, with one of `write_prefixes`; unlink, rename,
    link, chmod and chown use the write prefixes too (chmod to setuid/setgid/world-writable
    modes and chown to root are reported anywhere; a rename or link when either of its paths
    passes, so a link to /etc/shadow from /tmp is seen). `ignore_prefixes` wins. An open whose
    path is relative or not canonical is judged by the file it opened, named from the new fd at
    the syscall's exit (with the kernel layout); `relative_writes`/`relative_reads` report such
    opens (and relative paths of the other calls) whatever the filters say. `ignore_comms`
    drops the file, network and memory events of processes by exact command name (never exec,
    ptrace, module, bpf or setid events).
    """

    disable_ebpf: bool = False
    fallback: Literal["auto", "netlink", "proc_poll"] = "auto"
    probes: tuple[str, ...] = PROBES
    read_prefixes: tuple[str, ...] = (
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/sudoers",
        "/etc/ssh/",
        "/etc/pam.d/",
        "/etc/pam.conf",
        "/etc/security/",
        "/etc/krb5.keytab",
        "/root/.ssh/",
        "/root/.gnupg/",
        "/var/lib/sss/",
    )
    write_prefixes: tuple[str, ...] = (
        "/etc/",
        "/bin/",
        "/sbin/",
        "/usr/bin/",
        "/usr/sbin/",
        "/usr/local/bin/",
        "/usr/local/sbin/",
        "/usr/lib/",
        "/lib/",
        "/lib64/",
        "/boot/",
        "/root/",
        "/home/",
        "/var/spool/cron/",
        "/var/log/",
        "/dev/",  # files created below /dev (a device node or a hidden file among them)
    )
    # A few paths below /proc and /sys pass all the same (the kernel's special_path_wanted):
    # /proc/PID/mem, uid_map, gid_map and the kernel hooks written, /proc/PID/environ and
    # /home/USER/.ssh/ read, a release_agent written anywhere.
    ignore_prefixes: tuple[str, ...] = (
        "/proc/",
        "/sys/",
        "/dev/null",
        "/dev/pts/",
        "/dev/tty",
        "/dev/console",
    )
    relative_writes: bool = True
    relative_reads: bool = False
    ignore_comms: tuple[str, ...] = ()
    net_unix: bool = False  # unix-socket connects/accepts are many and rarely interesting
    # socket(2) families reported (filtered in the kernel: every connect starts with a socket()).
    # AF_PACKET only by default, the one the rules judge (a sniffer or a raw-frame backdoor).
    socket_families: tuple[int, ...] = (AF_PACKET,)
    # TRACEME, POKETEXT, POKEDATA, POKEUSER, SETREGS, SETFPREGS, ATTACH, SETREGSET, SEIZE.
    ptrace_requests: tuple[int, ...] = (0, 4, 5, 6, 13, 15, 16, 0x4205, 0x4206)
    # PROG_LOAD, PROG_ATTACH, RAW_TRACEPOINT_OPEN, LINK_CREATE: not the map traffic.
    bpf_commands: tuple[int, ...] = (5, 8, 17, 28)
    # 8 MiB with 4 KiB pages (a power of two): about 180 ms of the heaviest burst measured; the
    # kernel maps its pages twice, so it counts 16 MiB in the resident size.
    ring_buffer_pages: int = 2048
    inflight_entries: int = 16384
    queue_max_events: int = 65536
    batch_max: int = 4096
    poll_timeout_ms: int = 100
    # After a batch smaller than batch_max, wait this long before polling again: a trickle of
    # events then costs one wakeup per few ms instead of one per event (latency +coalesce_ms).
    coalesce_ms: int = 5
    ancestry_depth: int = 8
    proc_poll_interval_ms: int = 250
    # Kernel enforcement of rules with `action: kill` (alpha.sensors.enforcement): off, dry_run
    # (report what would have been killed), enforce. Allowed processes are never killed, by
    # executable (matched by device and inode, so a copy elsewhere is not allowed) or cgroup.
    enforcement: Literal["off", "dry_run", "enforce"] = "off"
    enforce_allow_exes: tuple[str, ...] = ()
    enforce_allow_cgroups: tuple[str, ...] = ()  # cgroup v2 paths, e.g. /system.slice/x.service
    # Environment variables read from the new image at exec (exec.env): the kernel scans up to
    # 128 entries and keeps these. A name is matched on its first 16 bytes with its "=".
    exec_env: tuple[str, ...] = (
        "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "GLIBC_TUNABLES", "http_proxy",
        "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "HISTFILE",
        "BASH_ENV",
    )  # fmt: skip
    # Command names the socket_stdio_exec check treats as shells and interpreters.
    enforce_shells: tuple[str, ...] = (
        "ash", "bash", "csh", "dash", "fish", "ksh", "mksh", "sh", "tcsh", "zsh", "python",
        "python2", "python3", "perl", "ruby", "php", "lua", "node", "nodejs", "tclsh",
    )  # fmt: skip

    def __post_init__(self) -> None:
        for name in self.exec_env:
            if not name or "=" in name or not name.isascii() or not name.isprintable():
                raise ConfigError("exec_env", f"{name!r}: a variable name (printable ASCII, no =)")
        if len(self.exec_env) > 256:
            raise ConfigError("exec_env", f"{len(self.exec_env)} names; at most 256")
        for comm in self.enforce_shells:
            if not comm or len(comm.encode()) > 15:
                raise ConfigError("enforce_shells", f"{comm!r}: a command name of 1 to 15 bytes")
        unknown = sorted(set(self.probes) - set(PROBES))
        if unknown:
            raise ConfigError("probes", f"unknown probes {unknown}; known: {list(PROBES)}")
        for name in ("read_prefixes", "write_prefixes", "ignore_prefixes"):
            _check_prefixes(name, getattr(self, name))
        for comm in self.ignore_comms:
            if not comm or len(comm.encode()) > 15:
                raise ConfigError("ignore_comms", f"{comm!r}: a command name of 1 to 15 bytes")
        for family in self.socket_families:
            if not 0 < family < _AF_MAX:
                raise ConfigError("socket_families", f"{family}: an AF_* number below {_AF_MAX}")
        pages = self.ring_buffer_pages
        if pages < 1 or pages & (pages - 1):
            raise ConfigError("ring_buffer_pages", f"{pages}: a power of two")
        for name in (
            "inflight_entries",
            "queue_max_events",
            "batch_max",
            "poll_timeout_ms",
            "proc_poll_interval_ms",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1")
        if not 0 <= self.coalesce_ms <= 1000:
            raise ConfigError("coalesce_ms", "between 0 and 1000")
        if not 0 <= self.ancestry_depth <= 64:
            raise ConfigError("ancestry_depth", "between 0 and 64")


# --- status -----------------------------------------------------------------------------------


class SensorMode(enum.StrEnum):
    EBPF = "ebpf"
    NETLINK = "netlink"
    PROC_POLL = "proc_poll"


class SensorState(enum.StrEnum):
    STARTING = "starting"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class LossCounters:
    """Events lost, by stage. Every counter is exact, never sampled."""

    kernel: int = 0  # ring buffer full: counted in the kernel, per kind below
    kernel_by_kind: tuple[tuple[str, int], ...] = ()
    queue: int = 0  # dropped because the bounded userspace queue was full
    decode: int = 0  # records that could not be decoded
    consumer: int = 0  # batches whose on_observations callback raised (events counted)
    source: int = 0  # fallback: netlink buffer overruns (ENOBUFS), count unknown: +1 each

    @property
    def total(self) -> int:
        return self.kernel + self.queue + self.decode + self.consumer + self.source


@dataclass(frozen=True)
class SensorStats:
    events_total: int = 0
    events_per_s: float = 0.0  # over the last few seconds
    last_event_ns: int | None = None  # wall clock of the last observation delivered
    last_poll_ns: int | None = None  # wall clock of the last poll: proves the loop is alive
    started_ns: int | None = None
    kernel_filtered: int = 0  # syscalls dropped by in-kernel filters (not losses)
    by_kind: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class SensorStatus:
    mode: SensorMode
    state: SensorState
    reasons: tuple[str, ...]
    loss: LossCounters
    stats: SensorStats
    probes: tuple[str, ...] = ()  # tracepoints attached (eBPF) or what the fallback watches


# --- delivery ---------------------------------------------------------------------------------

ObservationCallback = Callable[[list[Observation]], None]

_RATE_WINDOW_NS: Final = 5_000_000_000


class Delivery:
    """Hands batches to a callback, or to a bounded queue drained by `take`, and keeps counts.

    With a callback there is no queue: a slow consumer slows the poll loop, and the loss then
    shows up in the kernel's counters instead. With the queue, overflow drops the newest batch
    and counts every event in it.
    """

    def __init__(self, max_events: int, callback: ObservationCallback | None = None) -> None:
        self._max = max_events
        self._callback = callback
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._batches: deque[list[Observation]] = deque()
        self._queued = 0
        self.dropped = 0
        self.consumer_errors = 0
        self.total = 0
        self.last_event_ns: int | None = None
        self.last_poll_ns: int | None = None
        self._by_kind: dict[str, int] = {}
        self._rate: deque[tuple[int, int]] = deque()  # (monotonic ns, batch size)

    def polled(self) -> None:
        self.last_poll_ns = time.time_ns()

    def deliver(self, batch: list[Observation]) -> None:
        if not batch:
            return
        now = time.monotonic_ns()
        with self._lock:
            self.total += len(batch)
            self.last_event_ns = batch[-1].time_ns
            by_kind = self._by_kind
            for obs in batch:
                by_kind[obs.kind] = by_kind.get(obs.kind, 0) + 1
            self._rate.append((now, len(batch)))
            while self._rate and now - self._rate[0][0] > _RATE_WINDOW_NS:
                self._rate.popleft()
            if self._callback is None:
                if self._queued + len(batch) > self._max:
                    self.dropped += len(batch)
                    return
                self._batches.append(batch)
                self._queued += len(batch)
                self._ready.notify_all()
                return
        try:
            self._callback(batch)
        except Exception:  # a consumer bug must not kill the sensor; it is counted instead
            with self._lock:
                self.consumer_errors += len(batch)

    def take(self, timeout: float | None = None, max_events: int = 65536) -> list[Observation]:
        """Queued observations, oldest first; waits up to `timeout` s for the first one."""
        with self._lock:
            if not self._batches and timeout != 0:
                self._ready.wait_for(lambda: bool(self._batches), timeout)
            out: list[Observation] = []
            while self._batches and (not out or len(out) + len(self._batches[0]) <= max_events):
                batch = self._batches.popleft()
                self._queued -= len(batch)
                out.extend(batch)
            return out

    def stats(
        self,
        started_ns: int | None,
        started_mono_ns: int | None = None,
        kernel_filtered: int = 0,
    ) -> SensorStats:
        with self._lock:
            # Events delivered in the window, over the window up to now: decays to 0 when idle.
            now = time.monotonic_ns()
            recent = sum(n for t, n in self._rate if now - t <= _RATE_WINDOW_NS)
            window = _RATE_WINDOW_NS
            if started_mono_ns is not None:
                window = max(1, min(window, now - started_mono_ns))
            rate = recent * 1e9 / window
            return SensorStats(
                events_total=self.total,
                events_per_s=rate,
                last_event_ns=self.last_event_ns,
                last_poll_ns=self.last_poll_ns,
                started_ns=started_ns,
                kernel_filtered=kernel_filtered,
                by_kind=tuple(sorted(self._by_kind.items())),
            )
