"""The eBPF sensor on the real kernel: each test performs a real action in a child process and
asserts the observation that comes out. Root only (see conftest.py)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from alpha.sensors import fallback, start_sensor
from alpha.sensors.ebpf import EbpfSensor
from alpha.sensors.fallback import FallbackSensor
from alpha.sensors.health import LOSS_REASON
from alpha.sensors.model import (
    BpfDetail,
    ChmodDetail,
    ChownDetail,
    ExecDetail,
    ExitDetail,
    Kind,
    LinkDetail,
    MemfdDetail,
    MemProtDetail,
    ModuleDetail,
    NetDetail,
    Observation,
    OpenDetail,
    PtraceDetail,
    RenameDetail,
    SensorConfig,
    SensorMode,
    SensorState,
    SensorUnavailable,
    SetIdDetail,
    SocketDetail,
    Stdio,
    TcpCloseDetail,
    UnlinkDetail,
)
from alpha.sensors.proctable import find_cgroup2_mount
from mesh.config import load_config
from tests.bpf.actions import (
    BPF_NR,
    FINIT_NR,
    INIT_NR,
    MEMFD_CODE,
    REVERSE_SHELL_CODE,
    SERVER_CODE,
    WRITE_ETC_CODE,
    finish,
    killing,
    py,
)

pytestmark = pytest.mark.root


def of(kind: Kind, pid: int) -> Callable[[Observation], bool]:
    """Matches the observations of one kind made for one process."""
    return lambda o: o.kind is kind and o.pid == pid


# --- the session's sensor ---------------------------------------------------------------------


class Collector:
    """Everything the sensor delivered, searchable while it keeps arriving."""

    def __init__(self) -> None:
        self._items: list[Observation] = []
        self._cond = threading.Condition()

    def __call__(self, batch: list[Observation]) -> None:
        with self._cond:
            self._items.extend(batch)
            self._cond.notify_all()

    def snapshot(self) -> list[Observation]:
        with self._cond:
            return list(self._items)

    def wait_for(
        self, pred: Callable[[Observation], bool], timeout: float = 10.0, what: str = ""
    ) -> Observation:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for o in self._items[seen:]:
                    if pred(o):
                        return o
                seen = len(self._items)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no observation {what} within {timeout} s")
                self._cond.wait(left)

    def all(self, pred: Callable[[Observation], bool]) -> list[Observation]:
        return [o for o in self.snapshot() if pred(o)]


@dataclass
class Env:
    sensor: EbpfSensor
    seen: Collector
    base: Path  # a watched temp dir (write prefix)
    logs: Path  # a "log" dir below it


@pytest.fixture(scope="session")
def env() -> Iterator[Env]:
    base = Path(tempfile.mkdtemp(prefix="qsc-bpf-"))
    logs = base / "log"
    logs.mkdir()
    defaults = SensorConfig()
    config = SensorConfig(
        write_prefixes=(*defaults.write_prefixes, f"{base}/"),
        read_prefixes=(*defaults.read_prefixes, f"{base}/secret"),
    )
    seen = Collector()
    sensor = EbpfSensor(config, seen)
    try:
        sensor.start()
    except SensorUnavailable as exc:
        pytest.fail(f"eBPF sensor cannot start here: {exc} (run tools/setup-bpf.sh)", pytrace=False)
    try:
        yield Env(sensor, seen, base, logs)
    finally:
        sensor.stop()
        shutil.rmtree(base, ignore_errors=True)


# --- process lifecycle --------------------------------------------------------------------------


def test_exec_args_exec_id_and_parent_link(env: Env) -> None:
    marker = f"qsc-{secrets.token_hex(4)}"
    sh = subprocess.Popen(
        ["/bin/sh", "-c", f"/bin/echo {marker} two; exit 3"], stdout=subprocess.DEVNULL
    )
    assert sh.wait(timeout=10) == 3
    seen = env.seen
    sh_exec = seen.wait_for(of(Kind.EXEC, sh.pid), what="sh exec")
    echo = seen.wait_for(
        lambda o: o.kind is Kind.EXEC and isinstance(o.detail, ExecDetail)
        and o.detail.args[1:] == (marker, "two"),
        what="echo exec",
    )  # fmt: skip
    assert isinstance(sh_exec.detail, ExecDetail)
    assert isinstance(echo.detail, ExecDetail)
    assert sh_exec.detail.args == ("/bin/sh", "-c", f"/bin/echo {marker} two; exit 3")
    assert sh_exec.syscall == "execve"
    assert sh_exec.detail.filename == "/bin/sh"
    assert echo.detail.filename == "/bin/echo"
    assert echo.detail.args[0] == "/bin/echo"
    assert echo.comm == "echo"
    assert echo.uid == 0
    sh_info, echo_info = sh_exec.process, echo.process
    assert sh_info is not None
    assert echo_info is not None
    # Lineage: pytest -> sh -> echo, by exec_id.
    me = env.sensor.table.info(os.getpid())
    assert me is not None
    assert sh_info.parent_exec_id == me.exec_id
    assert sh_exec.ppid == os.getpid()
    assert echo_info.ppid == sh.pid
    assert echo.ppid == sh.pid
    assert echo_info.parent_exec_id == sh_info.exec_id
    assert [a.exec_id for a in echo_info.ancestry[:2]] == [sh_info.exec_id, me.exec_id]
    assert len({me.exec_id, sh_info.exec_id, echo_info.exec_id}) == 3
    # The sh fork and its exec are different images of one pid: different exec_ids.
    fork = seen.wait_for(
        lambda o: o.kind is Kind.FORK and getattr(o.detail, "child_pid", 0) == sh.pid
    )
    assert fork.pid == os.getpid()  # forks of the sensor's own process are still seen
    assert getattr(fork.detail, "child_exec_id", "") not in ("", sh_info.exec_id)
    sh_exit = seen.wait_for(of(Kind.EXIT, sh.pid), what="sh exit")
    assert isinstance(sh_exit.detail, ExitDetail)
    assert sh_exit.detail.exit_code == 3
    assert sh_exit.process is not None
    assert sh_exit.process.exec_id == sh_info.exec_id
    assert sh_exec.time_ns <= sh_exit.time_ns
    assert abs(sh_exec.time_ns - time.time_ns()) < 60_000_000_000


def test_own_process_is_filtered_in_the_kernel(env: Env) -> None:
    with open("/etc/shadow", "rb"):
        pass
    cat = subprocess.Popen(["cat", "/etc/shadow"], stdout=subprocess.DEVNULL)
    cat.wait(timeout=10)
    env.seen.wait_for(of(Kind.OPEN, cat.pid), what="child's open")
    # The ring buffer is ordered: had our own open been emitted, it would have arrived first.
    mine = env.seen.all(lambda o: o.pid == os.getpid() and o.kind is not Kind.FORK)
    assert mine == []


# --- attacks and their observations -------------------------------------------------------------

PTRACE_CODE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
pid, req = int(sys.argv[1]), int(sys.argv[2])
assert libc.ptrace(req, pid, None, None) == 0, ctypes.get_errno()
if req == 16:
    os.waitpid(pid, 0x40000000)  # __WALL: the tracee stops
libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
"""


@pytest.mark.parametrize(("request_", "name"), [(16, "PTRACE_ATTACH"), (0x4206, "PTRACE_SEIZE")])
def test_ptrace_attach(env: Env, request_: int, name: str) -> None:
    target = subprocess.Popen(["sleep", "30"])
    with killing(target):
        tracer = py(PTRACE_CODE, target.pid, request_)
        finish(tracer)
        o = env.seen.wait_for(
            lambda o: (
                of(Kind.PTRACE, tracer.pid)(o)
                and isinstance(o.detail, PtraceDetail)
                and o.detail.request == request_
            ),
            what=name,
        )
    assert isinstance(o.detail, PtraceDetail)
    assert (o.detail.request_name, o.detail.target_pid, o.ret) == (name, target.pid, 0)
    assert o.syscall == "ptrace"


def test_memfd_create_and_exec_from_it(env: Env) -> None:
    child = py(MEMFD_CODE)
    with killing(child):
        memfd = env.seen.wait_for(of(Kind.MEMFD_CREATE, child.pid), what="memfd_create")
        exe = env.seen.wait_for(  # the first exec of that pid is python's own
            lambda o: of(Kind.EXEC, child.pid)(o) and o.comm != "python", what="memfd exec"
        )
    assert isinstance(memfd.detail, MemfdDetail)
    assert memfd.detail.name == "qsc-payload"
    assert memfd.ret is not None
    assert memfd.ret >= 0
    assert isinstance(exe.detail, ExecDetail)
    assert exe.syscall == "execveat"  # glibc's fexecve
    assert exe.detail.at_flags & 0x1000  # AT_EMPTY_PATH
    assert exe.detail.filename.startswith("/dev/fd/")
    assert exe.detail.from_memfd
    assert exe.detail.exe.startswith("/memfd:qsc-payload")
    assert exe.detail.args == ("qsc-sleep", "5")


def _login_session_child(slave: str, auid: int, uid: int) -> Callable[[], None]:
    """preexec_fn: a login session as sshd makes one (loginuid, new session, controlling
    terminal), then an unprivileged user."""

    def setup() -> None:
        with open("/proc/self/loginuid", "w") as f:
            f.write(str(auid))
        os.setsid()
        fd = os.open(slave, os.O_RDWR)  # the first tty a session leader opens becomes its own
        for n in range(3):
            os.dup2(fd, n)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    return setup


def test_a_1ms_process_is_fully_described_from_the_kernel(env: Env) -> None:
    """exe, argv, uid, auid and tty of a process that is gone before /proc could be read."""
    master, slave_fd = os.openpty()
    slave = os.ttyname(slave_fd)
    os.close(slave_fd)
    try:
        child = subprocess.Popen(
            ["/bin/true", "qsc-1ms", "--flag"],
            preexec_fn=_login_session_child(slave, 4242, 65534),
            close_fds=True,
        )
        assert child.wait(timeout=10) == 0
        obs = env.seen.wait_for(of(Kind.EXEC, child.pid), what="1 ms exec")
    finally:
        os.close(master)
    assert not Path(f"/proc/{child.pid}").exists()
    assert isinstance(obs.detail, ExecDetail)
    info = obs.process
    assert info is not None
    assert info.identity == "kernel"
    assert info.exe == os.path.realpath("/bin/true")
    assert info.args == ("/bin/true", "qsc-1ms", "--flag")
    assert (obs.uid, info.uid, info.euid, info.egid) == (65534, 65534, 65534, 65534)
    assert info.auid == 4242
    assert info.tty == slave.removeprefix("/dev/")  # pts/N
    assert info.ppid == os.getpid()
    assert (obs.detail.cap_effective, obs.detail.cap_permitted) == (0, 0)  # not root
    assert [s.kind for s in obs.detail.stdio] == ["tty", "tty", "tty"]


def test_capabilities_and_stdio_match_proc_for_a_live_process(env: Env) -> None:
    reader, writer = os.pipe()
    child = subprocess.Popen(["sleep", "5"], stdin=reader, stdout=subprocess.DEVNULL)
    os.close(reader)
    try:
        with killing(child):
            obs = env.seen.wait_for(of(Kind.EXEC, child.pid), what="sleep exec")
            status = Path(f"/proc/{child.pid}/status").read_text()
    finally:
        os.close(writer)
    caps = {
        k: int(v, 16)
        for k, v in (ln.split(":\t") for ln in status.splitlines())
        if k in ("CapEff", "CapPrm")
    }
    assert isinstance(obs.detail, ExecDetail)
    assert obs.detail.cap_effective == caps["CapEff"]
    assert obs.detail.cap_permitted == caps["CapPrm"]
    assert obs.detail.stdio[0].kind == "pipe"
    assert obs.detail.stdio[1].kind == "file"  # /dev/null


def test_deleted_executable_is_named_as_deleted(env: Env, tmp_path: Path) -> None:
    """As /proc/PID/exe names it: the path, and " (deleted)" once the file is unlinked."""
    exe = tmp_path / "qsc-gone"
    shutil.copy("/bin/sleep", exe)
    child = subprocess.Popen([str(exe), "5"])
    with killing(child):
        obs = env.seen.wait_for(of(Kind.EXEC, child.pid), what="exec")
    assert isinstance(obs.detail, ExecDetail)
    assert obs.detail.exe == str(exe)  # deleted only after the exec
    exe2 = tmp_path / "qsc-gone2"
    shutil.copy("/bin/sleep", exe2)
    # Unlinked before the exec, which goes through the fd the shell still holds.
    script = f"exec 3<{exe2}; rm {exe2}; exec /proc/self/fd/3 5"
    child2 = subprocess.Popen(["bash", "-c", script])
    with killing(child2):
        obs2 = env.seen.wait_for(
            lambda o: of(Kind.EXEC, child2.pid)(o) and o.comm != "bash", what="deleted exec"
        )
    assert isinstance(obs2.detail, ExecDetail)
    assert obs2.detail.exe == f"{exe2} (deleted)"
    assert obs2.detail.exe_deleted


def test_kernel_side_identity_self_test_passed(env: Env) -> None:
    assert env.sensor.self_test_result == "ok"
    assert env.sensor.program is not None
    assert env.sensor.program.layout is not None


def test_identity_falls_back_to_proc_and_says_so() -> None:
    """No BTF: the sensor still runs, reads identity from /proc, and says so in its status."""
    seen = Collector()
    sensor = EbpfSensor(SensorConfig(probes=("exec",)), seen, btf=Path("/nonexistent/vmlinux"))
    sensor.start()
    try:
        status = sensor.status()
        assert status.state is SensorState.DEGRADED
        assert any("read from /proc after the fact" in r for r in status.reasons), status.reasons
        child = subprocess.Popen(["sleep", "5"])
        with killing(child):
            obs = seen.wait_for(of(Kind.EXEC, child.pid), what="sleep exec")
        assert obs.process is not None
        assert obs.process.identity == "proc"
        assert obs.process.exe == shutil.which("sleep") or obs.process.exe.endswith("/sleep")
    finally:
        sensor.stop()


MPROTECT_CODE = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
a = libc.mmap(None, 4096, 3, 0x22, -1, 0)          # RW, private anonymous
r = libc.mprotect(a, 4096, 7)                       # -> RWX
b = libc.mmap(None, 8192, 7, 0x22, -1, 0)          # RWX straight away
print(a, r, b)
"""


def test_mprotect_and_mmap_rwx(env: Env) -> None:
    child = py(MPROTECT_CODE)
    a, r, b = map(int, finish(child).split())
    assert r == 0
    mprotect = env.seen.wait_for(
        lambda o: of(Kind.MEMPROT, child.pid)(o) and o.syscall == "mprotect", what="mprotect"
    )
    mmap = env.seen.wait_for(
        lambda o: of(Kind.MEMPROT, child.pid)(o) and o.syscall == "mmap", what="mmap"
    )
    assert isinstance(mprotect.detail, MemProtDetail)
    assert isinstance(mmap.detail, MemProtDetail)
    assert (mprotect.detail.addr, mprotect.detail.length, mprotect.detail.prot) == (a, 4096, 7)
    assert mprotect.ret == 0
    assert (mmap.detail.length, mmap.detail.prot, mmap.detail.fd, mmap.ret) == (8192, 7, -1, b)


def test_chmod_setuid(env: Env) -> None:
    target = env.base / f"suid-{secrets.token_hex(3)}"
    target.write_bytes(b"#!/bin/sh\n")
    target.chmod(0o755)
    child = subprocess.Popen(["chmod", "u+s", str(target)])
    assert child.wait(timeout=10) == 0
    o = env.seen.wait_for(of(Kind.CHMOD, child.pid), what="chmod u+s")
    assert isinstance(o.detail, ChmodDetail)
    assert o.detail.abs_path == str(target)
    assert o.detail.setuid
    assert o.ret == 0
    assert o.detail.mode & 0o7777 == 0o4755
    assert o.syscall in ("fchmodat", "fchmodat2", "chmod")


def test_read_etc_shadow(env: Env) -> None:
    cat = subprocess.Popen(["cat", "/etc/shadow"], stdout=subprocess.DEVNULL)
    cat.wait(timeout=10)
    o = env.seen.wait_for(of(Kind.OPEN, cat.pid), what="open /etc/shadow")
    assert isinstance(o.detail, OpenDetail)
    assert o.detail.path == o.detail.abs_path == "/etc/shadow"
    assert not o.detail.write
    assert o.ret is not None
    assert o.ret >= 0
    assert o.comm == "cat"
    assert o.process is not None
    assert o.process.exe == "/usr/bin/cat"


@pytest.mark.parametrize(
    ("cwd", "path"),
    [
        ("/etc", "shadow"),  # relative
        ("/var/www" if Path("/var/www").is_dir() else "/var", "../../etc/shadow"),
        ("/", "/tmp/../etc/shadow"),
        ("/", "//etc//shadow"),
        ("/", "/etc/./shadow"),
    ],
)
def test_read_etc_shadow_by_any_name(env: Env, cwd: str, path: str) -> None:
    """The filter judges the file opened, not the name written: a relative or non-canonical
    path is named by the kernel from the new fd, the name as written is kept."""
    cat = subprocess.Popen(["cat", path], cwd=cwd, stdout=subprocess.DEVNULL)
    cat.wait(timeout=10)
    o = env.seen.wait_for(of(Kind.OPEN, cat.pid), what=f"open {path} from {cwd}")
    assert isinstance(o.detail, OpenDetail)
    assert (o.detail.path, o.detail.abs_path) == (path, "/etc/shadow")
    assert o.detail.kernel_path
    assert o.ret is not None
    assert o.ret >= 0


def test_relative_reads_of_unwatched_files_stay_in_the_kernel(env: Env, tmp_path: Path) -> None:
    (tmp_path / "plain.txt").write_text("x")
    cat = subprocess.Popen(["cat", "plain.txt", "./plain.txt"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL)  # fmt: skip
    cat.wait(timeout=10)
    marker = subprocess.Popen(["cat", "/etc/shadow"], stdout=subprocess.DEVNULL)
    marker.wait(timeout=10)
    env.seen.wait_for(of(Kind.OPEN, marker.pid), what="the marker read")
    assert not [
        o for o in env.seen.all(of(Kind.OPEN, cat.pid))
        if isinstance(o.detail, OpenDetail) and o.detail.abs_path.endswith("plain.txt")
    ]  # fmt: skip


def test_watched_environment_of_a_1ms_process(env: Env) -> None:
    """LD_PRELOAD, GLIBC_TUNABLES and proxy variables are read from the new image at exec."""
    child = subprocess.Popen(
        ["/bin/true", "qsc-env"],
        env={
            "PATH": "/usr/bin:/bin",
            "GLIBC_TUNABLES": "glibc.malloc.mxfast=glibc.malloc.mxfast=A",
            "https_proxy": "http://127.0.0.1:3128",
            "QSC_NOT_WATCHED": "1",
        },
    )
    assert child.wait(timeout=10) == 0
    obs = env.seen.wait_for(of(Kind.EXEC, child.pid), what="exec with env")
    assert isinstance(obs.detail, ExecDetail)
    assert sorted(obs.detail.environment) == [
        "GLIBC_TUNABLES=glibc.malloc.mxfast=glibc.malloc.mxfast=A",
        "https_proxy=http://127.0.0.1:3128",
    ]
    assert obs.detail.environment_complete


def test_an_environment_too_long_to_scan_says_so(env: Env) -> None:
    """A variable hidden behind 200 others is past the scan: the exec says it was incomplete."""
    padded = {f"PAD{i}": "x" for i in range(200)}
    child = subprocess.Popen(["/bin/true"], env={**padded, "LD_PRELOAD": "/nonexistent.so"},
                             stderr=subprocess.DEVNULL)  # fmt: skip
    child.wait(timeout=10)
    obs = env.seen.wait_for(of(Kind.EXEC, child.pid), what="exec with a long env")
    assert isinstance(obs.detail, ExecDetail)
    assert not obs.detail.environment_complete


OPENAT2_CODE = """
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
how = ctypes.create_string_buffer(struct.pack("<QQQ", os.O_RDONLY, 0, 0), 24)
fd = libc.syscall(ctypes.c_long(437), ctypes.c_long(-100), b"/etc/shadow", how, ctypes.c_long(24))
print(fd, flush=True)
"""


def test_read_etc_shadow_with_openat2(env: Env) -> None:
    child = py(OPENAT2_CODE)
    fd = int(finish(child))
    assert fd >= 0
    o = env.seen.wait_for(
        lambda o: of(Kind.OPEN, child.pid)(o) and o.syscall == "openat2", what="openat2"
    )
    assert isinstance(o.detail, OpenDetail)
    assert o.detail.abs_path == "/etc/shadow"
    assert o.ret == fd


def test_write_below_etc(env: Env) -> None:
    path = Path(f"/etc/qsc-test-{secrets.token_hex(4)}")
    try:
        child = py(WRITE_ETC_CODE, path)
        finish(child)
        o = env.seen.wait_for(of(Kind.OPEN, child.pid), what="open for writing below /etc")
        gone = env.seen.wait_for(of(Kind.UNLINK, child.pid), what="unlink below /etc")
    finally:
        path.unlink(missing_ok=True)  # leave /etc as it was, whatever happened
    assert isinstance(o.detail, OpenDetail)
    assert o.detail.abs_path == str(path)
    assert o.detail.write
    assert o.detail.flags & 0o100
    assert isinstance(gone.detail, UnlinkDetail)
    assert gone.detail.abs_path == str(path)
    assert gone.ret == 0


CLIENT_CODE = """
import socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print(c.getsockname()[1], flush=True)
"""


def test_connect_and_accept(env: Env) -> None:
    server = py(SERVER_CODE, 5)
    with killing(server):
        assert server.stdout is not None
        port = int(server.stdout.readline())
        client = py(CLIENT_CODE, port)
        client_port = int(finish(client))
        connect = env.seen.wait_for(of(Kind.CONNECT, client.pid), what="connect")
        accept = env.seen.wait_for(of(Kind.ACCEPT, server.pid), what="accept")
    assert isinstance(connect.detail, NetDetail)
    assert isinstance(accept.detail, NetDetail)
    assert (connect.detail.family, connect.detail.address, connect.detail.port) == (
        "inet",
        "127.0.0.1",
        port,
    )
    assert connect.ret == 0
    assert (accept.detail.address, accept.detail.port) == ("127.0.0.1", client_port)
    assert accept.ret is not None
    assert accept.ret >= 0
    assert accept.syscall == "accept4"


PACKET_SOCKET_CODE = """
import socket
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()  # not a watched family
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.htons(0x0003))
print(s.fileno(), flush=True)
"""


TCP_CODE = """
import socket
srv = socket.create_server(("127.0.0.1", 0))
port = srv.getsockname()[1]
c = socket.create_connection(("127.0.0.1", port))
s, _ = srv.accept()
c.sendall(b"x" * 100000)
got = 0
while got < 100000:
    got += len(s.recv(65536))
c.close(); s.close()
closed = socket.socket(); closed.bind(("127.0.0.1", 0)); dead = closed.getsockname()[1]
closed.close()
try:
    socket.create_connection(("127.0.0.1", dead))
except ConnectionRefusedError:
    pass
print(port, dead, flush=True)
"""


def test_tcp_close_carries_final_counters_and_owner(env: Env) -> None:
    child = py(TCP_CODE)
    port, dead = map(int, finish(child).split())
    mine = of(Kind.TCP_CLOSE, child.pid)
    client = env.seen.wait_for(
        lambda o: mine(o) and isinstance(o.detail, TcpCloseDetail) and o.detail.remote_port == port,
        what="client close",
    )
    server = env.seen.wait_for(
        lambda o: mine(o) and isinstance(o.detail, TcpCloseDetail) and o.detail.local_port == port,
        what="accepted socket close",
    )
    refused = env.seen.wait_for(
        lambda o: mine(o) and isinstance(o.detail, TcpCloseDetail) and o.detail.remote_port == dead,
        what="refused connect close",
    )
    for obs in (client, server, refused):
        assert isinstance(obs.detail, TcpCloseDetail)
        assert obs.detail.owner_known
        assert obs.detail.family == "inet"
        assert obs.detail.remote_address == "127.0.0.1"
    assert isinstance(client.detail, TcpCloseDetail)
    assert isinstance(server.detail, TcpCloseDetail)
    assert isinstance(refused.detail, TcpCloseDetail)
    assert client.detail.bytes_acked >= 100000  # plus the SYN and FIN
    assert server.detail.bytes_received >= 100000
    assert refused.detail.old_state == 2  # SYN_SENT: never established
    assert refused.detail.bytes_acked == 0


CONNECT_AND_CLOSE_CODE = """
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect(("127.0.0.1", 53535)); u.close()
t = socket.socket()
t.setblocking(False)
try:
    t.connect(("127.0.0.1", 53536))
except BlockingIOError:
    pass
t.close()
"""


def test_release_agent_written_anywhere_passes_the_kernel_filter(env: Env, tmp_path: Path) -> None:
    """A cgroup v1 hierarchy can be mounted anywhere (a container escape mounts it in /tmp):
    a write to any release_agent is reported, a write to its neighbour is not."""
    agent, other = tmp_path / "release_agent", tmp_path / "notify_on_release"
    child = py(f"open({str(agent)!r}, 'w').write('x'); open({str(other)!r}, 'w').write('1')")
    finish(child)
    obs = env.seen.wait_for(
        lambda o: (
            of(Kind.OPEN, child.pid)(o)
            and isinstance(o.detail, OpenDetail)
            and o.detail.path == str(agent)
        ),
        what="release_agent write",
    )
    assert isinstance(obs.detail, OpenDetail)
    assert obs.detail.write
    assert not env.seen.all(
        lambda o: (
            of(Kind.OPEN, child.pid)(o)
            and isinstance(o.detail, OpenDetail)
            and o.detail.path == str(other)
        )
    )


def test_connect_protocol_is_read_in_the_kernel(env: Env) -> None:
    """Sockets closed at once: /proc has nothing left to say whether they were UDP or TCP."""
    child = py(CONNECT_AND_CLOSE_CODE)
    finish(child)
    seen = {}

    def to(port: int) -> Callable[[Observation], bool]:
        return lambda o: (
            of(Kind.CONNECT, child.pid)(o)
            and isinstance(o.detail, NetDetail)
            and o.detail.port == port
        )

    for port in (53535, 53536):
        obs = env.seen.wait_for(to(port), what=f"connect to {port}")
        assert isinstance(obs.detail, NetDetail)
        seen[port] = obs.detail.protocol
    assert seen == {53535: "udp", 53536: "tcp"}


def test_packet_socket_and_other_families_filtered_in_the_kernel(env: Env) -> None:
    child = py(PACKET_SOCKET_CODE)
    fd = int(finish(child))
    o = env.seen.wait_for(of(Kind.SOCKET, child.pid), what="socket(AF_PACKET)")
    assert isinstance(o.detail, SocketDetail)
    assert o.syscall == "socket"
    assert o.ret == fd
    assert (o.detail.family, o.detail.type & 0xF, o.detail.protocol) == (
        socket.AF_PACKET,
        socket.SOCK_RAW,
        socket.htons(0x0003),
    )
    assert o.detail.type & socket.SOCK_CLOEXEC
    # The AF_INET socket came first on the same thread; the ring is ordered: it was dropped.
    assert len(env.seen.all(of(Kind.SOCKET, child.pid))) == 1


LINK_CODE = """
import os, sys, time
base = sys.argv[1]
os.symlink("/etc/shadow", "/tmp/" + sys.argv[2])                 # target watched, link not
d = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
os.link("orig", "hard", src_dir_fd=d, dst_dir_fd=d)              # linkat, both relative
print(d, flush=True)
time.sleep(1)  # keep the dirfd while the sensor resolves it
"""


def test_symlink_and_hard_link(env: Env) -> None:
    name = f"qsc-link-{secrets.token_hex(4)}"
    (env.base / "orig").write_text("x")
    child = py(LINK_CODE, env.base, name)
    try:
        dirfd = int(finish(child))
    finally:
        Path("/tmp", name).unlink(missing_ok=True)
        (env.base / "hard").unlink(missing_ok=True)
    links = [
        env.seen.wait_for(of(Kind.LINK, child.pid), what="symlinkat"),
        env.seen.wait_for(
            lambda o: of(Kind.LINK, child.pid)(o) and o.syscall == "linkat", what="linkat"
        ),
    ]
    sym, hard = (o.detail for o in links)
    assert isinstance(sym, LinkDetail)
    assert isinstance(hard, LinkDetail)
    assert links[0].syscall in ("symlink", "symlinkat")  # libc's choice; aarch64 has no symlink
    assert (sym.target, sym.link_abs_path, sym.symbolic) == ("/etc/shadow", f"/tmp/{name}", True)
    assert (hard.target, hard.link_path, hard.symbolic) == ("orig", "hard", False)
    assert (hard.target_abs_path, hard.link_abs_path) == (
        str(env.base / "orig"),
        str(env.base / "hard"),
    )
    assert [o.ret for o in links] == [0, 0]
    assert dirfd >= 0


def test_shell_with_stdio_on_a_socket(env: Env) -> None:
    listener = py(SERVER_CODE, 5)
    with killing(listener):
        assert listener.stdout is not None
        port = int(listener.stdout.readline())
        shell = py(REVERSE_SHELL_CODE, port, 3)
        with killing(shell):
            o = env.seen.wait_for(
                lambda o: of(Kind.EXEC, shell.pid)(o) and o.comm == "bash", what="bash exec"
            )
    assert isinstance(o.detail, ExecDetail)
    assert o.detail.filename == "/bin/bash"
    peer = Stdio("inet_socket", "", "127.0.0.1", port)
    assert o.detail.stdio == (peer, peer, peer)


MODULE_CODE = f"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
fd = os.open(sys.argv[1], os.O_RDONLY)
r1 = libc.syscall(ctypes.c_long({FINIT_NR}), ctypes.c_long(fd), b"qsc_param=1", ctypes.c_long(0))
e1 = ctypes.get_errno()
image = ctypes.create_string_buffer(b"\\x7fELF-not-a-module", 64)
r2 = libc.syscall(ctypes.c_long({INIT_NR}), image, ctypes.c_ulong(64), b"p=2")
e2 = ctypes.get_errno()
print(fd, r1, e1, r2, e2, flush=True)
time.sleep(1)  # keep the fd open while the sensor resolves it
"""


def test_kernel_module_load_attempt(env: Env) -> None:
    bogus = env.base / "qsc-bogus.ko"
    bogus.write_bytes(b"\x7fELF" + os.urandom(60))
    child = py(MODULE_CODE, bogus)
    fd, r1, e1, r2, e2 = map(int, finish(child).split())
    assert r1 == -1
    assert r2 == -1
    finit = env.seen.wait_for(
        lambda o: of(Kind.MODULE_LOAD, child.pid)(o) and o.syscall == "finit_module"
    )
    init = env.seen.wait_for(
        lambda o: of(Kind.MODULE_LOAD, child.pid)(o) and o.syscall == "init_module"
    )
    assert isinstance(finit.detail, ModuleDetail)
    assert isinstance(init.detail, ModuleDetail)
    assert (finit.detail.fd, finit.detail.params, finit.ret) == (fd, "qsc_param=1", -e1)
    assert finit.detail.file == str(bogus)
    assert (init.detail.image_len, init.detail.params, init.ret) == (64, "p=2", -e2)


BPF_CODE = f"""
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
insns = ctypes.create_string_buffer(bytes.fromhex("b700000000000000" "9500000000000000"), 16)
lic = ctypes.create_string_buffer(b"GPL")
attr = ctypes.create_string_buffer(128)
struct.pack_into("<IIQQ", attr, 0, 1, 2, ctypes.addressof(insns), ctypes.addressof(lic))
attr[48:56] = b"qsc_test"
fd = libc.syscall(ctypes.c_long({BPF_NR}), ctypes.c_long(5), attr, ctypes.c_long(128))
print(fd, ctypes.get_errno(), flush=True)
"""


def test_bpf_program_load(env: Env) -> None:
    child = py(BPF_CODE)
    fd, err = map(int, finish(child).split())
    assert fd >= 0, f"BPF_PROG_LOAD failed: errno {err}"
    o = env.seen.wait_for(of(Kind.BPF, child.pid), what="bpf prog load")
    assert isinstance(o.detail, BpfDetail)
    assert (o.detail.cmd_name, o.detail.prog_type, o.detail.insn_cnt) == ("BPF_PROG_LOAD", 1, 2)
    assert o.detail.prog_name == "qsc_test"
    assert o.ret == fd


SETID_CODE = """
import os
os.setgid(65534)
os.setresuid(65534, 65534, 65534)
try:
    os.setuid(0)
except PermissionError:
    print("denied")
"""


def test_setuid_family(env: Env) -> None:
    child = py(SETID_CODE)
    assert finish(child).strip() == "denied"

    def setid(name: str) -> Observation:
        return env.seen.wait_for(
            lambda o: of(Kind.SETID, child.pid)(o) and o.syscall == name, what=name
        )

    setgid, setresuid, setuid = setid("setgid"), setid("setresuid"), setid("setuid")
    assert isinstance(setgid.detail, SetIdDetail)
    assert setgid.detail.ids == (65534,)
    assert setgid.ret == 0
    assert isinstance(setresuid.detail, SetIdDetail)
    assert setresuid.detail.ids == (65534, 65534, 65534)
    assert setresuid.ret == 0
    assert isinstance(setuid.detail, SetIdDetail)
    assert setuid.detail.ids == (0,)
    assert setuid.ret == -1  # -EPERM: the attempt is observed although it fails
    assert setuid.uid == 65534  # the caller as the kernel saw it at the call


RENAME_CODE = """
import os, sys
os.rename(sys.argv[1], sys.argv[1] + ".1")
os.unlink(sys.argv[1] + ".1")
"""


def test_log_rename_and_unlink(env: Env) -> None:
    log = env.logs / "app.log"
    log.write_text("line\n")
    child = py(RENAME_CODE, log)
    finish(child)
    ren = env.seen.wait_for(of(Kind.RENAME, child.pid), what="rename")
    gone = env.seen.wait_for(of(Kind.UNLINK, child.pid), what="unlink")
    assert isinstance(ren.detail, RenameDetail)
    assert isinstance(gone.detail, UnlinkDetail)
    assert (ren.detail.old_abs_path, ren.detail.new_abs_path) == (str(log), f"{log}.1")
    assert ren.ret == 0
    assert gone.ret == 0
    assert gone.detail.abs_path == f"{log}.1"


CHOWN_CODE = """
import os, sys, time
d = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
os.chown(sys.argv[2], 65534, 65534, dir_fd=d)
print(d, flush=True)
time.sleep(1)  # keep the dirfd while the sensor resolves it
"""


def test_fchownat(env: Env) -> None:
    name = f"owned-{secrets.token_hex(3)}"
    (env.base / name).write_text("x")
    child = py(CHOWN_CODE, env.base, name)
    dirfd = int(finish(child))
    o = env.seen.wait_for(of(Kind.CHOWN, child.pid), what="fchownat")
    assert isinstance(o.detail, ChownDetail)
    assert o.syscall == "fchownat"
    assert o.ret == 0
    assert (o.detail.path, o.detail.dirfd, o.detail.uid, o.detail.gid) == (
        name,
        dirfd,
        65534,
        65534,
    )
    assert o.detail.abs_path == str(env.base / name)


# --- containers ---------------------------------------------------------------------------------

CGROUP_CODE = """
import os, sys
with open(os.path.join(sys.argv[1], "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
os.execv("/bin/sleep", ["sleep", "5"])
"""


def test_process_in_a_new_cgroup_is_attributed(env: Env) -> None:
    mount = find_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy mounted on this host")
    cid = secrets.token_hex(32)
    top = Path(mount) / f"qsc-test-{secrets.token_hex(4)}"
    scope = top / f"docker-{cid}.scope"
    scope.mkdir(parents=True)
    try:
        child = py(CGROUP_CODE, scope)
        with killing(child):
            o = env.seen.wait_for(
                lambda o: of(Kind.EXEC, child.pid)(o) and o.comm == "sleep", what="sleep exec"
            )
    finally:
        for d in (scope, top):
            for _ in range(50):  # the cgroup empties once the killed child is reaped
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.05)
    assert o.process is not None
    assert o.process.cgroup == f"/{top.name}/{scope.name}"
    assert (o.process.container_runtime, o.process.container_id) == ("docker", cid)
    assert not top.exists()


# --- health and loss accounting -----------------------------------------------------------------


def test_status_is_healthy_and_alive(env: Env) -> None:
    true = subprocess.Popen(["true"])
    assert true.wait(timeout=10) == 0
    env.seen.wait_for(of(Kind.EXEC, true.pid), what="true exec")  # polled and delivered
    status = env.sensor.status()
    assert status.mode is SensorMode.EBPF
    assert status.state is SensorState.HEALTHY, status.reasons
    assert status.loss.total == 0
    assert status.stats.events_total > 0
    assert status.stats.last_poll_ns is not None
    assert time.time_ns() - status.stats.last_poll_ns < 2_000_000_000
    assert "sched/sched_process_exec" in status.probes
    assert "syscalls/sys_enter_ptrace" in status.probes
    if not Path("/sys/kernel/tracing/events/syscalls/sys_enter_finit_module").exists():
        assert {"raw_tp/sys_enter", "raw_tp/sys_exit"} <= set(status.probes)


FLOOD_CODE = """
import os, sys
path, n = sys.argv[1], int(sys.argv[2])
for _ in range(n):
    os.close(os.open(path, os.O_RDONLY))
"""


def test_loss_is_counted_exactly_in_kernel_and_queue(env: Env) -> None:
    """A one-page ring buffer and a small queue nobody drains during a flood: every open is
    either delivered, dropped from the queue, or counted lost in the kernel. Exactly."""
    target = env.base / "secret-flood"
    target.write_text("x")
    n = 20_000
    config = SensorConfig(
        probes=("open",),
        read_prefixes=(str(target),),  # nothing else on the host can pass this filter
        write_prefixes=(),
        relative_writes=False,
        ring_buffer_pages=1,
        queue_max_events=20,  # a few hundred records get through a 4 KiB ring: many overflow
        batch_max=8,
    )
    sensor = EbpfSensor(config)
    sensor.start()
    try:
        child = py(FLOOD_CODE, target, n)
        finish(child)
        stable_since = time.monotonic()
        last = -1
        while time.monotonic() - stable_since < 1.0:  # wait until nothing more arrives
            status = sensor.status()
            total = status.stats.events_total + status.loss.kernel
            if total != last:
                last, stable_since = total, time.monotonic()
            time.sleep(0.1)
        delivered = sensor.observations(timeout=0, max_events=10**6)
        loss = sensor.loss()
        overdriven = sensor.status()
    finally:
        sensor.stop()
    opens = [o for o in delivered if o.kind is Kind.OPEN and o.pid == child.pid]
    assert len(opens) == len(delivered)
    assert loss.kernel > 0
    assert dict(loss.kernel_by_kind) == {"open": loss.kernel}
    assert loss.queue > 0
    assert len(opens) + loss.queue + loss.kernel == n
    # Degraded with one constant reason: counts in the text made a health event per second.
    assert overdriven.state is SensorState.DEGRADED
    assert overdriven.reasons == (LOSS_REASON,)
    assert sensor.status().state is SensorState.STOPPED


# --- the degraded fallback ----------------------------------------------------------------------


@dataclass(frozen=True)
class _AlphaConfig:
    sensor: SensorConfig = field(default_factory=SensorConfig)


def _exec_seen(seen: Collector) -> Observation:
    child = subprocess.Popen(["/bin/sleep", "1.5"])
    with killing(child):
        o = seen.wait_for(of(Kind.EXEC, child.pid), what="fallback exec")
    return o


def test_fallback_netlink_when_ebpf_disabled_by_env() -> None:
    cfg = load_config(
        _AlphaConfig, component="alpha", path=None, env={"QSC_ALPHA_SENSOR__DISABLE_EBPF": "1"}
    )
    seen = Collector()
    sensor = start_sensor(cfg.sensor, seen)
    try:
        assert isinstance(sensor, FallbackSensor)
        status = sensor.status()
        assert (status.mode, status.state) == (SensorMode.NETLINK, SensorState.DEGRADED)
        assert "disabled by configuration" in status.reasons[0]
        o = _exec_seen(seen)
        assert isinstance(o.detail, ExecDetail)
        assert o.source == "netlink"
        assert o.detail.exe == "/usr/bin/sleep"
        assert o.detail.args == ("/bin/sleep", "1.5")
        assert o.process is not None
        assert o.process.ppid == os.getpid()
        exit_ = seen.wait_for(of(Kind.EXIT, o.pid), what="fallback exit")
        assert isinstance(exit_.detail, ExitDetail)
        assert (exit_.detail.exit_code, exit_.detail.signal) == (None, signal.SIGKILL)
    finally:
        sensor.stop()


def test_fallback_when_bcc_cannot_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bcc", None)  # import bcc -> ImportError
    seen = Collector()
    sensor = start_sensor(SensorConfig(), seen)
    try:
        assert isinstance(sensor, FallbackSensor)
        status = sensor.status()
        assert status.state is SensorState.DEGRADED
        assert status.mode is SensorMode.NETLINK
        assert any("bcc cannot be imported" in r for r in status.reasons), status.reasons
        assert _exec_seen(seen).source == "netlink"
    finally:
        sensor.stop()


def test_fallback_proc_poll() -> None:
    seen = Collector()
    cfg = SensorConfig(disable_ebpf=True, fallback="proc_poll", proc_poll_interval_ms=100)
    sensor = start_sensor(cfg, seen)
    try:
        status = sensor.status()
        assert (status.mode, status.state) == (SensorMode.PROC_POLL, SensorState.DEGRADED)
        o = _exec_seen(seen)
        assert o.source == "proc_poll"
        assert isinstance(o.detail, ExecDetail)
        assert o.detail.args == ("/bin/sleep", "1.5")
    finally:
        sensor.stop()


def test_fallback_to_proc_poll_when_netlink_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused() -> None:
        raise SensorUnavailable("netlink process connector refused: [Errno 1] not permitted")

    monkeypatch.setattr(fallback, "open_proc_connector", refused)
    seen = Collector()
    cfg = SensorConfig(disable_ebpf=True, proc_poll_interval_ms=100)
    sensor = start_sensor(cfg, seen)
    try:
        status = sensor.status()
        assert status.mode is SensorMode.PROC_POLL
        assert status.reasons[:2] == (
            "eBPF disabled by configuration (sensor.disable_ebpf)",
            "netlink process connector refused: [Errno 1] not permitted",
        )
        assert _exec_seen(seen).source == "proc_poll"
    finally:
        sensor.stop()


def test_second_sensor_starts_and_stops_alongside(env: Env) -> None:
    # Cleanup is per instance: stopping one sensor leaves the session's sensor working.
    other = EbpfSensor(SensorConfig(probes=("ptrace",)))
    other.start()
    other.stop()
    assert other.status().state is SensorState.STOPPED
    cat = subprocess.Popen(["cat", "/etc/shadow"], stdout=subprocess.DEVNULL)
    cat.wait(timeout=10)
    env.seen.wait_for(of(Kind.OPEN, cat.pid), what="open after the other sensor stopped")
