"""Unary call latency through the mesh server, and what the transport checks cost.

Run: ``.venv/bin/python tests/bench/bench_mesh_calls.py`` (``make bench``). Not a test: it prints
figures and asserts nothing. A real component server (``tests/integration/mesh_server_proc.py``,
its own process, mTLS on 127.0.0.1) answers GetStatus; this process calls it:

* **grpcio**: a plain grpcio channel (hybrid group), 2,000 sequential calls: p50/p90/p99.
* **mesh channel**: ``mesh.channel.open_channel`` with a cortex certificate (its transport check
  runs one Health/Check per connection), the same calls; and the first call of a fresh channel
  (connection + handshake + the check), median of 20.
* **refused flood**: 2,000 calls a role may not make (PERMISSION_DENIED), then the server's access
  log lines for them (rate-limited) and the p50 of allowed calls made meanwhile from another
  channel.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from crypto.pki import init_ca, issue_leaf, write_leaf  # noqa: E402
from mesh.channel import ChannelConfig, open_channel  # noqa: E402
from mesh.config import TlsFiles  # noqa: E402
from qsc.guardian.v1 import guardian_service_pb2 as pb  # noqa: E402
from qsc.guardian.v1 import guardian_service_pb2_grpc as pb_grpc  # noqa: E402

CALLS = 2000
PROC = ROOT / "tests" / "integration" / "mesh_server_proc.py"


def _ms(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    p50 = statistics.median(samples) * 1e3
    return f"p50 {p50:6.3f} ms  p90 {q[89] * 1e3:6.3f}  p99 {q[98] * 1e3:6.3f}"


def _creds(base: Path, stem: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        (base / "ca.crt").read_bytes(),
        (base / f"{stem}.key").read_bytes(),
        (base / f"{stem}.crt").read_bytes(),
    )


def _timed_calls(stub: pb_grpc.GuardianServiceStub, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        stub.GetStatus(pb.GetStatusRequest(), timeout=10)
        out.append(time.perf_counter() - t)
    return out


async def _mesh(base: Path, port: int) -> tuple[list[float], list[float]]:
    tls = TlsFiles(base / "cortex-c1.crt", base / "cortex-c1.key", base / "ca.crt")
    config = ChannelConfig(target=f"127.0.0.1:{port}", tls=tls)
    firsts = []
    for _ in range(20):
        channel = open_channel(config)
        t = time.perf_counter()
        await pb_grpc.GuardianServiceStub(channel).GetStatus(pb.GetStatusRequest())
        firsts.append(time.perf_counter() - t)
        await channel.close(None)
    channel = open_channel(config)
    stub = pb_grpc.GuardianServiceStub(channel)
    await stub.GetStatus(pb.GetStatusRequest())
    calls = []
    for _ in range(CALLS):
        t = time.perf_counter()
        await stub.GetStatus(pb.GetStatusRequest())
        calls.append(time.perf_counter() - t)
    await channel.close(None)
    return calls, firsts


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        ca = init_ca(base, "bench.test")
        for role, host in (("alpha", "127.0.0.1"), ("cortex", "c1"), ("soar", "s1")):
            write_leaf(issue_leaf(ca, role, host), base, ca.cert)
        log = (base / "server.log").open("w")
        proc = subprocess.Popen(
            [
                *(sys.executable, str(PROC)),
                *("--cert", str(base / "alpha-127.0.0.1.crt"), "--key"),
                *(str(base / "alpha-127.0.0.1.key"), "--ca", str(base / "ca.crt")),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            assert proc.stdout is not None
            port = int(proc.stdout.readline().split()[1])
            with grpc.secure_channel(f"127.0.0.1:{port}", _creds(base, "cortex-c1")) as channel:
                stub = pb_grpc.GuardianServiceStub(channel)
                _timed_calls(stub, 50)
                print(f"grpcio        {CALLS} calls   {_ms(_timed_calls(stub, CALLS))}")
            calls, firsts = asyncio.run(_mesh(base, port))
            print(f"mesh channel  {CALLS} calls   {_ms(calls)}")
            print(
                "mesh channel  first call of a new channel: "
                f"median {statistics.median(firsts) * 1e3:.2f} ms"
            )

            refused = 0

            def flood() -> None:
                nonlocal refused
                with grpc.secure_channel(f"127.0.0.1:{port}", _creds(base, "soar-s1")) as ch:
                    s = pb_grpc.GuardianServiceStub(ch)
                    for _ in range(CALLS):
                        try:
                            s.GetStatus(pb.GetStatusRequest(), timeout=10)
                        except grpc.RpcError:
                            refused += 1

            before = (base / "server.log").stat().st_size
            thread = threading.Thread(target=flood)
            thread.start()
            with grpc.secure_channel(f"127.0.0.1:{port}", _creds(base, "cortex-c1")) as channel:
                during = _timed_calls(pb_grpc.GuardianServiceStub(channel), 500)
            thread.join()
            log.flush()
            text = (base / "server.log").read_text()[before:]
            lines = sum(1 for ln in text.splitlines() if "soar/s1" in ln)
            print(
                f"refused flood {refused} refused calls -> {lines} access lines; "
                f"allowed calls meanwhile {_ms(during)}"
            )
        finally:
            proc.kill()
            proc.wait(10)
            log.close()


if __name__ == "__main__":
    main()
