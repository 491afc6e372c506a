"""The memory scanner against REAL processes: RWX mappings made with ctypes, mprotect to RWX and
the W^X flip, an executable run from a memfd, a deleted executable, LD_PRELOAD, a ptrace tracer
(on the process and on one thread), the JIT allowlist by path, ScanMemory of one pid and of all,
the on-exec and periodic scheduler, and an unprivileged scan. Needs root (ptrace, other users'
/proc); every child is killed and reaped in a finally block."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from alpha.errors import AlphaNotFoundError
from alpha.memscan import (
    Finding,
    MemoryScanner,
    MemScanConfig,
    Outcome,
    ScanScheduler,
    ThreatKind,
    Trigger,
    convert,
)
from alpha.memscan.service import ScanMemoryCore
from alpha.sensors.model import ExecDetail, Kind, Observation, ProcessInfo, Stdio
from mesh.status import to_status
from qsc.alpha.v1 import alpha_service_pb2
from qsc.common.v1 import event_pb2, memory_details_pb2

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ptrace, /proc of other users)"),
]

PY = sys.executable
SLEEP = shutil.which("sleep") or "/bin/sleep"

# Maps memory through libc, the way an injected stager does: rwx at once, rw then mprotect rwx,
# or rw then mprotect r-x (W^X: anonymous executable). Prints the address when done.
MAPPER = r"""
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
R, W, X, PRIVATE_ANON = 1, 2, 4, 0x22
mode, size = sys.argv[1], 3 * 4096
first = R | W | X if mode == "rwx" else R | W
addr = libc.mmap(None, size, first, PRIVATE_ANON, -1, 0)
assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
ctypes.memset(addr, 0xC3, size)  # ret: "code" was written
if mode == "mprotect-rwx":
    assert libc.mprotect(addr, size, R | W | X) == 0, ctypes.get_errno()
elif mode == "wxorx":
    assert libc.mprotect(addr, size, R | X) == 0, ctypes.get_errno()
print(hex(addr), flush=True)
time.sleep(120)
"""

# Runs /bin/sleep from a memfd: fileless execution.
MEMFD_EXEC = r"""
import os, sys
fd = os.memfd_create("qsc-payload", 0)
data = open(sys.argv[1], "rb").read()
while data:
    data = data[os.write(fd, data):]
os.execv(f"/proc/self/fd/{fd}", ["qsc-payload", "120"])
"""

# Attaches to a pid with PTRACE_SEIZE (traced without being stopped) and holds on.
TRACER = r"""
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_SEIZE = 0x4206
ok = libc.ptrace(PTRACE_SEIZE, int(sys.argv[1]), None, None) == 0
print("seized" if ok else f"errno {ctypes.get_errno()}", flush=True)
time.sleep(120)
"""

# A process with a second thread; prints that thread's id.
THREADED = r"""
import threading, time
started = threading.Event()
def run():
    global tid
    tid = threading.get_native_id()
    started.set()
    time.sleep(120)
threading.Thread(target=run, daemon=True).start()
started.wait()
print(tid, flush=True)
time.sleep(120)
"""

JIT_HELPER_C = r"""
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
int main(void) {
    void *p = mmap(0, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    printf("%p\n", p);
    fflush(stdout);
    pause();
    return 0;
}
"""


@contextmanager
def spawn(args: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    child = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        yield child
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


def first_line(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    assert line, f"child {child.args!r} printed nothing (exit {child.poll()})"
    return line


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def exe_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


@pytest.fixture
def scanner(tmp_path: Path) -> MemoryScanner:
    return MemoryScanner(MemScanConfig(ld_so_preload=tmp_path / "none"))


def only(findings: tuple[Finding, ...], kind: ThreatKind) -> Finding:
    matching = [f for f in findings if f.kind is kind]
    assert len(matching) == 1, findings
    return matching[0]


# --- mappings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "kind", "perms"),
    [
        ("rwx", ThreatKind.WRITABLE_EXECUTABLE, "rwxp"),
        ("mprotect-rwx", ThreatKind.WRITABLE_EXECUTABLE, "rwxp"),
        ("wxorx", ThreatKind.ANONYMOUS_EXECUTABLE, "r-xp"),
    ],
)
def test_anonymous_code(scanner: MemoryScanner, mode: str, kind: ThreatKind, perms: str) -> None:
    with spawn([PY, "-c", MAPPER, mode]) as child:
        addr = int(first_line(child), 16)
        scan = scanner.scan_pid(child.pid)
        assert scan.outcome is Outcome.SCANNED
        assert {f.kind for f in scan.findings} == {kind}  # one kind per mapping
        finding = scan.findings[0]
        region = next(r for r in finding.regions if r.start <= addr < r.end)
        assert region.perms == perms
        assert region.path == ""
        assert region.inode == 0
        info = finding.process.info
        assert info.pid == child.pid
        assert info.exe == os.path.realpath(PY)
        assert info.ppid == os.getpid()
        assert info.args[:2] == (PY, "-c")


def test_memfd_executable(scanner: MemoryScanner) -> None:
    with spawn([PY, "-c", MEMFD_EXEC, SLEEP]) as child:
        wait_until(lambda: exe_of(child.pid).startswith("/memfd:"))
        finding = only(scanner.scan_pid(child.pid).findings, ThreatKind.MEMFD_EXECUTABLE)
        assert finding.process.info.exe == "/memfd:qsc-payload (deleted)"
        assert finding.regions
        assert all(r.path == "/memfd:qsc-payload (deleted)" for r in finding.regions)
        event = convert.finding_to_event(finding)
        assert event.memory_threat.kind == memory_details_pb2.MEMORY_THREAT_KIND_MEMFD_EXECUTABLE
        assert event.process.exe == "/memfd:qsc-payload (deleted)"


def test_deleted_executable(scanner: MemoryScanner, tmp_path: Path) -> None:
    dropper = tmp_path / "dropper"
    shutil.copy(SLEEP, dropper)
    with spawn([str(dropper), "120"]) as child:
        wait_until(lambda: exe_of(child.pid) == str(dropper))
        assert scanner.scan_pid(child.pid).findings == ()
        dropper.unlink()
        finding = only(scanner.scan_pid(child.pid).findings, ThreatKind.DELETED_EXECUTABLE)
        assert finding.process.info.exe == f"{dropper} (deleted)"
        assert finding.regions[0].path == f"{dropper} (deleted)"


def test_ld_preload(scanner: MemoryScanner) -> None:
    with open("/proc/self/maps") as maps:
        libc = next(line.split()[-1] for line in maps if "/libc.so" in line)
    env = {**os.environ, "LD_PRELOAD": libc}
    with spawn([SLEEP, "120"], env=env) as child:
        finding = only(scanner.scan_pid(child.pid).findings, ThreatKind.LD_PRELOAD)
        assert finding.preloaded == (libc,)
        assert finding.preload_sources == ("environ",)
    with spawn([SLEEP, "120"]) as clean:
        assert scanner.scan_pid(clean.pid).findings == ()


# --- tracing ------------------------------------------------------------------------------------


def test_traced_process_names_its_tracer(scanner: MemoryScanner) -> None:
    with spawn([SLEEP, "120"]) as tracee:
        assert scanner.scan_pid(tracee.pid).findings == ()
        with spawn([PY, "-c", TRACER, str(tracee.pid)]) as tracer:
            assert first_line(tracer) == "seized"
            finding = only(scanner.scan_pid(tracee.pid).findings, ThreatKind.TRACED)
            assert finding.tracer is not None
            assert finding.tracer.pid == tracer.pid
            assert finding.tracer.tid == tracee.pid
            assert finding.tracer.exe == exe_of(tracer.pid)
            comm = Path(f"/proc/{tracer.pid}/comm").read_text().strip()
            assert finding.tracer.comm == comm
            assert finding.tracer.exec_id == scanner.exec_id_of(tracer.pid)
            event = convert.finding_to_event(finding)
            assert event.memory_threat.tracer.pid == tracer.pid
            assert event.memory_threat.tracer.comm == comm


def test_traced_thread(scanner: MemoryScanner) -> None:
    with spawn([PY, "-c", THREADED]) as tracee:
        tid = int(first_line(tracee))
        with spawn([PY, "-c", TRACER, str(tid)]) as tracer:
            assert first_line(tracer) == "seized"
            assert Path(f"/proc/{tracee.pid}/status").read_text().count("TracerPid:\t0") == 1
            finding = only(scanner.scan_pid(tracee.pid).findings, ThreatKind.TRACED)
            assert finding.tracer is not None
            assert (finding.tracer.pid, finding.tracer.tid) == (tracer.pid, tid)


# --- the JIT allowlist --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jit_helper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler to build the JIT stand-in")
    src = tmp_path_factory.mktemp("jit") / "jit-helper.c"
    src.write_text(JIT_HELPER_C)
    out = src.with_suffix("")
    subprocess.run([gcc, "-O1", "-o", str(out), str(src)], check=True)
    return out


def test_jit_allowlist_is_by_path(jit_helper: Path, tmp_path: Path) -> None:
    config = MemScanConfig(jit_allowlist=(str(jit_helper),), ld_so_preload=tmp_path / "none")
    scanner = MemoryScanner(config)
    with spawn([str(jit_helper)]) as runtime:
        first_line(runtime)
        assert scanner.scan_pid(runtime.pid).findings == ()
        (allowed,) = scanner.scan_pid(runtime.pid, include_allowlisted=True).findings
        assert allowed.kind is ThreatKind.WRITABLE_EXECUTABLE
        assert allowed.allowlisted
    copy_dir = Path(tempfile.mkdtemp(prefix="qsc-jit-copy-", dir="/tmp"))
    try:
        copy = copy_dir / jit_helper.name
        shutil.copy2(jit_helper, copy)
        with spawn([str(copy)]) as impostor:
            first_line(impostor)
            finding = only(scanner.scan_pid(impostor.pid).findings, ThreatKind.WRITABLE_EXECUTABLE)
            assert not finding.allowlisted
            assert finding.process.info.exe == str(copy)
    finally:
        shutil.rmtree(copy_dir)


# --- ScanMemory ---------------------------------------------------------------------------------


def _free_pid() -> int:
    taken = {int(n) for n in os.listdir("/proc") if n.isdigit()}
    return next(p for p in range(30000, 1, -1) if p not in taken)


def test_scan_memory_one_pid_and_all(scanner: MemoryScanner) -> None:
    emitted: list[event_pb2.Event] = []
    core = ScanMemoryCore(scanner, emit=emitted.extend)
    req = alpha_service_pb2.ScanMemoryRequest
    with spawn([PY, "-c", MAPPER, "rwx"]) as rwx, spawn([PY, "-c", MAPPER, "wxorx"]) as wx:
        first_line(rwx)
        first_line(wx)
        one = core.scan_memory(req(pids=[rwx.pid]))
        assert one.processes_scanned == 1
        assert [f.process.pid for f in one.findings] == [rwx.pid]
        kind = one.findings[0].threat.kind
        assert kind == memory_details_pb2.MEMORY_THREAT_KIND_WRITABLE_EXECUTABLE
        assert one.findings[0].threat.trigger == memory_details_pb2.MEMORY_SCAN_TRIGGER_ON_DEMAND
        assert len(emitted) == 1
        assert emitted[0].memory_threat.kind == kind
        assert emitted[0].process.exec_id == scanner.exec_id_of(rwx.pid)

        every = core.scan_memory(req(skip_events=True))
        pids = [f.process.pid for f in every.findings]
        assert pids == sorted(pids)
        assert {rwx.pid, wx.pid} <= set(pids)
        assert every.processes_scanned >= 3  # us and the two children, at least
        assert every.duration.ToNanoseconds() > 0
        assert len(emitted) == 1

        free = _free_pid()
        partial = core.scan_memory(req(pids=[wx.pid, free], skip_events=True))
        assert list(partial.missing_pids) == [free]
        assert [f.process.pid for f in partial.findings] == [wx.pid]
        with pytest.raises(AlphaNotFoundError) as err:
            core.scan_memory(req(pids=[free]))
        assert to_status(err.value).code is grpc.StatusCode.NOT_FOUND


# --- the scheduler ------------------------------------------------------------------------------


class Collector:
    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.lock = threading.Lock()

    def __call__(self, findings: list[Finding]) -> None:
        with self.lock:
            self.findings.extend(findings)

    def of(self, pid: int) -> list[Finding]:
        with self.lock:
            return [f for f in self.findings if f.pid == pid]


def _exec_observation(pid: int, exec_id: str) -> Observation:
    info = ProcessInfo(pid, os.getpid(), exec_id, "", "py", PY, (), "/", 0, 0, 0, 0, "/", "", "")
    u = Stdio("unknown")
    detail = ExecDetail(PY, PY, (), False, "/", -100, 0, False, False, False, (u, u, u), pid)
    return Observation(Kind.EXEC, 0, 0, pid, pid, 0, 0, 0, 0, "py", "execve", 0, info, detail, "x")


def test_on_exec_scan(tmp_path: Path) -> None:
    config = MemScanConfig(
        initial_delay=timedelta(hours=1),  # only the exec trigger here
        exec_delay=timedelta(milliseconds=300),  # the child maps its RWX region meanwhile
        ld_so_preload=tmp_path / "none",
    )
    scanner = MemoryScanner(config)
    got = Collector()
    sched = ScanScheduler(scanner, got)
    sched.start()
    try:
        with spawn([PY, "-c", MAPPER, "rwx"]) as child:
            exec_id = scanner.exec_id_of(child.pid)
            assert exec_id is not None
            sched.observe(_exec_observation(child.pid, exec_id))  # as soon as it exec'd
            wait_until(lambda: bool(got.of(child.pid)))
            (finding,) = got.of(child.pid)
            assert finding.kind is ThreatKind.WRITABLE_EXECUTABLE
            assert finding.trigger is Trigger.EXEC
            assert finding.exec_id == exec_id
            assert not sched.request_scan(child.pid, exec_id)  # once per exec_id
    finally:
        sched.stop()


def test_periodic_scan_reports_once(tmp_path: Path) -> None:
    config = MemScanConfig(
        interval=timedelta(seconds=1),
        jitter=0.0,
        initial_delay=timedelta(0),
        max_cpu_fraction=0.5,
        ld_so_preload=tmp_path / "none",
    )
    scanner = MemoryScanner(config)
    got = Collector()
    sched = ScanScheduler(scanner, got)
    with spawn([PY, "-c", MAPPER, "rwx"]) as child:
        first_line(child)
        sched.start()
        try:
            wait_until(lambda: sched.stats().rounds >= 2, timeout=10)
        finally:
            sched.stop()
        (finding,) = got.of(child.pid)  # two rounds, one report
        assert finding.trigger is Trigger.PERIODIC
        last = sched.stats().last_round
        assert last is not None
        assert last.scanned >= 2
        assert last.kernel_threads >= 1


def test_unprivileged_scan_counts_denied() -> None:
    """As nobody, other users' maps are refused: counted as denied, never an error."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, scan, report the counts, exit without cleanup
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            result = MemoryScanner(MemScanConfig(ld_so_preload=Path("/nonexistent"))).scan_all()
            counts = (result.scanned, result.denied, result.errors, result.kernel_threads)
            os.write(write_end, " ".join(map(str, counts)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        with os.fdopen(read_end) as reader:
            text = reader.read()
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    scanned, denied, errors, kernel_threads = map(int, text.split())
    assert scanned >= 1  # itself
    assert denied >= 1  # root's processes
    assert errors == 0
    assert kernel_threads >= 1
