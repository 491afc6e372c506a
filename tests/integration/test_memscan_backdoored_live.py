"""Known-backdoored libraries (CVE-2024-3094) in REAL processes: the system's own liblzma 5.4.x
copied to a scratch directory as liblzma.so.5.6.1 (the name is what the scan judges; the code is
the harmless 5.4), preloaded into a copy of /bin/sleep named sshd. Scanned by the memory scanner
(on demand and on exec) and judged by the default rules; the real liblzma 5.4 is the benign
look-alike. Needs root like the other live memscan tests; every child is killed and reaped."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from alpha.memscan import (
    Finding,
    MemoryScanner,
    MemScanConfig,
    ScanScheduler,
    ThreatKind,
    Trigger,
    convert,
)
from alpha.rules import RuleEngine
from alpha.sensors.model import ExecDetail, Kind, Observation, ProcessInfo, Stdio
from qsc.common.v1 import classification_pb2, memory_details_pb2

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (/proc of other users)"),
]

SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")


@dataclass(frozen=True)
class Lab:
    real: Path  # the system's liblzma.so.5.4.x
    bad: Path  # a copy of it named liblzma.so.5.6.1
    soname: Path  # liblzma.so.5 -> liblzma.so.5.6.1, beside it
    sshd: Path  # a copy of sleep named sshd
    other: Path  # a copy of sleep named xzdec


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    real = None
    for libdir in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64"):
        if (Path(libdir) / "liblzma.so.5").exists():
            real = Path(os.path.realpath(Path(libdir) / "liblzma.so.5"))
            break
    assert real is not None, "no liblzma.so.5 on this host (Debian's liblzma5 is always there)"
    assert real.name.startswith("liblzma.so.5.4."), f"{real}: expected the host's xz-utils 5.4"
    lib = tmp_path / "lib"
    lib.mkdir()
    bad = lib / "liblzma.so.5.6.1"
    shutil.copy(real, bad)
    soname = lib / "liblzma.so.5"
    soname.symlink_to(bad.name)
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    sshd = sbin / "sshd"
    shutil.copy(SLEEP, sshd)
    other = sbin / "xzdec"
    shutil.copy(SLEEP, other)
    return Lab(real, bad, soname, sshd, other)


@contextmanager
def running(exe: Path, preload: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`exe 120` with `preload` in LD_PRELOAD, once the loader has mapped it."""
    env = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": str(preload)}
    child = subprocess.Popen([str(exe), "120"], env=env, stdin=subprocess.DEVNULL)
    try:
        real = os.path.realpath(preload)
        wait_until(lambda: real in maps_of(child.pid), what=f"{real} mapped in {child.pid}")
        yield child
    finally:
        child.kill()
        child.wait()


def maps_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def wait_until(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def scanner(tmp_path: Path) -> MemoryScanner:
    return MemoryScanner(MemScanConfig(ld_so_preload=tmp_path / "none"))


@pytest.fixture(scope="module")
def engine() -> RuleEngine:
    return RuleEngine.default()


def of_kind(findings: tuple[Finding, ...] | list[Finding], kind: ThreatKind) -> list[Finding]:
    return [f for f in findings if f.kind is kind]


def rules_of(engine: RuleEngine, finding: Finding) -> set[str]:
    return {m.rule_id for m in engine.evaluate(convert.finding_to_event(finding))}


def test_sshd_with_backdoored_liblzma(lab: Lab, scanner: MemoryScanner, engine: RuleEngine) -> None:
    with running(lab.sshd, lab.bad) as child:
        findings = scanner.scan_pid(child.pid).findings
        (finding,) = of_kind(findings, ThreatKind.BACKDOORED_LIBRARY)
        assert finding.libraries == (str(lab.bad),)
        assert finding.regions
        assert all(r.path == str(lab.bad) and r.perms == "r-xp" for r in finding.regions)
        assert finding.regions[0].inode == lab.bad.stat().st_ino
        info = finding.process.info
        assert (info.pid, info.comm, info.exe) == (child.pid, "sshd", str(lab.sshd))
        event = convert.finding_to_event(finding)
        assert event.memory_threat.kind == memory_details_pb2.MEMORY_THREAT_KIND_BACKDOORED_LIBRARY
        assert event.process.exe == str(lab.sshd)
        matches = {m.rule_id: m for m in engine.evaluate(event)}
        assert set(matches) == {"alpha.backdoored_library_sshd"}
        sshd_rule = matches["alpha.backdoored_library_sshd"]
        assert sshd_rule.severity == classification_pb2.SEVERITY_HIGH
        assert {t.id for t in sshd_rule.rule.techniques} == {"T1195.002", "T1556"}
        # The preload itself is still its own finding and rule.
        (preload,) = of_kind(findings, ThreatKind.LD_PRELOAD)
        assert preload.preloaded == (str(lab.bad),)
        assert "alpha.ld_preload" in rules_of(engine, preload)


def test_loaded_by_its_soname_maps_show_the_version(
    lab: Lab, scanner: MemoryScanner, engine: RuleEngine
) -> None:
    """ld.so opens liblzma.so.5 (a symlink); the kernel names the real file in maps."""
    with running(lab.sshd, lab.soname) as child:
        (finding,) = of_kind(scanner.scan_pid(child.pid).findings, ThreatKind.BACKDOORED_LIBRARY)
        assert {r.path for r in finding.regions} == {str(lab.bad)}
        assert finding.libraries == (str(lab.bad),)
        assert rules_of(engine, finding) == {"alpha.backdoored_library_sshd"}


def test_any_other_process(lab: Lab, scanner: MemoryScanner, engine: RuleEngine) -> None:
    with running(lab.other, lab.bad) as child:
        (finding,) = of_kind(scanner.scan_pid(child.pid).findings, ThreatKind.BACKDOORED_LIBRARY)
        assert finding.process.info.comm == "xzdec"
        matches = list(engine.evaluate(convert.finding_to_event(finding)))
        assert [m.rule_id for m in matches] == ["alpha.backdoored_library"]
        assert matches[0].severity == classification_pb2.SEVERITY_MEDIUM


def test_deleted_after_the_upgrade_still_counts(
    lab: Lab, scanner: MemoryScanner, engine: RuleEngine
) -> None:
    """sshd keeps running the backdoored code after the package replaced the file."""
    with running(lab.sshd, lab.bad) as child:
        lab.soname.unlink()
        lab.bad.unlink()
        findings = scanner.scan_pid(child.pid).findings
        (finding,) = of_kind(findings, ThreatKind.BACKDOORED_LIBRARY)
        assert finding.libraries == (f"{lab.bad} (deleted)",)
        assert of_kind(findings, ThreatKind.DELETED_EXECUTABLE) == []  # one kind per mapping
        assert rules_of(engine, finding) == {"alpha.backdoored_library_sshd"}


def test_the_real_liblzma_is_quiet(lab: Lab, scanner: MemoryScanner, engine: RuleEngine) -> None:
    """The benign look-alike: the same code under its real name, in the same fake sshd."""
    with running(lab.sshd, lab.real) as child:
        assert str(lab.real) in maps_of(child.pid)
        findings = scanner.scan_pid(child.pid).findings
        assert of_kind(findings, ThreatKind.BACKDOORED_LIBRARY) == []
        assert {f.kind for f in findings} == {ThreatKind.LD_PRELOAD}  # it was scanned
        for finding in findings:
            assert not {r for r in rules_of(engine, finding) if r.startswith("alpha.backdoored")}
    # And sshd loading its libraries the usual way, with nothing preloaded: nothing at all.
    clean = subprocess.Popen([str(lab.sshd), "120"], stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: "libc.so" in maps_of(clean.pid), what="sleep's libc mapped")
        assert scanner.scan_pid(clean.pid).findings == ()
    finally:
        clean.kill()
        clean.wait()


class Collector:
    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self._lock = threading.Lock()

    def __call__(self, findings: list[Finding]) -> None:
        with self._lock:
            self.findings.extend(findings)

    def of(self, pid: int, kind: ThreatKind) -> list[Finding]:
        with self._lock:
            return [f for f in self.findings if f.pid == pid and f.kind is kind]


def _exec_observation(pid: int, exec_id: str, exe: str) -> Observation:
    info = ProcessInfo(pid, os.getpid(), exec_id, "", "sshd", exe, (), "/", 0, 0, 0, 0, "/", "", "")
    u = Stdio("unknown")
    detail = ExecDetail(exe, exe, (), False, "/", -100, 0, False, False, False, (u, u, u), pid)
    return Observation(
        Kind.EXEC, 0, 0, pid, pid, 0, 0, 0, 0, "sshd", "execve", 0, info, detail, "x"
    )


def test_on_exec_scan_reports_it_once(lab: Lab, tmp_path: Path) -> None:
    config = MemScanConfig(
        initial_delay=timedelta(hours=1),  # only the exec trigger here
        exec_delay=timedelta(milliseconds=200),
        ld_so_preload=tmp_path / "none",
    )
    scanner = MemoryScanner(config)
    got = Collector()
    sched = ScanScheduler(scanner, got)
    sched.start()
    try:
        with running(lab.sshd, lab.bad) as child:
            exec_id = scanner.exec_id_of(child.pid)
            assert exec_id is not None
            sched.observe(_exec_observation(child.pid, exec_id, str(lab.sshd)))
            wait_until(
                lambda: bool(got.of(child.pid, ThreatKind.BACKDOORED_LIBRARY)), what="the finding"
            )
            (finding,) = got.of(child.pid, ThreatKind.BACKDOORED_LIBRARY)
            assert finding.trigger is Trigger.EXEC
            assert finding.exec_id == exec_id
            assert not sched.request_scan(child.pid, exec_id)  # once per exec_id
    finally:
        sched.stop()
