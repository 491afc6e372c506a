"""The socket poller and the network detectors on this host's real sockets, all on 127.0.0.1:
a listener in a child process, an 8 MiB transfer, and port scans from a child process (seen by
the eBPF sensor's connect events, and by polling when the connections stay open).

Needs root for the eBPF part (as tests/bpf: it fails, never skips, when eBPF cannot run).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from alpha.network import (
    ConnectionFinding,
    Direction,
    NetworkDetectConfig,
    NetworkDetector,
    ScanFinding,
    ScanPattern,
    SocketPoller,
    TransferFinding,
    finding_to_event,
)
from alpha.sensors.model import Kind, Observation, SensorConfig, SensorUnavailable
from qsc.common.v1 import network_details_pb2 as pb

PY = sys.executable
MiB = 1024 * 1024


@contextlib.contextmanager
def child(code: str, *args: object) -> Iterator[subprocess.Popen[str]]:
    """A Python child whose stdin, when closed, tells it to exit; killed if it lingers."""
    p = subprocess.Popen(
        [PY, "-c", code, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield p
    finally:
        if p.stdin is not None:
            p.stdin.close()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def read_line(p: subprocess.Popen[str]) -> str:
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    assert line, f"child exited early ({p.poll()})"
    return line


@contextlib.contextmanager
def listeners(n: int) -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(64)
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def closed_ports(n: int) -> list[int]:
    """Ports nothing listens on: bound and closed again (not reused this fast)."""
    ports = []
    for _ in range(n):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return ports


def test_netlink_backend_agrees_with_pyroute2() -> None:
    from alpha.network.sockets import NetlinkDiag, PyrouteDiag, dump_sockets

    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as srv:
            srv.bind((host, 0))
            srv.listen()
            port = srv.getsockname()[1]
            with socket.create_connection((host, port)) as c, srv.accept()[0] as a:
                c.sendall(b"y" * 300_000)
                got = 0
                while got < 300_000:
                    got += len(a.recv(1 << 20))
                a.sendall(b"z" * 1000)
                assert len(c.recv(1000)) > 0
                mine = {c.fileno(), a.fileno(), srv.fileno()}
                inodes = {os.fstat(fd).st_ino for fd in mine}
                fast, ref = NetlinkDiag(), PyrouteDiag()
                try:
                    a_dump = [s for s in dump_sockets(fast) if s.inode in inodes]
                    b_dump = [s for s in dump_sockets(ref) if s.inode in inodes]
                finally:
                    fast.close()
                    ref.close()
        assert sorted(a_dump, key=lambda s: s.cookie) == sorted(b_dump, key=lambda s: s.cookie)
        assert len(a_dump) == 3
        client = next(s for s in a_dump if s.remote.port == port)
        assert client.state == "established"
        assert client.local.address == host
        assert client.bytes_acked >= 300_000
        assert client.bytes_received == 1000


LISTEN = """
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


def test_new_listener_appears_with_its_pid() -> None:
    with SocketPoller() as poller:
        det = NetworkDetector(NetworkDetectConfig())
        assert det.on_poll(poller.poll()) == []  # the baseline: what was there is not new
        with child(LISTEN) as p:
            port = int(read_line(p))
            result = poller.poll()
            mine = [s for s in result.new_listeners if s.local.port == port]
            assert len(mine) == 1, result.new_listeners
            owner = result.snapshot.owner_of(mine[0])
            assert owner is not None
            assert owner.pid == p.pid
            assert owner.comm.startswith("python")
            found = [
                f
                for f in det.on_poll(result)
                if isinstance(f, ConnectionFinding) and f.local.port == port
            ]
            assert [f.operation for f in found] == ["listen"]
            ev = finding_to_event(found[0])
            assert ev.network_connection.operation == pb.CONNECTION_OPERATION_LISTEN
            assert ev.network_connection.local.address == "127.0.0.1"
            assert ev.process.pid == p.pid
            # Unchanged: not new again.
            assert not [s for s in poller.poll().new_listeners if s.local.port == port]


SEND = """
import socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
c.sendall(b"x" * int(sys.argv[2]))
print("sent", flush=True)
sys.stdin.read()
"""


def test_transfer_is_counted_for_the_sending_process() -> None:
    size = 8 * MiB
    cfg = NetworkDetectConfig(
        transfer_outbound_bytes=size,
        transfer_window=timedelta(seconds=60),
        transfer_ignore_networks=(),  # loopback counts here: it is all the test has
    )
    det = NetworkDetector(cfg)
    with listeners(1) as (srv,), SocketPoller() as poller:
        det.on_poll(poller.poll())
        received = 0
        done = threading.Event()

        def receive() -> None:
            nonlocal received
            conn, _ = srv.accept()
            with conn:
                while received < size and (chunk := conn.recv(1 << 20)):
                    received += len(chunk)
            done.set()

        t = threading.Thread(target=receive, daemon=True)
        t.start()
        with child(SEND, srv.getsockname()[1], size) as p:
            assert read_line(p) == "sent"
            assert done.wait(20)
            assert received == size
            found = det.on_poll(poller.poll())
            (f,) = [x for x in found if isinstance(x, TransferFinding)]
            assert f.actor is not None
            assert f.actor.pid == p.pid
            assert f.direction is Direction.OUTBOUND
            assert size <= f.bytes <= size + 1  # bytes_acked counts the SYN as one
            assert f.connections == 1
            assert f.top_remote.port == srv.getsockname()[1]
            ev = finding_to_event(f)
            assert ev.transfer_volume.bytes == f.bytes
            assert ev.process.pid == p.pid
        t.join(5)


SCAN = """
import socket, sys
held = []
for port in sys.argv[2:]:
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", int(port)))
    except OSError:
        s.close()
    else:
        held.append(s)  # kept open when asked, so that polling can see them
        if sys.argv[1] != "hold":
            s.close()
print(len(held), flush=True)
sys.stdin.read()
"""


class Collector:
    def __init__(self) -> None:
        self.items: list[Observation] = []
        self.lock = threading.Lock()

    def __call__(self, batch: list[Observation]) -> None:
        with self.lock:
            self.items.extend(batch)

    def connects_of(self, pid: int) -> list[Observation]:
        with self.lock:
            return [o for o in self.items if o.kind is Kind.CONNECT and o.pid == pid]


@pytest.mark.root
def test_port_scan_from_a_child_seen_by_ebpf() -> None:
    if os.geteuid() != 0:
        pytest.fail("the eBPF part needs root (tools/setup-bpf.sh, as tests/bpf)", pytrace=False)
    from alpha.sensors.ebpf import EbpfSensor

    collector = Collector()
    sensor = EbpfSensor(SensorConfig(probes=("exec", "net")), on_observations=collector)
    try:
        sensor.start()
    except SensorUnavailable as exc:
        pytest.fail(f"eBPF sensor unavailable: {exc} (run tools/setup-bpf.sh)", pytrace=False)
    try:
        with listeners(5) as open_socks:
            ports = [s.getsockname()[1] for s in open_socks] + closed_ports(25)
            with child(SCAN, "close", *ports) as p:
                assert read_line(p) == "5"
                deadline = time.monotonic() + 10
                while len(collector.connects_of(p.pid)) < 30 and time.monotonic() < deadline:
                    time.sleep(0.05)
                seen = collector.connects_of(p.pid)
    finally:
        sensor.stop()
    assert len(seen) == 30
    det = NetworkDetector(NetworkDetectConfig(ebpf_connections=True))
    found = [f for o in seen for f in det.on_observation(o)]
    (scan,) = found
    assert isinstance(scan, ScanFinding)
    assert scan.direction is Direction.OUTBOUND
    assert scan.pattern is ScanPattern.VERTICAL
    assert scan.distinct_ports == 20  # reported when the threshold is reached
    assert scan.actor is not None
    assert scan.actor.pid == p.pid
    # With a timeout, Python's connect is non-blocking: the syscall says -EINPROGRESS, and a
    # refusal comes later through poll(2), which the sensor does not see.
    assert {o.ret for o in seen} <= {0, -111, -115}
    ev = finding_to_event(scan)
    assert ev.port_scan.pattern == pb.SCAN_PATTERN_VERTICAL
    assert ev.process.pid == p.pid
    assert ev.process.exec_id  # the sensor's process table attributed it


def test_port_scan_seen_by_polling_when_connections_stay_open() -> None:
    cfg = NetworkDetectConfig(scan_ports=20)
    det = NetworkDetector(cfg)
    with listeners(30) as socks, SocketPoller() as poller:
        det.on_poll(poller.poll())
        with child(SCAN, "hold", *[s.getsockname()[1] for s in socks]) as p:
            assert read_line(p) == "30"
            found = det.on_poll(poller.poll())
    scans = [f for f in found if isinstance(f, ScanFinding)]
    outbound = [f for f in scans if f.direction is Direction.OUTBOUND]
    inbound = [f for f in scans if f.direction is Direction.INBOUND]
    assert len(outbound) == 1
    assert outbound[0].actor is not None
    assert outbound[0].actor.pid == p.pid
    assert len(inbound) == 1
    assert inbound[0].source_address == "127.0.0.1"
    assert inbound[0].pattern is ScanPattern.VERTICAL
