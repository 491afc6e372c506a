"""Network detectors on synthetic inputs with explicit times: blocklists, scans, transfers,
listeners, eBPF observations, the events they make and the default rules on those events."""

from __future__ import annotations

import socket
import struct
from datetime import timedelta

import pytest

from alpha.network.convert import annotate_blocklists, finding_to_event
from alpha.network.detect import (
    Attempt,
    Blocklist,
    BlocklistMatcher,
    ConnectionFinding,
    Direction,
    NetworkDetectConfig,
    NetworkDetector,
    ScanDetector,
    ScanFinding,
    ScanPattern,
    TransferDetector,
    TransferFinding,
    attempt_from_observation,
    normalize_address,
)
from alpha.network.sockets import (
    Endpoint,
    Owner,
    PollResult,
    SocketInfo,
    SocketSnapshot,
    SocketUnavailableError,
    is_listener,
    parse_diag_messages,
)
from alpha.rules import RuleEngine
from alpha.sensors.model import ExitDetail, Kind, NetDetail, Observation, ProcessInfo
from mesh.errors import ConfigError
from qsc.common.v1 import event_pb2
from qsc.common.v1 import network_details_pb2 as pb

S = 1_000_000_000
T0 = 1_700_000_000 * S
NC = Owner(4242, "nc", "/usr/bin/nc", 1000)
CURL = Owner(5000, "curl", "/usr/bin/curl", 1000)
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def engine() -> RuleEngine:
    return RuleEngine.default()


def out(t: float, host: str, port: int, actor: Owner = NC, result: int | None = 0) -> Attempt:
    return Attempt(T0 + int(t * S), Direction.OUTBOUND, Endpoint(host, port), actor=actor,
                   result=result)  # fmt: skip


def inbound(t: float, peer: str, local_port: int, local: str = "192.0.2.10") -> Attempt:
    return Attempt(T0 + int(t * S), Direction.INBOUND, Endpoint(peer, 55555),
                   Endpoint(local, local_port))  # fmt: skip


# --- blocklists --------------------------------------------------------------------------------


def test_blocklist_matching() -> None:
    m = BlocklistMatcher(
        [
            Blocklist("c2", networks=("198.51.100.0/24", "2001:db8:bad::/48", "203.0.113.7")),
            Blocklist("mining", ports=(3333, 4444)),
            Blocklist("smtp-out", networks=("0.0.0.0/0",), ports=(25,)),
        ]
    )
    assert m.match("198.51.100.77", 443) == ("c2",)
    assert m.match("203.0.113.7", 80) == ("c2",)
    assert m.match("203.0.113.8", 80) == ()
    assert m.match("2001:db8:bad::1", 22) == ("c2",)
    assert m.match("::ffff:198.51.100.1", 443) == ("c2",)  # IPv4-mapped from an inet6 socket
    assert m.match("192.0.2.1", 4444) == ("mining",)
    assert m.match("198.51.100.1", 3333) == ("c2", "mining")
    assert m.match("192.0.2.1", 25) == ("smtp-out",)
    assert m.match("2001:db8::1", 25) == ()  # the v4 network does not hold v6 peers
    assert m.match("not-an-ip", 80) == ()
    assert not BlocklistMatcher([])


def test_blocklist_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="not an IP"):
        Blocklist("x", networks=("10.0.0.0/33",))
    with pytest.raises(ConfigError, match="networks, ports or both"):
        Blocklist("x")
    with pytest.raises(ConfigError, match="not a port"):
        Blocklist("x", ports=(0,))
    with pytest.raises(ConfigError, match="unique"):
        NetworkDetectConfig(blocklists=(Blocklist("a", ports=(1,)), Blocklist("a", ports=(2,))))


def test_annotate_event_made_elsewhere() -> None:
    ev = event_pb2.Event()
    ev.network_connection.operation = pb.CONNECTION_OPERATION_CONNECT
    ev.network_connection.remote.address = "198.51.100.9"
    ev.network_connection.remote.port = 443
    annotate_blocklists(ev, BlocklistMatcher([Blocklist("c2", networks=("198.51.100.0/24",))]))
    assert list(ev.network_connection.blocklists) == ["c2"]


# --- scans -------------------------------------------------------------------------------------


def test_vertical_scan_outbound_once_per_window(engine: RuleEngine) -> None:
    det = ScanDetector(NetworkDetectConfig(scan_ports=20, scan_window=timedelta(seconds=60)))
    found = [det.observe(out(i * 0.1, "192.0.2.50", 1000 + i, result=-111)) for i in range(40)]
    hits = [f for f in found if f is not None]
    assert len(hits) == 1
    (f,) = hits
    assert found[19] is f  # reported at the 20th distinct port
    assert (f.pattern, f.direction, f.distinct_ports, f.distinct_hosts) == (
        ScanPattern.VERTICAL,
        Direction.OUTBOUND,
        20,
        1,
    )
    assert f.refused == 20
    assert f.actor == NC
    ev = finding_to_event(f)
    assert ev.port_scan.pattern == pb.SCAN_PATTERN_VERTICAL
    assert ev.port_scan.direction == pb.TRAFFIC_DIRECTION_OUTBOUND
    assert ev.port_scan.distinct_ports == 20
    assert list(ev.port_scan.sample_ports)[:3] == [1000, 1001, 1002]
    assert ev.process.pid == 4242
    assert ev.process.comm == "nc"
    assert {m.rule_id for m in engine.evaluate(ev)} == {"alpha.outbound_port_scan"}
    # After a window, a scan still going on is reported again.
    later = [det.observe(out(70 + i * 0.1, "192.0.2.50", 2000 + i)) for i in range(25)]
    assert sum(f is not None for f in later) == 1


def test_slow_attempts_never_add_up_to_a_scan() -> None:
    det = ScanDetector(NetworkDetectConfig(scan_ports=5, scan_window=timedelta(seconds=10)))
    assert all(det.observe(out(i * 5.0, "192.0.2.50", 1000 + i)) is None for i in range(50))


def test_horizontal_and_block_patterns() -> None:
    cfg = NetworkDetectConfig(scan_ports=10, scan_hosts=10)
    det = ScanDetector(cfg)
    found = [det.observe(out(i * 0.01, f"10.0.0.{i}", 22)) for i in range(1, 11)]
    f = found[-1]
    assert isinstance(f, ScanFinding)
    assert f.pattern is ScanPattern.HORIZONTAL
    assert (f.distinct_hosts, f.distinct_ports) == (10, 1)
    # Block: the attempt that completes 3 ports on host A also completes 3 hosts on port 3.
    # (Which shape is reported depends on the order: the first threshold reached decides.)
    det = ScanDetector(NetworkDetectConfig(scan_ports=3, scan_hosts=3))
    seq = [("A", 1), ("A", 2), ("B", 3), ("C", 3), ("A", 3)]
    hosts = {"A": "10.0.1.1", "B": "10.0.1.2", "C": "10.0.1.3"}
    results = [det.observe(out(i, hosts[h], p, actor=CURL)) for i, (h, p) in enumerate(seq)]
    assert results[:4] == [None] * 4
    block = results[4]
    assert block is not None
    assert block.pattern is ScanPattern.BLOCK
    assert (block.distinct_hosts, block.distinct_ports, block.attempts) == (3, 3, 5)


def test_scans_are_per_process_and_ignore_lists() -> None:
    det = ScanDetector(NetworkDetectConfig(scan_ports=10, scan_ignore_networks=("10.9.0.0/16",)))
    # Two processes with 6 ports each: neither scanned 10.
    for i in range(6):
        assert det.observe(out(i, "192.0.2.1", 100 + i, actor=NC)) is None
        assert det.observe(out(i, "192.0.2.1", 200 + i, actor=CURL)) is None
    assert all(det.observe(out(i, "10.9.1.1", 300 + i)) is None for i in range(30))
    # No process known, no attribution: not counted (eBPF always knows; this guards misuse).
    anon = Attempt(T0, Direction.OUTBOUND, Endpoint("192.0.2.1", 1))
    assert det.observe(anon) is None


def test_inbound_vertical_scan_by_source(engine: RuleEngine) -> None:
    det = ScanDetector(NetworkDetectConfig(scan_ports=20))
    found = [det.observe(inbound(i * 0.05, "203.0.113.66", 20 + i)) for i in range(20)]
    f = found[-1]
    assert isinstance(f, ScanFinding)
    assert f.direction is Direction.INBOUND
    assert f.source_address == "203.0.113.66"
    assert f.actor is None
    ev = finding_to_event(f)
    assert not ev.HasField("process")
    assert ev.port_scan.source_address == "203.0.113.66"
    assert {m.rule_id for m in engine.evaluate(ev)} == {"alpha.inbound_port_scan"}


def test_scan_state_is_bounded() -> None:
    cfg = NetworkDetectConfig(scan_max_actors=10, scan_max_attempts_per_actor=50, scan_ports=1000)
    det = ScanDetector(cfg)
    for i in range(100):
        det.observe(inbound(i * 0.001, f"203.0.113.{i}", 22))
    assert len(det) <= 10
    for i in range(500):
        det.observe(out(1 + i * 0.001, "192.0.2.1", 1 + i))
    state = det._actors[(Direction.OUTBOUND, NC.key)]
    assert len(state.attempts) == 50
    assert sum(len(p) for p in state.ports_by_host.values()) == 50


# --- transfers ---------------------------------------------------------------------------------


def tcp(cookie: int, remote: str, acked: int, received: int = 0, rport: int = 443) -> SocketInfo:
    return SocketInfo(cookie, "tcp", "inet", "established", Endpoint("192.0.2.10", 40000 + cookie),
                      Endpoint(remote, rport), 1000 + cookie, 1000, acked, received)  # fmt: skip


def test_transfer_deltas_sum_per_process(engine: RuleEngine) -> None:
    cfg = NetworkDetectConfig(
        transfer_outbound_bytes=100 * MiB, transfer_window=timedelta(minutes=5)
    )
    det = TransferDetector(cfg)
    # The first poll primes: what sockets already moved before Alpha started is not counted.
    assert det.observe(T0, [(tcp(1, "198.51.100.1", 500 * MiB), CURL)]) == []
    assert det.totals(Direction.OUTBOUND) == {}
    found: list[TransferFinding] = []
    for i in range(1, 6):
        # Two sockets of one process, 12 + 8 MiB per 10 s; another process's socket too.
        found += det.observe(
            T0 + i * 10 * S,
            [
                (tcp(1, "198.51.100.1", 500 * MiB + i * 12 * MiB), CURL),
                (tcp(2, "198.51.100.2", i * 8 * MiB), CURL),
                (tcp(3, "198.51.100.3", i * 30 * MiB), NC),
            ],
        )
    # NC: 30 MiB per poll (its socket is new at poll 1: all of it counts) -> 150 MiB: reported
    # once, at poll 4 (120 MiB). CURL: 20 MiB per poll -> 100 MiB at poll 5.
    assert [(f.actor.comm if f.actor else None, f.bytes // MiB) for f in found] == [
        ("nc", 120),
        ("curl", 100),
    ]
    curl = found[1]
    assert curl.connections == 2
    assert curl.top_remote == Endpoint("198.51.100.1", 443)
    assert curl.top_remote_bytes == 60 * MiB
    ev = finding_to_event(curl)
    assert ev.transfer_volume.bytes == 100 * MiB
    assert ev.transfer_volume.threshold_bytes == 100 * MiB
    assert ev.transfer_volume.direction == pb.TRAFFIC_DIRECTION_OUTBOUND
    assert ev.transfer_volume.top_remote.address == "198.51.100.1"
    assert ev.transfer_volume.window.seconds == 300
    assert {m.rule_id for m in engine.evaluate(ev)} == {"alpha.large_outbound_transfer"}


def test_transfer_keeps_the_owner_of_a_socket_closed_while_draining() -> None:
    det = TransferDetector(NetworkDetectConfig(transfer_outbound_bytes=10 * MiB))
    det.observe(T0, [])
    assert det.observe(T0 + S, [(tcp(1, "198.51.100.1", 6 * MiB), NC)]) == []
    # Closed by nc: orphaned, no inode, no owner in this poll; its last 6 MiB are still nc's.
    (f,) = det.observe(T0 + 2 * S, [(tcp(1, "198.51.100.1", 12 * MiB), None)])
    assert f.actor == NC
    assert f.bytes == 12 * MiB


def test_transfer_window_slides_and_loopback_is_ignored() -> None:
    cfg = NetworkDetectConfig(
        transfer_outbound_bytes=10 * MiB, transfer_window=timedelta(seconds=60)
    )
    det = TransferDetector(cfg)
    det.observe(T0, [])
    found = []
    # 4 MiB every 30 s: at most 8 MiB in any 60 s window.
    for i in range(1, 10):
        found += det.observe(T0 + i * 30 * S, [(tcp(1, "198.51.100.1", i * 4 * MiB), NC)])
    assert found == []
    assert det.totals(Direction.OUTBOUND)[NC.key] == 8 * MiB
    # Loopback is not off the host (by default).
    found = det.observe(T0 + 400 * S, [(tcp(9, "127.0.0.1", 50 * MiB), NC)])
    assert found == []


def test_transfer_inbound_threshold_and_unknown_owner() -> None:
    cfg = NetworkDetectConfig(transfer_outbound_bytes=0, transfer_inbound_bytes=5 * MiB)
    det = TransferDetector(cfg)
    det.observe(T0, [])
    (f,) = det.observe(T0 + S, [(tcp(1, "198.51.100.1", 0, received=6 * MiB), None)])
    assert f.direction is Direction.INBOUND
    assert f.actor is None
    assert det.totals(Direction.OUTBOUND) == {}


# --- poll results ------------------------------------------------------------------------------


def sock(cookie: int, state: str, local: Endpoint, remote: Endpoint, inode: int,
         protocol: str = "tcp") -> SocketInfo:  # fmt: skip
    return SocketInfo(cookie, protocol, "inet", state, local, remote, inode, 0)


def test_on_poll_listeners_blocklisted_connections_and_inbound_scan(engine: RuleEngine) -> None:
    cfg = NetworkDetectConfig(
        blocklists=(Blocklist("c2", networks=("198.51.100.0/24",)),), scan_ports=3
    )
    det = NetworkDetector(cfg)
    listener = sock(1, "listen", Endpoint("0.0.0.0", 2222), Endpoint("0.0.0.0", 0), 11)
    conn = sock(2, "established", Endpoint("192.0.2.10", 40000), Endpoint("198.51.100.5", 443), 12)
    owners = {11: (Owner(77, "sshd", "/usr/sbin/sshd", 0),), 12: (CURL,)}
    snap = SocketSnapshot(T0, (listener, conn), owners, 1)
    found = det.on_poll(PollResult(snap, (listener,), (conn,), False))
    listen = [f for f in found if isinstance(f, ConnectionFinding) and f.operation == "listen"]
    connect = [f for f in found if isinstance(f, ConnectionFinding) and f.operation == "connect"]
    assert len(listen) == 1
    assert listen[0].actor is not None
    assert listen[0].actor.comm == "sshd"
    ev = finding_to_event(listen[0])
    assert ev.network_connection.operation == pb.CONNECTION_OPERATION_LISTEN
    assert ev.network_connection.local.port == 2222
    assert not ev.network_connection.HasField("remote")
    assert "alpha.ssh_nonstandard_port" in {m.rule_id for m in engine.evaluate(ev)}
    assert len(connect) == 1
    assert connect[0].blocklists == ("c2",)
    ev = finding_to_event(connect[0])
    assert list(ev.network_connection.blocklists) == ["c2"]
    assert "alpha.blocklisted_connection" in {m.rule_id for m in engine.evaluate(ev)}
    # Connections to our listening ports are inbound: a source hitting 3 of them is a scan.
    sockets = [listener]
    news = []
    for i, port in enumerate((2222, 2223, 2224)):
        sockets.append(sock(10 + i, "listen", Endpoint("0.0.0.0", port), Endpoint("", 0), 0))
        news.append(sock(20 + i, "established", Endpoint("192.0.2.10", port),
                         Endpoint("203.0.113.9", 50000 + i), 0))  # fmt: skip
    snap = SocketSnapshot(T0 + S, tuple(sockets + news), {}, 1)
    found = det.on_poll(PollResult(snap, (), tuple(news), False))
    scans = [f for f in found if isinstance(f, ScanFinding)]
    assert len(scans) == 1
    assert scans[0].source_address == "203.0.113.9"


def test_with_ebpf_the_poller_leaves_outbound_to_it() -> None:
    det = NetworkDetector(
        NetworkDetectConfig(
            blocklists=(Blocklist("c2", networks=("198.51.100.0/24",)),), ebpf_connections=True
        )
    )
    conn = sock(2, "established", Endpoint("192.0.2.10", 40000), Endpoint("198.51.100.5", 443), 12)
    snap = SocketSnapshot(T0, (conn,), {12: (CURL,)}, 1)
    assert det.on_poll(PollResult(snap, (), (conn,), False)) == []


def test_udp_listeners() -> None:
    bound = sock(1, "close", Endpoint("0.0.0.0", 53), Endpoint("0.0.0.0", 0), 5, "udp")
    client = sock(2, "close", Endpoint("0.0.0.0", 45000), Endpoint("0.0.0.0", 0), 6, "udp")
    connected = sock(3, "established", Endpoint("10.0.0.1", 45001), Endpoint("10.0.0.2", 53), 7,
                     "udp")  # fmt: skip
    assert is_listener(bound, (32768, 60999))
    assert not is_listener(client, (32768, 60999))
    assert is_listener(client, None)
    assert not is_listener(connected)


# --- eBPF observations -------------------------------------------------------------------------


def observation(kind: Kind, address: str, port: int, ret: int, family: str = "inet") -> Observation:
    info = ProcessInfo(
        pid=31337, ppid=1, exec_id="e" * 32, parent_exec_id="p" * 32, comm="nmap",
        exe="/usr/bin/nmap", args=("nmap", "-sT"), cwd="/", uid=1000, gid=1000, euid=1000,
        start_boot_ns=1, cgroup="/user.slice", container_id="", container_runtime="",
    )  # fmt: skip
    return Observation(kind, T0, 1, 31337, 31337, 1, 1000, 1000, 1000, "nmap", "connect", ret,
                       info, NetDetail(3, family, address, port), "ebpf")  # fmt: skip


def test_attempts_from_ebpf_observations(engine: RuleEngine) -> None:
    a = attempt_from_observation(observation(Kind.CONNECT, "192.0.2.1", 22, -111))
    assert a is not None
    assert a.direction is Direction.OUTBOUND
    assert a.result == -111
    assert a.actor is not None
    assert a.actor.key == "e" * 32
    assert attempt_from_observation(observation(Kind.CONNECT, "/run/x.sock", 0, 0, "unix")) is None
    accepted = attempt_from_observation(observation(Kind.ACCEPT, "203.0.113.1", 5555, 4))
    assert accepted is not None
    assert accepted.direction is Direction.INBOUND
    assert attempt_from_observation(observation(Kind.ACCEPT, "203.0.113.1", 5555, -11)) is None
    other = Observation(Kind.EXIT, T0, 1, 1, 1, 1, 0, 0, 0, "x", "", None, None, ExitDetail(0),
                        "ebpf")  # fmt: skip
    assert attempt_from_observation(other) is None
    det = NetworkDetector(NetworkDetectConfig(scan_ports=5))
    found = []
    for port in range(1, 8):
        found += det.on_observation(observation(Kind.CONNECT, "192.0.2.1", port, -111))
    (scan,) = found
    ev = finding_to_event(scan)
    assert ev.process.exec_id == "e" * 32
    assert list(ev.process.args) == ["nmap", "-sT"]
    # nmap is not a sanctioned scanner by default: the rule fires.
    assert {m.rule_id for m in engine.evaluate(ev)} == {"alpha.outbound_port_scan"}


def test_normalize_address() -> None:
    assert normalize_address("::ffff:10.1.2.3") == "10.1.2.3"
    assert normalize_address("2001:DB8::1") == "2001:db8::1"
    assert normalize_address("fe80::1%eth0") == "fe80::1"
    assert normalize_address("host.example") == "host.example"


# --- sock_diag parsing -------------------------------------------------------------------------


def diag_message(state: int, sport: int, dport: int, acked: int, received: int) -> bytes:
    src = socket.inet_pton(socket.AF_INET, "10.0.0.1") + bytes(12)
    dst = socket.inet_pton(socket.AF_INET, "198.51.100.2") + bytes(12)
    msg = struct.pack(
        "=BBBB2s2s16s16sIQIIIII", 2, state, 0, 0, struct.pack(">H", sport),
        struct.pack(">H", dport), src, dst, 0, 77, 0, 0, 0, 1000, 4242,
    )  # fmt: skip
    info = bytes(120) + struct.pack("=QQ", acked, received) + bytes(40)
    attrs = struct.pack("=HH", 4 + len(info), 2) + info
    body = msg + attrs
    return struct.pack("=IHHII", 16 + len(body), 20, 2, 1, 0) + body


def test_parse_diag_messages() -> None:
    out: list[SocketInfo] = []
    data = diag_message(1, 40000, 443, 5000, 7000)
    done = struct.pack("=IHHII", 20, 3, 2, 1, 0) + bytes(4)
    assert parse_diag_messages(data + done, "tcp", "inet", out) == (True, 0)
    (s,) = out
    assert (s.state, s.local, s.remote, s.cookie, s.uid, s.inode) == (
        "established",
        Endpoint("10.0.0.1", 40000),
        Endpoint("198.51.100.2", 443),
        77,
        1000,
        4242,
    )
    assert (s.bytes_acked, s.bytes_received) == (5000, 7000)
    assert parse_diag_messages(data, "tcp", "inet", []) == (False, 0)  # more to come
    error = struct.pack("=IHHII", 20, 2, 0, 1, 0) + struct.pack("=i", -1)
    assert parse_diag_messages(error, "tcp", "inet", []) == (True, 1)
    with pytest.raises(SocketUnavailableError, match="truncated"):
        parse_diag_messages(data[:-8], "tcp", "inet", [])


# --- transfers from the kernel's close records ---------------------------------------------------

REMOTE = Endpoint("198.51.100.7", 443)


def test_a_transfer_between_two_polls_is_counted_at_its_close() -> None:
    det = TransferDetector(NetworkDetectConfig(transfer_outbound_bytes=100 * MiB))
    det.observe(T0, [])
    # 300 MiB on a connection no poll saw (cookie 0: never dumped).
    (f,) = det.on_close(T0 + S // 2, REMOTE, CURL, 1000, 300 * MiB, 0, 0)
    assert f.actor == CURL
    assert f.bytes == 300 * MiB
    assert f.connections == 1
    assert f.top_remote == REMOTE


def test_many_short_connections_add_up() -> None:
    det = TransferDetector(NetworkDetectConfig(transfer_outbound_bytes=100 * MiB))
    found = []
    for i in range(200):
        found += det.on_close(T0 + i * S // 100, REMOTE, NC, 1000, MiB, 0, 0)
    (f,) = found  # reported once, when the total crossed 100 MiB
    assert f.bytes == 100 * MiB
    assert f.connections == 100
    assert det.totals(Direction.OUTBOUND)[NC.key] == 200 * MiB


def test_a_polled_socket_is_not_counted_twice() -> None:
    det = TransferDetector(NetworkDetectConfig(transfer_outbound_bytes=100 * MiB))
    det.observe(T0, [])
    det.observe(T0 + S, [(tcp(5, "198.51.100.7", 40 * MiB), CURL)])
    # The close carries the final 70 MiB: 30 MiB more than the poll counted.
    assert det.on_close(T0 + S + 1, REMOTE, CURL, 1000, 70 * MiB, 0, 5) == []
    assert det.totals(Direction.OUTBOUND)[CURL.key] == 70 * MiB
    # A poll read before the close and handled after it counts nothing more.
    det.observe(T0 + 2 * S, [(tcp(5, "198.51.100.7", 60 * MiB), CURL)])
    assert det.totals(Direction.OUTBOUND)[CURL.key] == 70 * MiB


def test_close_of_loopback_and_unknown_owner() -> None:
    det = TransferDetector(NetworkDetectConfig(transfer_outbound_bytes=10 * MiB))
    assert det.on_close(T0, Endpoint("127.0.0.1", 80), NC, 0, 50 * MiB, 0, 0) == []
    (f,) = det.on_close(T0, REMOTE, None, 33, 50 * MiB, 0, 0)
    assert f.actor is None
    assert det.totals(Direction.OUTBOUND) == {"uid:33": 50 * MiB}
