"""Certificates from `qsc pki` work for real mutual TLS with grpcio, over loopback.

The server requires client certificates; the client checks the server's IP SAN. The handshake
must carry the leaf's SPIFFE identity and negotiate TLS 1.3 with the hybrid X25519MLKEM768 group.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

TRUST_DOMAIN = "mesh.test"


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server_dir: Path
    other_dir: Path


def _qsc(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mesh.cli", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    main, other = base / "main", base / "other"
    _qsc("pki", "init", "--dir", str(main), "--trust-domain", TRUST_DOMAIN)
    _qsc("pki", "issue", "cortex", "127.0.0.1", "--dir", str(main))
    _qsc("pki", "issue", "cortex", "central", "--dir", str(main))
    _qsc("pki", "issue", "operator", "ops-1", "--dir", str(main))
    _qsc("pki", "init", "--dir", str(other), "--trust-domain", TRUST_DOMAIN)
    _qsc("pki", "issue", "operator", "ops-1", "--dir", str(other))
    return Pki(ca=main / "ca.crt", other_ca=other / "ca.crt", server_dir=main, other_dir=other)


class _RecordingHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Answers SERVING and keeps the auth context of the last call."""

    def __init__(self) -> None:
        self.auth: dict[str, list[bytes]] = {}

    async def Check(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> health_pb2.HealthCheckResponse:
        self.auth = {k: list(v) for k, v in context.auth_context().items()}
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def _check(
    pki: Pki, server_stem: str, client_dir: Path, client_stem: str | None, ca: Path
) -> tuple[health_pb2.HealthCheckResponse | grpc.RpcError, dict[str, list[bytes]]]:
    servicer = _RecordingHealth()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials(
        [
            (
                (pki.server_dir / f"{server_stem}.key").read_bytes(),
                (pki.server_dir / f"{server_stem}.crt").read_bytes(),
            )
        ],
        root_certificates=pki.ca.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        if client_stem is None:
            channel_creds = grpc.ssl_channel_credentials(ca.read_bytes())
        else:
            channel_creds = grpc.ssl_channel_credentials(
                ca.read_bytes(),
                (client_dir / f"{client_stem}.key").read_bytes(),
                (client_dir / f"{client_stem}.crt").read_bytes(),
            )
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_creds) as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
            except grpc.RpcError as exc:
                return exc, servicer.auth
            return reply, servicer.auth
    finally:
        await server.stop(None)


def test_issued_leaves_give_mutual_tls_with_identity_and_hybrid_group(pki: Pki) -> None:
    reply, auth = asyncio.run(
        _check(pki, "cortex-127.0.0.1", pki.server_dir, "operator-ops-1", pki.ca)
    )
    assert isinstance(reply, health_pb2.HealthCheckResponse)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert auth["peer_spiffe_id"] == [f"spiffe://{TRUST_DOMAIN}/operator/ops-1".encode()]
    assert auth["ssl_tls_version"] == [b"TLSv1.3"]
    assert auth["ssl_negotiated_key_exchange_group"] == [b"X25519MLKEM768"]


def test_client_certificate_from_another_ca_is_refused(pki: Pki) -> None:
    reply, auth = asyncio.run(
        _check(pki, "cortex-127.0.0.1", pki.other_dir, "operator-ops-1", pki.ca)
    )
    assert isinstance(reply, grpc.RpcError)
    assert reply.code() == grpc.StatusCode.UNAVAILABLE
    assert auth == {}


def test_client_without_certificate_is_refused(pki: Pki) -> None:
    reply, auth = asyncio.run(_check(pki, "cortex-127.0.0.1", pki.server_dir, None, pki.ca))
    assert isinstance(reply, grpc.RpcError)
    assert reply.code() == grpc.StatusCode.UNAVAILABLE
    assert auth == {}


def test_server_whose_sans_do_not_name_the_address_is_refused(pki: Pki) -> None:
    # "central" has only DNS:central: dialling 127.0.0.1 must fail hostname verification.
    reply, _ = asyncio.run(_check(pki, "cortex-central", pki.server_dir, "operator-ops-1", pki.ca))
    assert isinstance(reply, grpc.RpcError)
    assert reply.code() == grpc.StatusCode.UNAVAILABLE


def test_server_from_another_ca_is_refused_by_the_client(pki: Pki) -> None:
    reply, _ = asyncio.run(
        _check(pki, "cortex-127.0.0.1", pki.server_dir, "operator-ops-1", pki.other_ca)
    )
    assert isinstance(reply, grpc.RpcError)
    assert reply.code() == grpc.StatusCode.UNAVAILABLE
