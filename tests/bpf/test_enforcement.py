"""Kernel enforcement on the real kernel: a memfd payload and a reverse shell are killed by
SIGKILL sent at the exec tracepoint in enforce mode (they never run their first instruction,
so they never print), only reported in dry-run mode, and spared when allowed by executable or
cgroup; the sensor never kills itself. Then the same through a real `qsc-alpha`, armed by a
site rules file with `action: kill` loaded on SIGHUP, with the enforcement event on its stream.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from alpha.sensors.ebpf import EbpfSensor
from alpha.sensors.model import EnforceDetail, Kind, Observation, SensorConfig
from alpha.sensors.proctable import find_cgroup2_mount
from tests.bpf.actions import MEMFD_CODE, REVERSE_SHELL_CODE, killing
from tests.bpf.test_alpha_e2e import (
    WAIT,
    SealedStream,
    pki,  # noqa: F401  (the module's PKI fixture)
    start_alpha,
    stop_alpha,
)
from tests.bpf.test_ebpf_sensor import Collector

pytestmark = pytest.mark.root

CHECKS = ("memfd_exec", "process_memory_write", "socket_stdio_exec")  # sorted
BASH = os.path.realpath("/bin/bash")


def sensor(**kw: object) -> tuple[EbpfSensor, Collector]:
    seen = Collector()
    s = EbpfSensor(SensorConfig(probes=("exec", "vmwrite"), **kw), seen)  # type: ignore[arg-type]
    s.start()
    assert s.set_enforcement(CHECKS) == (CHECKS if kw.get("enforcement") != "off" else ())
    return s, seen


@pytest.fixture  # one sensor at a time: two would both act on every exec
def enforcing() -> Iterator[tuple[EbpfSensor, Collector]]:
    s, seen = sensor(enforcement="enforce")
    try:
        yield s, seen
    finally:
        s.stop()


def enforced(seen: Collector, pid: int) -> Observation:
    return seen.wait_for(lambda o: o.kind is Kind.ENFORCE and o.pid == pid, what=f"enforce {pid}")


def memfd_payload(**kw: object) -> subprocess.Popen[str]:
    """sleep 5 from a memfd, after printing from python first (the print proves python ran)."""
    code = "print('started', flush=True)\n" + MEMFD_CODE
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, **kw)  # type: ignore[call-overload,no-any-return]


def reverse_shell() -> tuple[subprocess.Popen[str], socket.socket, socket.socket]:
    srv = socket.create_server(("127.0.0.1", 0))
    child = subprocess.Popen(
        [sys.executable, "-c", REVERSE_SHELL_CODE, str(srv.getsockname()[1]), "5"], text=True
    )
    conn, _ = srv.accept()
    return child, srv, conn


def test_memfd_payload_is_killed_before_it_runs(enforcing: tuple[EbpfSensor, Collector]) -> None:
    _, seen = enforcing
    child = memfd_payload()
    with killing(child):
        rc = child.wait(timeout=10)
    assert rc == -signal.SIGKILL
    obs = enforced(seen, child.pid)
    assert isinstance(obs.detail, EnforceDetail)
    assert (obs.detail.check, obs.detail.dry_run, obs.detail.result) == ("memfd_exec", False, 0)
    assert obs.comm.startswith("memfd:")


def test_reverse_shell_is_killed(enforcing: tuple[EbpfSensor, Collector]) -> None:
    _, seen = enforcing
    child, srv, conn = reverse_shell()
    with srv, conn, killing(child):
        started = time.monotonic()
        assert child.wait(timeout=10) == -signal.SIGKILL
        assert time.monotonic() - started < 4  # not after its 5 s sleep
        assert conn.recv(100) == b""  # bash never wrote to the socket
    obs = enforced(seen, child.pid)
    assert isinstance(obs.detail, EnforceDetail)
    assert obs.detail.check == "socket_stdio_exec"
    assert obs.comm == "bash"


def test_the_sensor_never_kills_itself(enforcing: tuple[EbpfSensor, Collector]) -> None:
    """The process running the sensor writes another process's memory: no kill, no record."""
    import ctypes

    _, seen = enforcing
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    with killing(victim):

        class IoVec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(8)
        iov = IoVec(ctypes.addressof(buf), 8)
        # A bad remote address: the call fails, but the check runs at its entry all the same.
        libc.process_vm_writev(victim.pid, ctypes.byref(iov), 1, ctypes.byref(IoVec(8, 8)), 1, 0)
        # A child that does it is killed: proof the check is armed.
        code = (
            "import ctypes, sys\n"
            "libc = ctypes.CDLL(None)\n"
            "b = ctypes.create_string_buffer(8)\n"
            "iov = (ctypes.c_void_p * 2)(ctypes.addressof(b), 8)\n"
            "rem = (ctypes.c_void_p * 2)(8, 8)\n"
            "libc.process_vm_writev(int(sys.argv[1]), iov, 1, rem, 1, 0)\n"
            "print('survived', flush=True)\n"
        )
        writer = subprocess.run(
            [sys.executable, "-c", code, str(victim.pid)], capture_output=True, text=True
        )
    assert writer.returncode == -signal.SIGKILL
    assert "survived" not in writer.stdout
    assert not seen.all(lambda o: o.kind is Kind.ENFORCE and o.pid == os.getpid())


def test_dry_run_only_reports() -> None:
    s, seen = sensor(enforcement="dry_run")
    try:
        child = memfd_payload()
        assert child.stdout is not None
        with killing(child):
            obs = enforced(seen, child.pid)
            assert child.poll() is None  # still running: its sleep 5
        assert isinstance(obs.detail, EnforceDetail)
        assert obs.detail.dry_run
        shell, srv, conn = reverse_shell()
        with srv, conn, killing(shell):
            obs = enforced(seen, shell.pid)
            assert shell.poll() is None
        assert isinstance(obs.detail, EnforceDetail)
        assert (obs.detail.check, obs.detail.dry_run) == ("socket_stdio_exec", True)
    finally:
        s.stop()


@pytest.fixture
def allowed_cgroup() -> Iterator[Path]:
    mount = find_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    assert mount is not None
    path = Path(mount) / f"qsc-allow-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError:  # its last process is still leaving
                time.sleep(0.1)


def test_allowed_executable_and_cgroup_are_spared(allowed_cgroup: Path) -> None:
    mount = find_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    assert mount is not None
    cgroup = "/" + str(allowed_cgroup.relative_to(mount))
    s, seen = sensor(
        enforcement="enforce", enforce_allow_exes=(BASH,), enforce_allow_cgroups=(cgroup,)
    )
    try:
        shell, srv, conn = reverse_shell()  # bash is allowed by its executable
        with srv, conn, killing(shell):
            time.sleep(0.5)
            assert shell.poll() is None

        def join() -> None:
            (allowed_cgroup / "cgroup.procs").write_text(str(os.getpid()))

        child = memfd_payload(preexec_fn=join)  # in the allowed cgroup
        with killing(child):
            time.sleep(0.5)
            assert child.poll() is None
        other = memfd_payload()  # the same payload elsewhere: killed
        assert other.wait(timeout=10) == -signal.SIGKILL
        enforced(seen, other.pid)
        assert not seen.all(lambda o: o.kind is Kind.ENFORCE and o.pid in (shell.pid, child.pid))
    finally:
        s.stop()


def test_off_arms_nothing() -> None:
    s, _ = sensor(enforcement="off")
    try:
        child = memfd_payload()
        with killing(child):
            time.sleep(0.5)
            assert child.poll() is None
    finally:
        s.stop()


# --- through qsc-alpha ------------------------------------------------------------------------

KILL_RULES = """
- rule: Fileless execution via memfd
  override:
    action: replace
  action: kill
"""


def test_qsc_alpha_kills_after_a_reload_with_action_kill(
    pki: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    proc = start_alpha(pki, tmp_path, {"QSC_ALPHA_SENSOR__ENFORCEMENT": "enforce"})
    stream = SealedStream(pki, proc.port)
    try:
        before = memfd_payload()  # no rule kills yet: it runs
        with killing(before):
            time.sleep(0.5)
            assert before.poll() is None
        proc.rules.write_text(KILL_RULES)
        proc.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "enforcement armed" not in proc.output():
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.1)
        child = memfd_payload()
        assert child.wait(timeout=10) == -signal.SIGKILL
        event = stream.wait_for(
            lambda e: e.WhichOneof("detail") == "enforcement" and e.process.pid == child.pid,
            "the enforcement event",
            WAIT,
        )
        assert event.enforcement.check == "memfd_exec"
        assert not event.enforcement.dry_run
        assert list(event.enforcement.rule_ids) == ["alpha.memfd_exec"]
        assert event.rule.id == "alpha.process_killed"
    finally:
        stream.close()
        stop_alpha(proc.proc)
    assert proc.proc.returncode == 0, proc.output()
