"""A real component server for the mesh tests: GuardianService with a small test servicer.

Imported by test_mesh_server.py for in-process servers, and run as a process where the test is
about signals:

    python tests/integration/mesh_server_proc.py --cert C --key K --ca CA [--grace S]

prints `port N` on stdout once serving, logs to stderr, exits 0 after a graceful SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from google.protobuf import timestamp_pb2

from mesh.errors import NotFoundError
from mesh.identity import TlsFiles, peer_identity
from mesh.logs import configure_logging
from mesh.server import ComponentServer, ServerConfig, ServiceBinding
from qsc.common.v1 import event_pb2, identity_pb2, pipeline_details_pb2
from qsc.guardian.v1 import guardian_service_pb2 as pb
from qsc.guardian.v1 import guardian_service_pb2_grpc as pb_grpc

GUARDIAN_SERVICE = "qsc.guardian.v1.GuardianService"
FAIL_HEADER = "x-qsc-test-fail"
CRASH_TEXT = "secret-internal-detail-42"
PROGRESS_INTERVAL = 0.05


class TestGuardian(pb_grpc.GuardianServiceServicer):
    """GetStatus names the caller; Subscribe sends Progress every 50 ms until the server drains."""

    __test__ = False  # not a pytest test class

    def __init__(self, draining: asyncio.Event) -> None:
        self.draining = draining

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: object
    ) -> pb.GetStatusResponse:
        fail = dict(context.invocation_metadata()).get(FAIL_HEADER)  # type: ignore[attr-defined]
        if fail == "domain":
            raise NotFoundError("no sensor named ebpf.exec")
        if fail == "crash":
            raise RuntimeError(CRASH_TEXT)
        caller = peer_identity(context)
        return pb.GetStatusResponse(
            guardian=identity_pb2.GuardianRef(
                id="alpha-127.0.0.1", role=identity_pb2.ROLE_ALPHA, host="127.0.0.1"
            ),
            version="0.1.0-test",
            sensors=[
                pb.SensorStatus(
                    name="test.caller",
                    state=pipeline_details_pb2.SENSOR_STATE_HEALTHY,
                    mode=caller.spiffe_id,
                    events=7,
                )
            ],
            outbox=pb.OutboxStatus(depth=3, first_seq=1, last_seq=3),
            subscriber_count=1,
        )

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: object
    ) -> AsyncIterator[pb.SubscribeResponse]:
        seq = request.start_after_seq
        while not self.draining.is_set():
            seq += 1
            now = timestamp_pb2.Timestamp()
            now.GetCurrentTime()
            yield pb.SubscribeResponse(
                progress=event_pb2.Progress(latest_seq=seq, delivered_through_seq=seq, time=now)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.draining.wait(), PROGRESS_INTERVAL)


def build_server(config: ServerConfig) -> ComponentServer:
    server = ComponentServer(config, component="alpha")
    servicer = TestGuardian(server.draining)
    server.add_service(
        ServiceBinding(GUARDIAN_SERVICE, pb_grpc.add_GuardianServiceServicer_to_server, servicer)
    )
    return server


async def _main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--grace", type=float, default=5.0)
    args = parser.parse_args(argv)
    config = ServerConfig(
        tls=TlsFiles(args.cert, args.key, args.ca), shutdown_grace=timedelta(seconds=args.grace)
    )
    server = build_server(config)
    port = await server.start()
    print(f"port {port}", flush=True)
    await server.run()
    return 0


if __name__ == "__main__":
    configure_logging("info", "text")
    sys.exit(asyncio.run(_main(sys.argv[1:])))
