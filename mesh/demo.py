"""`make demo`: QSC on embedded defaults, end to end, in a scratch workspace.

It shows what is built so far, with real files and a real mutual-TLS gRPC call on loopback:
a deployment PKI, the post-quantum handshake, the key hierarchy with rotation, crash-safe
nonces, the hybrid KEM and file hashing. It grows as each component lands.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from crypto import pki
from crypto.aead import AeadKey, Algorithm, Sealer, open_sealed
from crypto.hashing import blake3_file, sha3_256_file
from crypto.kem import QSC_HYBRID_KEM
from crypto.keyring import KeyManager
from crypto.nonces import CounterNonceSource
from mesh import demo_steps
from mesh.demo_steps import HOST, start_process, step, stop_process, watch
from qsc.common.v1 import classification_pb2, event_pb2

TRUST_DOMAIN = "demo.qsc.test"
ALPHA_CONFIG = """
[guardian]
role = "alpha"

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
format = "text"

[memscan]
# Scans triggered by exec and W+X requests only: a periodic round would report the whole host.
interval = "1h"
initial_delay = "1h"

[network]
enabled = false

[auth]
enabled = false
"""
# What the demo's intruder actions must raise (other activity on the host may add more).
EXPECTED_ALERTS = frozenset(
    {"alpha.sensitive_file_read", "alpha.setuid_bit_set", "alpha.memfd_exec"}
)


def _issue_all(pki_dir: Path) -> None:
    step("PKI: a deployment CA and one leaf per role")
    ca = pki.init_ca(pki_dir, TRUST_DOMAIN)
    print(f"CA for trust domain {ca.trust_domain}: {pki_dir / pki.CA_CERT_FILE}")
    for role in pki.ROLES:
        leaf = pki.issue_leaf(ca, role, HOST)
        files = pki.write_leaf(leaf, pki_dir, ca.cert)
        mode = files.key.stat().st_mode & 0o777
        print(f"  {leaf.identity.spiffe_id:<40} {files.cert.name:<22} key mode {mode:04o}")


async def _mtls_call(pki_dir: Path, server: str, client: str) -> dict[str, str]:
    """One Health.Check from `client` to `server` over mTLS; the server reports what it saw."""
    seen: dict[str, str] = {}

    class Recording(health.HealthServicer):
        async def Check(  # noqa: N802 - gRPC method name
            self, request: object, context: grpc.ServicerContext
        ) -> health_pb2.HealthCheckResponse:
            auth = context.auth_context()
            for key in ("peer_spiffe_id", "ssl_tls_version", "ssl_negotiated_key_exchange_group"):
                # grpc-stubs type the values as bytes; grpcio gives a list of bytes.
                seen[key] = b",".join(cast(list[bytes], auth[key])).decode()
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    srv = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(Recording(), srv)
    ca = (pki_dir / pki.CA_CERT_FILE).read_bytes()
    creds = grpc.ssl_server_credentials(
        [((pki_dir / f"{server}.key").read_bytes(), (pki_dir / f"{server}.crt").read_bytes())],
        root_certificates=ca,
        require_client_auth=True,
    )
    port = srv.add_secure_port(f"{HOST}:0", creds)
    await srv.start()
    try:
        channel_creds = grpc.ssl_channel_credentials(
            ca, (pki_dir / f"{client}.key").read_bytes(), (pki_dir / f"{client}.crt").read_bytes()
        )
        async with grpc.aio.secure_channel(f"{HOST}:{port}", channel_creds) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        seen["status"] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        seen["port"] = str(port)
    finally:
        await srv.stop(None)
    return seen


def _mtls(pki_dir: Path) -> None:
    step("mTLS: operator -> cortex on loopback, client certificate required")
    seen = asyncio.run(_mtls_call(pki_dir, f"cortex-{HOST}", f"operator-{HOST}"))
    print(f"  Health.Check on {HOST}:{seen['port']}: {seen['status']}")
    print(f"  server saw peer {seen['peer_spiffe_id']}")
    print(f"  {seen['ssl_tls_version']}, key exchange {seen['ssl_negotiated_key_exchange_group']}")


def _keys(keys_dir: Path) -> None:
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


def _nonces(workdir: Path) -> None:
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


def _kem() -> None:
    step("Hybrid KEM: X25519 + ML-KEM-1024 (SHA3-256 combiner, X-Wing shape)")
    private = QSC_HYBRID_KEM.generate()
    public = private.public_key
    enc = public.encapsulate()
    shared = private.decapsulate(enc.ciphertext)
    print(f"  public key {len(public.public_bytes())} B, ciphertext {len(enc.ciphertext)} B")
    print(f"  both sides derive the same 32-byte secret: {shared == enc.shared_secret}")


def _hashing(workdir: Path) -> None:
    step("Hashing a file: BLAKE3 (baselines) and SHA3-256 (backup manifests)")
    sample = workdir / "sample.bin"
    sample.write_bytes(bytes(range(256)) * 4096)
    print(f"  {sample.name} ({sample.stat().st_size} B)")
    print(f"  BLAKE3   {blake3_file(sample).hex()}")
    print(f"  SHA3-256 {sha3_256_file(sample).hex()}")


def _attack(workdir: Path) -> None:
    """Real actions an intruder takes, each one a default rule."""
    scratch = workdir / "intruder"
    scratch.mkdir()
    # A copy of cat is not a trusted reader of /etc/shadow.
    cat = scratch / "cat"
    shutil.copy("/bin/cat", cat)
    subprocess.run([str(cat), "/etc/shadow"], stdout=subprocess.DEVNULL, check=False)
    # A setuid bit on a fresh file.
    dropper = scratch / "dropper"
    dropper.write_bytes(b"#!/bin/sh\n")
    os.chmod(dropper, 0o755 | stat.S_ISUID)  # noqa: S103 - the point of the demo
    # Fileless execution: a program run from a memfd (alive a moment, so /proc shows its parent).
    code = (
        "import os; fd = os.memfd_create('x'); "
        "os.write(fd, open('/bin/sleep', 'rb').read()); "
        "os.execv(f'/proc/self/fd/{fd}', ['x', '1'])"
    )
    subprocess.run([sys.executable, "-c", code], check=False)


def _alpha(workdir: Path) -> None:
    step("Alpha: eBPF intrusion detection, alerts over a sealed stream (cortex -> alpha)")
    if os.geteuid() != 0:
        print("  (not root: Alpha runs its degraded fallback sensor and says so)")
    base = workdir / "alpha"
    base.mkdir(mode=0o700)
    config = base / "alpha.toml"
    config.write_text(ALPHA_CONFIG.format(pki=workdir / "pki", base=base))
    proc, port = start_process("qsc-alpha", ["alpha", "--config", str(config)], base)
    seen: list[event_pb2.Event] = []
    me = os.getpid()

    def take(event: event_pb2.Event) -> bool:
        # Only what the demo's own children did: the host may be busy with other work.
        if event.rule.id and (
            event.process.pid == me or any(p.pid == me for p in event.process.ancestry)
        ):
            seen.append(event)
        return {e.rule.id for e in seen} >= EXPECTED_ALERTS

    try:
        print(f"  qsc-alpha listening on {HOST}:{port}; performing three intruder actions")
        _attack(workdir)
        asyncio.run(watch(workdir, port, "alpha", take, wait=30))
        for event in seen:
            techniques = ",".join(t.id for t in event.rule.techniques)
            severity = classification_pb2.Severity.Name(event.severity).removeprefix("SEVERITY_")
            print(f"  seq {event.seq:<4} {severity:<8} {event.rule.id:<28} {techniques}")
            print(f"           {event.summary[:100]}")
    finally:
        stop_process("qsc-alpha", proc, base)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qsc-demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", type=Path, default=Path("build/demo"), help="workspace (recreated each run)"
    )
    args = parser.parse_args(argv)
    # Absolute: the components' configs name their paths, and they must not depend on the cwd.
    workdir: Path = args.dir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, mode=0o700)
    print(f"QSC demo, workspace {workdir}")
    _issue_all(workdir / "pki")
    _mtls(workdir / "pki")
    _keys(workdir / "keys")
    _nonces(workdir)
    _kem()
    _hashing(workdir)
    _alpha(workdir)
    demo_steps.beta(workdir)
    demo_steps.ml(workdir)
    print("\ndemo finished: every step above ran for real on this machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
