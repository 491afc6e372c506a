"""The memory scanner against a fake /proc tree: every finding kind, the JIT allowlist, skips and
counts, dedup, the scheduler (periodic, on-exec, rate limits), the converter (checked through the
rule fields and the default rules) and the ScanMemory core. Pure: no root, no live process."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from alpha.errors import AlphaInvalidArgumentError, AlphaNotFoundError
from alpha.memscan import (
    Deduper,
    Finding,
    JitAllowlist,
    MemoryScanner,
    MemScanConfig,
    Outcome,
    PidScan,
    ScanScheduler,
    ThreatKind,
    Trigger,
    convert,
)
from alpha.memscan.service import ScanMemoryCore
from alpha.rules import RuleEngine
from alpha.rules.fields import lookup
from alpha.sensors.model import (
    ExecDetail,
    Kind,
    MemProtDetail,
    Observation,
    ProcessInfo,
    Stdio,
)
from alpha.sensors.proctable import make_exec_id
from mesh.config import config_from_dict
from mesh.errors import ConfigError
from mesh.status import to_status
from qsc.alpha.v1 import alpha_service_pb2
from qsc.common.v1 import classification_pb2, event_pb2, memory_details_pb2

BOOT = "b00t"
TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"


def maps_line(start: int, perms: str, path: str = "", inode: int | None = None) -> str:
    if inode is None:
        inode = 0 if not path or path.startswith("[") else 1234
    dev = "00:00" if inode == 0 else "fe:00"
    return f"{start:x}-{start + 0x1000:x} {perms} 00000000 {dev} {inode}".ljust(73) + f" {path}\n"


BASE_MAPS = (
    maps_line(0x555500000000, "r-xp", "/usr/bin/prog")
    + maps_line(0x555500100000, "rw-p", "[heap]")
    + maps_line(0x7F0000000000, "r-xp", LIBC)
    + maps_line(0x7FFF00000000, "r-xp", "[vdso]")
    + maps_line(0xFFFFFFFFFF600000, "--xp", "[vsyscall]")
)


def make_proc(
    root: Path,
    pid: int,
    *,
    name: str = "prog",
    exe: str | None = "/usr/bin/prog",
    maps: str = BASE_MAPS,
    ppid: int = 1,
    tracer: int = 0,
    threads: dict[int, int] | None = None,
    environ: bytes = b"PATH=/usr/bin\0",
    kthread: bool = False,
    state: str = "S (sleeping)",
    start: int = 100,
    args: tuple[str, ...] = ("prog", "--flag"),
    uid: int = 1000,
    has_mm: bool = True,
) -> Path:
    base = root / str(pid)
    base.mkdir(parents=True)
    vm = "VmSize:\t  1000 kB\n" if has_mm and not kthread else ""
    (base / "status").write_text(
        f"Name:\t{name}\nState:\t{state}\nTgid:\t{pid}\nPPid:\t{ppid}\nTracerPid:\t{tracer}\n"
        f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t100\t101\t100\t100\n"
        f"Kthread:\t{int(kthread)}\n{vm}Threads:\t{1 + len(threads or {})}\n"
    )
    fields = ["S", str(ppid)] + ["0"] * 17 + [str(start), "0", "0"]
    (base / "stat").write_text(f"{pid} ({name}) {' '.join(fields)}\n")
    (base / "maps").write_text("" if kthread else maps)
    (base / "environ").write_bytes(environ)
    (base / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in args))
    (base / "cgroup").write_text("0::/system.slice/prog.service\n")
    (base / "loginuid").write_text("1000")
    if exe is not None and not kthread:
        os.symlink(exe, base / "exe")
        os.symlink("/srv", base / "cwd")
    task = base / "task"
    task.mkdir()
    for tid, tid_tracer in {pid: tracer, **(threads or {})}.items():
        (task / str(tid)).mkdir()
        (task / str(tid) / "status").write_text(f"Name:\t{name}\nTracerPid:\t{tid_tracer}\n")
    return base


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    make_proc(root, 1, name="systemd", exe="/usr/lib/systemd/systemd", ppid=0, start=1)
    make_proc(root, 2, name="kthreadd", exe=None, ppid=0, kthread=True)
    (root / "sys/kernel").mkdir(parents=True)
    (root / "sys/kernel/pid_max").write_text("32768\n")
    return root


def config(tmp_path: Path, **kw: object) -> MemScanConfig:
    kw.setdefault("ld_so_preload", tmp_path / "ld.so.preload")  # absent unless a test writes it
    return MemScanConfig(**kw)  # type: ignore[arg-type]


def scanner(proc: Path, tmp_path: Path, **kw: object) -> MemoryScanner:
    return MemoryScanner(config(tmp_path, **kw), proc=proc, boot_id=BOOT)


def kinds(findings: tuple[Finding, ...] | list[Finding]) -> set[ThreatKind]:
    return {f.kind for f in findings}


# --- finding kinds ------------------------------------------------------------------------------


def test_clean_process_has_no_finding(proc: Path, tmp_path: Path) -> None:
    make_proc(proc, 100)
    scan = scanner(proc, tmp_path).scan_pid(100)
    assert scan.outcome is Outcome.SCANNED
    assert scan.findings == ()


def test_rwx_anonymous_is_one_writable_executable_finding(proc: Path, tmp_path: Path) -> None:
    make_proc(proc, 50, name="bash", exe="/usr/bin/bash", start=40)
    maps = BASE_MAPS + maps_line(0x7F1000000000, "rwxp")
    make_proc(proc, 100, maps=maps, ppid=50, start=300)
    (finding,) = scanner(proc, tmp_path).scan_pid(100, Trigger.PERIODIC).findings
    assert finding.kind is ThreatKind.WRITABLE_EXECUTABLE  # not also anonymous_executable
    assert finding.trigger is Trigger.PERIODIC
    assert not finding.allowlisted
    (region,) = finding.regions
    assert (region.start, region.perms, region.path) == (0x7F1000000000, "rwxp", "")
    info = finding.process.info
    assert (info.pid, info.ppid, info.comm, info.exe) == (100, 50, "prog", "/usr/bin/prog")
    assert info.args == ("prog", "--flag")
    assert info.cwd == "/srv"
    assert info.uid == 1000
    assert info.exec_id == make_exec_id(BOOT, 100, 300 * TICK_NS)
    assert info.parent_exec_id == make_exec_id(BOOT, 50, 40 * TICK_NS)
    assert [a.comm for a in info.ancestry] == ["bash", "systemd"]
    assert info.cgroup == "/system.slice/prog.service"
    assert finding.process.status.gids[1] == 101
    assert finding.process.auid == 1000


def test_rwx_file_backed_and_exec_stack(proc: Path, tmp_path: Path) -> None:
    maps = (
        BASE_MAPS
        + maps_line(0x7F2000000000, "rwxp", "/opt/app/libweird.so")
        + maps_line(0x7FFE00000000, "rwxp", "[stack]")
    )
    make_proc(proc, 100, maps=maps)
    (finding,) = scanner(proc, tmp_path).scan_pid(100).findings
    assert finding.kind is ThreatKind.WRITABLE_EXECUTABLE
    assert [r.path for r in finding.regions] == ["/opt/app/libweird.so", "[stack]"]


def test_anonymous_executable_w_xor_x(proc: Path, tmp_path: Path) -> None:
    maps = (
        BASE_MAPS
        + maps_line(0x7F3000000000, "r-xp")
        + maps_line(0x7F3000100000, "r-xp", "[anon:shellcode]")
        + maps_line(0x7F3000200000, "r-xp", "/memfd:lib (deleted)", inode=77)
        + maps_line(0x7F3000300000, "r-xs", "/dev/zero (deleted)", inode=78)
    )
    make_proc(proc, 100, maps=maps)
    (finding,) = scanner(proc, tmp_path).scan_pid(100).findings
    assert finding.kind is ThreatKind.ANONYMOUS_EXECUTABLE
    assert [r.path for r in finding.regions] == [
        "",
        "[anon:shellcode]",
        "/memfd:lib (deleted)",
        "/dev/zero (deleted)",
    ]  # never [vdso] or [vsyscall]


def test_memfd_executable(proc: Path, tmp_path: Path) -> None:
    exe = "/memfd:payload (deleted)"
    maps = maps_line(0x400000, "r-xp", exe, inode=1045) + maps_line(0x600000, "rw-p", exe, 1045)
    make_proc(proc, 100, exe=exe, maps=maps + BASE_MAPS)
    (finding,) = scanner(proc, tmp_path).scan_pid(100).findings
    assert finding.kind is ThreatKind.MEMFD_EXECUTABLE  # its own mappings are not "anonymous"
    assert [r.start for r in finding.regions] == [0x400000]
    assert finding.process.info.exe == exe


def test_deleted_executable_and_deleted_library(proc: Path, tmp_path: Path) -> None:
    exe = "/tmp/dropper (deleted)"
    maps = (
        maps_line(0x7F4000000000, "r-xp", "/usr/lib/libold.so (deleted)")
        + maps_line(0x400000, "r-xp", exe)
        + BASE_MAPS
    )
    make_proc(proc, 100, exe=exe, maps=maps)
    make_proc(proc, 101, maps=maps_line(0x7F4000000000, "r-xp", "/usr/lib/libold.so (deleted)"))
    sc = scanner(proc, tmp_path)
    (finding,) = sc.scan_pid(100).findings
    assert finding.kind is ThreatKind.DELETED_EXECUTABLE
    assert [r.path for r in finding.regions] == [exe, "/usr/lib/libold.so (deleted)"]
    assert convert.severity_of(finding) == classification_pb2.SEVERITY_MEDIUM
    (lib_only,) = sc.scan_pid(101).findings
    assert lib_only.kind is ThreatKind.DELETED_EXECUTABLE
    assert convert.severity_of(lib_only) == classification_pb2.SEVERITY_LOW  # package upgrade


def test_a_name_that_merely_ends_in_deleted_is_not_deleted(proc: Path, tmp_path: Path) -> None:
    real = tmp_path / "innocent (deleted)"
    real.write_text("#!/bin/sh\n")
    make_proc(proc, 100, exe=str(real))
    assert scanner(proc, tmp_path).scan_pid(100).findings == ()


def test_traced_names_the_tracer(proc: Path, tmp_path: Path) -> None:
    make_proc(proc, 90, name="gdb", exe="/usr/bin/gdb", start=70, uid=0)
    make_proc(proc, 100, tracer=90)
    (finding,) = scanner(proc, tmp_path).scan_pid(100).findings
    assert finding.kind is ThreatKind.TRACED
    tracer = finding.tracer
    assert tracer is not None
    assert (tracer.pid, tracer.comm, tracer.exe, tracer.uid, tracer.tid) == (
        90,
        "gdb",
        "/usr/bin/gdb",
        0,
        100,
    )
    assert tracer.exec_id == make_exec_id(BOOT, 90, 70 * TICK_NS)


def test_traced_thread_and_vanished_tracer(proc: Path, tmp_path: Path) -> None:
    make_proc(proc, 100, threads={101: 0, 102: 4321})  # 4321 does not exist (any more)
    (finding,) = scanner(proc, tmp_path).scan_pid(100).findings
    assert finding.tracer is not None
    assert (finding.tracer.pid, finding.tracer.tid, finding.tracer.comm) == (4321, 102, "")
    assert scanner(proc, tmp_path, check_threads=False).scan_pid(100).findings == ()


def test_ld_preload_from_environ(proc: Path, tmp_path: Path) -> None:
    make_proc(proc, 100, environ=b"A=1\0LD_PRELOAD=/tmp/hook.so:libx.so\0B=2\0")
    (finding,) = scanner(proc, tmp_path).scan_pid(100).findings
    assert finding.kind is ThreatKind.LD_PRELOAD
    assert finding.preloaded == ("/tmp/hook.so", "libx.so")
    assert finding.preload_sources == ("environ",)


def test_ld_preload_environ_bound(proc: Path, tmp_path: Path) -> None:
    make_proc(proc, 100, environ=b"X=" + b"a" * 5000 + b"\0LD_PRELOAD=/tmp/hook.so\0")
    assert scanner(proc, tmp_path, environ_max_bytes=4096).scan_pid(100).findings == ()
    assert scanner(proc, tmp_path).scan_pid(100).findings != ()


def test_ld_so_preload_counts_only_where_mapped(proc: Path, tmp_path: Path) -> None:
    preload = tmp_path / "ld.so.preload"
    preload.write_text("/usr/lib/libhook.so libbare.so\n")
    hooked = BASE_MAPS + maps_line(0x7F5000000000, "r-xp", "/usr/lib/libhook.so")
    bare = BASE_MAPS + maps_line(0x7F5000000000, "r-xp", "/lib/x86_64-linux-gnu/libbare.so")
    make_proc(proc, 100, maps=hooked, environ=b"LD_PRELOAD=/tmp/env.so\0")
    make_proc(proc, 101, maps=bare)
    make_proc(proc, 102)  # not mapped (a static binary, say): nothing to report
    sc = scanner(proc, tmp_path)
    (both,) = sc.scan_pid(100).findings
    assert both.preloaded == ("/tmp/env.so", "/usr/lib/libhook.so")
    assert both.preload_sources == ("environ", str(preload))
    assert sc.scan_pid(101).findings[0].preloaded == ("/lib/x86_64-linux-gnu/libbare.so",)
    assert sc.scan_pid(102).findings == ()
    preload.write_text("")  # emptied: re-read (size and mtime changed)
    assert sc.scan_pid(100).findings[0].preloaded == ("/tmp/env.so",)


def test_regions_are_bounded(proc: Path, tmp_path: Path) -> None:
    maps = BASE_MAPS + "".join(maps_line(0x7F6000000000 + i * 0x10000, "rwxp") for i in range(5))
    make_proc(proc, 100, maps=maps)
    (finding,) = scanner(proc, tmp_path, max_regions=3).scan_pid(100).findings
    assert len(finding.regions) == 3
    assert finding.regions_truncated
    assert len(finding.identity) == 5  # dedup still sees all of them


# --- the JIT allowlist --------------------------------------------------------------------------


def test_allowlist_by_executable_path(proc: Path, tmp_path: Path) -> None:
    rwx = BASE_MAPS + maps_line(0x7F1000000000, "rwxp") + maps_line(0x7F1000100000, "r-xp")
    make_proc(proc, 100, exe="/usr/bin/node", maps=rwx)
    make_proc(proc, 101, exe="/tmp/node", maps=rwx)  # a copy elsewhere: not the runtime
    make_proc(proc, 102, exe="/usr/lib/jvm/java-17/bin/java", maps=rwx)
    make_proc(proc, 103, exe="/usr/bin/node (deleted)", maps=rwx)
    make_proc(proc, 104, exe="/usr/bin/node", maps=rwx, environ=b"LD_PRELOAD=/x.so\0", tracer=1)
    sc = scanner(proc, tmp_path)
    assert sc.scan_pid(100).findings == ()
    allowed = sc.scan_pid(100, include_allowlisted=True).findings
    assert kinds(allowed) == {ThreatKind.WRITABLE_EXECUTABLE, ThreatKind.ANONYMOUS_EXECUTABLE}
    assert all(f.allowlisted for f in allowed)
    assert convert.severity_of(allowed[0]) == classification_pb2.SEVERITY_INFO
    assert kinds(sc.scan_pid(101).findings) == {
        ThreatKind.WRITABLE_EXECUTABLE,
        ThreatKind.ANONYMOUS_EXECUTABLE,
    }
    assert sc.scan_pid(102).findings == ()  # a directory entry: /usr/lib/jvm/
    assert ThreatKind.WRITABLE_EXECUTABLE in kinds(sc.scan_pid(103).findings)
    # Only the JIT kinds are suppressed.
    assert kinds(sc.scan_pid(104).findings) == {ThreatKind.LD_PRELOAD, ThreatKind.TRACED}


def test_allowlist_resolves_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "opt/runtime-1.2/bin/rt"
    real.parent.mkdir(parents=True)
    real.write_text("")
    link = tmp_path / "rt"
    link.symlink_to(real)
    allow = JitAllowlist([str(link), "/usr/lib/jvm/"])
    assert allow.allows(str(real))
    assert allow.allows(str(link))
    assert not allow.allows(str(real) + " (deleted)")
    assert not allow.allows("/memfd:/usr/lib/jvm/x (deleted)")
    assert not allow.allows("/usr/lib/jvmx/java")
    assert allow.allows("/usr/lib/jvm/j/bin/java")


# --- outcomes and counts ------------------------------------------------------------------------


def test_scan_all_counts(proc: Path, tmp_path: Path) -> None:
    make_proc(proc, 100, maps=BASE_MAPS + maps_line(0x7F1000000000, "rwxp"))
    make_proc(proc, 101, state="Z (zombie)", has_mm=False)  # exited, not yet reaped
    make_proc(proc, 102)
    (proc / "102" / "status").write_text("garbage\n")
    make_proc(proc, 103, exe=None)  # exe unreadable: exited under us
    make_proc(proc, 104, state="R (running)", has_mm=False)  # exiting: memory released
    result = scanner(proc, tmp_path).scan_all()
    assert [f.pid for f in result.findings] == [100]
    assert (result.scanned, result.skipped, result.errors, result.kernel_threads) == (2, 3, 1, 1)
    assert result.duration_s > 0
    missing = scanner(proc, tmp_path).scan_pids([100, 999], report_missing=True)
    assert missing.missing == (999,)
    assert missing.scanned == 1


def test_permission_denied_is_counted(
    proc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_proc(proc, 100)
    from alpha.memscan import procfs

    def deny(*args: object, **kw: object) -> list[procfs.MapEntry]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(procfs, "read_executable_maps", deny)
    result = scanner(proc, tmp_path).scan_all()
    assert (result.scanned, result.denied, result.skipped) == (0, 2, 2)


def test_process_lookup_supplies_identity(proc: Path, tmp_path: Path) -> None:
    make_proc(proc, 100, maps=BASE_MAPS + maps_line(0x7F1000000000, "rwxp"))
    info = ProcessInfo(
        pid=100,
        ppid=1,
        exec_id="from-the-table",
        parent_exec_id="parent",
        comm="prog",
        exe="/usr/bin/prog",
        args=("prog",),
        cwd="/",
        uid=1000,
        gid=100,
        euid=1000,
        start_boot_ns=5,
        cgroup="/",
        container_id="",
        container_runtime="",
    )
    sc = MemoryScanner(config(tmp_path), proc=proc, boot_id=BOOT, process_lookup={100: info}.get)
    assert sc.scan_pid(100).findings[0].exec_id == "from-the-table"
    assert sc.exec_id_of(100) == "from-the-table"
    assert sc.exec_id_of(5) is None


def test_config_validation_and_loading() -> None:
    for bad in (
        {"interval": timedelta(milliseconds=10)},
        {"jitter": 1.0},
        {"max_cpu_fraction": 0.0},
        {"slice_size": 0},
        {"jit_allowlist": ("node",)},
        {"exec_delay": timedelta(seconds=-1)},
    ):
        with pytest.raises(ConfigError):
            MemScanConfig(**bad)
    cfg = config_from_dict(
        MemScanConfig, {"interval": "30s", "jit_allowlist": ["/usr/bin/node"], "jitter": 0.2}
    )
    assert cfg.interval == timedelta(seconds=30)
    assert cfg.jit_allowlist == ("/usr/bin/node",)


# --- dedup --------------------------------------------------------------------------------------


def test_dedup_once_per_exec_and_kind_again_when_new(proc: Path, tmp_path: Path) -> None:
    one = BASE_MAPS + maps_line(0x7F1000000000, "rwxp")
    two = one + maps_line(0x7F1000100000, "rwxp")
    make_proc(proc, 100, maps=one)
    sc = scanner(proc, tmp_path)
    dedup = Deduper()
    assert len(dedup.admit(sc.scan_pid(100).findings)) == 1
    assert dedup.admit(sc.scan_pid(100).findings) == []
    (proc / "100" / "maps").write_text(two)
    assert len(dedup.admit(sc.scan_pid(100).findings)) == 1  # a new region: news
    (proc / "100" / "maps").write_text(one)
    assert dedup.admit(sc.scan_pid(100).findings) == []  # one went away: not news
    assert dedup.suppressed == 2
    # Another exec of the same pid (new start time): a new exec_id, reported again.
    (proc / "100" / "stat").write_text(
        (proc / "100" / "stat").read_text().replace(" 100 0 0", " 900 0 0")
    )
    assert len(dedup.admit(sc.scan_pid(100).findings)) == 1
    assert len(dedup) == 2
    assert dedup.prune(sc.exec_id_of) == 1  # the old exec's entry
    (proc / "100" / "status").unlink()
    os.unlink(proc / "100" / "stat")
    assert dedup.prune(sc.exec_id_of) == 1
    assert len(dedup) == 0


def test_dedup_is_bounded() -> None:
    dedup = Deduper(max_entries=2)
    for i in range(3):
        dedup.admit([_fake_finding(i)])
    assert len(dedup) == 2


def _fake_finding(pid: int) -> Finding:
    from alpha.memscan.model import ScannedProcess
    from alpha.memscan.procfs import ProcStatus

    info = ProcessInfo(pid, 1, f"e{pid}", "", "x", "/x", (), "/", 0, 0, 0, 0, "/", "", "")
    status = ProcStatus("x", "S", pid, 1, 0, (0, 0, 0, 0), (0, 0, 0, 0), 1, False, True)
    return Finding(
        ThreatKind.TRACED,
        Trigger.PERIODIC,
        ScannedProcess(info, status, None),
        0,
        identity=frozenset({("tracer", 9)}),
    )


# --- the scheduler ------------------------------------------------------------------------------


class Collector:
    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.event = threading.Event()

    def __call__(self, findings: list[Finding]) -> None:
        self.findings.extend(findings)
        self.event.set()

    def wait_for(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.findings) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.findings) >= count, self.findings


@pytest.fixture
def running() -> Iterator[list[ScanScheduler]]:
    started: list[ScanScheduler] = []
    yield started
    for sched in started:
        sched.stop()


def test_periodic_rounds_report_once_then_news(
    proc: Path, tmp_path: Path, running: list[ScanScheduler]
) -> None:
    for pid in range(100, 110):  # more than a slice
        make_proc(proc, pid)
    make_proc(proc, 120, maps=BASE_MAPS + maps_line(0x7F1000000000, "rwxp"))
    sc = scanner(
        proc,
        tmp_path,
        interval=timedelta(seconds=1),
        jitter=0.0,
        initial_delay=timedelta(0),
        slice_size=4,
        max_cpu_fraction=0.5,
    )
    got = Collector()
    sched = ScanScheduler(sc, got)
    running.append(sched)
    sched.start()
    got.wait_for(1)
    deadline = time.monotonic() + 5
    while sched.stats().rounds < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    stats = sched.stats()
    assert stats.rounds >= 2
    assert stats.duplicates >= 1
    assert stats.reported == 1
    assert stats.last_round is not None
    assert stats.last_round.scanned == 12
    assert got.findings[0].trigger is Trigger.PERIODIC
    (proc / "120" / "environ").write_bytes(b"LD_PRELOAD=/tmp/x.so\0")
    got.wait_for(2)
    assert got.findings[1].kind is ThreatKind.LD_PRELOAD


def _obs(kind: Kind, pid: int, exec_id: str, detail: ExecDetail | MemProtDetail) -> Observation:
    info = ProcessInfo(pid, 1, exec_id, "", "x", "/x", (), "/", 0, 0, 0, 0, "/", "", "")
    return Observation(kind, 0, 0, pid, pid, 1, 0, 0, 0, "x", "", 0, info, detail, "ebpf")


def _exec_detail() -> ExecDetail:
    u = Stdio("unknown")
    return ExecDetail("/x", "/x", (), False, "/", -100, 0, False, False, False, (u, u, u), 0)


def test_on_exec_and_syscall_triggers(
    proc: Path, tmp_path: Path, running: list[ScanScheduler]
) -> None:
    make_proc(proc, 100, maps=BASE_MAPS + maps_line(0x7F1000000000, "rwxp"))
    make_proc(proc, 101, environ=b"LD_PRELOAD=/x.so\0")
    sc = scanner(
        proc,
        tmp_path,
        initial_delay=timedelta(hours=1),  # no periodic round in this test
        exec_delay=timedelta(milliseconds=20),
    )
    got = Collector()
    sched = ScanScheduler(sc, got)
    running.append(sched)
    sched.start()
    sched.observe_batch([_obs(Kind.EXEC, 100, "e100", _exec_detail())])
    got.wait_for(1)
    assert got.findings[0].trigger is Trigger.EXEC
    assert got.findings[0].pid == 100
    # Per exec_id: a second exec trigger is coalesced.
    assert not sched.request_scan(100, "e100", Trigger.EXEC)
    # A W+X mprotect seen by the sensor: a syscall-triggered scan; R+X alone is ignored.
    sched.observe(_obs(Kind.MEMPROT, 101, "e101", MemProtDetail(0, 4096, 5, 0, -1)))
    sched.observe(_obs(Kind.MEMPROT, 101, "e101", MemProtDetail(0, 4096, 7, 0, -1)))
    got.wait_for(2)
    assert got.findings[1].trigger is Trigger.SYSCALL
    assert got.findings[1].pid == 101
    assert not sched.request_scan(101, "e101", Trigger.SYSCALL)  # within rescan_interval
    stats = sched.stats()
    assert stats.triggered_scans == 2
    assert stats.triggered_coalesced == 2


def test_trigger_rate_limits(proc: Path, tmp_path: Path) -> None:
    sc = scanner(proc, tmp_path, exec_max_per_second=2.0, exec_max_pending=3)
    now = [0.0]
    sched = ScanScheduler(sc, Collector(), clock=lambda: now[0])  # not started: queue only
    assert sched.request_scan(10, "a")
    assert sched.request_scan(11, "b")
    assert not sched.request_scan(12, "c")  # over 2 per second
    now[0] = 1.0
    assert sched.request_scan(12, "c")
    assert not sched.request_scan(13, "d")  # bucket refilled by 2, one used... pending is 3 now
    assert sched.stats().triggered_dropped == 2


def test_callback_errors_do_not_stop_scans(
    proc: Path, tmp_path: Path, running: list[ScanScheduler]
) -> None:
    make_proc(proc, 100, maps=BASE_MAPS + maps_line(0x7F1000000000, "rwxp"))
    make_proc(proc, 101, environ=b"LD_PRELOAD=/x.so\0")
    calls: list[int] = []

    def boom(findings: list[Finding]) -> None:
        calls.append(len(findings))
        raise RuntimeError("consumer bug")

    sc = scanner(proc, tmp_path, initial_delay=timedelta(hours=1), exec_delay=timedelta(0))
    sched = ScanScheduler(sc, boom)
    running.append(sched)
    sched.start()
    sched.request_scan(100, "a")
    sched.request_scan(101, "b")
    deadline = time.monotonic() + 5
    while sched.stats().callback_errors < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sched.stats().callback_errors == 2
    assert calls == [1, 1]


# --- the converter, through the rule fields and the default rules ------------------------------


def _event_for(proc: Path, tmp_path: Path, pid: int, **kw: object) -> event_pb2.Event:
    (finding,) = scanner(proc, tmp_path).scan_pid(pid, **kw).findings  # type: ignore[arg-type]
    return convert.finding_to_event(finding)


def test_event_fields_and_rules(proc: Path, tmp_path: Path) -> None:
    make_proc(proc, 100, maps=BASE_MAPS + maps_line(0x7F1000000000, "rwxp"))
    ev = _event_for(proc, tmp_path, 100)
    assert ev.WhichOneof("detail") == "memory_threat"
    assert ev.category == classification_pb2.CATEGORY_MEMORY
    assert ev.severity == classification_pb2.SEVERITY_HIGH
    assert ev.memory_threat.kind == memory_details_pb2.MEMORY_THREAT_KIND_WRITABLE_EXECUTABLE
    assert ev.memory_threat.trigger == memory_details_pb2.MEMORY_SCAN_TRIGGER_ON_DEMAND
    assert ev.process.pid == 100
    assert ev.process.egid == 101
    assert ev.process.auid == 1000
    assert ev.process.exec_id == make_exec_id(BOOT, 100, 100 * TICK_NS)
    assert ev.process.HasField("start_time")
    assert ev.HasField("time")
    assert "writable+executable memory in prog (pid 100" in ev.summary
    assert lookup("mem.kind").extract(ev) == "writable_executable"  # type: ignore[union-attr]
    assert lookup("mem.trigger").extract(ev) == "on_demand"  # type: ignore[union-attr]
    assert lookup("mem.perms").extract(ev) == ("rwxp",)  # type: ignore[union-attr]
    assert lookup("mem.paths").extract(ev) == ("",)  # type: ignore[union-attr]
    assert lookup("proc.exe").extract(ev) == "/usr/bin/prog"  # type: ignore[union-attr]
    engine = RuleEngine.default()
    assert "alpha.rwx_memory" in {m.rule_id for m in engine.evaluate(ev)}


def test_events_of_every_kind_fire_their_rules(proc: Path, tmp_path: Path) -> None:
    make_proc(proc, 90, name="gdb", exe="/usr/bin/gdb")
    make_proc(proc, 100, tracer=90)
    make_proc(proc, 101, environ=b"LD_PRELOAD=/tmp/hook.so\0")
    exe = "/memfd:x (deleted)"
    make_proc(proc, 102, exe=exe, maps=maps_line(0x400000, "r-xp", exe, inode=5))
    make_proc(
        proc,
        103,
        exe="/tmp/gone (deleted)",
        maps=maps_line(0x400000, "r-xp", "/tmp/gone (deleted)"),
    )
    make_proc(proc, 104, maps=BASE_MAPS + maps_line(0x7F3000000000, "r-xp"))
    engine = RuleEngine.default()
    traced = _event_for(proc, tmp_path, 100)
    assert lookup("mem.tracer.name").extract(traced) == "gdb"  # type: ignore[union-attr]
    assert lookup("mem.tracer.exe").extract(traced) == "/usr/bin/gdb"  # type: ignore[union-attr]
    preload = _event_for(proc, tmp_path, 101)
    assert lookup("mem.preload").extract(preload) == ("/tmp/hook.so",)  # type: ignore[union-attr]
    assert "alpha.ld_preload" in {m.rule_id for m in engine.evaluate(preload)}
    memfd = _event_for(proc, tmp_path, 102)
    assert memfd.severity == classification_pb2.SEVERITY_CRITICAL
    assert lookup("mem.kind").extract(memfd) == "memfd_executable"  # type: ignore[union-attr]
    assert engine.evaluate(memfd), "the memfd rule matches memory_threat events too"
    deleted = _event_for(proc, tmp_path, 103)
    assert "alpha.deleted_executable" in {m.rule_id for m in engine.evaluate(deleted)}
    anon = _event_for(proc, tmp_path, 104)
    assert "alpha.anonymous_executable_memory" in {m.rule_id for m in engine.evaluate(anon)}


# --- the ScanMemory core ------------------------------------------------------------------------


def test_scan_memory_core(proc: Path, tmp_path: Path) -> None:
    make_proc(proc, 100, maps=BASE_MAPS + maps_line(0x7F1000000000, "rwxp"))
    make_proc(proc, 101, exe="/usr/bin/node", maps=BASE_MAPS + maps_line(0x7F1000000000, "rwxp"))
    make_proc(proc, 102, environ=b"LD_PRELOAD=/x.so\0")
    emitted: list[event_pb2.Event] = []
    dedup = Deduper()
    core = ScanMemoryCore(scanner(proc, tmp_path), emit=emitted.extend, dedup=dedup)
    req = alpha_service_pb2.ScanMemoryRequest
    one = core.scan_memory(req(pids=[100, 100]))
    assert [f.process.pid for f in one.findings] == [100]
    assert one.processes_scanned == 1
    assert one.findings[0].severity == classification_pb2.SEVERITY_HIGH
    assert len(emitted) == 1
    assert len(dedup) == 1
    both = core.scan_memory(req(pids=[102, 4000, 100], skip_events=True))
    assert [f.process.pid for f in both.findings] == [100, 102]
    assert list(both.missing_pids) == [4000]
    assert len(emitted) == 1
    every = core.scan_memory(req(include_allowlisted=True))
    pids = [f.process.pid for f in every.findings]
    assert pids == sorted(pids)
    assert 101 in pids
    allowed = next(f for f in every.findings if f.process.pid == 101)
    assert allowed.allowlisted
    assert allowed.severity == classification_pb2.SEVERITY_INFO
    assert every.processes_scanned == 4
    assert every.duration.ToNanoseconds() > 0
    assert all(e.process.pid != 101 for e in emitted)  # allowlisted findings are not emitted
    for bad in ([0], [40000], list(range(1, 5000))):
        with pytest.raises(AlphaInvalidArgumentError) as err:
            core.scan_memory(req(pids=bad))
        assert to_status(err.value).code is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(AlphaNotFoundError) as missing:
        core.scan_memory(req(pids=[4000, 4001]))
    assert to_status(missing.value).code is grpc.StatusCode.NOT_FOUND
    assert "4000, 4001" in str(missing.value)


def test_scan_thread_survives_bugs_and_can_be_disabled(
    proc: Path, tmp_path: Path, running: list[ScanScheduler], monkeypatch: pytest.MonkeyPatch
) -> None:
    sc = scanner(
        proc, tmp_path, interval=timedelta(seconds=1), jitter=0.0, initial_delay=timedelta(0)
    )
    calls = [0]
    real = sc.scan_each

    def flaky(*args: object, **kw: object) -> list[PidScan]:
        calls[0] += 1
        if calls[0] == 1:
            raise TypeError("a bug")
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(sc, "scan_each", flaky)
    sched = ScanScheduler(sc, Collector())
    running.append(sched)
    sched.start()
    deadline = time.monotonic() + 5
    while sched.stats().rounds < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sched.stats().worker_errors == 1
    assert sched.stats().rounds >= 2
    off = ScanScheduler(scanner(proc, tmp_path, enabled=False), Collector())
    off.start()
    assert off._thread is None
