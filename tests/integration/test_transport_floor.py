"""The transport floor, tried from outside as a prober would: TLS 1.2 and idle or half-open
connections at the handshake, classical key exchange at the client (a TLS-terminating relay on
Python's OpenSSL, which has no ML-KEM), sealed-handshake floods, and the log of refused calls.

Servers are real ComponentServers on 127.0.0.1:0 (in-process, and `mesh_server_proc.py` as a
process for the production import order); clients are openssl s_client, grpcurl 1.8.6, Node.js
20, Python's ssl and the mesh's own channel.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.channel import ChannelConfig, RetryPolicy, open_channel
from mesh.config import TlsFiles as ChannelTls
from mesh.errors import ConfigError
from mesh.identity import load_tls, signing_key
from mesh.interceptors import ACCESS_LOGGER, FAILED_LINES_BURST
from mesh.policy import PqMode, PqPolicy
from mesh.server import ComponentServer, ServerConfig
from mesh.stream.batching import StreamSettings
from mesh.stream.outbox import Outbox, OutboxConfig
from mesh.stream.sealing import SubscriberHandshake
from mesh.stream.service import GuardianServicer, SealingIdentity
from qsc.common.v1 import event_pb2, identity_pb2, pipeline_details_pb2
from qsc.guardian.v1 import guardian_service_pb2 as pb
from qsc.guardian.v1 import guardian_service_pb2_grpc as pb_grpc

if str(Path(__file__).resolve().parents[2]) not in sys.path:  # plain `pytest` from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.integration.test_mesh_server import (  # the shared PKI, server thread and clients
    GET_STATUS,
    PROC_SCRIPT,
    ROOT,
    SUBSCRIBE,
    TD,
    Pki,
    ServerThread,
    _grpcurl_run,
    _node,
    pki,
)
from tests.integration.tls_relay import TlsRelay

__all__ = ["pki"]  # a fixture, imported to be shared

AUTHZ = {GET_STATUS: ["cortex", "operator"], SUBSCRIBE: ["cortex", "operator"]}
REF = identity_pb2.GuardianRef(id="alpha-127.0.0.1", role=identity_pb2.ROLE_ALPHA, host="127.0.0.1")


def _server(pki: Pki, **kw: Any) -> ServerThread:
    return ServerThread(ServerConfig(tls=pki.files("alpha-127.0.0.1"), **kw), AUTHZ)


@pytest.fixture(scope="module")
def srv(pki: Pki) -> Iterator[ServerThread]:
    server = _server(pki)
    yield server
    server.close()


@pytest.fixture(scope="module")
def proc_port(pki: Pki) -> Iterator[int]:
    """The test server as its own process: mesh imported by the entry point, as in production."""
    files = pki.files("alpha-127.0.0.1")
    proc = subprocess.Popen(
        [
            *(sys.executable, str(PROC_SCRIPT)),
            *("--cert", str(files.cert), "--key", str(files.key), "--ca", str(files.ca)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline().split()[1])
    finally:
        proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def _s_client(pki: Pki, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    files = pki.files("operator-ops-1")
    return subprocess.run(
        [
            *("openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-alpn", "h2"),
            *("-CAfile", str(files.ca), "-cert", str(files.cert), "-key", str(files.key)),
            *args,
        ],
        input="",
        capture_output=True,
        text=True,
        errors="replace",  # HTTP/2 bytes follow the handshake summary
        timeout=30,
        check=False,
    )


# --- TLS 1.2: refused at the handshake, before any certificate --------------------------------


@pytest.mark.parametrize("where", ["in-process", "process"])
def test_tls_1_2_is_refused_at_the_handshake_before_any_certificate(
    pki: Pki, srv: ServerThread, proc_port: int, where: str
) -> None:
    port = srv.port if where == "in-process" else proc_port
    old = _s_client(pki, port, "-tls1_2")
    assert old.returncode != 0
    assert "no peer certificate available" in old.stdout
    assert "Cipher is (NONE)" in old.stdout
    assert "-----BEGIN CERTIFICATE-----" not in old.stdout
    new = _s_client(pki, port, "-tls1_3")
    assert "Protocol: TLSv1.3" in new.stdout or "TLSv1.3" in new.stdout, new.stdout
    assert "-----BEGIN CERTIFICATE-----" in new.stdout  # the same server, TLS 1.3: served


def test_python_and_node_tls_1_2_clients_fail_at_the_handshake(pki: Pki, srv: ServerThread) -> None:
    files = pki.files("operator-ops-1")
    context = ssl.create_default_context(cafile=str(files.ca))
    context.load_cert_chain(files.cert, files.key)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(raw, server_hostname="127.0.0.1")
    old_tls = _node(pki, srv.port, "operator-ops-node", "TLSv1.2")
    assert old_tls["ok"] is False
    assert old_tls["code"] == "UNAVAILABLE", old_tls  # no connection at all, not a refused call


def test_grpcurl_1_8_6_under_prefer_is_served_and_counted_per_role_and_group(
    pki: Pki, srv: ServerThread
) -> None:
    status = _grpcurl_run(pki, srv.port, "operator-ops-1", GET_STATUS.lstrip("/"))
    assert status.returncode == 0, status.stderr
    refused = _grpcurl_run(pki, srv.port, "cortex-c1", GET_STATUS.lstrip("/"))
    assert "classical key exchange X25519 refused" in refused.stderr
    rows = {(r.role, r.kex_group): r for r in srv.server.transport_status().counts}
    assert rows["operator", "X25519"].calls >= 1
    assert rows["operator", "X25519"].classical_connections >= 1
    assert not rows["operator", "X25519"].hybrid
    assert rows["cortex", "X25519"].refused >= 1


# --- unauthenticated connections: handshake deadline, connection cap ---------------------------


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True  # reset
    return True


def test_a_connection_that_never_completes_its_handshake_is_closed(pki: Pki) -> None:
    server = _server(pki, handshake_timeout=timedelta(milliseconds=300))
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as idle:
            assert _closed_by_peer(idle, within=15)
        with socket.create_connection(("127.0.0.1", server.port)) as half:
            half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's start
            assert _closed_by_peer(half, within=15)
    finally:
        server.close()


def test_connections_beyond_the_cap_are_closed_and_service_returns_when_they_go(
    pki: Pki,
) -> None:
    server = _server(pki, max_connections=3, handshake_timeout=timedelta(seconds=60))
    try:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        try:
            deadline = time.monotonic() + 15
            while True:  # the server counts a connection once it has accepted it
                with socket.create_connection(("127.0.0.1", server.port)) as extra:
                    if _closed_by_peer(extra, within=0.5):
                        break
                assert time.monotonic() < deadline, "a fourth connection was held open"
        finally:
            for sock in idle:
                sock.close()
        reply = _health_check(pki, server.port, "operator-ops-1")
        assert reply == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.close()


def _health_check(pki: Pki, port: int, stem: str) -> int:
    files = pki.files(stem)
    creds = grpc.ssl_channel_credentials(
        files.ca.read_bytes(), files.key.read_bytes(), files.cert.read_bytes()
    )
    deadline = time.monotonic() + 15
    while True:
        with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                return int(reply.status)
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.1)


# --- health watches have their own limit --------------------------------------------------------


def test_health_watches_do_not_take_subscribe_slots_and_have_their_own_cap(pki: Pki) -> None:
    server = _server(pki, max_streams_per_peer=1, max_health_watches_per_peer=2)
    files = pki.files("operator-ops-1")
    creds = grpc.ssl_channel_credentials(
        files.ca.read_bytes(), files.key.read_bytes(), files.cert.read_bytes()
    )
    try:
        with grpc.secure_channel(f"127.0.0.1:{server.port}", creds) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(2)]
            for watch in watches:
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            stream: Any = pb_grpc.GuardianServiceStub(channel).Subscribe(
                pb.SubscribeRequest(), timeout=30
            )
            assert next(stream).HasField("progress")  # the one Subscribe slot is still free
            third = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
            with pytest.raises(grpc.RpcError) as info:
                next(third)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "2 concurrent health watches" in str(info.value.details())
            for call in (*watches, stream):
                call.cancel()
    finally:
        server.close()


# --- the mesh client sends nothing over a classical handshake -----------------------------------


def _channel_config(pki: Pki, port: int, stem: str, **kw: Any) -> ChannelConfig:
    files = pki.files(stem)
    return ChannelConfig(
        target=f"127.0.0.1:{port}",
        tls=ChannelTls(files.cert, files.key, files.ca),
        retry=RetryPolicy(max_attempts=1),
        **kw,
    )


MARK = 0x5A5A5A5A5A5A  # a start_after_seq whose encoding is easy to find in a byte stream


def _marked_request() -> bytes:
    return pb.SubscribeRequest(start_after_seq=MARK).SerializeToString()


async def _subscribe_once(config: ChannelConfig) -> grpc.StatusCode:
    channel = open_channel(config)
    try:
        stream = pb_grpc.GuardianServiceStub(channel).Subscribe(
            pb.SubscribeRequest(start_after_seq=MARK), timeout=10
        )
        try:
            async for _ in stream:
                break
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        stream.cancel()
        return grpc.StatusCode.OK
    finally:
        await channel.close(None)


def _through_relay(
    pki: Pki, backend: ServerThread, client: str, *, pq_mode: PqMode | None = None
) -> tuple[grpc.StatusCode, bytes, int]:
    async def run() -> tuple[grpc.StatusCode, bytes, int]:
        relay = TlsRelay(pki.files("alpha-127.0.0.1"), pki.files(client), backend.port)
        port = await relay.start()
        try:
            code = await _subscribe_once(_channel_config(pki, port, client, pq_mode=pq_mode))
        finally:
            await relay.stop()
        return code, bytes(relay.seen), relay.connections

    return asyncio.run(run())


def test_over_a_classical_relay_a_cortex_client_sends_nothing(pki: Pki, srv: ServerThread) -> None:
    # The server refuses the relay's classical Health/Check for the cortex role: the client
    # learns it there and never sends its Subscribe.
    code, seen, connections = _through_relay(pki, srv, "cortex-c1")
    assert connections >= 1
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert _marked_request() not in seen


def test_a_server_reporting_a_classical_group_gets_nothing_even_where_it_allows_it(
    pki: Pki,
) -> None:
    # Here the server lets the cortex role in over classical (prefer): only the client's own
    # rule stands between the request and the classical link.
    lenient = _server(pki, pq_policy=PqPolicy(modes={"cortex": PqMode.PREFER}))
    try:
        code, seen, _ = _through_relay(pki, lenient, "cortex-c1")
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert _marked_request() not in seen
        # The control: a client told to prefer sends, and the request is there to read.
        code, seen, _ = _through_relay(pki, lenient, "cortex-c1", pq_mode=PqMode.PREFER)
        assert code == grpc.StatusCode.OK
        assert _marked_request() in seen
    finally:
        lenient.close()


def test_directly_the_check_runs_once_per_connection(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    server = _server(pki)
    port = server.port

    def checks() -> int:
        return sum(
            1
            for r in caplog.records
            if r.name == ACCESS_LOGGER
            and getattr(r, "fields", {}).get("rpc") == "/grpc.health.v1.Health/Check"
        )

    async def three_calls(config: ChannelConfig) -> list[str]:
        channel = open_channel(config)
        try:
            stub = pb_grpc.GuardianServiceStub(channel)
            return [(await stub.GetStatus(pb.GetStatusRequest())).version for _ in range(3)]
        finally:
            await channel.close(None)

    try:
        config = _channel_config(pki, port, "cortex-c1")
        assert asyncio.run(three_calls(config)) == ["0.1.0-test"] * 3
        assert checks() == 1
        server.close()
        server = _server(pki, listen=f"127.0.0.1:{port}")  # a new connection: checked again
        assert asyncio.run(three_calls(config)) == ["0.1.0-test"] * 3
        assert checks() == 2
    finally:
        server.close()


# --- sealed handshakes are rate-limited per peer ------------------------------------------------


class _NoSensors:
    def statuses(self) -> list[pb.SensorStatus]:
        return []

    def loss_totals(self) -> pipeline_details_pb2.LossCounters:
        return pipeline_details_pb2.LossCounters()


@pytest.fixture
def sealed_guardian(pki: Pki, tmp_path: Path) -> Iterator[Callable[[StreamSettings], int]]:
    """Start the real GuardianServicer (sealing included) on a background event loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    made: list[tuple[ComponentServer, Outbox]] = []

    async def build(settings: StreamSettings) -> int:
        files = pki.files("alpha-127.0.0.1")
        server = ComponentServer(ServerConfig(tls=files), component="alpha")
        outbox = Outbox.open(tmp_path / f"outbox{len(made)}", OutboxConfig(), guardian=REF)
        outbox.append(event_pb2.Event(summary="one"))
        servicer = GuardianServicer(
            outbox=outbox,
            guardian=REF,
            settings=settings,
            sealing=SealingIdentity.from_tls(load_tls(files)),
            draining=server.draining,
            status=_NoSensors(),
            retention=timedelta(days=1),
            transport=server.transport_status,
        )
        server.add_service(servicer.binding())
        made.append((server, outbox))
        return await server.start()

    yield lambda settings: asyncio.run_coroutine_threadsafe(build(settings), loop).result(15)
    for server, outbox in made:
        asyncio.run_coroutine_threadsafe(server.stop(timedelta(0)), loop).result(15)
        outbox.close()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_a_replayed_sealed_offer_is_rate_limited_per_peer(
    pki: Pki, sealed_guardian: Callable[[StreamSettings], int]
) -> None:
    port = sealed_guardian(
        replace(StreamSettings(), sealed_handshakes_per_second=0.01, sealed_handshake_burst=3)
    )
    files = pki.files("cortex-c1")
    request = pb.SubscribeRequest(start_after_seq=0)
    context = request.SerializeToString(deterministic=True)
    _, offer = SubscriberHandshake.start(signing_key(load_tls(files)), context=context)
    request.sealed_session.CopyFrom(offer)  # captured once, replayed below
    creds = grpc.ssl_channel_credentials(
        files.ca.read_bytes(), files.key.read_bytes(), files.cert.read_bytes()
    )
    outcomes: list[str] = []
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        stub = pb_grpc.GuardianServiceStub(channel)
        for _ in range(10):
            stream: Any = stub.Subscribe(request, timeout=10)
            try:
                outcomes.append(next(stream).WhichOneof("payload") or "")
            except grpc.RpcError as exc:
                outcomes.append(f"{exc.code().name}: {exc.details()}")
            stream.cancel()
    refused = (
        "RESOURCE_EXHAUSTED: spiffe://mesh.test/cortex/c1 opens sealed sessions faster than "
        "0.01/s; retry after a backoff"
    )
    assert outcomes == ["session_accept"] * 3 + [refused] * 7
    # Another peer has its own bucket.
    other = pki.files("cortex-c2")
    request2 = pb.SubscribeRequest(start_after_seq=0)
    _, offer2 = SubscriberHandshake.start(
        signing_key(load_tls(other)), context=request2.SerializeToString(deterministic=True)
    )
    request2.sealed_session.CopyFrom(offer2)
    creds2 = grpc.ssl_channel_credentials(
        other.ca.read_bytes(), other.key.read_bytes(), other.cert.read_bytes()
    )
    with grpc.secure_channel(f"127.0.0.1:{port}", creds2) as channel:
        stream2: Any = pb_grpc.GuardianServiceStub(channel).Subscribe(request2, timeout=10)
        assert next(stream2).WhichOneof("payload") == "session_accept"
        stream2.cancel()


# --- refused calls do not flood the log ---------------------------------------------------------


def test_refused_calls_are_logged_rate_limited_with_what_was_left_out(
    pki: Pki, srv: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    files = pki.files("soar-s1")  # a valid certificate of a role GetStatus does not allow
    creds = grpc.ssl_channel_credentials(
        files.ca.read_bytes(), files.key.read_bytes(), files.cert.read_bytes()
    )
    calls = 200
    started = time.monotonic()
    with grpc.secure_channel(f"127.0.0.1:{srv.port}", creds) as channel:
        stub = pb_grpc.GuardianServiceStub(channel)
        for _ in range(calls):
            with pytest.raises(grpc.RpcError):
                stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    elapsed = time.monotonic() - started
    lines = [
        getattr(r, "fields", {})
        for r in caplog.records
        if r.name == ACCESS_LOGGER
        and getattr(r, "fields", {}).get("peer") == f"spiffe://{TD}/soar/s1"
    ]
    assert all(line["code"] == "PERMISSION_DENIED" for line in lines)
    assert len(lines) <= FAILED_LINES_BURST + 5 * elapsed + 1
    assert len(lines) < calls
    # What was left out is said by the next line written once the bucket refills.
    assert all(line.get("suppressed") in (None, *range(1, calls)) for line in lines)


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_connections", 0),
        ("handshake_timeout", timedelta(0)),
        ("handshake_timeout", timedelta(hours=1)),
        ("max_health_watches_per_peer", 0),
    ],
)
def test_bad_transport_limits_name_the_field(pki: Pki, field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        ServerConfig(tls=pki.files("alpha-127.0.0.1"), **{field: value})  # type: ignore[arg-type]


def test_the_per_source_firewall_rules_in_deploy_are_valid_nftables() -> None:
    """`nft -c` parses and checks the ruleset against the kernel without loading it."""
    nft = shutil.which("nft")
    assert nft is not None, "nft is missing: tools/install-system-deps.sh installs nftables"
    result = subprocess.run(
        [nft, "-c", "-f", str(ROOT / "deploy" / "nftables-qsc.nft")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_get_status_reports_calls_per_role_and_group_classical_included(
    pki: Pki, sealed_guardian: Callable[[StreamSettings], int]
) -> None:
    port = sealed_guardian(StreamSettings())
    for _ in range(2):  # grpcurl 1.8.6: classical X25519, allowed for operators (prefer)
        assert _grpcurl_run(pki, port, "operator-ops-1", GET_STATUS.lstrip("/")).returncode == 0
    refused = _grpcurl_run(pki, port, "cortex-c1", GET_STATUS.lstrip("/"))
    assert "classical key exchange X25519 refused" in refused.stderr
    files = pki.files("cortex-c1")
    creds = grpc.ssl_channel_credentials(
        files.ca.read_bytes(), files.key.read_bytes(), files.cert.read_bytes()
    )
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        reply = pb_grpc.GuardianServiceStub(channel).GetStatus(pb.GetStatusRequest(), timeout=10)
    rows = {(r.role, r.kex_group): r for r in reply.transport.counts}
    operator = rows["operator", "X25519"]
    # Each run is two calls: server reflection for the schema, then GetStatus.
    assert (operator.calls, operator.refused, operator.hybrid) == (4, 0, False)
    assert operator.classical_connections == 2  # one handshake per grpcurl run
    assert rows["cortex", "X25519"].refused == 2  # reflection v1, then v1alpha: both refused
    hybrid = rows["cortex", "X25519MLKEM768"]
    assert (hybrid.hybrid, hybrid.calls >= 1, hybrid.classical_connections) == (True, True, 0)
