"""Guardian-Alpha end to end, as root with real eBPF: the real `python -m alpha --config ...`
process, a SEALED Subscribe with a `cortex` certificate through the raw stub, and real actions in
child processes. Each test asserts the typed event, rule id and MITRE id that arrive, matched by
the child's pid. Also: ScanMemory over the real AlphaService, SIGHUP rule reloads (a rule
added; a malformed file keeping the old rules), the sshd log wiring, and the fallback sensor.

One Alpha serves every action test (module-scoped). Children are always killed and reaped; files
written below /etc are removed in `finally`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from crypto.pki import init_ca, issue_leaf, write_leaf
from mesh.stream.batching import subscribe_context
from mesh.stream.sealing import SessionOpener, SubscriberHandshake
from qsc.alpha.v1 import alpha_service_pb2 as apb
from qsc.alpha.v1 import alpha_service_pb2_grpc as apb_grpc
from qsc.common.v1 import (
    classification_pb2,
    event_pb2,
    memory_details_pb2,
    network_details_pb2,
    pipeline_details_pb2,
    process_details_pb2,
)
from qsc.guardian.v1 import guardian_service_pb2 as gpb
from qsc.guardian.v1 import guardian_service_pb2_grpc as gpb_grpc
from tests.bpf.actions import (
    BPF_NR,
    FINIT_NR,
    MEMFD_1MS_CODE,
    MEMFD_CODE,
    PY,
    REVERSE_SHELL_CODE,
    SERVER_CODE,
    WRITE_ETC_CODE,
    finish,
    killing,
    py,
)

pytestmark = pytest.mark.root

HOST = "127.0.0.1"
TD = "alpha-e2e.test"
WAIT = 20.0  # seconds an expected event may take (exec scans wait 200 ms, batches 10 ms)
Event = event_pb2.Event

# --- the Alpha process ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("pki")
    ca = init_ca(base, TD)
    for role, host in [("alpha", HOST), ("cortex", "c1"), ("operator", "ops")]:
        write_leaf(issue_leaf(ca, role, host), base, ca.cert)
    return base


@dataclass
class AlphaProc:
    proc: subprocess.Popen[bytes]
    port: int
    base: Path
    log: Path
    rules: Path  # the extra rule file, reloaded on SIGHUP
    auth_log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


CONFIG = """
[guardian]
role = "alpha"
loss_report_interval = "1s"

[server]
listen = "127.0.0.1:0"
shutdown_grace = "2s"

[server.tls]
cert = "{pki}/alpha-127.0.0.1.crt"
key = "{pki}/alpha-127.0.0.1.key"
ca = "{pki}/ca.crt"

[outbox]
directory = "{base}/outbox"

[log]
format = "json"

[rules]
files = ["{rules}"]

[memscan]
# Only triggered scans (exec, W+X) and ScanMemory: a periodic round would report the whole host.
interval = "1h"
initial_delay = "1h"

[network]
poll_interval = "500ms"

[auth]
source = "file"
log_path = "{auth_log}"
state_directory = "{base}/state"
poll_interval = "100ms"
"""


def start_alpha(pki: Path, base: Path, env: dict[str, str] | None = None) -> AlphaProc:
    base.mkdir(parents=True, exist_ok=True)
    rules = base / "site-rules.yaml"
    rules.write_text("[]\n")
    auth_log = base / "auth.log"
    auth_log.write_text("")
    config = base / "alpha.toml"
    config.write_text(CONFIG.format(pki=pki, base=base, rules=rules, auth_log=auth_log))
    port_file = base / "port"
    log = base / "alpha.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PY, "-m", "alpha", "--config", str(config), "--port-file", str(port_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_alpha(proc)
            pytest.fail(f"alpha did not start:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.05)
    return AlphaProc(proc, int(port_file.read_text()), base, log, rules, auth_log)


def stop_alpha(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def running_alpha(
    pki: Path, base: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[AlphaProc, SealedStream]]:
    """A real qsc-alpha and a sealed stream from it; stopped, and its exit checked, after."""
    proc = start_alpha(pki, base, env)
    stream: SealedStream | None = None
    try:
        stream = SealedStream(pki, proc.port)
        yield proc, stream
    finally:
        if stream is not None:
            stream.close()
        stop_alpha(proc.proc)
    assert proc.proc.returncode == 0, proc.output()


def channel(pki: Path, port: int, stem: str) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        (pki / "ca.crt").read_bytes(),
        (pki / f"{stem}.key").read_bytes(),
        (pki / f"{stem}.crt").read_bytes(),
    )
    return grpc.secure_channel(f"{HOST}:{port}", creds)


class SealedStream:
    """A sealed Subscribe from seq 0 with a cortex certificate, read on a thread; everything
    that arrived is searchable while more arrives."""

    def __init__(self, pki: Path, port: int, stem: str = "cortex-c1") -> None:
        request = gpb.SubscribeRequest()
        key = serialization.load_pem_private_key((pki / f"{stem}.key").read_bytes(), None)
        handshake, offer = SubscriberHandshake.start(key, context=subscribe_context(request))  # type: ignore[arg-type]
        request.sealed_session.CopyFrom(offer)
        self._channel = channel(pki, port, stem)
        stub = gpb_grpc.GuardianServiceStub(self._channel)
        # grpc-stubs types the response iterator too loosely for next().
        self._call = cast(Any, stub.Subscribe(request))
        first = next(self._call)
        assert first.WhichOneof("payload") == "session_accept"
        ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
        self._opener: SessionOpener = handshake.finish(
            first.session_accept, ca_cert=ca, expected_role="alpha", expected_host=HOST
        )
        self.events: list[Event] = []
        self.plain_batches = 0
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self._call:
                kind = response.WhichOneof("payload")
                if kind == "batch":
                    self.plain_batches += 1  # a downgrade: asserted absent by the tests
                if kind != "sealed_batch":
                    continue
                batch = self._opener.open(response.sealed_batch)
                with self._cond:
                    self.events.extend(batch.events)
                    self._cond.notify_all()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = exc
        except BaseException as exc:
            self.error = exc
        finally:
            with self._cond:
                self._cond.notify_all()

    def wait_for(self, pred: Callable[[Event], bool], what: str, timeout: float = WAIT) -> Event:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for event in self.events[seen:]:
                    if pred(event):
                        return event
                seen = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0 or self.error is not None:
                    kinds = [
                        (e.process.pid, e.WhichOneof("detail"), e.rule.id)
                        for e in self.events[-30:]
                    ]
                    raise AssertionError(
                        f"no event {what} within {timeout} s (stream error: {self.error!r}); "
                        f"last events: {kinds}"
                    )
                self._cond.wait(left)

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(10)
        self._channel.close()


@dataclass
class Env:
    alpha: AlphaProc
    stream: SealedStream
    pki: Path
    work: Path  # a scratch directory for the actions

    def alpha_service(self, stem: str = "cortex-c1") -> apb_grpc.AlphaServiceStub:
        return apb_grpc.AlphaServiceStub(channel(self.pki, self.alpha.port, stem))

    def alert(self, pid: int, detail: str, rule_id: str, what: str = "") -> Event:
        return self.stream.wait_for(
            lambda e: (
                e.process.pid == pid and e.WhichOneof("detail") == detail and e.rule.id == rule_id
            ),
            what or f"{detail} {rule_id} of pid {pid}",
        )


@pytest.fixture(scope="module")
def env(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("alpha")
    alpha = start_alpha(pki, base)
    stream: SealedStream | None = None
    try:
        stream = SealedStream(pki, alpha.port)
        work = base / "work"
        work.mkdir()
        yield Env(alpha, stream, pki, work)
        assert stream.plain_batches == 0, "a plain batch on a sealed stream"
    finally:
        if stream is not None:
            stream.close()
        stop_alpha(alpha.proc)
        shutil.rmtree(base / "outbox", ignore_errors=True)
    assert alpha.proc.returncode == 0, alpha.output()


def techniques(event: Event) -> list[str]:
    return [t.id for t in event.rule.techniques]


# --- the action tests -----------------------------------------------------------------------------

PTRACE_CODE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
pid = int(sys.argv[1])
assert libc.ptrace(16, pid, None, None) == 0, ctypes.get_errno()   # PTRACE_ATTACH
os.waitpid(pid, 0x40000000)                                          # __WALL: the tracee stops
libc.ptrace(17, pid, None, None)                                     # PTRACE_DETACH
"""


def test_ptrace_attach_to_a_live_process(env: Env) -> None:
    target = subprocess.Popen(["sleep", "30"])
    with killing(target):
        tracer = py(PTRACE_CODE, target.pid)
        with killing(tracer):
            finish(tracer)
            event = env.alert(tracer.pid, "ptrace", "alpha.ptrace_attach")
    assert event.ptrace.request == process_details_pb2.PTRACE_REQUEST_ATTACH
    assert event.ptrace.target.pid == target.pid
    assert event.ptrace.target.comm == "sleep"
    assert event.ptrace.result == 0
    assert "T1055.008" in techniques(event)
    assert event.process.exec_id
    assert event.process.ancestry[0].pid == os.getpid()  # the tracer's parent: this test


def test_memfd_create_and_exec(env: Env) -> None:
    child = py(MEMFD_CODE)
    with killing(child):
        event = env.alert(child.pid, "process_exec", "alpha.memfd_exec")
    assert event.process_exec.exe_memfd
    assert event.process.exe.startswith("/memfd:qsc-payload")
    assert list(event.process.args) == ["qsc-sleep", "5"]
    assert "T1620" in techniques(event)
    assert event.severity == classification_pb2.SEVERITY_CRITICAL


def test_memfd_payload_that_exits_at_once_is_fileless(env: Env) -> None:
    """The exe is read in the kernel at exec: /proc has nothing left of this process."""
    child = py(MEMFD_1MS_CODE)
    assert child.wait(timeout=10) == 0
    event = env.alert(child.pid, "process_exec", "alpha.memfd_exec")
    assert not Path(f"/proc/{child.pid}").exists()
    assert event.process_exec.exe_memfd
    assert event.process.exe == "/memfd:qsc-1ms (deleted)"
    assert event.process_exec.filename.startswith("/proc/self/fd/")
    assert list(event.process.args) == ["qsc-1ms", "now"]
    assert "T1620" in techniques(event)


RWX_CODE = """
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
a = libc.mmap(None, 4096, 3, 0x22, -1, 0)          # RW, private anonymous
assert libc.mprotect(a, 4096, 7) == 0               # -> RWX
print(a, flush=True)
time.sleep(60)                                      # hold it until killed
"""


def test_mprotect_to_rwx(env: Env) -> None:
    child = py(RWX_CODE)
    with killing(child):
        assert child.stdout is not None
        addr = int(child.stdout.readline())
        event = env.alert(child.pid, "memory_threat", "alpha.rwx_memory")
    threat = event.memory_threat
    assert threat.kind == memory_details_pb2.MEMORY_THREAT_KIND_WRITABLE_EXECUTABLE
    # The W+X mprotect triggers a scan (or the exec scan got there first).
    assert threat.trigger in (
        memory_details_pb2.MEMORY_SCAN_TRIGGER_SYSCALL,
        memory_details_pb2.MEMORY_SCAN_TRIGGER_EXEC,
    )
    assert any(r.start == addr and r.permissions.startswith("rwx") for r in threat.regions)
    assert "T1055" in techniques(event)


def test_chmod_setuid(env: Env) -> None:
    target = env.work / f"suid-{secrets.token_hex(3)}"
    target.write_bytes(b"#!/bin/sh\n")
    target.chmod(0o755)
    child = subprocess.Popen(["chmod", "u+s", str(target)])
    assert child.wait(timeout=10) == 0
    event = env.alert(child.pid, "permission_change", "alpha.setuid_bit_set")
    assert event.permission_change.path == str(target)
    assert event.permission_change.new_mode == 0o4755
    assert event.permission_change.setuid_added
    assert "T1548.001" in techniques(event)


def test_read_etc_shadow_from_an_untrusted_binary(env: Env) -> None:
    cat = env.work / "cat"  # a copy of cat outside the system directories: no trusted reader
    shutil.copy2("/usr/bin/cat", cat)
    child = subprocess.Popen([str(cat), "/etc/shadow"], stdout=subprocess.DEVNULL)
    with killing(child):
        assert child.wait(timeout=10) == 0
    event = env.alert(child.pid, "file_access", "alpha.sensitive_file_read")
    assert event.file_access.path == "/etc/shadow"
    assert event.file_access.result >= 0
    assert event.process.exe == str(cat)
    assert "T1003.008" in techniques(event)


def test_write_below_etc(env: Env) -> None:
    path = Path(f"/etc/qsc-e2e-{secrets.token_hex(4)}")
    try:
        child = py(WRITE_ETC_CODE, path)
        with killing(child):
            finish(child)
        event = env.alert(child.pid, "file_access", "alpha.write_below_etc")
    finally:
        path.unlink(missing_ok=True)  # leave /etc as it was, whatever happened
    assert event.file_access.path == str(path)
    assert event.file_access.access != 0
    assert "T1098" in techniques(event)


def test_shell_with_stdio_on_a_socket(env: Env) -> None:
    listener = py(SERVER_CODE, 20)
    with killing(listener):
        assert listener.stdout is not None
        port = int(listener.stdout.readline())
        shell = py(REVERSE_SHELL_CODE, port, 5)
        with killing(shell):
            event = env.alert(shell.pid, "process_exec", "alpha.reverse_shell")
    ex = event.process_exec
    assert event.process.comm == "bash"
    assert ex.stdin.kind == process_details_pb2.DESCRIPTOR_KIND_INET_SOCKET
    assert (ex.stdin.peer.address, ex.stdin.peer.port) == ("127.0.0.1", port)
    assert "T1059.004" in techniques(event)


MODULE_CODE = f"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
fd = os.open(sys.argv[1], os.O_RDONLY)
r = libc.syscall(ctypes.c_long({FINIT_NR}), ctypes.c_long(fd), b"", ctypes.c_long(0))
print(r, ctypes.get_errno(), flush=True)
time.sleep(1)  # keep the fd open while the sensor resolves it
"""


def test_kernel_module_load_attempt(env: Env) -> None:
    bogus = env.work / "qsc_e2e_bogus.ko"
    bogus.write_bytes(b"\x7fELF" + os.urandom(60))
    child = py(MODULE_CODE, bogus)
    with killing(child):
        result, err = map(int, finish(child).split())
    assert result == -1  # refused: not a module
    event = env.alert(child.pid, "module_load", "alpha.kernel_module_load")
    assert event.module_load.path == str(bogus)
    assert event.module_load.name == "qsc_e2e_bogus"
    assert event.module_load.result == -err
    assert "T1547.006" in techniques(event)


BPF_CODE = f"""
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
insns = ctypes.create_string_buffer(bytes.fromhex("b700000000000000" "9500000000000000"), 16)
lic = ctypes.create_string_buffer(b"GPL")
attr = ctypes.create_string_buffer(128)
struct.pack_into("<IIQQ", attr, 0, 1, 2, ctypes.addressof(insns), ctypes.addressof(lic))
attr[48:56] = b"qsc_e2e".ljust(8, b"\\0")
fd = libc.syscall(ctypes.c_long({BPF_NR}), ctypes.c_long(5), attr, ctypes.c_long(128))
print(fd, ctypes.get_errno(), flush=True)
"""


def test_bpf_program_load(env: Env) -> None:
    child = py(BPF_CODE)
    with killing(child):
        fd, err = map(int, finish(child).split())
    assert fd >= 0, f"BPF_PROG_LOAD failed: errno {err}"
    event = env.alert(child.pid, "bpf_program_load", "alpha.bpf_program_load")
    load = event.bpf_program_load
    assert (load.program_type, load.program_name, load.instruction_count) == (
        "socket_filter",
        "qsc_e2e",
        2,
    )
    assert load.result == fd
    assert "T1014" in techniques(event)


PACKET_SOCKET_CODE = """
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))   # ETH_P_ALL
print(s.fileno(), flush=True)
"""


def test_packet_socket(env: Env) -> None:
    child = py(PACKET_SOCKET_CODE)
    with killing(child):
        fd = int(finish(child))
    event = env.alert(child.pid, "socket_create", "alpha.packet_socket")
    created = event.socket_create
    assert created.family == network_details_pb2.ADDRESS_FAMILY_PACKET
    assert (created.raw_family, created.socket_type) == (socket.AF_PACKET, socket.SOCK_RAW)
    assert created.raw_protocol == socket.htons(0x0003)
    assert created.result == fd
    assert "T1040" in techniques(event)


def test_symlink_over_a_sensitive_file(env: Env) -> None:
    link = Path(f"/tmp/qsc-e2e-{secrets.token_hex(4)}")
    try:
        child = subprocess.Popen(["ln", "-s", "/etc/shadow", str(link)])
        assert child.wait(timeout=10) == 0
        event = env.alert(child.pid, "file_link", "alpha.sensitive_file_link")
    finally:
        link.unlink(missing_ok=True)
    assert (event.file_link.target, event.file_link.link_path) == ("/etc/shadow", str(link))
    assert event.file_link.symbolic
    assert event.file_link.result == 0
    assert "T1003.008" in techniques(event)


def test_new_listening_port_from_the_sockets_source(env: Env) -> None:
    listener = py(SERVER_CODE, 20)
    with killing(listener):
        assert listener.stdout is not None
        port = int(listener.stdout.readline())
        event = env.stream.wait_for(
            lambda e: (
                e.WhichOneof("detail") == "network_connection"
                and e.network_connection.operation
                == network_details_pb2.CONNECTION_OPERATION_LISTEN
                and e.network_connection.local.port == port
            ),
            "listen event of the sockets source",
        )
    assert event.process.pid == listener.pid
    assert event.network_connection.protocol == network_details_pb2.TRANSPORT_PROTOCOL_TCP


# --- AlphaService ---------------------------------------------------------------------------------


def test_scan_memory_of_a_child_with_rwx_memory(env: Env) -> None:
    child = py(RWX_CODE)
    with killing(child):
        assert child.stdout is not None
        addr = int(child.stdout.readline())
        response = env.alpha_service().ScanMemory(
            apb.ScanMemoryRequest(pids=[child.pid], skip_events=True), timeout=20
        )
    assert response.processes_scanned == 1
    assert list(response.missing_pids) == []
    (finding,) = [
        f
        for f in response.findings
        if f.threat.kind == memory_details_pb2.MEMORY_THREAT_KIND_WRITABLE_EXECUTABLE
    ]
    assert finding.process.pid == child.pid
    assert finding.threat.trigger == memory_details_pb2.MEMORY_SCAN_TRIGGER_ON_DEMAND
    assert any(r.start == addr and r.permissions == "rwxp" for r in finding.threat.regions)
    assert not finding.allowlisted
    assert finding.process.exec_id  # the sensor's process table named it


# --- the sshd log ---------------------------------------------------------------------------------


def test_sshd_failures_in_the_auth_log_make_credential_stuffing(env: Env) -> None:
    source = f"198.51.100.{secrets.randbelow(200) + 20}"
    now = datetime.now(UTC).isoformat()
    with env.alpha.auth_log.open("a") as f:
        for i in range(10):
            f.write(
                f"{now} e2e sshd[{3000 + i}]: Failed password for invalid user user{i % 4}"
                f" from {source} port {50000 + i} ssh2\n"
            )
    event = env.stream.wait_for(
        lambda e: (
            e.WhichOneof("detail") == "auth_event"
            and e.auth_event.source.address == source
            and e.rule.id == "alpha.credential_stuffing"
        ),
        "credential stuffing from the auth log",
    )
    assert event.auth_event.failures_in_window == 10
    assert event.auth_event.invalid_user
    assert "T1110.004" in techniques(event)


# --- SIGHUP reload --------------------------------------------------------------------------------

SITE_RULE = """
- rule: E2E marker memfd
  id: site.e2e_memfd
  desc: a memfd with the e2e marker name
  condition: evt.kind = memfd_create and memfd.name = "{marker}"
  output: e2e memfd %memfd.name by %proc.name
  priority: ERROR
  tags: [host, T1620]
"""
MALFORMED = """
- rule: Broken
  id: site.broken
  desc: a typo in a field name
  condition: evt.kind = memfd_create and memfd.nmae = x
  output: o
  priority: ERROR
"""
MEMFD_ONLY_CODE = """
import os, sys
os.memfd_create(sys.argv[1], 0)
"""


def rule_ids(env: Env) -> set[str]:
    response = env.alpha_service().ListRules(apb.ListRulesRequest(), timeout=10)
    return {r.id for r in response.rules}


def wait_until(pred: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.1)


def test_sighup_reload_adds_a_rule_and_a_malformed_file_keeps_the_old_ones(env: Env) -> None:
    marker = f"qsc-e2e-{secrets.token_hex(3)}"
    assert "site.e2e_memfd" not in rule_ids(env)
    env.alpha.rules.write_text(SITE_RULE.format(marker=marker))
    env.alpha.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "site.e2e_memfd" in rule_ids(env), "the added rule is listed")
    child = py(MEMFD_ONLY_CODE, marker)
    with killing(child):
        finish(child)
    event = env.alert(child.pid, "memfd_create", "site.e2e_memfd")
    assert event.memfd_create.name == marker
    assert "T1620" in techniques(event)

    # A malformed file: refused with file and line, the running rules stay.
    env.alpha.rules.write_text(SITE_RULE.format(marker=marker) + MALFORMED)
    operator = env.alpha_service("operator-ops")
    check = operator.ValidateRules(
        apb.ValidateRulesRequest(
            files=[apb.RuleFile(name="site.yaml", content=env.alpha.rules.read_text())]
        ),
        timeout=10,
    )
    assert not check.valid
    assert check.problems[0].file == "site.yaml"
    assert check.problems[0].line > 0
    assert "memfd.nmae" in check.problems[0].reason
    env.alpha.proc.send_signal(signal.SIGHUP)
    note = env.stream.wait_for(
        lambda e: (
            e.WhichOneof("detail") == "sensor_health"
            and e.sensor_health.sensor == "rules"
            and e.sensor_health.state == pipeline_details_pb2.SENSOR_STATE_DEGRADED
        ),
        "rules degraded after a malformed reload",
    )
    assert any("memfd.nmae" in r and str(env.alpha.rules) in r for r in note.sensor_health.reasons)
    assert "site.e2e_memfd" in rule_ids(env)
    again = py(MEMFD_ONLY_CODE, marker)
    with killing(again):
        finish(again)
    env.alert(again.pid, "memfd_create", "site.e2e_memfd", "the old rules still fire")

    env.alpha.rules.write_text("[]\n")  # leave the module's Alpha as it started
    env.alpha.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "site.e2e_memfd" not in rule_ids(env), "the site rule is gone")
    env.stream.wait_for(
        lambda e: (
            e.WhichOneof("detail") == "sensor_health"
            and e.sensor_health.sensor == "rules"
            and e.sensor_health.state == pipeline_details_pb2.SENSOR_STATE_HEALTHY
            and e.sensor_health.previous_state == pipeline_details_pb2.SENSOR_STATE_DEGRADED
        ),
        "rules healthy again",
    )


def test_the_sensor_is_healthy_ebpf_in_get_status(env: Env) -> None:
    stub = gpb_grpc.GuardianServiceStub(channel(env.pki, env.alpha.port, "cortex-c1"))
    status = stub.GetStatus(gpb.GetStatusRequest(), timeout=10)
    sensors = {s.name: s for s in status.sensors}
    assert {"syscalls", "rules", "memscan", "sockets", "auth_log"} <= sensors.keys()
    syscalls = sensors["syscalls"]
    assert syscalls.mode == "ebpf"
    assert syscalls.events > 0
    assert syscalls.loss.ring_buffer_lost == 0


def test_pipeline_stage_counts_in_get_status(env: Env) -> None:
    stub = gpb_grpc.GuardianServiceStub(channel(env.pki, env.alpha.port, "cortex-c1"))

    def counts() -> dict[str, int]:
        status = stub.GetStatus(gpb.GetStatusRequest(), timeout=10)
        return {s.name: s.events for s in status.sensors if s.mode == "pipeline"}

    before = counts()
    # An exec no rule fires on (unmatched, dropped) and one that fires (memfd exec).
    subprocess.run(["true"], check=True)
    child = py(MEMFD_CODE)
    with killing(child):
        env.alert(child.pid, "process_exec", "alpha.memfd_exec")
    wait_until(
        lambda: counts()["pipeline.unmatched_dropped"] > before["pipeline.unmatched_dropped"],
        "the unmatched exec of `true` is counted",
    )
    after = counts()
    assert set(after) == {
        f"pipeline.{s}"
        for s in (
            "observations",
            "no_detail",
            "candidates",
            "findings",
            "matched",
            "unmatched_dropped",
            "emitted",
        )
    }
    for stage in ("observations", "candidates", "matched", "emitted"):
        assert after[f"pipeline.{stage}"] > before[f"pipeline.{stage}"], stage
    # One snapshot: no stage ahead of the one that feeds it.
    snap = stub.GetStatus(gpb.GetStatusRequest(), timeout=10)
    by_name = {s.name: s for s in snap.sensors}
    assert by_name["pipeline.observations"].events <= by_name["syscalls"].events
    assert (
        by_name["pipeline.candidates"].events + by_name["pipeline.no_detail"].events
        <= by_name["pipeline.observations"].events
    )
    assert by_name["pipeline.unmatched_dropped"].HasField("last_event_time")
    assert not any(by_name[name].loss.ListFields() for name in after)  # counts, not losses


# --- the fallback sensor --------------------------------------------------------------------------


def test_fallback_sensor_when_ebpf_is_disabled(
    pki: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = tmp_path_factory.mktemp("alpha-fallback")
    alpha = start_alpha(pki, base, env={"QSC_ALPHA_SENSOR__DISABLE_EBPF": "1"})
    stream: SealedStream | None = None
    try:
        stub = gpb_grpc.GuardianServiceStub(channel(pki, alpha.port, "cortex-c1"))
        status = stub.GetStatus(gpb.GetStatusRequest(), timeout=10)
        syscalls = next(s for s in status.sensors if s.name == "syscalls")
        assert syscalls.state == pipeline_details_pb2.SENSOR_STATE_DEGRADED
        assert syscalls.mode in ("netlink", "proc_poll")
        assert any("disabled by configuration" in r for r in syscalls.reasons)
        stream = SealedStream(pki, alpha.port)
        health = stream.wait_for(
            lambda e: (
                e.WhichOneof("detail") == "sensor_health" and e.sensor_health.sensor == "syscalls"
            ),
            "the fallback's sensor-health event",
        )
        assert health.sensor_health.state == pipeline_details_pb2.SENSOR_STATE_DEGRADED
        assert any("disabled by configuration" in r for r in health.sensor_health.reasons)
        assert health.sensor_health.mode == syscalls.mode
        assert stream.plain_batches == 0
    finally:
        if stream is not None:
            stream.close()
        stop_alpha(alpha.proc)
    assert alpha.proc.returncode == 0, alpha.output()
