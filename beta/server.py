"""`qsc.beta.v1.BetaService`: decode, call the core, encode. Domain errors are raised as they are
and mapped to status codes by the mesh interceptor (mesh.status).

Every call does its work on a thread (hashing files, re-reading a backup set, waiting on an OCSP
responder), so the event loop that serves Subscribe streams never waits on it. ScanIntegrity
streams progress while the scan runs, then each change found, then the summary; cancelling the
call cancels the scan. A heal decision is recorded with the caller's SPIFFE ID (from the
certificate the mesh authenticated), never with anything the request says.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

from beta import _convert
from beta.backups.convert import depth_from_proto, result_to_proto
from beta.certs.convert import report_to_proto
from beta.errors import BetaInvalidArgumentError
from beta.fim import ScanProgress
from beta.heal import convert as heal_convert
from beta.sources.fim import FimSource
from beta.sources.heal import HealSource
from beta.sources.scheduled import BackupVerifier, CertWatcher
from mesh.identity import peer_identity
from mesh.server import ServiceBinding
from qsc.beta.v1 import beta_service_pb2 as pb
from qsc.beta.v1 import beta_service_pb2_grpc as pb_grpc
from qsc.common.v1 import integrity_details_pb2

__all__ = ["SERVICE", "BetaServicer"]

SERVICE: Final = pb.DESCRIPTOR.services_by_name["BetaService"].full_name
MAX_PATHS: Final = 1000
MAX_COMMENT: Final = 1024
_DONE: Final = object()


def _paths(values: Any, what: str) -> list[str]:
    paths = list(values)
    if len(paths) > MAX_PATHS:
        raise BetaInvalidArgumentError(f"{what}: at most {MAX_PATHS} per request")
    return paths


class BetaServicer(pb_grpc.BetaServiceServicer):
    def __init__(
        self, *, fim: FimSource, heal: HealSource, backups: BackupVerifier, certs: CertWatcher
    ) -> None:
        self._fim = fim
        self._heal = heal
        self._backups = backups
        self._certs = certs

    def binding(self) -> ServiceBinding:
        return ServiceBinding(SERVICE, pb_grpc.add_BetaServiceServicer_to_server, self)

    async def ScanIntegrity(  # noqa: N802 (gRPC method name)
        self, request: pb.ScanIntegrityRequest, context: Any
    ) -> AsyncIterator[pb.ScanIntegrityResponse]:
        quick = request.mode != pb.SCAN_MODE_FULL
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()

        def on_progress(p: ScanProgress) -> None:  # on the scan's thread
            loop.call_soon_threadsafe(queue.put_nowait, p)

        scan = self._fim.new_scan(
            _paths(request.paths, "paths"), quick=quick, on_progress=on_progress
        )
        task = asyncio.ensure_future(asyncio.to_thread(scan.run))
        task.add_done_callback(lambda _: queue.put_nowait(_DONE))
        try:
            while (item := await queue.get()) is not _DONE:
                assert isinstance(item, ScanProgress)
                yield _convert.progress_to_proto(item)
            outcome = await task
        finally:
            scan.cancel()  # the caller went away (or it is over: then a no-op)
        if outcome.report is not None:
            for change in outcome.report.changes:
                yield pb.ScanIntegrityResponse(change=_convert.change_detail(change))
        yield _convert.summary_to_proto(outcome, quick=scan.quick)

    async def VerifyBackup(  # noqa: N802 (gRPC method name)
        self, request: pb.VerifyBackupRequest, context: Any
    ) -> pb.VerifyBackupResponse:
        if not request.backup_set:
            raise BetaInvalidArgumentError("backup_set: name a configured backup set")
        depth = None
        if request.depth != integrity_details_pb2.VERIFY_DEPTH_UNSPECIFIED:
            depth = depth_from_proto(request.depth)
        result = await asyncio.to_thread(
            self._backups.verify, request.backup_set, depth=depth, whole_set=request.whole_set
        )
        return pb.VerifyBackupResponse(result=result_to_proto(result))

    async def CheckCertificate(  # noqa: N802 (gRPC method name)
        self, request: pb.CheckCertificateRequest, context: Any
    ) -> pb.CheckCertificateResponse:
        paths = []
        for raw in _paths(request.paths, "paths"):
            if not raw.startswith("/") or "\0" in raw:
                raise BetaInvalidArgumentError(f"paths: {raw!r} is not an absolute path")
            paths.append(Path(raw))
        reports = await asyncio.to_thread(
            self._certs.check, paths, skip_revocation=request.skip_revocation
        )
        return pb.CheckCertificateResponse(certificates=[report_to_proto(r) for r in reports])

    async def ListHealProposals(  # noqa: N802 (gRPC method name)
        self, request: pb.ListHealProposalsRequest, context: Any
    ) -> pb.ListHealProposalsResponse:
        if request.page_size < 0:
            raise BetaInvalidArgumentError("page_size: must not be negative")
        proposals, token = await asyncio.to_thread(
            self._heal.list_proposals,
            heal_convert.states_from_proto(request.states),
            request.page_size,
            request.page_token,
        )
        return pb.ListHealProposalsResponse(
            proposals=[heal_convert.proposal_to_proto(p) for p in proposals],
            next_page_token=token,
        )

    async def ApproveHeal(  # noqa: N802 (gRPC method name)
        self, request: pb.ApproveHealRequest, context: Any
    ) -> pb.ApproveHealResponse:
        _check_decision(request.proposal_id, request.comment)
        if request.expected_current_blake3 and len(request.expected_current_blake3) != 32:
            raise BetaInvalidArgumentError("expected_current_blake3: a BLAKE3 hash is 32 bytes")
        actor = peer_identity(context).spiffe_id  # who decided: the caller's certificate
        proposal = await asyncio.to_thread(
            self._heal.approve,
            request.proposal_id,
            actor,
            request.comment,
            request.expected_current_blake3,
        )
        return pb.ApproveHealResponse(proposal=heal_convert.proposal_to_proto(proposal))

    async def RejectHeal(  # noqa: N802 (gRPC method name)
        self, request: pb.RejectHealRequest, context: Any
    ) -> pb.RejectHealResponse:
        _check_decision(request.proposal_id, request.comment)
        actor = peer_identity(context).spiffe_id
        proposal = await asyncio.to_thread(
            self._heal.reject, request.proposal_id, actor, request.comment
        )
        return pb.RejectHealResponse(proposal=heal_convert.proposal_to_proto(proposal))


def _check_decision(proposal_id: str, comment: str) -> None:
    if not proposal_id:
        raise BetaInvalidArgumentError("proposal_id: name the proposal (ListHealProposals)")
    if len(comment) > MAX_COMMENT:
        raise BetaInvalidArgumentError(f"comment: at most {MAX_COMMENT} characters")
