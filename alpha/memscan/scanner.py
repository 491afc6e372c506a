"""Memory forensics over /proc: what a scan finds, the scanner, dedup and the scheduler.

A scan of one process reads, through one descriptor of `/proc/PID` (see `procfs`): `status`
(TracerPid, ids, kernel thread), the `exe` link, the executable lines of `maps`, and `environ`
(bounded, for LD_PRELOAD). Everything else (stat, cmdline, cwd, cgroup, ancestors) is read only
for a process with a finding. Kernel threads are skipped after the status read.

Each offending mapping is reported under exactly one kind, so a shellcode stager is one alert:

- writable_executable: any mapping with both w and x (anonymous or not: a JIT, a stager, an
  executable stack from an `execstack` binary, which is rwx [stack]);
- anonymous_executable: an executable, not writable mapping backed by no file on disk (anonymous
  memory, [heap], [anon:name], a memfd or shared memory other than the executable itself) - the
  W^X pattern of writing code then mprotect'ing it to r-x. The kernel's own code pages
  ([vdso], [vsyscall], [uprobes]) are in every process and never count;
- memfd_executable: the executable itself is a memfd (`/memfd:NAME (deleted)`); its mappings;
- deleted_executable: the executable, or an executable mapping of a library, whose file was
  deleted (after a package upgrade, as well as a dropper covering its tracks);
- traced: TracerPid is not 0 for the process or one of its threads, naming the tracer;
- ld_preload: LD_PRELOAD in the environment the program was started with, or a library listed in
  /etc/ld.so.preload that the process has mapped.

JIT runtimes map writable+executable and anonymous executable memory by design: the allowlist
names them by executable path (as the kernel reports it in the exe link, so a copy of `node` in
/tmp is not allowlisted), and only suppresses those two kinds.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import logging
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Final

from alpha.memscan import procfs
from alpha.memscan.procfs import (
    PROC,
    ExeLink,
    MapEntry,
    ProcessGone,
    ProcStatus,
)
from alpha.sensors.model import Ancestor, Kind, MemProtDetail, Observation, ProcessInfo
from alpha.sensors.proctable import (
    cgroup_path,
    container_of,
    make_exec_id,
    parse_cgroup_file,
    read_boot_id,
)
from mesh.errors import ConfigError

log = logging.getLogger(__name__)

_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
_MAX_ARGS_TEXT: Final = 4096
_PROT_WRITE: Final = 0x2
_PROT_EXEC: Final = 0x4
_UNSET_LOGINUID: Final = 4294967295

DEFAULT_JIT_ALLOWLIST: Final = (
    "/usr/lib/jvm/",  # a trailing slash: every executable below (each JDK's bin/java, jshell...)
    "/usr/bin/node",
    "/usr/bin/nodejs",
    "/usr/local/bin/node",
    "/usr/share/dotnet/dotnet",
    "/usr/lib/dotnet/dotnet",
    "/usr/bin/luajit",
    "/usr/lib/chromium/chromium",
    "/opt/google/chrome/chrome",
    "/usr/lib/firefox-esr/firefox-esr",
    "/usr/lib/firefox/firefox",
    "/usr/bin/pypy3",
    "/usr/bin/mono-sgen",
    "/usr/bin/qemu-system-x86_64",
    "/usr/bin/qemu-system-aarch64",
    # Not CPython: without the experimental JIT (3.13+, a build option) it maps no code at run
    # time; with it, add the interpreter's path here.
)


# --- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MemScanConfig:
    """The `[memscan]` section of Alpha's configuration (env: `QSC_ALPHA_MEMSCAN__<FIELD>`).

    Periodic rounds start every `interval` (+/- `jitter` of it, so a fleet does not scan in
    step) and scan `slice_size` processes at a time, pausing between slices so a round uses at
    most `max_cpu_fraction` of one core. On-exec scans run `exec_delay` after an exec (so the new
    image and its libraries are mapped); scans triggered by a W+X mmap/mprotect seen by the
    sensor (`syscall_scan`) run at most once per `rescan_interval` per exec_id; both are bounded
    by `exec_max_per_second` and `exec_max_pending` (beyond: dropped and counted).
    """

    enabled: bool = True  # periodic and triggered scans; on-demand ones are always served
    interval: timedelta = timedelta(seconds=60)
    jitter: float = 0.1
    initial_delay: timedelta = timedelta(seconds=1)
    slice_size: int = 64
    max_cpu_fraction: float = 0.05
    exec_scan: bool = True
    syscall_scan: bool = True
    exec_delay: timedelta = timedelta(milliseconds=200)
    rescan_interval: timedelta = timedelta(seconds=10)
    exec_max_per_second: float = 100.0
    exec_max_pending: int = 1024
    jit_allowlist: tuple[str, ...] = DEFAULT_JIT_ALLOWLIST
    max_regions: int = 16  # offending mappings carried per finding (the rest: regions_truncated)
    environ_max_bytes: int = 256 * 1024
    maps_max_bytes: int = 64 * 1024 * 1024
    check_threads: bool = True  # TracerPid of every thread: a tracer may attach to one thread
    ld_so_preload: Path = Path("/etc/ld.so.preload")
    ancestry_depth: int = 8
    dedup_max_entries: int = 65536

    def __post_init__(self) -> None:
        if self.interval < timedelta(seconds=1):
            raise ConfigError("interval", "at least 1s")
        if not 0 <= self.jitter < 1:
            raise ConfigError("jitter", "a fraction of the interval, from 0 to below 1")
        if not 0 < self.max_cpu_fraction <= 1:
            raise ConfigError("max_cpu_fraction", "above 0 and at most 1")
        if self.exec_max_per_second <= 0:
            raise ConfigError("exec_max_per_second", "above 0")
        for name in ("initial_delay", "exec_delay", "rescan_interval"):
            if getattr(self, name) < timedelta(0):
                raise ConfigError(name, "not negative")
        for name in (
            "slice_size",
            "exec_max_pending",
            "max_regions",
            "environ_max_bytes",
            "maps_max_bytes",
            "dedup_max_entries",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(name, "at least 1")
        if not 0 <= self.ancestry_depth <= 64:
            raise ConfigError("ancestry_depth", "between 0 and 64")
        for entry in self.jit_allowlist:
            if not entry.startswith("/") or entry == "/":
                raise ConfigError("jit_allowlist", f"{entry!r}: an absolute path, not /")


class JitAllowlist:
    """Executable paths of JIT runtimes. An entry ending in "/" allows every executable below that
    directory, any other entry that exact file. Entries are matched as written and with symlinks
    resolved (the exe link always shows the resolved path: /usr/bin/java is
    /usr/lib/jvm/.../bin/java). A deleted or memfd executable is never allowlisted."""

    def __init__(self, entries: Iterable[str]) -> None:
        exact: set[str] = set()
        prefixes: set[str] = set()
        for entry in entries:
            for form in {entry, os.path.realpath(entry) + ("/" if entry.endswith("/") else "")}:
                (prefixes if form.endswith("/") else exact).add(form)
        self._exact = frozenset(exact)
        self._prefixes = tuple(sorted(prefixes))

    def allows(self, exe: str) -> bool:
        if not exe or exe.endswith(procfs.DELETED_SUFFIX) or exe.startswith(procfs.MEMFD_PREFIX):
            return False
        return exe in self._exact or exe.startswith(self._prefixes)


# --- what a scan finds ------------------------------------------------------------------------


class ThreatKind(enum.StrEnum):
    """As `qsc.common.v1.MemoryThreatKind` and the rule field `mem.kind`."""

    WRITABLE_EXECUTABLE = "writable_executable"
    ANONYMOUS_EXECUTABLE = "anonymous_executable"
    MEMFD_EXECUTABLE = "memfd_executable"
    DELETED_EXECUTABLE = "deleted_executable"
    TRACED = "traced"
    LD_PRELOAD = "ld_preload"


JIT_KINDS: Final = frozenset({ThreatKind.WRITABLE_EXECUTABLE, ThreatKind.ANONYMOUS_EXECUTABLE})


class Trigger(enum.StrEnum):
    """As `qsc.common.v1.MemoryScanTrigger` and the rule field `mem.trigger`."""

    PERIODIC = "periodic"
    EXEC = "exec"
    ON_DEMAND = "on_demand"
    SYSCALL = "syscall"


@dataclass(frozen=True, slots=True)
class ScannedProcess:
    """The process a finding is about: `info` from the sensor's process table when the scanner
    was given one (same exec_id and ancestry as the sensor's events), else built from /proc."""

    info: ProcessInfo
    status: ProcStatus  # at scan time: effective and saved ids, threads
    auid: int | None  # login uid; None when unset or unreadable
    args_truncated: bool = False


@dataclass(frozen=True, slots=True)
class TracerInfo:
    pid: int
    comm: str
    exe: str
    uid: int | None
    exec_id: str
    start_boot_ns: int  # 0 when not known
    tid: int  # the traced thread (the process itself, or one of its threads)


@dataclass(frozen=True, slots=True)
class Finding:
    kind: ThreatKind
    trigger: Trigger
    process: ScannedProcess
    time_ns: int  # wall clock of the scan
    regions: tuple[MapEntry, ...] = ()  # at most max_regions
    regions_truncated: bool = False
    tracer: TracerInfo | None = None
    preloaded: tuple[str, ...] = ()
    preload_sources: tuple[str, ...] = ()  # "environ" and/or the ld.so.preload path
    allowlisted: bool = False
    # What makes this finding "the same" for dedup: every offending item, before truncation.
    identity: frozenset[Hashable] = field(default=frozenset(), compare=False)

    @property
    def pid(self) -> int:
        return self.process.info.pid

    @property
    def exec_id(self) -> str:
        return self.process.info.exec_id


class Outcome(enum.StrEnum):
    SCANNED = "scanned"
    GONE = "gone"  # exited before or during the scan
    DENIED = "denied"  # /proc refused access
    KERNEL_THREAD = "kernel_thread"
    ERROR = "error"  # an unexpected read or parse failure; logged


@dataclass(frozen=True, slots=True)
class PidScan:
    pid: int
    outcome: Outcome
    findings: tuple[Finding, ...] = ()
    error: str = ""


@dataclass(frozen=True, slots=True)
class ScanResult:
    """Totals of a scan of many processes. `skipped` counts processes that exited during the
    scan or that /proc refused (`denied` of them); kernel threads are neither."""

    findings: tuple[Finding, ...]
    scanned: int
    skipped: int
    denied: int
    errors: int
    kernel_threads: int
    duration_s: float
    missing: tuple[int, ...] = ()  # requested pids that did not exist

    @staticmethod
    def collect(
        scans: Iterable[PidScan], duration_s: float, missing: Sequence[int] = ()
    ) -> ScanResult:
        findings: list[Finding] = []
        counts = dict.fromkeys(Outcome, 0)
        for scan in scans:
            counts[scan.outcome] += 1
            findings.extend(scan.findings)
        return ScanResult(
            findings=tuple(findings),
            scanned=counts[Outcome.SCANNED],
            skipped=counts[Outcome.GONE] + counts[Outcome.DENIED],
            denied=counts[Outcome.DENIED],
            errors=counts[Outcome.ERROR],
            kernel_threads=counts[Outcome.KERNEL_THREAD],
            duration_s=duration_s,
            missing=tuple(missing),
        )


# --- the scanner ------------------------------------------------------------------------------

ProcessLookup = Callable[[int], ProcessInfo | None]
MISSING: Final = "no such process"  # PidScan.error when /proc/PID did not exist at all


@dataclass(frozen=True, slots=True)
class _PreloadFile:
    key: tuple[int, int, int, int]  # (dev, ino, size, mtime_ns): reread only when it changes
    libs: tuple[str, ...]
    match: frozenset[str]  # the entries, resolved too
    bare: frozenset[str]  # entries without a slash: ld.so searches them, match on the basename


_NO_PRELOAD_FILE: Final = _PreloadFile((0, 0, 0, 0), (), frozenset(), frozenset())


@dataclass(frozen=True, slots=True)
class _Raw:
    """A kind found in one process, before the process facts are read."""

    kind: ThreatKind
    regions: tuple[MapEntry, ...]
    identity: frozenset[Hashable]
    libs: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()


class MemoryScanner:
    """Scans processes under a proc root (a parameter, so tests use a fake tree). Thread-safe:
    the scheduler's thread and on-demand scans may run at once."""

    def __init__(
        self,
        config: MemScanConfig | None = None,
        *,
        proc: Path = PROC,
        process_lookup: ProcessLookup | None = None,
        boot_id: str | None = None,
    ) -> None:
        self.config = config or MemScanConfig()
        self.proc = proc
        self._lookup = process_lookup
        self._boot_id = boot_id if boot_id is not None else read_boot_id(proc)
        self.allowlist = JitAllowlist(self.config.jit_allowlist)
        self._preload = _NO_PRELOAD_FILE
        self._preload_lock = threading.Lock()

    # --- many processes

    def list_pids(self) -> list[int]:
        try:
            return procfs.list_pids(self.proc)
        except OSError:
            log.exception("cannot list %s", self.proc)
            return []

    def scan_all(
        self, trigger: Trigger = Trigger.PERIODIC, *, include_allowlisted: bool = False
    ) -> ScanResult:
        """Every process now. Never raises for a process's sake: each outcome is counted."""
        return self.scan_pids(self.list_pids(), trigger, include_allowlisted=include_allowlisted)

    def scan_pids(
        self,
        pids: Iterable[int],
        trigger: Trigger = Trigger.ON_DEMAND,
        *,
        include_allowlisted: bool = False,
        report_missing: bool = False,
    ) -> ScanResult:
        """These processes; with `report_missing`, a pid gone before its scan is listed in
        `missing` instead of counted as skipped (it named nothing that existed)."""
        started = time.perf_counter()
        scans: list[PidScan] = []
        missing: list[int] = []
        for scan in self.scan_each(pids, trigger, include_allowlisted=include_allowlisted):
            if report_missing and scan.outcome is Outcome.GONE and scan.error == MISSING:
                missing.append(scan.pid)
            else:
                scans.append(scan)
        return ScanResult.collect(scans, time.perf_counter() - started, missing)

    def scan_each(
        self,
        pids: Iterable[int],
        trigger: Trigger = Trigger.PERIODIC,
        *,
        include_allowlisted: bool = False,
    ) -> list[PidScan]:
        """One outcome per pid, in order (the scheduler's slices)."""
        preload = self._preload_file()
        return [self._scan(pid, trigger, include_allowlisted, preload) for pid in pids]

    # --- one process

    def scan_pid(
        self,
        pid: int,
        trigger: Trigger = Trigger.ON_DEMAND,
        *,
        include_allowlisted: bool = False,
    ) -> PidScan:
        return self._scan(pid, trigger, include_allowlisted, self._preload_file())

    def exec_id_of(self, pid: int) -> str | None:
        """The current exec_id of a process, None when it is gone (for dedup pruning)."""
        if self._lookup is not None:
            info = self._lookup(pid)
            return info.exec_id if info is not None else None
        try:
            dirfd = procfs.open_pid_dir(self.proc, pid)
        except (ProcessGone, OSError):
            return None
        try:
            stat = procfs.read_small(dirfd, "stat", 4096).decode("utf-8", "surrogateescape")
            _, _, start = procfs.parse_stat_start(stat)
            return make_exec_id(self._boot_id, pid, start * 1_000_000_000 // _CLK_TCK)
        except (ProcessGone, OSError, ValueError, IndexError):
            return None
        finally:
            os.close(dirfd)

    def _scan(
        self, pid: int, trigger: Trigger, include_allowlisted: bool, preload: _PreloadFile
    ) -> PidScan:
        try:
            dirfd = procfs.open_pid_dir(self.proc, pid)
        except ProcessGone:
            return PidScan(pid, Outcome.GONE, error=MISSING)
        except PermissionError as exc:
            return PidScan(pid, Outcome.DENIED, error=str(exc))
        except OSError as exc:
            log.warning("memscan: cannot open /proc/%d: %s", pid, exc)
            return PidScan(pid, Outcome.ERROR, error=str(exc))
        try:
            return self._scan_open(dirfd, pid, trigger, include_allowlisted, preload)
        except ProcessGone:
            return PidScan(pid, Outcome.GONE)
        except PermissionError as exc:
            return PidScan(pid, Outcome.DENIED, error=str(exc))
        except (OSError, ValueError, IndexError, UnicodeDecodeError) as exc:
            log.warning("memscan: pid %d: %s", pid, exc)
            return PidScan(pid, Outcome.ERROR, error=str(exc))
        finally:
            os.close(dirfd)

    def _scan_open(
        self,
        dirfd: int,
        pid: int,
        trigger: Trigger,
        include_allowlisted: bool,
        preload: _PreloadFile,
    ) -> PidScan:
        cfg = self.config
        status = procfs.parse_status(
            procfs.read_small(dirfd, "status", 16384).decode("utf-8", "surrogateescape")
        )
        if status.kernel_thread:
            return PidScan(pid, Outcome.KERNEL_THREAD)
        if status.zombie or not status.has_mm:
            return PidScan(pid, Outcome.GONE)  # exited, or exiting (its memory already released)
        exe = ExeLink(procfs.readlink_at(dirfd, "exe"))
        entries = procfs.read_executable_maps(dirfd, cfg.maps_max_bytes, every=bool(preload.libs))
        try:
            env_libs = procfs.preload_from_environ(
                procfs.read_small(dirfd, "environ", cfg.environ_max_bytes)
            )
        except PermissionError:
            env_libs = ()  # maps was readable: still a scan, without this check
        tracer_pid, traced_tid = status.tracer_pid, pid
        if not tracer_pid and cfg.check_threads and status.threads > 1:
            tracer_pid, traced_tid = self._thread_tracer(dirfd, pid)

        raw = self._classify(dirfd, exe, entries, env_libs, preload)
        if tracer_pid:
            raw.append(_Raw(ThreatKind.TRACED, (), frozenset({("tracer", tracer_pid)})))
        allowed = self.allowlist.allows(exe.text)
        if not include_allowlisted:
            raw = [r for r in raw if not (allowed and r.kind in JIT_KINDS)]
        if not raw:
            return PidScan(pid, Outcome.SCANNED)

        process = self._process(dirfd, pid, status, exe.text)
        now = time.time_ns()
        findings = [
            Finding(
                kind=r.kind,
                trigger=trigger,
                process=process,
                time_ns=now,
                regions=r.regions[: cfg.max_regions],
                regions_truncated=len(r.regions) > cfg.max_regions,
                tracer=self._tracer(tracer_pid, traced_tid)
                if r.kind is ThreatKind.TRACED
                else None,
                preloaded=r.libs,
                preload_sources=r.sources,
                allowlisted=allowed and r.kind in JIT_KINDS,
                identity=r.identity,
            )
            for r in raw
        ]
        return PidScan(pid, Outcome.SCANNED, tuple(findings))

    def _classify(
        self,
        dirfd: int,
        exe: ExeLink,
        entries: list[MapEntry],
        env_libs: tuple[str, ...],
        preload: _PreloadFile,
    ) -> list[_Raw]:
        """Every kind found in the mappings, the exe link and the preload lists."""
        out: list[_Raw] = []

        def add(kind: ThreatKind, regions: list[MapEntry], extra: Iterable[Hashable] = ()) -> None:
            ident: set[Hashable] = {(r.start, r.perms, r.path) for r in regions}
            ident.update(extra)
            out.append(_Raw(kind, tuple(regions), frozenset(ident)))

        # A name can end in " (deleted)" or start with "/memfd:" on purpose: believe the link
        # only when the file really has no name left (st_nlink 0).
        memfd = exe.memfd and self._unlinked(dirfd)
        deleted = exe.deleted and self._unlinked(dirfd)
        wx = [e for e in entries if e.writable]
        if wx:
            add(ThreatKind.WRITABLE_EXECUTABLE, wx)
        own = exe.text if memfd else None
        anon = [e for e in entries if not e.writable and e.anonymous and e.path != own]
        if anon:
            add(ThreatKind.ANONYMOUS_EXECUTABLE, anon)
        if memfd:
            mine = [e for e in entries if e.path == exe.text]
            add(ThreatKind.MEMFD_EXECUTABLE, mine, [("exe", exe.text)])
        gone = [e for e in entries if e.deleted and not e.anonymous]
        if deleted or gone:
            gone.sort(key=lambda e: e.path != exe.text)  # the executable's own mappings first
            add(ThreatKind.DELETED_EXECUTABLE, gone, [("exe", exe.text)] if deleted else [])
        libs = list(env_libs)
        sources = ["environ"] if env_libs else []
        if preload.libs:
            source = str(self.config.ld_so_preload)
            for path in dict.fromkeys(e.path for e in entries):
                if path in preload.match or os.path.basename(path) in preload.bare:
                    if path not in libs:
                        libs.append(path)
                    if source not in sources:
                        sources.append(source)
        if libs:
            ident = frozenset(("lib", lib) for lib in libs)
            out.append(_Raw(ThreatKind.LD_PRELOAD, (), ident, tuple(libs), tuple(sources)))
        return out

    def _unlinked(self, dirfd: int) -> bool:
        try:
            return os.stat("exe", dir_fd=dirfd).st_nlink == 0
        except OSError:
            return True  # cannot tell (a fake tree, a race): trust the link text

    def _thread_tracer(self, dirfd: int, pid: int) -> tuple[int, int]:
        """(tracer pid, traced tid) of the first traced thread, or (0, pid)."""
        try:
            taskfd = os.open("task", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError:
            return 0, pid
        try:
            for name in os.listdir(taskfd):
                if not name.isdigit() or int(name) == pid:
                    continue
                try:
                    text = procfs.read_small(taskfd, f"{name}/status", 16384)
                    tracer = procfs.parse_tracer_pid(text.decode("utf-8", "surrogateescape"))
                except (ProcessGone, OSError, ValueError):
                    continue  # the thread exited: not an error
                if tracer:
                    return tracer, int(name)
            return 0, pid
        finally:
            os.close(taskfd)

    # --- facts about a process with findings

    def _process(self, dirfd: int, pid: int, status: ProcStatus, exe: str) -> ScannedProcess:
        auid = _read_int(dirfd, "loginuid")
        if auid == _UNSET_LOGINUID:
            auid = None
        if self._lookup is not None:
            info = self._lookup(pid)
            if info is not None:
                return ScannedProcess(info, status, auid)
        comm, ppid, start_ticks = procfs.parse_stat_start(
            procfs.read_small(dirfd, "stat", 4096).decode("utf-8", "surrogateescape")
        )
        start_ns = start_ticks * 1_000_000_000 // _CLK_TCK
        raw = _read_optional(dirfd, "cmdline", _MAX_ARGS_TEXT + 1)
        args = tuple(
            a.decode("utf-8", "backslashreplace") for a in raw[:_MAX_ARGS_TEXT].split(b"\0") if a
        )
        cgroup_lines = parse_cgroup_file(
            _read_optional(dirfd, "cgroup", 65536).decode("utf-8", "backslashreplace")
        )
        runtime, container = container_of(p for _, p in cgroup_lines)
        ancestry = self._ancestry(ppid)
        info = ProcessInfo(
            pid=pid,
            ppid=ppid,
            exec_id=make_exec_id(self._boot_id, pid, start_ns),
            parent_exec_id=ancestry[0].exec_id if ancestry else "",
            comm=comm,
            exe=exe,
            args=args,
            cwd=_readlink_optional(dirfd, "cwd"),
            uid=status.uids[0],
            gid=status.gids[0],
            euid=status.uids[1],
            start_boot_ns=start_ns,
            cgroup=cgroup_path(cgroup_lines),
            container_id=container,
            container_runtime=runtime,
            ancestry=ancestry[: self.config.ancestry_depth],
        )
        return ScannedProcess(info, status, auid, len(raw) > _MAX_ARGS_TEXT)

    def _ref(self, pid: int) -> tuple[str, str, int, int | None, int] | None:
        """(comm, exe, start ns, uid, ppid) of another process, or None when gone."""
        try:
            dirfd = procfs.open_pid_dir(self.proc, pid)
        except (ProcessGone, OSError):
            return None
        try:
            comm, ppid, start = procfs.parse_stat_start(
                procfs.read_small(dirfd, "stat", 4096).decode("utf-8", "surrogateescape")
            )
            uid: int | None = None
            try:
                text = procfs.read_small(dirfd, "status", 16384).decode("utf-8", "surrogateescape")
                uid = procfs.parse_status(text).uids[0]
            except (ProcessGone, OSError, ValueError):
                pass
            return (
                comm,
                _readlink_optional(dirfd, "exe"),
                start * 1_000_000_000 // _CLK_TCK,
                uid,
                ppid,
            )
        except (ProcessGone, OSError, ValueError, IndexError):
            return None
        finally:
            os.close(dirfd)

    def _ancestry(self, ppid: int) -> tuple[Ancestor, ...]:
        out: list[Ancestor] = []
        pid = ppid
        while pid > 0 and len(out) < self.config.ancestry_depth:
            ref = self._ref(pid)
            if ref is None:
                break
            comm, exe, start_ns, _, parent = ref
            out.append(Ancestor(make_exec_id(self._boot_id, pid, start_ns), pid, comm, exe))
            pid = parent
        return tuple(out)

    def _tracer(self, tracer_pid: int, tid: int) -> TracerInfo:
        if self._lookup is not None:
            info = self._lookup(tracer_pid)
            if info is not None:
                return TracerInfo(
                    tracer_pid, info.comm, info.exe, info.uid, info.exec_id, info.start_boot_ns, tid
                )
        ref = self._ref(tracer_pid)
        if ref is None:  # the tracer is in another pid namespace, or just exited
            return TracerInfo(tracer_pid, "", "", None, "", 0, tid)
        comm, exe, start_ns, uid, _ = ref
        exec_id = make_exec_id(self._boot_id, tracer_pid, start_ns)
        return TracerInfo(tracer_pid, comm, exe, uid, exec_id, start_ns, tid)

    # --- /etc/ld.so.preload

    def _preload_file(self) -> _PreloadFile:
        path = self.config.ld_so_preload
        try:
            st = os.stat(path)
        except OSError:
            return _NO_PRELOAD_FILE  # absent: the usual case
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._preload_lock:
            if self._preload.key == key:
                return self._preload
            try:
                libs = procfs.parse_ld_so_preload(path.read_text("utf-8", "surrogateescape"))
            except OSError as exc:
                log.warning("memscan: cannot read %s: %s", path, exc)
                return _NO_PRELOAD_FILE
            match = {lib for lib in libs if "/" in lib}
            match |= {os.path.realpath(lib) for lib in match}
            bare = frozenset(lib for lib in libs if "/" not in lib)
            self._preload = _PreloadFile(key, libs, frozenset(match), bare)
            return self._preload


def _read_optional(dirfd: int, name: str, limit: int) -> bytes:
    try:
        return procfs.read_small(dirfd, name, limit)
    except (ProcessGone, OSError):
        return b""


def _readlink_optional(dirfd: int, name: str) -> str:
    try:
        return procfs.readlink_at(dirfd, name)
    except (ProcessGone, OSError):
        return ""


def _read_int(dirfd: int, name: str) -> int | None:
    try:
        return int(procfs.read_small(dirfd, name, 64))
    except (ProcessGone, OSError, ValueError):
        return None


# --- dedup ------------------------------------------------------------------------------------


class Deduper:
    """Reports a finding once per (exec_id, kind), and again when it holds something new (a new
    region, another tracer, another library); things going away are not news. Bounded: the
    oldest entries go first, and `prune` forgets processes that exited or exec'd."""

    def __init__(self, max_entries: int = 65536) -> None:
        self._max = max_entries
        self._seen: OrderedDict[tuple[str, ThreatKind], tuple[int, frozenset[Hashable]]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()
        self.suppressed = 0

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, findings: Iterable[Finding]) -> list[Finding]:
        """The findings to report; they are recorded as reported."""
        out: list[Finding] = []
        with self._lock:
            for finding in findings:
                key = (finding.exec_id, finding.kind)
                known = self._seen.get(key)
                if known is not None and finding.identity <= known[1]:
                    self.suppressed += 1
                    continue
                union = finding.identity | (known[1] if known else frozenset())
                self._seen[key] = (finding.pid, union)
                self._seen.move_to_end(key)
                while len(self._seen) > self._max:
                    self._seen.popitem(last=False)
                out.append(finding)
        return out

    def prune(self, exec_id_of: Callable[[int], str | None]) -> int:
        """Forgets entries whose process is gone or runs another program; returns how many."""
        with self._lock:
            entries = [(key, pid) for key, (pid, _) in self._seen.items()]
        current: dict[int, str | None] = {}
        stale = []
        for key, pid in entries:
            if pid not in current:
                current[pid] = exec_id_of(pid)
            if current[pid] != key[0]:
                stale.append(key)
        with self._lock:
            for key in stale:
                self._seen.pop(key, None)
        return len(stale)


# --- the scheduler ----------------------------------------------------------------------------

FindingsCallback = Callable[[list[Finding]], None]


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    rounds: int = 0
    last_round: ScanResult | None = None
    last_round_end_ns: int | None = None  # wall clock: proves the scheduler is alive
    triggered_scans: int = 0  # on-exec and syscall scans run
    triggered_dropped: int = 0  # refused: queue full or over exec_max_per_second
    triggered_coalesced: int = 0  # already pending or scanned within rescan_interval
    reported: int = 0
    duplicates: int = 0
    callback_errors: int = 0
    worker_errors: int = 0  # unexpected failures of the scan thread (logged), which goes on


@dataclass(order=True, slots=True)
class _Pending:
    due: float
    seq: int
    pid: int = field(compare=False)
    key: tuple[str, Trigger] = field(compare=False)


class ScanScheduler:
    """Runs periodic rounds and triggered scans on one thread and hands new findings (deduped,
    allowlisted ones left out) to `on_findings`, called from that thread.

    `observe(obs)` / `observe_batch(batch)` is the on-exec hook: cheap enough to call with every
    sensor batch (a kind test and, for execs, a heap push)."""

    def __init__(
        self,
        scanner: MemoryScanner,
        on_findings: FindingsCallback,
        *,
        dedup: Deduper | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.scanner = scanner
        self.config = scanner.config
        self.dedup = dedup or Deduper(self.config.dedup_max_entries)
        self._on_findings = on_findings
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._pending_keys: set[tuple[str, Trigger]] = set()
        self._recent: OrderedDict[tuple[str, Trigger], float] = OrderedDict()
        self._seq = 0
        self._tokens = self.config.exec_max_per_second
        self._tokens_at = clock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stats = SchedulerStats()

    # --- lifecycle

    def start(self) -> None:
        """Starts the scan thread; a no-op when `enabled` is false (ScanMemory still works)."""
        if self._thread is not None or not self.config.enabled:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="qsc-memscan", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> ScanScheduler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> SchedulerStats:
        with self._cond:
            return dataclasses.replace(self._stats, duplicates=self.dedup.suppressed)

    # --- triggers

    def observe(self, obs: Observation) -> None:
        kind = obs.kind
        if kind is Kind.EXEC:
            if self.config.exec_scan:
                self.request_scan(obs.pid, _exec_id(obs), Trigger.EXEC)
        elif kind is Kind.MEMPROT and self.config.syscall_scan:
            detail = obs.detail
            wx = _PROT_WRITE | _PROT_EXEC
            if isinstance(detail, MemProtDetail) and detail.prot & wx == wx:
                self.request_scan(obs.pid, _exec_id(obs), Trigger.SYSCALL)

    def observe_batch(self, batch: Iterable[Observation]) -> None:
        for obs in batch:
            if obs.kind is Kind.EXEC or obs.kind is Kind.MEMPROT:
                self.observe(obs)

    def request_scan(self, pid: int, exec_id: str, trigger: Trigger = Trigger.EXEC) -> bool:
        """Schedules a scan of `pid` `exec_delay` from now; False when coalesced or dropped."""
        key = (exec_id or f"pid:{pid}", trigger)
        with self._cond:
            now = self._clock()
            last = self._recent.get(key)
            rescan = self.config.rescan_interval.total_seconds()
            if key in self._pending_keys or (last is not None and now - last < rescan):
                self._bump("triggered_coalesced")
                return False
            rate = self.config.exec_max_per_second
            self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
            self._tokens_at = now
            if len(self._pending) >= self.config.exec_max_pending or self._tokens < 1:
                self._bump("triggered_dropped")
                return False
            self._tokens -= 1
            self._recent[key] = now
            self._recent.move_to_end(key)
            while len(self._recent) > self.config.dedup_max_entries:
                self._recent.popitem(last=False)
            self._seq += 1
            due = now + self.config.exec_delay.total_seconds()
            heapq.heappush(self._pending, _Pending(due, self._seq, pid, key))
            self._pending_keys.add(key)
            self._cond.notify_all()
            return True

    # --- the worker

    def _bump(self, name: str, n: int = 1) -> None:
        # Under self._cond.
        self._stats = dataclasses.replace(self._stats, **{name: getattr(self._stats, name) + n})

    def _next_round_delay(self) -> float:
        interval = self.config.interval.total_seconds()
        return interval * (1 + self._rng.uniform(-self.config.jitter, self.config.jitter))

    def _run(self) -> None:
        cfg = self.config
        next_round = self._clock() + cfg.initial_delay.total_seconds()
        round_pids: list[int] = []
        round_scans: list[PidScan] = []
        round_started = 0.0
        round_busy = 0.0
        next_slice = 0.0
        in_round = False
        while True:
            due: list[_Pending] = []
            do_slice = list_pids = False
            with self._cond:
                while not self._stopping:
                    now = self._clock()
                    while self._pending and self._pending[0].due <= now:
                        item = heapq.heappop(self._pending)
                        self._pending_keys.discard(item.key)
                        due.append(item)
                    if due:
                        break
                    if not in_round and now >= next_round:
                        in_round = True
                        round_pids, round_scans = [], []
                        round_started, round_busy, next_slice = now, 0.0, now
                        do_slice = list_pids = True
                        break
                    if in_round and now >= next_slice:
                        do_slice = True
                        break
                    wake = next_slice if in_round else next_round
                    if self._pending:
                        wake = min(wake, self._pending[0].due)
                    self._cond.wait(max(0.0, wake - now))
                if self._stopping:
                    return
            try:
                for item in due:
                    scan = self.scanner.scan_pid(item.pid, item.key[1])
                    with self._cond:
                        self._bump("triggered_scans")
                    self._report(scan.findings)
            except Exception:  # a bug must not silently end the scans: logged, counted, go on
                log.exception("memscan: triggered scan failed")
                with self._cond:
                    self._bump("worker_errors")
            if not do_slice:
                continue
            t0 = self._clock()
            if list_pids:  # outside the lock: request_scan must never wait on a /proc listing
                round_pids = self.scanner.list_pids()
            batch, round_pids = round_pids[: cfg.slice_size], round_pids[cfg.slice_size :]
            try:
                scans = self.scanner.scan_each(batch, Trigger.PERIODIC)
                round_scans.extend(scans)
                self._report([f for s in scans for f in s.findings])
            except Exception:  # as above: the round goes on with the next slice
                log.exception("memscan: periodic slice failed")
                with self._cond:
                    self._bump("worker_errors")
            spent = self._clock() - t0
            round_busy += spent
            # Pause so that busy time stays under max_cpu_fraction of the wall time.
            next_slice = self._clock() + spent * (1 - cfg.max_cpu_fraction) / cfg.max_cpu_fraction
            if round_pids:
                continue
            in_round = False
            self.dedup.prune(self.scanner.exec_id_of)
            result = ScanResult.collect(round_scans, round_busy)  # busy time, not the pauses
            with self._cond:
                self._stats = dataclasses.replace(
                    self._stats,
                    rounds=self._stats.rounds + 1,
                    last_round=result,
                    last_round_end_ns=time.time_ns(),
                )
            next_round = max(round_started + self._next_round_delay(), self._clock())
            log.debug(
                "memscan round: %d scanned, %d skipped, %d findings in %.1f ms",
                result.scanned,
                result.skipped,
                len(result.findings),
                result.duration_s * 1000,
            )

    def _report(self, findings: Sequence[Finding]) -> None:
        if not findings:
            return
        new = self.dedup.admit(f for f in findings if not f.allowlisted)
        if not new:
            return
        try:
            self._on_findings(new)
        except Exception:  # a consumer bug must not stop the scans; it is counted and logged
            log.exception("memscan: on_findings failed")
            with self._cond:
                self._bump("callback_errors")
            return
        with self._cond:
            self._bump("reported", len(new))


def _exec_id(obs: Observation) -> str:
    return obs.process.exec_id if obs.process is not None else ""
