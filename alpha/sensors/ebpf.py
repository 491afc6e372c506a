"""The eBPF sensor: render the BPF C, load it with bcc, poll the ring buffer, enrich, deliver.

`render_program(ProgramConfig) -> str` is the one pure function that turns configuration into
C: own tgid, enabled probes, the tracepoints this kernel has, and the in-kernel filters as
macros. bcc attaches every TRACEPOINT_PROBE of the rendered program when it loads it.

One poll thread drains the ring buffer in bounded batches (the record callback only copies
bytes), decodes them (alpha.sensors.decode), enriches them with the process table and hands
each batch to the consumer.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Final

from alpha.sensors import decode as d
from alpha.sensors import kernel_layout, selftest
from alpha.sensors.btf import VMLINUX
from alpha.sensors.health import LossWindow
from alpha.sensors.kernel_layout import KernelLayout, LayoutError
from alpha.sensors.model import (
    ENFORCE_CHECKS,
    UNKNOWN_STDIO,
    BpfDetail,
    ChmodDetail,
    ChownDetail,
    Delivery,
    Detail,
    DupDetail,
    EnforceDetail,
    ExecDetail,
    ExitDetail,
    ForkDetail,
    Kind,
    LinkDetail,
    LossCounters,
    MemfdDetail,
    MemProtDetail,
    ModuleDetail,
    NamespaceDetail,
    NetDetail,
    Observation,
    ObservationCallback,
    OpenDetail,
    ProcessInfo,
    PtraceDetail,
    RenameDetail,
    SensorConfig,
    SensorMode,
    SensorState,
    SensorStatus,
    SensorUnavailable,
    SetIdDetail,
    SocketDetail,
    Stdio,
    TcpCloseDetail,
    UnlinkDetail,
    UtimesDetail,
    VmWriteDetail,
    XattrDetail,
)
from alpha.sensors.proctable import (
    PROC,
    CgroupResolver,
    ProcessTable,
    find_cgroup2_mount,
    read_boot_id,
)

log = logging.getLogger(__name__)

TRACEFS_CANDIDATES: Final = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
AT_FDCWD: Final = -100
_STALL_NS: Final = 5_000_000_000
_EXITED_KEPT: Final = 1024

# init_module/finit_module numbers, for kernels without their tracepoints (CONFIG_MODULES=n).
MODULE_SYSCALL_NRS: Final[dict[str, tuple[int, int]]] = {
    "x86_64": (175, 313),
    "aarch64": (105, 273),
}
# struct pt_regs members holding syscall arguments 0..2 and the syscall number.
SYSCALL_REGS: Final[dict[str, tuple[str, str, str, str]]] = {
    "x86_64": ("di", "si", "dx", "orig_ax"),
    "aarch64": ("regs[0]", "regs[1]", "regs[2]", "syscallno"),
}

# probe -> tracepoints it cannot do without.
REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    "exec": (
        "syscalls/sys_enter_execve",
        "syscalls/sys_exit_execve",
        "sched/sched_process_exec",
        "sched/sched_process_exit",
        "syscalls/sys_enter_exit_group",
    ),
    "open": ("syscalls/sys_enter_openat", "syscalls/sys_exit_openat"),
    "chmod": (
        "syscalls/sys_enter_fchmodat",
        "syscalls/sys_exit_fchmodat",
        "syscalls/sys_enter_fchmod",
        "syscalls/sys_exit_fchmod",
    ),
    "chown": (
        "syscalls/sys_enter_fchownat",
        "syscalls/sys_exit_fchownat",
        "syscalls/sys_enter_fchown",
        "syscalls/sys_exit_fchown",
    ),
    "unlink": ("syscalls/sys_enter_unlinkat", "syscalls/sys_exit_unlinkat"),
    "rename": ("syscalls/sys_enter_renameat", "syscalls/sys_exit_renameat"),
    "link": tuple(
        f"syscalls/sys_{d}_{s}" for s in ("linkat", "symlinkat") for d in ("enter", "exit")
    ),
    "ptrace": ("syscalls/sys_enter_ptrace", "syscalls/sys_exit_ptrace"),
    "net": tuple(
        f"syscalls/sys_{d}_{s}" for s in ("connect", "accept", "accept4") for d in ("enter", "exit")
    ),
    "socket": ("syscalls/sys_enter_socket", "syscalls/sys_exit_socket"),
    "memfd": ("syscalls/sys_enter_memfd_create", "syscalls/sys_exit_memfd_create"),
    "module": (),  # per-syscall tracepoints, or raw_syscalls: decided in ProgramConfig.build
    "bpf": ("syscalls/sys_enter_bpf", "syscalls/sys_exit_bpf"),
    "setid": tuple(
        f"syscalls/sys_{d}_{s}"
        for s in (
            "setuid",
            "setgid",
            "setreuid",
            "setregid",
            "setresuid",
            "setresgid",
            "setfsuid",
            "setfsgid",
        )
        for d in ("enter", "exit")
    ),
    "tcp": ("sock/inet_sock_set_state",),
    "vmwrite": ("syscalls/sys_enter_process_vm_writev", "syscalls/sys_exit_process_vm_writev"),
    "xattr": tuple(
        f"syscalls/sys_{d}_{s}"
        for s in ("setxattr", "lsetxattr", "fsetxattr")
        for d in ("enter", "exit")
    ),
    "namespace": tuple(
        f"syscalls/sys_{d}_{s}" for s in ("unshare", "setns") for d in ("enter", "exit")
    ),
    "utimes": ("syscalls/sys_enter_utimensat", "syscalls/sys_exit_utimensat"),
    "dup": ("syscalls/sys_enter_dup3", "syscalls/sys_exit_dup3"),  # dup2 too where it exists
    "memprot": (
        "syscalls/sys_enter_mmap",
        "syscalls/sys_exit_mmap",
        "syscalls/sys_enter_mprotect",
        "syscalls/sys_exit_mprotect",
    ),
}

# Used when present (the C has a HAVE_<event> block for each); syscalls need enter and exit.
OPTIONAL: Final = (
    "syscalls/sys_enter_execveat",
    "syscalls/sys_enter_open",
    "syscalls/sys_enter_creat",
    "syscalls/sys_enter_openat2",
    "syscalls/sys_enter_chmod",
    "syscalls/sys_enter_fchmodat2",
    "syscalls/sys_enter_chown",
    "syscalls/sys_enter_lchown",
    "syscalls/sys_enter_unlink",
    "syscalls/sys_enter_rename",
    "syscalls/sys_enter_renameat2",
    "syscalls/sys_enter_link",
    "syscalls/sys_enter_symlink",
    "syscalls/sys_enter_finit_module",
    "syscalls/sys_enter_pkey_mprotect",
    "syscalls/sys_enter_setxattrat",
    "syscalls/sys_enter_utimes",
    "syscalls/sys_enter_utime",
    "syscalls/sys_enter_dup2",
    "task/task_newtask",
)
_MODULE_TPS: Final = (
    "syscalls/sys_enter_init_module",
    "syscalls/sys_exit_init_module",
    "syscalls/sys_enter_finit_module",
    "syscalls/sys_exit_finit_module",
)
_RAW_TPS: Final = ("raw_syscalls/sys_enter", "raw_syscalls/sys_exit")


def _exit_of(tp: str) -> str:
    return tp.replace("/sys_enter_", "/sys_exit_")


def tracepoints_of_interest() -> tuple[str, ...]:
    names: list[str] = []
    for group in REQUIRED.values():
        names.extend(group)
    for tp in OPTIONAL:
        names.append(tp)
        if "/sys_enter_" in tp:
            names.append(_exit_of(tp))
    names.extend(_MODULE_TPS + _RAW_TPS)
    return tuple(dict.fromkeys(names))


# --- rendering ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgramConfig:
    """Everything the BPF C depends on: the sensor configuration plus facts of this kernel."""

    self_tgid: int
    probes: frozenset[str]
    tracepoints: frozenset[str]  # "category/event" present on this kernel
    group_dead: bool  # sched_process_exit has the group_dead field
    read_prefixes: tuple[str, ...] = ()
    write_prefixes: tuple[str, ...] = ()
    ignore_prefixes: tuple[str, ...] = ()
    relative_reads: bool = False
    relative_writes: bool = True
    ignore_comms: tuple[str, ...] = ()
    net_unix: bool = False
    socket_families: tuple[int, ...] = ()
    ptrace_requests: tuple[int, ...] = ()
    bpf_commands: tuple[int, ...] = ()
    ring_buffer_pages: int = 4096
    inflight_entries: int = 16384
    exec_entries: int = 8192
    tcp_owners: int = 65536  # TCP sockets whose owner is remembered until they close
    module_nrs: tuple[int, int] | None = (175, 313)  # raw syscall numbers, None: unknown arch
    syscall_regs: tuple[str, str, str, str] = SYSCALL_REGS["x86_64"]
    layout: KernelLayout | None = None  # None: no task field is read (identity from /proc)
    enforce_shells: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        cfg: SensorConfig,
        *,
        self_tgid: int,
        tracepoints: Iterable[str],
        group_dead: bool,
        machine: str | None = None,
        layout: KernelLayout | None = None,
    ) -> tuple[ProgramConfig, tuple[str, ...]]:
        """The program for this kernel, and why any configured probe had to be left out."""
        present = frozenset(tracepoints)
        arch = machine or platform.machine()
        module_nrs = MODULE_SYSCALL_NRS.get(arch)
        probes: set[str] = set()
        missing: list[str] = []
        for probe in cfg.probes:
            if probe == "module":
                if all(tp in present for tp in _MODULE_TPS) or (
                    module_nrs and all(tp in present for tp in _RAW_TPS)
                ):
                    probes.add(probe)
                else:
                    missing.append("probe module: no init_module tracepoints nor raw_syscalls")
                continue
            if probe == "tcp" and (layout is None or not layout.tcp):
                missing.append(
                    "probe tcp: the kernel's tcp_sock layout is unknown (no BTF): transfers "
                    "are counted only by socket polls, which miss short connections"
                )
                continue
            if probe == "dup" and layout is None:
                missing.append(
                    "probe dup: the kernel's fd table layout is unknown (no BTF): stdio "
                    "redirected to a socket is seen only at a later exec"
                )
                continue
            absent = [tp for tp in REQUIRED[probe] if tp not in present]
            if absent:
                missing.append(f"probe {probe}: tracepoints missing: {', '.join(absent)}")
            else:
                probes.add(probe)
        program = cls(
            self_tgid=self_tgid,
            probes=frozenset(probes),
            tracepoints=present,
            group_dead=group_dead,
            read_prefixes=cfg.read_prefixes,
            write_prefixes=cfg.write_prefixes,
            ignore_prefixes=cfg.ignore_prefixes,
            relative_reads=cfg.relative_reads,
            relative_writes=cfg.relative_writes,
            ignore_comms=cfg.ignore_comms,
            net_unix=cfg.net_unix,
            socket_families=cfg.socket_families,
            ptrace_requests=cfg.ptrace_requests,
            bpf_commands=cfg.bpf_commands,
            ring_buffer_pages=cfg.ring_buffer_pages,
            inflight_entries=cfg.inflight_entries,
            module_nrs=module_nrs,
            syscall_regs=SYSCALL_REGS.get(arch, SYSCALL_REGS["x86_64"]),
            layout=layout,
            enforce_shells=cfg.enforce_shells,
        )
        return program, tuple(missing)


def c_prefix_test(var: str, prefix: str) -> str:
    """A C expression true when the NUL-terminated char array `var` starts with `prefix`."""
    data = prefix.encode()
    if not data:
        return "1"
    return "(" + " && ".join(f"{var}[{i}] == {b}" for i, b in enumerate(data)) + ")"


def c_equals_test(var: str, value: str, size: int) -> str:
    """A C expression true when the char array `var` (of `size`) holds exactly `value`."""
    data = value.encode()
    terms = [f"{var}[{i}] == {b}" for i, b in enumerate(data)]
    if len(data) < size:
        terms.append(f"{var}[{len(data)}] == 0")
    return "(" + " && ".join(terms) + ")"


def _any(terms: list[str]) -> str:
    return "(" + " || ".join(terms) + ")" if terms else "(0)"


def _source(name: str) -> str:
    return resources.files("alpha.bpf").joinpath(name).read_text()


def render_program(config: ProgramConfig) -> str:
    """The complete BPF C for bcc: configuration #defines, records.h, sensor.bpf.c."""
    lines = [
        "/* Rendered by alpha.sensors.ebpf.render_program: do not edit. */",
        f"#define SELF_TGID {config.self_tgid}",
        f"#define RINGBUF_PAGES {config.ring_buffer_pages}",
        f"#define INFLIGHT_ENTRIES {config.inflight_entries}",
        f"#define EXEC_ENTRIES {config.exec_entries}",
        f"#define TCP_OWNERS {config.tcp_owners}",
    ]
    probe_macro = {"net": "NET", "memfd": "MEMFD"}
    for probe in sorted(config.probes):
        lines.append(f"#define PROBE_{probe_macro.get(probe, probe.upper())} 1")
    for tp in OPTIONAL:
        if tp in config.tracepoints and (
            "/sys_enter_" not in tp or _exit_of(tp) in config.tracepoints
        ):
            lines.append(f"#define HAVE_{tp.split('/', 1)[1]} 1")
    if config.group_dead:
        lines.append("#define HAVE_GROUP_DEAD 1")
    if config.layout is not None:
        lines += config.layout.defines()
    init_nr, finit_nr = config.module_nrs or (-1, -1)
    arg0, arg1, arg2, nr = config.syscall_regs
    lines += [
        f"#define NR_INIT_MODULE {init_nr}",
        f"#define NR_FINIT_MODULE {finit_nr}",
        f"#define REG_ARG0 {arg0}",
        f"#define REG_ARG1 {arg1}",
        f"#define REG_ARG2 {arg2}",
        f"#define REG_NR {nr}",
        f"#define RELATIVE_READS {int(config.relative_reads)}",
        f"#define RELATIVE_WRITES {int(config.relative_writes)}",
        f"#define NET_UNIX {int(config.net_unix)}",
        "#define MATCH_READ_PREFIX(p) "
        + _any([c_prefix_test("p", x) for x in config.read_prefixes]),
        "#define MATCH_WRITE_PREFIX(p) "
        + _any([c_prefix_test("p", x) for x in config.write_prefixes]),
        "#define MATCH_IGNORE_PREFIX(p) "
        + _any([c_prefix_test("p", x) for x in config.ignore_prefixes]),
        "#define IGNORE_COMM(c) "
        + _any([c_equals_test("c", x, d.COMM_LEN) for x in config.ignore_comms]),
        "#define ENFORCE_SHELL(c) "
        + _any([c_equals_test("c", x, d.COMM_LEN) for x in config.enforce_shells]),
        "#define PTRACE_WANTED(r) " + _any([f"(r) == {n}" for n in config.ptrace_requests]),
        "#define BPF_CMD_WANTED(c) " + _any([f"(c) == {n}" for n in config.bpf_commands]),
        "#define SOCKET_FAMILY_WANTED(f) " + _any([f"(f) == {n}" for n in config.socket_families]),
        "",
    ]
    body = _source("sensor.bpf.c").replace('#include "records.h"', _source("records.h"), 1)
    return "\n".join(lines) + body


# --- kernel facts and preflight -----------------------------------------------------------------


def find_tracefs() -> Path | None:
    for root in TRACEFS_CANDIDATES:
        if (root / "events").is_dir():
            return root
    return None


def available_tracepoints(tracefs: Path) -> frozenset[str]:
    return frozenset(tp for tp in tracepoints_of_interest() if (tracefs / "events" / tp).is_dir())


def has_group_dead(tracefs: Path) -> bool:
    try:
        return "group_dead" in (tracefs / "events/sched/sched_process_exit/format").read_text()
    except OSError:
        return False


def _capabilities() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


_CAP_SYS_ADMIN: Final = 21
_CAP_PERFMON: Final = 38
_CAP_BPF: Final = 39


def preflight() -> Path:
    """Check what bcc needs; mount tracefs if we may. Returns the tracefs root.
    Raises SensorUnavailable naming the first thing missing."""
    caps = _capabilities()
    if not (caps >> _CAP_SYS_ADMIN & 1 or (caps >> _CAP_BPF & 1 and caps >> _CAP_PERFMON & 1)):
        raise SensorUnavailable(
            f"not privileged for eBPF (uid {os.geteuid()}; needs root or CAP_BPF+CAP_PERFMON)"
        )
    tracefs = find_tracefs()
    if tracefs is None:
        target = TRACEFS_CANDIDATES[0]
        try:
            subprocess.run(
                ["mount", "-t", "tracefs", "tracefs", str(target)],
                check=True,
                capture_output=True,
                timeout=10,
            )
            log.info("mounted tracefs at %s", target)
        except (OSError, subprocess.SubprocessError) as exc:
            raise SensorUnavailable(
                f"tracefs is not mounted and mounting it failed: {exc}"
            ) from exc
        tracefs = find_tracefs()
        if tracefs is None:
            raise SensorUnavailable("tracefs is not mounted (no /sys/kernel/tracing/events)")
    release = os.uname().release
    headers = Path("/lib/modules") / release
    if not (
        (headers / "build").exists()
        or (headers / "source").exists()
        or Path("/sys/kernel/kheaders.tar.xz").exists()
        or os.environ.get("BCC_KERNEL_SOURCE")
    ):
        raise SensorUnavailable(
            f"no kernel headers for {release} at {headers}/build (run tools/setup-bpf.sh)"
        )
    return tracefs


def _import_bcc() -> Any:
    try:
        import bcc  # optional: only where tools/setup-bpf.sh exposed python3-bpfcc
    except Exception as exc:  # ImportError, or bcc failing to load libbcc.so
        raise SensorUnavailable(f"bcc cannot be imported: {exc}") from exc
    return bcc


# --- enrichment ---------------------------------------------------------------------------------

PTRACE_REQUESTS: Final[dict[int, str]] = {
    0: "PTRACE_TRACEME",
    1: "PTRACE_PEEKTEXT",
    2: "PTRACE_PEEKDATA",
    3: "PTRACE_PEEKUSER",
    4: "PTRACE_POKETEXT",
    5: "PTRACE_POKEDATA",
    6: "PTRACE_POKEUSER",
    7: "PTRACE_CONT",
    8: "PTRACE_KILL",
    9: "PTRACE_SINGLESTEP",
    12: "PTRACE_GETREGS",
    13: "PTRACE_SETREGS",
    14: "PTRACE_GETFPREGS",
    15: "PTRACE_SETFPREGS",
    16: "PTRACE_ATTACH",
    17: "PTRACE_DETACH",
    24: "PTRACE_SYSCALL",
    0x4200: "PTRACE_SETOPTIONS",
    0x4204: "PTRACE_GETREGSET",
    0x4205: "PTRACE_SETREGSET",
    0x4206: "PTRACE_SEIZE",
    0x4207: "PTRACE_INTERRUPT",
}

BPF_COMMANDS: Final[dict[int, str]] = {
    0: "BPF_MAP_CREATE",
    5: "BPF_PROG_LOAD",
    6: "BPF_OBJ_PIN",
    7: "BPF_OBJ_GET",
    8: "BPF_PROG_ATTACH",
    9: "BPF_PROG_DETACH",
    10: "BPF_PROG_TEST_RUN",
    17: "BPF_RAW_TRACEPOINT_OPEN",
    18: "BPF_BTF_LOAD",
    28: "BPF_LINK_CREATE",
    29: "BPF_LINK_UPDATE",
    34: "BPF_LINK_DETACH",
}

_KIND_OF: Final[dict[int, Kind]] = {
    d.KIND_OPEN: Kind.OPEN,
    d.KIND_CHMOD: Kind.CHMOD,
    d.KIND_CHOWN: Kind.CHOWN,
    d.KIND_UNLINK: Kind.UNLINK,
    d.KIND_MEMFD: Kind.MEMFD_CREATE,
    d.KIND_CONNECT: Kind.CONNECT,
    d.KIND_ACCEPT: Kind.ACCEPT,
}
_ENFORCE_MODES: Final = {"off": 0, "dry_run": 1, "enforce": 2}
_IPPROTO: Final = {6: "tcp", 17: "udp", 132: "sctp", 262: "mptcp"}
_WRITE_FLAGS: Final = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000


def _stdio(
    ident: d.KernelIdentity | None, procfs: tuple[Stdio, Stdio, Stdio]
) -> tuple[Stdio, Stdio, Stdio]:
    """fds 0-2 at exec: the kernel's kinds and socket peers (true for a process already gone),
    with the paths /proc adds while the process lives."""
    if ident is None or len(ident.stdio) != 3:
        return procfs
    out = []
    for (kind, address, port), seen in zip(ident.stdio, procfs, strict=True):
        if kind == "unknown":
            out.append(seen)
        elif kind == "inet_socket":
            out.append(Stdio(kind, "", address, port))
        else:
            out.append(Stdio(kind, seen.path if seen.kind == kind else ""))
    return out[0], out[1], out[2]


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


class Enricher:
    """Raw kernel records -> observations, keeping the process table current. Not thread-safe:
    the poll thread is its only user."""

    def __init__(self, table: ProcessTable, proc: Path = PROC) -> None:
        self.table = table
        self._proc = proc
        # Set when the kernel's layout is known; cleared when the self-test disagrees.
        self.kernel_identity = False
        self._exited: dict[int, ProcessInfo] = {}  # the latest exits, oldest first

    def _abs(self, tgid: int, dfd: int, path: str, info: ProcessInfo | None) -> str:
        """Resolve a path against the caller's cwd or dirfd, best effort (racy by nature)."""
        if path.startswith("/"):
            return path
        if dfd == AT_FDCWD:
            base = _readlink(self._proc / str(tgid) / "cwd") or (info.cwd if info else "")
        elif dfd >= 0:
            base = _readlink(self._proc / str(tgid) / "fd" / str(dfd)) or ""
        else:
            base = ""
        if not base:
            return path
        return os.path.normpath(os.path.join(base, path)) if path else base

    def observe(self, rec: d.RawRecord, wall_offset_ns: int) -> Observation | None:
        h = rec.hdr
        table = self.table
        ret: int | None = h.ret
        detail: Detail
        info: ProcessInfo | None
        if isinstance(rec, d.RawExec):
            ident = rec.identity if self.kernel_identity else None
            info, snap = table.exec(
                h.tgid,
                h.ts_ns,
                filename=rec.filename,
                args=None if rec.no_stash else rec.args,
                uid=h.uid,
                gid=h.gid,
                comm=h.comm,
                cgroup_id=h.cgroup_id,
                identity=ident,
            )
            exe = info.exe
            detail = ExecDetail(
                filename=rec.filename,
                exe=exe,
                args=info.args,
                args_truncated=rec.args_truncated,
                cwd=info.cwd,
                dirfd=rec.dirfd,
                at_flags=rec.at_flags,
                from_memfd=exe.startswith("/memfd:"),
                exe_deleted=exe.endswith(" (deleted)"),
                setuid_exec=(
                    info.euid != h.uid
                    if info.identity == "kernel" and info.euid is not None
                    else bool(snap and snap.euid != snap.uid)
                ),
                stdio=_stdio(ident, snap.stdio if snap else UNKNOWN_STDIO),
                old_pid=rec.old_pid,
                cap_effective=ident.cap_effective if ident else None,
                cap_permitted=ident.cap_permitted if ident else None,
                environment=ident.env if ident else (),
                environment_complete=ident.env_complete if ident else False,
            )
            ret = None
            kind = Kind.EXEC
        elif isinstance(rec, d.RawFork):
            child = table.fork(h.tgid, rec.child_pid, h.ts_ns)
            info = table.info(h.tgid, h.cgroup_id)
            detail = ForkDetail(rec.child_pid, rec.clone_flags, child.exec_id if child else "")
            ret = None
            kind = Kind.FORK
        elif isinstance(rec, d.RawTcpClose):
            # The owner may be long gone (its close drained after exit): no /proc lookup then.
            info = None
            if rec.owner_known:
                info = table.known(h.tgid) or self._exited.get(h.tgid)
            detail = TcpCloseDetail(
                rec.family,
                rec.local_address,
                rec.local_port,
                rec.remote_address,
                rec.remote_port,
                rec.old_state,
                rec.bytes_acked,
                rec.bytes_received,
                rec.segs_out,
                rec.segs_in,
                rec.cookie,
                rec.owner_known,
                rec.open_ns,
            )
            ret = None
            kind = Kind.TCP_CLOSE
        elif isinstance(rec, d.RawEnforce):
            info = table.known(h.tgid)
            detail = EnforceDetail(rec.check, rec.dry_run, rec.signal, rec.result)
            ret = None
            kind = Kind.ENFORCE
        elif isinstance(rec, d.RawExit):
            info = table.exit(h.tgid)
            if info is not None:
                # A process's sockets close after its exit record (exit_files follows it).
                self._exited[h.tgid] = info
                if len(self._exited) > _EXITED_KEPT:
                    del self._exited[next(iter(self._exited))]
            detail = ExitDetail(rec.exit_code)
            ret = None
            kind = Kind.EXIT
        else:
            info = table.info(h.tgid, h.cgroup_id)
            kind, detail = self._syscall_detail(rec, info)
        return Observation(
            kind=kind,
            time_ns=h.ts_ns + wall_offset_ns,
            boot_ns=h.ts_ns,
            pid=h.tgid,
            tid=h.tid,
            ppid=info.ppid if info else 0,
            uid=h.uid,
            gid=h.gid,
            euid=info.euid if info else None,
            comm=h.comm,
            syscall=h.syscall,
            ret=ret,
            process=info,
            detail=detail,
            source="ebpf",
        )

    def _syscall_detail(self, rec: d.RawRecord, info: ProcessInfo | None) -> tuple[Kind, Detail]:
        h = rec.hdr
        if isinstance(rec, d.RawPath):
            kind = _KIND_OF[h.kind]
            if kind is Kind.OPEN:
                if rec.raw_path:  # named by the kernel from the file opened
                    return kind, OpenDetail(
                        rec.raw_path,
                        rec.path,
                        rec.flags,
                        rec.mode,
                        rec.dfd,
                        bool(rec.flags & _WRITE_FLAGS),
                        kernel_path=True,
                    )
                return kind, OpenDetail(
                    rec.path,
                    self._abs(h.tgid, rec.dfd, rec.path, info),
                    rec.flags,
                    rec.mode,
                    rec.dfd,
                    bool(rec.flags & _WRITE_FLAGS),
                )
            if kind is Kind.MEMFD_CREATE:
                return kind, MemfdDetail(rec.path, rec.flags)
            target = self._abs(h.tgid, rec.dfd, rec.path, info)
            if kind is Kind.CHMOD:
                return kind, ChmodDetail(
                    rec.path,
                    target,
                    rec.mode,
                    rec.dfd,
                    bool(rec.mode & 0o4000),
                    bool(rec.mode & 0o2000),
                    bool(rec.mode & 0o2),
                )
            if kind is Kind.CHOWN:
                uid = None if rec.uid == 0xFFFFFFFF else rec.uid
                gid = None if rec.gid == 0xFFFFFFFF else rec.gid
                return kind, ChownDetail(rec.path, target, uid, gid, rec.dfd, rec.flags)
            return kind, UnlinkDetail(rec.path, target, rec.dfd, rec.flags)
        if isinstance(rec, d.RawRename):
            return Kind.RENAME, RenameDetail(
                rec.oldpath,
                rec.newpath,
                self._abs(h.tgid, rec.olddfd, rec.oldpath, info),
                self._abs(h.tgid, rec.newdfd, rec.newpath, info),
                rec.flags,
            )
        if isinstance(rec, d.RawLink):
            symbolic = rec.symbolic
            return Kind.LINK, LinkDetail(
                rec.target,
                rec.linkpath,
                # A symlink's text is what the kernel stores; resolving it would be a guess.
                rec.target if symbolic else self._abs(h.tgid, rec.olddfd, rec.target, info),
                self._abs(h.tgid, rec.newdfd, rec.linkpath, info),
                symbolic,
                rec.flags,
            )
        if isinstance(rec, d.RawSocket):
            return Kind.SOCKET, SocketDetail(rec.family, rec.type, rec.protocol)
        if isinstance(rec, d.RawPtrace):
            name = PTRACE_REQUESTS.get(rec.request, f"request {rec.request}")
            return Kind.PTRACE, PtraceDetail(rec.request, name, rec.target, rec.addr, rec.data)
        if isinstance(rec, d.RawSock):
            proto = _IPPROTO.get(rec.protocol, "") if rec.family in ("inet", "inet6") else ""
            return _KIND_OF[h.kind], NetDetail(rec.fd, rec.family, rec.address, rec.port, proto)
        if isinstance(rec, d.RawModule):
            file = ""
            if rec.fd >= 0:
                file = _readlink(self._proc / str(h.tgid) / "fd" / str(rec.fd)) or ""
            return Kind.MODULE_LOAD, ModuleDetail(
                rec.fd, file, rec.params, rec.image_len, rec.flags
            )
        if isinstance(rec, d.RawBpf):
            name = BPF_COMMANDS.get(rec.cmd, f"cmd {rec.cmd}")
            return Kind.BPF, BpfDetail(rec.cmd, name, rec.prog_type, rec.insn_cnt, rec.prog_name)
        if isinstance(rec, d.RawSetId):
            if h.ret == 0:
                self._apply_setid(h.tgid, h.syscall, rec.ids)
            return Kind.SETID, SetIdDetail(rec.ids)
        if isinstance(rec, d.RawMemProt):
            return Kind.MEMPROT, MemProtDetail(rec.addr, rec.length, rec.prot, rec.flags, rec.fd)
        if isinstance(rec, d.RawVmWrite):
            return Kind.VM_WRITE, VmWriteDetail(rec.target, rec.local_iovecs, rec.remote_iovecs)
        if isinstance(rec, d.RawXattr):
            if rec.path:
                resolved = self._abs(h.tgid, rec.dfd, rec.path, info)
            else:  # fsetxattr: the descriptor's path, if the caller still has it
                resolved = _readlink(self._proc / str(h.tgid) / "fd" / str(rec.dfd)) or ""
            return Kind.XATTR, XattrDetail(
                rec.path, resolved, rec.name, rec.size, rec.flags, rec.dfd
            )
        if isinstance(rec, d.RawDup):
            kind_, address, port = rec.stdio
            return Kind.DUP, DupDetail(
                rec.oldfd, rec.newfd, Stdio(kind_, "", address, port), rec.flags
            )
        if isinstance(rec, d.RawNamespace):
            call = "setns" if h.syscall == "setns" else "unshare"
            return Kind.NAMESPACE, NamespaceDetail(call, rec.flags, rec.fd)
        if isinstance(rec, d.RawUtimes):
            if rec.path.startswith("/"):
                resolved = os.path.normpath(rec.path)
            elif rec.base is not None and rec.base_complete:
                base = rec.base.removesuffix(" (deleted)")
                resolved = os.path.normpath(os.path.join(base, rec.path)) if rec.path else base
            else:  # no kernel layout: /proc, if the caller is still there
                resolved = self._abs(h.tgid, rec.dfd, rec.path, info)
            return Kind.UTIMES, UtimesDetail(rec.path, resolved, rec.atime_ns, rec.mtime_ns)
        raise d.DecodeError(f"no observation for {type(rec).__name__}")

    def _apply_setid(self, tgid: int, syscall: str, ids: tuple[int | None, ...]) -> None:
        if syscall == "setuid":
            self.table.set_ids(tgid, ids[0], ids[0])
        elif syscall in ("setreuid", "setresuid"):
            self.table.set_ids(tgid, ids[0], ids[1])


def _trim_heap() -> None:
    """Give back the heap bcc's in-process LLVM used to compile (about 20 MB here): glibc keeps
    freed memory otherwise."""
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: not glibc
        ctypes.CDLL(None).malloc_trim(0)


_MADV_PAGEOUT: Final = 21
_COMPILER_LIBS: Final = ("libLLVM", "libclang", "libbcc")


def release_compiler_pages(maps: Path = Path("/proc/self/maps")) -> int:
    """Ask the kernel to reclaim the pages of bcc's compiler (LLVM, clang: about 80 MiB here)
    once the program is loaded: they are file-backed and clean, so nothing is lost, and they
    come back from the file on a later use (a recompile). Returns the bytes advised."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        lines = maps.read_text().splitlines()
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    total = 0
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or not any(lib in parts[5] for lib in _COMPILER_LIBS):
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        if madvise(start, end - start, _MADV_PAGEOUT) == 0:  # EINVAL before Linux 5.4
            total += end - start
    return total


def _detach(bpf: Any) -> None:
    """Detach all tracepoints, then free the rest.

    Closing a tracepoint's perf event waits for RCU grace periods under a kernel mutex (about
    75 ms each here), so bcc's one-by-one cleanup of ~80 tracepoints takes 6 s; closing them
    from parallel threads (ctypes releases the GIL) lets grace periods overlap and halves it.
    """
    fds = dict(getattr(bpf, "tracepoint_fds", {}))
    close = getattr(
        getattr(sys.modules.get("bcc.libbcc"), "lib", None), "bpf_close_perf_event_fd", None
    )
    if fds and close is not None:
        with ThreadPoolExecutor(max_workers=min(32, len(fds))) as pool:
            list(pool.map(close, fds.values()))
        bpf.tracepoint_fds.clear()
    bpf.cleanup()


def _compile(bcc: Any, program: ProgramConfig) -> Any:
    return bcc.BPF(text=render_program(program).encode(), cflags=["-Wno-macro-redefined"])


# --- the sensor ---------------------------------------------------------------------------------


class EbpfSensor:
    """bcc + ring buffer. `start()` raises SensorUnavailable when eBPF cannot run here."""

    mode: Final = SensorMode.EBPF

    def __init__(
        self,
        config: SensorConfig,
        on_observations: ObservationCallback | None = None,
        *,
        proc: Path = PROC,
        btf: Path = VMLINUX,
    ) -> None:
        self.config = config
        self._proc = proc
        self._delivery = Delivery(config.queue_max_events, on_observations)
        self._state = SensorState.STARTING
        self._reasons: list[str] = []
        self._bpf: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._raw: list[bytes] = []
        self._decode_errors = 0
        self._started_ns: int | None = None
        self._started_mono_ns: int | None = None
        self._kernel_lost: dict[str, int] = {}
        self._kernel_filtered = 0
        self._loss_window = LossWindow()
        self._probes: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._bpf_lock = threading.Lock()  # the bcc object: counters read vs detach
        self.table = ProcessTable(
            read_boot_id(proc),
            proc=proc,
            ancestry_depth=config.ancestry_depth,
            cgroups=CgroupResolver.detect(proc),
        )
        self._enricher = Enricher(self.table, proc)
        self.program: ProgramConfig | None = None
        self._btf = btf
        self._identity_reason = ""
        # The kernel-side identity check: pending while _self_test is set.
        self._self_test: selftest.ProbeChild | None = None
        self._self_test_deadline = 0
        self._self_test_pid = -1  # records of the child are the sensor's own: never delivered
        self.self_test_result: str | None = None  # "ok", or what differed
        self.enforcing: tuple[str, ...] = ()  # kernel checks armed (set_enforcement)

    # --- lifecycle

    def start(self) -> None:
        tracefs = preflight()
        bcc = _import_bcc()
        layout: KernelLayout | None = None
        try:
            layout = kernel_layout.load(self._btf)
        except LayoutError as exc:
            self._identity_reason = (
                f"process identity is read from /proc after the fact ({exc}): a process that "
                "exits at once is not fully described"
            )
            log.warning("%s", self._identity_reason)
        program, missing = ProgramConfig.build(
            self.config,
            self_tgid=os.getpid(),
            tracepoints=available_tracepoints(tracefs),
            group_dead=has_group_dead(tracefs),
            layout=layout,
        )
        if not program.probes:
            raise SensorUnavailable("no probe can attach: " + "; ".join(missing))
        self._reasons.extend(missing)
        if program.layout is None and "exec" in program.probes:
            self._reasons.append(self._identity_reason)
        try:
            self._bpf = _compile(bcc, program)
        except Exception as exc:  # bcc raises bare Exception on compile/load failures
            if program.layout is None:
                raise SensorUnavailable(
                    f"bcc could not compile or load the program: {exc}"
                ) from exc
            # The task reads are the newest part: the rest of the sensor is worth more.
            self._identity_reason = (
                "process identity is read from /proc after the fact (the program reading the "
                f"task at exec did not load: {exc})"
            )
            log.warning("%s", self._identity_reason)
            program = replace(program, layout=None)
            layout = None
            self._reasons.append(self._identity_reason)
            try:
                self._bpf = _compile(bcc, program)
            except Exception as exc2:
                raise SensorUnavailable(
                    f"bcc could not compile or load the program: {exc2}"
                ) from exc2
        self.program = program
        _trim_heap()
        release_compiler_pages()
        names = [
            (tp.decode() if isinstance(tp, bytes) else str(tp)).replace(":", "/", 1)
            for tp in getattr(self._bpf, "tracepoint_fds", {})
        ]
        names += [
            "raw_tp/" + (tp.decode() if isinstance(tp, bytes) else str(tp))
            for tp in getattr(self._bpf, "raw_tracepoint_fds", {})
        ]
        self._probes = tuple(sorted(names))
        if self.config.enforcement != "off":
            if program.layout is None:
                self._reasons.append(
                    f"enforcement {self.config.enforcement} is unavailable without the kernel's"
                    " layout: nothing is killed"
                )
            else:
                self._load_allow_lists()
        if program.layout is not None and "exec" in program.probes:
            self._load_env_names()
        self.table.seed()
        self._bpf[b"events"].open_ring_buffer(self._on_record)
        self._started_ns = time.time_ns()
        self._started_mono_ns = time.monotonic_ns()
        self._state = SensorState.DEGRADED if self._reasons else SensorState.HEALTHY
        if layout is not None and "exec" in program.probes:
            self._enricher.kernel_identity = True
            self._self_test = selftest.start_child()
            self._self_test_deadline = time.monotonic_ns() + selftest.TIMEOUT_NS
        self._thread = threading.Thread(target=self._run, name="qsc-ebpf-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and detach every probe (a few seconds: see _detach)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        child, self._self_test = self._self_test, None
        if child is not None:
            child.end()
        self._read_counters()  # the final counts stay readable after stop
        with self._bpf_lock:
            if self._bpf is not None:
                _detach(self._bpf)
                self._bpf = None
        with self._lock:
            self._state = SensorState.STOPPED

    def __enter__(self) -> EbpfSensor:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- the poll thread

    def _on_record(self, _ctx: Any, data: Any, size: int) -> int:
        self._raw.append(ctypes.string_at(data, size))
        # A negative return makes libbpf stop after this record (already consumed): bounded
        # batches even when the producer never lets the ring run empty.
        return -1 if len(self._raw) >= self.config.batch_max else 0

    def _run(self) -> None:
        timeout = self.config.poll_timeout_ms
        coalesce = self.config.coalesce_ms / 1000
        full = self.config.batch_max
        next_counters = 0
        try:
            while not self._stop.is_set():
                self._bpf.ring_buffer_poll(timeout)
                self._delivery.polled()
                if self._raw:
                    raw, self._raw = self._raw, []
                    self._process(raw)
                    if len(raw) < full and coalesce:
                        self._stop.wait(coalesce)
                now = time.monotonic_ns()
                if now >= next_counters:
                    self._check_self_test_timeout()
                    self._read_counters()
                    next_counters = now + 1_000_000_000
        except Exception as exc:  # the loop must not die silently: status() says failed
            log.exception("eBPF poll loop failed")
            with self._lock:
                self._state = SensorState.FAILED
                self._reasons.append(f"poll loop failed: {exc!r}")

    def _process(self, raw: list[bytes]) -> None:
        offset = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        out: list[Observation] = []
        observe = self._enricher.observe
        decode_record = d.decode_record
        probe_pid = self._self_test_pid if self._self_test is None else self._self_test.pid
        for buf in raw:
            try:
                rec = decode_record(buf)
                if rec.hdr.tgid == probe_pid:
                    self._probe_record(rec)
                    continue
                obs = observe(rec, offset)
            except Exception as exc:  # one bad record must not stop the sensor: count it
                if not self._decode_errors:
                    log.warning("undecodable eBPF record (%d bytes): %r", len(buf), exc)
                self._decode_errors += 1
                continue
            if obs is not None:
                out.append(obs)
        self._delivery.deliver(out)

    def set_enforcement(self, checks: Iterable[str]) -> tuple[str, ...]:
        """Arm the kernel checks that rules with `action: kill` name, in the configured mode
        (off: nothing is armed). Returns the checks armed."""
        armed = tuple(sorted(set(checks))) if self.config.enforcement != "off" else ()
        unknown = [c for c in armed if c not in ENFORCE_CHECKS]
        if unknown:
            raise ValueError(f"unknown enforcement checks {unknown}")
        with self._bpf_lock:
            if self._bpf is None or self.program is None or self.program.layout is None:
                return ()
            table = self._bpf[b"enforce_cfg"]
            value = table.Leaf()
            value.mode = _ENFORCE_MODES[self.config.enforcement]
            value.checks = sum(ENFORCE_CHECKS[c] for c in armed)
            table[table.Key(0)] = value
        self.enforcing = armed
        return armed

    def _load_env_names(self) -> None:
        """The environment names the kernel keeps at exec: keys of "NAME=" cut or zero-padded
        to ENV_KEY_LEN bytes, as exec_env builds them from each entry."""
        table = self._bpf[b"env_names"]
        for name in self.config.exec_env:
            key = table.Key()
            raw = (name.encode() + b"=")[: d.ENV_KEY_LEN]
            ctypes.memmove(ctypes.addressof(key), raw, len(raw))
            table[key] = ctypes.c_uint8(1)

    def _load_allow_lists(self) -> None:
        """The enforcement allow list as the kernel checks it: executables by (device, inode),
        cgroups by id (the inode of the cgroup's directory)."""
        exes = self._bpf[b"enforce_allow_exe"]
        for path in self.config.enforce_allow_exes:
            try:
                st = os.stat(path)
            except OSError as exc:
                self._reasons.append(f"enforcement allow list: {path}: {exc.strerror}")
                continue
            key = exes.Key()
            key.ino = st.st_ino
            key.dev = os.major(st.st_dev) << 20 | os.minor(st.st_dev)  # the kernel's MKDEV
            exes[key] = ctypes.c_uint8(1)
        cgroups = self._bpf[b"enforce_allow_cgroup"]
        try:
            root = find_cgroup2_mount((self._proc / "self/mountinfo").read_text())
        except OSError:
            root = None
        for cg in self.config.enforce_allow_cgroups:
            try:
                if root is None:
                    raise FileNotFoundError(2, "no cgroup2 mount")
                ino = os.stat(os.path.join(root, cg.lstrip("/"))).st_ino
            except OSError as exc:
                self._reasons.append(f"enforcement allow list: cgroup {cg}: {exc.strerror}")
                continue
            cgroups[cgroups.Key(ino)] = ctypes.c_uint8(1)

    def _probe_record(self, rec: d.RawRecord) -> None:
        """A record of the self-test child: check its exec against /proc, then end it."""
        child = self._self_test
        if isinstance(rec, d.RawExit):
            self._self_test_pid = -1
            return
        if child is None or not isinstance(rec, d.RawExec):
            return
        self._self_test, self._self_test_pid = None, child.pid
        try:
            problems = selftest.compare(rec.identity, rec.args, child, os.getpid(), self._proc)
        finally:
            child.end()
        self._self_test_done(problems)

    def _self_test_done(self, problems: list[str]) -> None:
        if not problems:
            self.self_test_result = "ok"
            log.info("kernel-side process identity agrees with /proc")
            return
        self._enricher.kernel_identity = False
        self.self_test_result = "; ".join(problems)
        reason = (
            "kernel-side process identity disagrees with /proc ("
            + self.self_test_result
            + "): identity is read from /proc after the fact"
        )
        log.warning("%s", reason)
        with self._lock:
            self._reasons.append(reason)
            if self._state is SensorState.HEALTHY:
                self._state = SensorState.DEGRADED

    def _check_self_test_timeout(self) -> None:
        child = self._self_test
        if child is not None and time.monotonic_ns() > self._self_test_deadline:
            self._self_test, self._self_test_pid = None, child.pid
            child.end()
            self._self_test_done([f"no exec record of the self-test child {child.pid}"])

    def _read_counters(self) -> None:
        """Sum the kernel's per-CPU counters (a few map reads; callable from any thread)."""
        with self._bpf_lock:
            if self._bpf is None:
                return
            lost_map = self._bpf[b"lost"]
            lost = {}
            for kind, name in d.KIND_NAMES.items():
                n = int(lost_map.sum(lost_map.Key(kind)).value)
                if n:
                    lost[name] = n
            counters = self._bpf[b"counters"]
            filtered = int(counters.sum(counters.Key(d.CNT_FILTERED)).value)
        with self._lock:
            self._kernel_lost = lost
            self._kernel_filtered = filtered
            total = (
                sum(lost.values())
                + self._delivery.dropped
                + self._decode_errors
                + self._delivery.consumer_errors
            )
            self._loss_window.observe(total)

    # --- consumers

    def observations(
        self, timeout: float | None = None, max_events: int = 65536
    ) -> list[Observation]:
        """Drain queued observations (only without an on_observations callback)."""
        return self._delivery.take(timeout, max_events)

    def loss(self) -> LossCounters:
        """Exact loss counts now (the kernel's counters are read on each call)."""
        self._read_counters()
        with self._lock:
            kernel = dict(self._kernel_lost)
        return LossCounters(
            kernel=sum(kernel.values()),
            kernel_by_kind=tuple(sorted(kernel.items())),
            queue=self._delivery.dropped,
            decode=self._decode_errors,
            consumer=self._delivery.consumer_errors,
        )

    def status(self) -> SensorStatus:
        loss = self.loss()
        with self._lock:
            state = self._state
            reasons = list(self._reasons)
            filtered = self._kernel_filtered
            self._loss_window.observe(loss.total)  # queue drops need no kernel read
            loss_reason = self._loss_window.reason()
        stats = self._delivery.stats(self._started_ns, self._started_mono_ns, filtered)
        if state in (SensorState.HEALTHY, SensorState.DEGRADED):
            last_poll = stats.last_poll_ns
            if last_poll is not None and time.time_ns() - last_poll > _STALL_NS:
                state = SensorState.DEGRADED
                reasons.append("poll loop stalled for more than 5 s")
            if loss_reason is not None:
                # Constant text: the counts go to loss reports (alpha.sensors.health).
                state = SensorState.DEGRADED
                reasons.append(loss_reason)
        return SensorStatus(self.mode, state, tuple(reasons), loss, stats, self._probes)
