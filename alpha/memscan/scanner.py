"""The memory scanner: one process, or all of them, over /proc; what it finds is in `model`.

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
  /etc/ld.so.preload that the process has mapped;
- backdoored_library: an executable mapping of a library known to be backdoored, by file name
  (`MemScanConfig.backdoored_libraries`: liblzma 5.6.0/5.6.1, CVE-2024-3094). maps names the
  real file, so a library loaded by its soname shows its versioned name; a mapping under a
  generic name (liblzma.so.5) whose path is a symlink is resolved. Also when deleted (a daemon
  started before the upgrade still runs that code): then reported here, not as deleted.

JIT runtimes map writable+executable and anonymous executable memory by design: the allowlist
names them by executable path (as the kernel reports it in the exe link, so a copy of `node` in
/tmp is not allowlisted), and only suppresses those two kinds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from alpha.memscan import procfs
from alpha.memscan.config import BackdooredLibraries, JitAllowlist, MemScanConfig
from alpha.memscan.model import (
    JIT_KINDS,
    Finding,
    Outcome,
    PidScan,
    ScannedProcess,
    ScanResult,
    ThreatKind,
    TracerInfo,
    Trigger,
)
from alpha.memscan.procfs import (
    PROC,
    ExeLink,
    MapEntry,
    ProcessGone,
    ProcStatus,
)
from alpha.sensors.model import Ancestor, ProcessInfo
from alpha.sensors.proctable import (
    cgroup_path,
    container_of,
    make_exec_id,
    parse_cgroup_file,
    read_boot_id,
)

log = logging.getLogger(__name__)

_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
_MAX_ARGS_TEXT: Final = 4096
_UNSET_LOGINUID: Final = 4294967295

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
    libraries: tuple[str, ...] = ()


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
        self.backdoored = BackdooredLibraries(self.config.backdoored_libraries)
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
        entries = procfs.read_executable_maps(
            dirfd, cfg.maps_max_bytes, every=bool(preload.libs), names=self.backdoored.watched
        )
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
                libraries=r.libraries,
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
        bad, libraries = self._backdoored(dirfd, entries)
        if bad:
            marks: set[Hashable] = {(r.start, r.perms, r.path) for r in bad}
            marks.update(("lib", x) for x in libraries)
            out.append(
                _Raw(ThreatKind.BACKDOORED_LIBRARY, tuple(bad), frozenset(marks), (), (), libraries)
            )
        gone = [e for e in entries if e.deleted and not e.anonymous and e not in bad]
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

    def _backdoored(
        self, dirfd: int, entries: list[MapEntry]
    ) -> tuple[list[MapEntry], tuple[str, ...]]:
        """The mappings of known-backdoored libraries, and those files (distinct, in order)."""
        known = self.backdoored
        if not known:
            return [], ()
        bad: list[MapEntry] = []
        files: dict[str, None] = {}
        resolved: dict[str, str] = {}
        for e in entries:
            if known.match(e.path):
                bad.append(e)
                files[e.path] = None
            elif e.path.startswith("/") and known.generic(e.path):
                if e.path not in resolved:
                    resolved[e.path] = procfs.resolve_link_at(dirfd, e.path)
                if known.match(resolved[e.path]):
                    bad.append(e)
                    files[resolved[e.path]] = None
        return bad, tuple(files)

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
