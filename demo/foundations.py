"""The in-process steps of `make demo`: a deployment PKI, a mutual-TLS call on a mesh server
(`mesh.server`, dialled with `mesh.channel`), the key hierarchy with rotation, crash-safe nonces,
the hybrid KEM and file hashing."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2, health_pb2_grpc

from crypto import pki
from crypto.aead import AeadKey, Algorithm, Sealer, open_sealed
from crypto.hashing import blake3_file, sha3_256_file
from crypto.kem import QSC_HYBRID_KEM
from crypto.keyring import KeyManager
from crypto.nonces import CounterNonceSource
from demo.harness import HOST, channel_to, step, tls
from mesh.channel import open_channel
from mesh.interceptors import ACCESS_LOGGER
from mesh.server import ComponentServer, ServerConfig

TRUST_DOMAIN = "demo.qsc.test"


def issue_all(pki_dir: Path) -> None:
    step("PKI: a deployment CA and one leaf per role")
    ca = pki.init_ca(pki_dir, TRUST_DOMAIN)
    print(f"CA for trust domain {ca.trust_domain}: {pki_dir / pki.CA_CERT_FILE}")
    for role in pki.ROLES:
        leaf = pki.issue_leaf(ca, role, HOST)
        files = pki.write_leaf(leaf, pki_dir, ca.cert)
        mode = files.key.stat().st_mode & 0o777
        print(f"  {leaf.identity.spiffe_id:<40} {files.cert.name:<22} key mode {mode:04o}")


class _AccessLog(logging.Handler):
    """Keeps the fields of the mesh server's access log lines (one per call)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.calls: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.calls.append(dict(getattr(record, "fields", {})))


async def _health_check(workdir: Path, server_role: str, client_role: str) -> tuple[int, str]:
    """One Health.Check from `client_role` to a `server_role` mesh server; (port, status)."""
    server = ComponentServer(
        ServerConfig(tls=tls(workdir, server_role), shutdown_grace=timedelta(seconds=1)),
        component=server_role,
    )
    port = await server.start()
    try:
        async with open_channel(channel_to(workdir, port, client_role)) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    finally:
        await server.stop()
    return port, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def mtls(workdir: Path) -> None:
    step("mTLS: operator -> cortex on loopback, client certificate required")
    # What the server saw of the call: its access log line (mesh.interceptors) says it all.
    access, logger = _AccessLog(), logging.getLogger(ACCESS_LOGGER)
    level = logger.level
    logger.addHandler(access)
    logger.setLevel(logging.INFO)
    try:
        port, status = asyncio.run(_health_check(workdir, "cortex", "operator"))
    finally:
        logger.removeHandler(access)
        logger.setLevel(level)
    seen = access.calls[-1]
    print(f"  Health.Check on {HOST}:{port}: {status}")
    print(f"  server saw peer {seen['peer']}")
    print(f"  {seen['tls_version']}, key exchange {seen['kex_group']}")


def keys(keys_dir: Path) -> None:
    step("Key hierarchy: master key -> epoch keys -> purpose keys, with rotation")
    km = KeyManager.create(keys_dir, "beta")
    record = b'{"path": "/etc/ssh/sshd_config", "blake3": "..."}'
    old = Sealer(km.active_key("vault")).seal(record, aad=b"vault-record")
    print(f"  sealed a vault record under {km.active_key('vault').key_id}")
    km.rotate(force=True)
    print(f"  rotated: new seals use {km.active_key('vault').key_id}")
    opened = open_sealed(old, km.decryption_keys("vault"), aad=b"vault-record")
    print(f"  the old record still opens after rotation: {opened == record}")
    mode = (keys_dir / "master.key").stat().st_mode & 0o777
    print(f"  master key file mode {mode:04o}; `qsc keys status --dir {keys_dir}` shows the rest")


def nonces(workdir: Path) -> None:
    step("AES-256-GCM with counter nonces that survive a restart")
    key = AeadKey("demo/outbox", bytes(range(32)), Algorithm.AES_256_GCM)
    state = workdir / "outbox.nonce"
    first = CounterNonceSource.create(state, key.key_id, block_size=16)
    a = Sealer(key, first).seal(b"event batch 1")
    first.close()
    # A restarted process resumes past the whole reserved block, never reusing a counter.
    again = CounterNonceSource.open(state, key.key_id, block_size=16)
    b = Sealer(key, again).seal(b"event batch 2")
    again.close()
    print("  first process sealed with counter 0 (it had reserved 0-15 on disk first)")
    print(f"  the restarted process sealed with counter {again.next_counter - 1}: no reuse")
    print(f"  both open: {open_sealed(a, key) + b' / ' + open_sealed(b, key)!r}")


def kem() -> None:
    step("Hybrid KEM: X25519 + ML-KEM-1024 (SHA3-256 combiner, X-Wing shape)")
    private = QSC_HYBRID_KEM.generate()
    public = private.public_key
    enc = public.encapsulate()
    shared = private.decapsulate(enc.ciphertext)
    print(f"  public key {len(public.public_bytes())} B, ciphertext {len(enc.ciphertext)} B")
    print(f"  both sides derive the same 32-byte secret: {shared == enc.shared_secret}")


def hashing(workdir: Path) -> None:
    step("Hashing a file: BLAKE3 (baselines) and SHA3-256 (backup manifests)")
    sample = workdir / "sample.bin"
    sample.write_bytes(bytes(range(256)) * 4096)
    print(f"  {sample.name} ({sample.stat().st_size} B)")
    print(f"  BLAKE3   {blake3_file(sample).hex()}")
    print(f"  SHA3-256 {sha3_256_file(sample).hex()}")
