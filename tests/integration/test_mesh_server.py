"""The component server, for real: mTLS on 127.0.0.1:0 with PKI certificates, real clients.

Clients: grpcio (hybrid X25519MLKEM768), grpcurl 1.8.6 and Node.js 20 (classical X25519 only),
`buf curl` (hybrid). Most tests share one in-process server running in a background thread; the
SIGTERM test runs `mesh_server_proc.py` as a real process. grpcurl, buf and Node.js are part of
the toolchain: when one is missing the test fails with how to install it, it never skips.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from crypto.pki import Identity, init_ca, issue_leaf, write_leaf
from mesh.errors import ConfigError, IdentityError
from mesh.identity import TlsFiles, identity_from_auth_context, load_tls
from mesh.interceptors import ACCESS_LOGGER, ERROR_LOGGER
from mesh.server import ComponentServer, ServerConfig, ServiceBinding
from qsc.alpha.v1 import alpha_service_pb2_grpc
from qsc.guardian.v1 import guardian_service_pb2 as pb
from qsc.guardian.v1 import guardian_service_pb2_grpc as pb_grpc

if str(Path(__file__).resolve().parents[2]) not in sys.path:  # plain `pytest` from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.integration.clients import (
    HOW_TO_FIX,
    NODE_MODULES,
    PROTO_ROOT,
    grpcurl_binary,
    run_grpcurl,
    run_node,
    tls_args,
)
from tests.integration.clients import ROOT as ROOT  # re-exported: test_transport_floor.py
from tests.integration.loop_thread import LoopThread
from tests.integration.mesh_server_proc import (
    CRASH_TEXT,
    FAIL_HEADER,
    GUARDIAN_SERVICE,
    TestGuardian,
)

BUF = NODE_MODULES / ".bin" / "buf"
NODE_SCRIPT = Path(__file__).with_name("node_get_status.js")
PROC_SCRIPT = Path(__file__).with_name("mesh_server_proc.py")
TD = "mesh.test"
GET_STATUS = "/qsc.guardian.v1.GuardianService/GetStatus"
SUBSCRIBE = "/qsc.guardian.v1.GuardianService/Subscribe"
ALPHA_SERVICE = "qsc.alpha.v1.AlphaService"
REFLECTION_V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
SERVED = {
    GUARDIAN_SERVICE,
    ALPHA_SERVICE,
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
}
MAX_MESSAGE = 64 * 1024
MAX_STREAMS = 2
T = TypeVar("T")
R_co = TypeVar("R_co", covariant=True)


# --- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    main: Path
    other: Path

    def files(self, stem: str, *, other: bool = False) -> TlsFiles:
        base = self.other if other else self.main
        return TlsFiles(base / f"{stem}.crt", base / f"{stem}.key", base / "ca.crt")

    def key_lines(self) -> set[str]:
        """Every base64 line of every private key: none may appear in a log."""
        lines: set[str] = set()
        for key in [*self.main.glob("*.key"), *self.other.glob("*.key")]:
            body = [ln for ln in key.read_text().splitlines() if ln and not ln.startswith("-----")]
            lines |= set(body)
            lines.add("".join(body))
        return lines


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    main, other = base / "main", base / "other"
    ca = init_ca(main, TD)
    for role, host in [
        ("alpha", "127.0.0.1"),
        ("cortex", "c1"),
        ("cortex", "c2"),
        ("operator", "ops-1"),
        ("operator", "ops-node"),
        ("soar", "s1"),
    ]:
        write_leaf(issue_leaf(ca, role, host), main, ca.cert)
    other_ca = init_ca(other, TD)
    write_leaf(issue_leaf(other_ca, "operator", "ops-1"), other, other_ca.cert)
    return Pki(main, other)


# --- an in-process server in a background event loop -------------------------------------------


class ServerThread(LoopThread):
    """A ComponentServer on its own event loop thread, so tests can use blocking clients."""

    def __init__(
        self,
        config: ServerConfig,
        authz: dict[str, list[str]] | None,
        guardian: type[TestGuardian] = TestGuardian,
    ) -> None:
        self.config, self.authz, self.guardian = config, authz, guardian
        super().__init__()
        self.server = self.run(self._build())
        self.port = self.run(self.server.start())

    async def _build(self) -> ComponentServer:
        kwargs: dict[str, Any] = {} if self.authz is None else {"authz": self.authz}
        server = ComponentServer(self.config, component="alpha", **kwargs)
        server.add_service(
            ServiceBinding(
                GUARDIAN_SERVICE,
                pb_grpc.add_GuardianServiceServicer_to_server,
                self.guardian(server.draining),
            )
        )
        # The generated base servicer: every RPC raises NotImplementedError.
        server.add_service(
            ServiceBinding(
                ALPHA_SERVICE,
                alpha_service_pb2_grpc.add_AlphaServiceServicer_to_server,
                alpha_service_pb2_grpc.AlphaServiceServicer(),  # type: ignore[abstract]
            )
        )
        return server

    def close(self) -> None:
        self.run(self.server.stop(timedelta(0)))
        self.close_loop()


@pytest.fixture(scope="module")
def srv(pki: Pki) -> Iterator[ServerThread]:
    config = ServerConfig(
        tls=pki.files("alpha-127.0.0.1"),
        max_message_bytes=MAX_MESSAGE,
        max_streams_per_peer=MAX_STREAMS,
    )
    authz = {
        GET_STATUS: ["cortex", "operator"],
        SUBSCRIBE: ["cortex", "operator"],
        f"/{ALPHA_SERVICE}/ListRules": ["operator"],
        # ScanMemory and ValidateRules are served but not listed: denied.
    }
    server = ServerThread(config, authz)
    yield server
    server.close()


@pytest.fixture
def access_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    caplog.set_level(logging.INFO, logger=ERROR_LOGGER)
    return caplog


def _channel(pki: Pki, port: int, stem: str | None, *, other: bool = False) -> grpc.Channel:
    ca = (pki.main / "ca.crt").read_bytes()
    if stem is None:
        creds = grpc.ssl_channel_credentials(ca)
    else:
        files = pki.files(stem, other=other)
        creds = grpc.ssl_channel_credentials(ca, files.key.read_bytes(), files.cert.read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


class _Stream(Protocol[R_co]):
    """What a grpcio response stream is (grpc-stubs types it too loosely for `next`)."""

    def __iter__(self) -> Iterator[R_co]: ...
    def __next__(self) -> R_co: ...
    def cancel(self) -> bool: ...
    def code(self) -> grpc.StatusCode: ...


def _subscribe(
    channel: grpc.Channel, timeout: float | None = 20, start_after_seq: int = 0
) -> _Stream[pb.SubscribeResponse]:
    stream: Any = pb_grpc.GuardianServiceStub(channel).Subscribe(
        pb.SubscribeRequest(start_after_seq=start_after_seq), timeout=timeout
    )
    return stream  # type: ignore[no-any-return]


def _watch(channel: grpc.Channel) -> _Stream[health_pb2.HealthCheckResponse]:
    stream: Any = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=""), timeout=30
    )
    return stream  # type: ignore[no-any-return]


def _get_status(
    pki: Pki, port: int, stem: str | None, *, other: bool = False, fail: str | None = None
) -> pb.GetStatusResponse | grpc.RpcError:
    metadata = ((FAIL_HEADER, fail),) if fail else ()
    with _channel(pki, port, stem, other=other) as channel:
        try:
            reply: pb.GetStatusResponse = pb_grpc.GuardianServiceStub(channel).GetStatus(
                pb.GetStatusRequest(), timeout=10, metadata=metadata
            )
        except grpc.RpcError as exc:
            return exc
        return reply


def _raw_call(pki: Pki, port: int, stem: str, method: str, payload: bytes) -> grpc.RpcError:
    with _channel(pki, port, stem) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            call(payload, timeout=10)
        except grpc.RpcError as exc:
            return exc
    raise AssertionError(f"{method} unexpectedly succeeded")


def _calls(caplog: pytest.LogCaptureFixture, **match: str) -> list[dict[str, Any]]:
    """The structured fields of the access log records that have all of `match`."""
    calls = [getattr(r, "fields", {}) for r in caplog.records if r.name == ACCESS_LOGGER]
    return [c for c in calls if all(c.get(k) == v for k, v in match.items())]


# --- identity, role and authorization ------------------------------------------------------------


def test_right_certificate_and_role_gets_status_naming_the_caller(
    pki: Pki, srv: ServerThread, access_log: pytest.LogCaptureFixture
) -> None:
    before = srv.server.policy_stats().calls_with("X25519MLKEM768")
    reply = _get_status(pki, srv.port, "cortex-c1")
    assert isinstance(reply, pb.GetStatusResponse), reply
    assert reply.guardian.host == "127.0.0.1"
    assert reply.version == "0.1.0-test"
    assert reply.sensors[0].mode == f"spiffe://{TD}/cortex/c1"  # peer_identity() in the servicer
    assert srv.server.policy_stats().calls_with("X25519MLKEM768") == before + 1
    (call,) = _calls(access_log, rpc=GET_STATUS)
    assert call["peer"] == f"spiffe://{TD}/cortex/c1"
    assert call["code"] == "OK"
    assert (call["kex_group"], call["tls_version"]) == ("X25519MLKEM768", "TLSv1.3")
    assert call["duration_ms"] >= 0
    assert call["peer_address"].startswith("ipv4:127.0.0.1:")


def test_no_client_certificate_fails_the_handshake(pki: Pki, srv: ServerThread) -> None:
    reply = _get_status(pki, srv.port, None)
    assert isinstance(reply, grpc.RpcError)
    assert reply.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_fails_the_handshake(pki: Pki, srv: ServerThread) -> None:
    reply = _get_status(pki, srv.port, "operator-ops-1", other=True)
    assert isinstance(reply, grpc.RpcError)
    assert reply.code() == grpc.StatusCode.UNAVAILABLE


def test_valid_certificate_of_the_wrong_role_is_denied(pki: Pki, srv: ServerThread) -> None:
    reply = _get_status(pki, srv.port, "soar-s1")
    assert isinstance(reply, grpc.RpcError)
    assert reply.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reply.details() == f"role soar may not call {GET_STATUS}"
    with _channel(pki, srv.port, "soar-s1") as channel:
        stream = _subscribe(channel)
        with pytest.raises(grpc.RpcError) as denied:
            next(stream)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Health is open to every authenticated role.
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=GUARDIAN_SERVICE), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_rpcs_not_in_the_table_are_denied_even_when_served(pki: Pki, srv: ServerThread) -> None:
    for method in (
        f"/{ALPHA_SERVICE}/ScanMemory",  # served, not in the table
        "/qsc.guardian.v1.GuardianService/DeleteEverything",  # nobody serves it
        "/no.such.v1.Service/Method",
    ):
        err = _raw_call(pki, srv.port, "operator-ops-1", method, b"")
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, method
    # In the table but not implemented by the (generated base) servicer: UNIMPLEMENTED, not a
    # crash.
    err = _raw_call(pki, srv.port, "operator-ops-1", f"/{ALPHA_SERVICE}/ListRules", b"")
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED


def _list_services(
    pki: Pki, port: int, stem: str, method: str = REFLECTION_V1ALPHA
) -> set[str] | grpc.RpcError:
    """What `grpcurl list` asks, with grpcio (hybrid, so any role passes the transport policy).

    v1 and v1alpha reflection messages are the same on the wire, so one pair of types does both.
    """
    with _channel(pki, port, stem) as channel:
        call = channel.stream_stream(
            method,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        try:
            (reply,) = list(call(iter([request]), timeout=10))
        except grpc.RpcError as exc:
            return exc
    return {service.name for service in reply.list_services_response.service}


@pytest.mark.parametrize("stem", ["operator-ops-1", "soar-s1"])
def test_operators_and_soar_get_reflection(pki: Pki, srv: ServerThread, stem: str) -> None:
    assert _list_services(pki, srv.port, stem) == SERVED
    # v1 is authorized too; grpcio just has no handler for it (clients then fall back to v1alpha).
    v1 = _list_services(pki, srv.port, stem, REFLECTION_V1)
    assert isinstance(v1, grpc.RpcError)
    assert v1.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(("stem", "role"), [("alpha-127.0.0.1", "alpha"), ("cortex-c1", "cortex")])
def test_other_roles_are_denied_reflection_but_not_health(
    pki: Pki, srv: ServerThread, access_log: pytest.LogCaptureFixture, stem: str, role: str
) -> None:
    # The alpha certificate is the guardian's own leaf: what an attacker on a guardian host holds.
    for method in (REFLECTION_V1ALPHA, REFLECTION_V1):
        denied = _list_services(pki, srv.port, stem, method)
        assert isinstance(denied, grpc.RpcError), denied
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
        assert denied.details() == f"role {role} may not call {method}"
        (call,) = _calls(
            access_log, rpc=method, peer=f"spiffe://{TD}/{role}/{stem.split('-', 1)[1]}"
        )
        assert call["code"] == "PERMISSION_DENIED"
    with _channel(pki, srv.port, stem) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=GUARDIAN_SERVICE), timeout=10
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING


# --- error mapping ------------------------------------------------------------------------------


def test_domain_error_maps_through_the_table(pki: Pki, srv: ServerThread) -> None:
    reply = _get_status(pki, srv.port, "operator-ops-1", fail="domain")
    assert isinstance(reply, grpc.RpcError)
    assert reply.code() == grpc.StatusCode.NOT_FOUND
    assert reply.details() == "no sensor named ebpf.exec"


def test_unexpected_exception_is_internal_and_generic_with_traceback_in_the_log(
    pki: Pki, srv: ServerThread, access_log: pytest.LogCaptureFixture
) -> None:
    reply = _get_status(pki, srv.port, "operator-ops-1", fail="crash")
    assert isinstance(reply, grpc.RpcError)
    assert reply.code() == grpc.StatusCode.INTERNAL
    assert reply.details() == "internal error"
    assert CRASH_TEXT not in str(reply)
    (record,) = [r for r in access_log.records if r.name == ERROR_LOGGER]
    assert record.exc_info is not None
    assert getattr(record, "fields", {}) == {
        "rpc": GET_STATUS,
        "peer": f"spiffe://{TD}/operator/ops-1",
    }
    assert f"RuntimeError: {CRASH_TEXT}" in access_log.text
    assert "Traceback" in access_log.text
    assert _calls(access_log, rpc=GET_STATUS, code="INTERNAL")


# --- limits -------------------------------------------------------------------------------------


def test_oversize_message_is_refused(pki: Pki, srv: ServerThread) -> None:
    err = _raw_call(pki, srv.port, "operator-ops-1", GET_STATUS, b"\0" * (MAX_MESSAGE + 1))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Just under the limit passes the size check (and then parses as an empty request).
    with _channel(pki, srv.port, "operator-ops-1") as channel:
        call = channel.unary_unary(GET_STATUS, request_serializer=None, response_deserializer=None)
        assert call(b"", timeout=10)


def test_concurrent_streams_are_limited_per_peer(pki: Pki, srv: ServerThread) -> None:
    ops = f"spiffe://{TD}/operator/ops-1"
    with (
        _channel(pki, srv.port, "operator-ops-1") as ops_channel,
        _channel(pki, srv.port, "cortex-c2") as cortex_channel,
    ):
        streams = [_subscribe(ops_channel) for _ in range(MAX_STREAMS)]
        for stream in streams:
            assert next(stream).progress.latest_seq == 1
        assert srv.server.open_streams()[ops] == MAX_STREAMS
        with pytest.raises(grpc.RpcError) as refused:
            next(_subscribe(ops_channel))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"{MAX_STREAMS} concurrent streams" in (refused.value.details() or "")
        # The limit is per peer: another identity still gets a stream.
        other = _subscribe(cortex_channel)
        assert next(other).HasField("progress")
        other.cancel()
        for stream in streams:
            stream.cancel()
        _wait_until(lambda: ops not in srv.server.open_streams())
        again = _subscribe(ops_channel)
        assert next(again).HasField("progress")  # slots are released on cancel
        again.cancel()


def _wait_until(condition: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


# --- real classical and hybrid clients ----------------------------------------------------------


def _grpcurl_run(pki: Pki, port: int, stem: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_grpcurl(pki.files(stem), f"127.0.0.1:{port}", *args, timeout=30)


def test_grpcurl_is_the_real_1_8_6() -> None:
    out = subprocess.run(
        [str(grpcurl_binary()), "-version"], capture_output=True, text=True, check=True
    )
    assert "v1.8.6" in out.stdout + out.stderr


def test_classical_grpcurl_is_refused_under_require(pki: Pki, srv: ServerThread) -> None:
    before = srv.server.policy_stats().refused.get("cortex", {}).get("X25519", 0)
    for args in (("list",), ("grpc.health.v1.Health/Check",)):
        result = _grpcurl_run(pki, srv.port, "cortex-c1", *args)
        assert result.returncode != 0, result.stdout
        assert "Unauthenticated" in result.stderr, result.stderr
        assert "classical key exchange X25519 refused" in result.stderr
    assert srv.server.policy_stats().refused["cortex"]["X25519"] >= before + 2


def test_classical_grpcurl_lists_describes_and_checks_health_under_prefer(
    pki: Pki, srv: ServerThread, access_log: pytest.LogCaptureFixture
) -> None:
    before = srv.server.policy_stats().classical_connections.get("operator", 0)
    listed = _grpcurl_run(pki, srv.port, "operator-ops-1", "list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == SERVED
    described = _grpcurl_run(pki, srv.port, "operator-ops-1", "describe", GUARDIAN_SERVICE)
    assert described.returncode == 0, described.stderr
    assert "rpc GetStatus" in described.stdout
    assert "returns ( stream .qsc.guardian.v1.SubscribeResponse )" in described.stdout
    health = _grpcurl_run(pki, srv.port, "operator-ops-1", "grpc.health.v1.Health/Check")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}
    status = _grpcurl_run(pki, srv.port, "operator-ops-1", GET_STATUS.lstrip("/"))
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["sensors"][0]["mode"] == f"spiffe://{TD}/operator/ops-1"
    # Each grpcurl run is one classical handshake, counted once however many calls it made.
    assert srv.server.policy_stats().classical_connections["operator"] == before + 4
    assert _calls(access_log, peer=f"spiffe://{TD}/operator/ops-1", kex_group="X25519")


def _buf_curl(
    pki: Pki, port: int, stem: str, *, schema: Path | None
) -> subprocess.CompletedProcess[str]:
    if not BUF.is_file():
        pytest.fail(f"buf is missing from {BUF}; {HOW_TO_FIX}")
    files = pki.files(stem)
    return subprocess.run(
        [
            str(BUF),
            "curl",
            *("--cacert", str(files.ca), "--cert", str(files.cert), "--key", str(files.key)),
            *(("--schema", str(schema)) if schema is not None else ()),  # else: reflection
            "--protocol",
            "grpc",
            f"https://127.0.0.1:{port}{GET_STATUS}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_buf_curl_negotiates_hybrid_and_passes_under_require(
    pki: Pki, srv: ServerThread, access_log: pytest.LogCaptureFixture
) -> None:
    # A cortex certificate may not use reflection: the schema comes from the proto files.
    result = _buf_curl(pki, srv.port, "cortex-c1", schema=PROTO_ROOT)
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["sensors"][0]["mode"] == f"spiffe://{TD}/cortex/c1"
    calls = _calls(access_log, peer=f"spiffe://{TD}/cortex/c1")
    (call,) = calls
    assert (call["rpc"], call["code"], call["kex_group"]) == (GET_STATUS, "OK", "X25519MLKEM768")


def test_buf_curl_reflection_needs_an_operator_or_soar_certificate(
    pki: Pki, srv: ServerThread, access_log: pytest.LogCaptureFixture
) -> None:
    refused = _buf_curl(pki, srv.port, "cortex-c1", schema=None)
    assert refused.returncode != 0, refused.stdout
    # buf reports a denied reflection as a schema without the service; the log says why.
    assert f'failed to find service named "{GUARDIAN_SERVICE}"' in refused.stderr, refused.stderr
    # No fallback to v1alpha on PERMISSION_DENIED, and GetStatus was never called.
    cortex = _calls(access_log, peer=f"spiffe://{TD}/cortex/c1")
    assert [(c["rpc"], c["code"]) for c in cortex] == [(REFLECTION_V1, "PERMISSION_DENIED")]

    allowed = _buf_curl(pki, srv.port, "operator-ops-1", schema=None)
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["sensors"][0]["mode"] == f"spiffe://{TD}/operator/ops-1"
    ops = _calls(access_log, peer=f"spiffe://{TD}/operator/ops-1")
    # v1 first (authorized, no handler), then v1alpha, then the call; all hybrid.
    assert {(c["rpc"], c["code"]) for c in ops} == {
        (REFLECTION_V1, "UNIMPLEMENTED"),
        (REFLECTION_V1ALPHA, "OK"),
        (GET_STATUS, "OK"),
    }
    assert {c["kex_group"] for c in ops} == {"X25519MLKEM768"}


def _node(pki: Pki, port: int, stem: str, *extra: str) -> dict[str, Any]:
    return run_node(
        NODE_SCRIPT,
        *(str(PROTO_ROOT), f"127.0.0.1:{port}", *tls_args(pki.files(stem)), *extra),
        timeout=60,
        packages=("@grpc/proto-loader", "@grpc/grpc-js"),
    )


def test_node_client_gets_status_with_an_operator_certificate(
    pki: Pki, srv: ServerThread, access_log: pytest.LogCaptureFixture
) -> None:
    before = srv.server.policy_stats().classical_connections.get("operator", 0)
    out = _node(pki, srv.port, "operator-ops-node")
    assert out["ok"], out
    reply = out["response"]
    assert reply["guardian"] == {"id": "alpha-127.0.0.1", "role": "ROLE_ALPHA", "host": "127.0.0.1"}
    assert reply["version"] == "0.1.0-test"
    assert reply["sensors"][0]["mode"] == f"spiffe://{TD}/operator/ops-node"
    assert reply["sensors"][0]["state"] == "SENSOR_STATE_HEALTHY"
    assert reply["outbox"] == {"depth": "3", "first_seq": "1", "last_seq": "3"}
    # Node.js 20 offers only classical groups: allowed under prefer, counted and logged.
    assert srv.server.policy_stats().classical_connections["operator"] == before + 1
    (call,) = _calls(access_log, peer=f"spiffe://{TD}/operator/ops-node")
    assert (call["code"], call["kex_group"], call["tls_version"]) == ("OK", "X25519", "TLSv1.3")


def test_node_client_is_refused_under_require(pki: Pki, srv: ServerThread) -> None:
    refused = _node(pki, srv.port, "cortex-c1")
    assert refused["code"] == "UNAUTHENTICATED"
    assert "classical key exchange X25519 refused" in refused["details"]
    # TLS 1.2 clients (Node.js, Python, openssl) never get a call in: test_transport_floor.py.


# --- shutdown -----------------------------------------------------------------------------------


def test_sigterm_drains_streams_and_exits_zero(pki: Pki, tmp_path: Path) -> None:
    grace = 5.0
    files = pki.files("alpha-127.0.0.1")
    stderr_path = tmp_path / "server.log"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [
                *(sys.executable, str(PROC_SCRIPT), "--grace", str(grace)),
                *("--cert", str(files.cert), "--key", str(files.key), "--ca", str(files.ca)),
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        with _channel(pki, port, "operator-ops-1") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = _watch(channel)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            per_service = health.Check(
                health_pb2.HealthCheckRequest(service=GUARDIAN_SERVICE), timeout=10
            )
            assert per_service.status == health_pb2.HealthCheckResponse.SERVING
            stream = _subscribe(channel, start_after_seq=10)
            assert next(stream).progress.latest_seq == 11

            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            # Health says NOT_SERVING, then the watch ends; the stream ends cleanly (status OK).
            assert [r.status for r in watch] == [health_pb2.HealthCheckResponse.NOT_SERVING]
            rest = list(stream)
            assert all(r.HasField("progress") for r in rest)
            assert stream.code() == grpc.StatusCode.OK
        assert proc.wait(timeout=grace + 10) == 0
        assert time.monotonic() - started < grace  # drained, not cut off at the grace
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = stderr_path.read_text()
    assert "signal received, draining signal=SIGTERM grace_s=5.0" in log
    ops = f"peer=spiffe://{TD}/operator/ops-1"
    for rpc in (SUBSCRIBE, "/grpc.health.v1.Health/Watch"):
        assert f"qsc.mesh.access call rpc={rpc} {ops} code=OK " in log, log
    for secret in pki.key_lines():
        assert secret not in log
    assert "PRIVATE KEY" not in log


class _StubbornGuardian(TestGuardian):
    """Ignores draining: its stream must be cut off when the grace runs out."""

    async def Subscribe(self, request: pb.SubscribeRequest, context: object) -> Any:
        while True:
            yield pb.SubscribeResponse()
            await asyncio.sleep(0.05)


def test_grace_is_bounded_and_new_calls_are_refused_while_draining(pki: Pki) -> None:
    srv = ServerThread(ServerConfig(tls=pki.files("alpha-127.0.0.1")), None, _StubbornGuardian)
    try:
        with _channel(pki, srv.port, "operator-ops-1") as channel:
            stream = _subscribe(channel, timeout=None)
            next(stream)
            grace = 0.5
            started = time.monotonic()
            stopping = asyncio.run_coroutine_threadsafe(
                srv.server.stop(timedelta(seconds=grace)), srv.loop
            )
            _wait_until(srv.server.draining.is_set)
            late = _get_status(pki, srv.port, "operator-ops-1")
            assert isinstance(late, grpc.RpcError)
            assert late.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.RpcError):
                for _ in stream:
                    pass
            stopping.result(10)
            assert grace <= time.monotonic() - started < grace + 3
    finally:
        srv.close()


# --- identity files and config ------------------------------------------------------------------


def test_identity_files_are_checked_at_start(pki: Pki, tmp_path: Path) -> None:
    good = pki.files("operator-ops-1")
    assert load_tls(good).identity == Identity(TD, "operator", "ops-1")
    assert "BEGIN" not in repr(load_tls(good))

    loose = tmp_path / "loose.key"
    loose.write_bytes(good.key.read_bytes())
    loose.chmod(0o644)
    with pytest.raises(IdentityError, match="readable by group or other"):
        load_tls(TlsFiles(good.cert, loose, good.ca))
    with pytest.raises(IdentityError, match="does not belong to certificate"):
        load_tls(TlsFiles(good.cert, pki.files("soar-s1").key, good.ca))
    with pytest.raises(IdentityError, match="does not verify against"):
        load_tls(TlsFiles(good.cert, good.key, pki.other / "ca.crt"))
    with pytest.raises(IdentityError, match="no such file"):
        load_tls(TlsFiles(tmp_path / "missing.crt", good.key, good.ca))

    async def start_with_wrong_role() -> None:
        server = ComponentServer(ServerConfig(tls=good), component="alpha")
        await server.start()

    with pytest.raises(IdentityError, match="names role operator, but this is the alpha"):
        asyncio.run(start_with_wrong_role())


def test_peer_identity_must_be_of_our_trust_domain() -> None:
    auth = {"peer_spiffe_id": [b"spiffe://mesh.test/operator/ops-1"]}
    assert identity_from_auth_context(auth, TD) == Identity(TD, "operator", "ops-1")
    with pytest.raises(IdentityError, match=r"trust domain 'mesh\.test' is not this server's"):
        identity_from_auth_context(auth, "other.test")
    for bad in ({}, {"peer_spiffe_id": [b"spiffe://mesh.test/root/x"]}):
        with pytest.raises(IdentityError):
            identity_from_auth_context(bad, TD)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("listen", "no-port"),
        ("max_message_bytes", 0),
        ("max_streams_per_peer", 0),
        ("shutdown_grace", timedelta(seconds=-1)),
    ],
)
def test_invalid_server_config_names_the_field(pki: Pki, field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"^{field}: "):
        ServerConfig(tls=pki.files("alpha-127.0.0.1"), **{field: value})  # type: ignore[arg-type]
