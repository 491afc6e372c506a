"""`qsc.cortex.v1.CortexService`: events, guardians, assessments and verdicts.

Decode, call the core (`cortex.queries.CortexQueries` for events and guardians,
`cortex.assessment_queries` on the correlation thread for assessments), encode.
SubscribeAssessments streams `cortex.assessment_stream.AssessmentLog`; playbook runs are read
from the store (`cortex.playbooks.run_queries`) and replayed, approved or rejected through
`cortex.playbooks.runtime.PlaybookRuntime`.
Who may call what is `mesh.authz.MESH_AUTHZ` (roles soar and operator), enforced by the mesh
interceptor before any of this runs.

Refusals carry a `google.rpc.Status` (trailer `grpc-status-details-bin`, built with grpcio-status)
holding one `google.rpc.ErrorInfo`: domain `cortex.qsc`, a stable reason integrations branch on
(INVALID_FILTER, INVALID_ORDER_BY, INVALID_PAGE_SIZE, INVALID_PAGE_TOKEN, INVALID_NAME,
EVENT_NOT_FOUND, GUARDIAN_NOT_FOUND, STORE_INTEGRITY ...) and short metadata (the argument and
1-based position of a filter error, the name asked for). The status code and message are the
ones `mesh.status` gives the same error, so clients that ignore details see what every other
QSC service sends; the handshake trailers the interceptor set (`qsc-kex-group`...) are kept.
Errors that are not the Cortex's own still go to the interceptor: INTERNAL, logged there.

Store reads (SQLite, a decryption per event) run in a worker thread so one deep page never
stalls the event loop; the store is thread-safe. The guardian directory is in memory: inline.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from cortex import _convert
from cortex.anomaly import ScoringStatus
from cortex.assessment_queries import AssessmentQueries
from cortex.assessment_stream import AssessmentLog
from cortex.assessments import Assessment
from cortex.correlation import CorrelationRuntime
from cortex.errors import (
    CorrelationOffError,
    CortexError,
    FilterError,
    PlaybookRunNotFoundError,
    PlaybookRunStateError,
    PlaybooksOffError,
    ReadApiError,
    StoreArgumentError,
    StoreIntegrityError,
    VerdictArgumentError,
)
from cortex.guardian_view import GuardianDirectory, GuardianView
from cortex.playbooks.run_queries import RunQueries, run_id_of
from cortex.playbooks.runtime import PlaybookRuntime
from cortex.queries import CortexQueries, ReadableStore
from cortex.store.runs import RunRecord, RunStateError, RunTable
from mesh.identity import peer_identity
from mesh.server import ServiceBinding
from mesh.status import to_status
from qsc.cortex.v1 import assessment_pb2, guardian_pb2
from qsc.cortex.v1 import cortex_service_pb2 as pb
from qsc.cortex.v1 import cortex_service_pb2_grpc as pb_grpc

SERVICE: Final = pb.DESCRIPTOR.services_by_name["CortexService"].full_name
ERROR_DOMAIN: Final = "cortex.qsc"
_CORRELATION_OFF: Final = "correlation is off on this Cortex ([correlation] enabled)"

__all__ = ["ERROR_DOMAIN", "SERVICE", "CortexServicer", "error_info"]


class CortexServicer(pb_grpc.CortexServiceServicer):
    """The read RPCs over `store` and `directory`.

    `token_key` authenticates page tokens (`cortex.paging`): pass a key derived from the Cortex's
    keyring so tokens stay valid across restarts. Without one, a random per-process key is used:
    tokens then end with the process, which AIP-158 allows but clients notice."""

    def __init__(
        self,
        store: ReadableStore,
        directory: GuardianDirectory,
        token_key: bytes | None = None,
        correlation: CorrelationRuntime | None = None,
        changes: AssessmentLog | None = None,
        scoring: Callable[[str], ScoringStatus] | None = None,
        runs: RunTable | None = None,
        playbooks: PlaybookRuntime | None = None,
    ) -> None:
        key = token_key if token_key is not None else secrets.token_bytes(32)
        self._store = store
        self._queries = CortexQueries(store, directory, key)
        self._correlation = correlation
        self._changes = changes
        self._scoring = scoring  # how a guardian's host windows are scored (None: ML off)
        self._runs = None if runs is None else RunQueries(runs, store.store_id, key)
        self._playbooks = playbooks
        self._assessments = (
            None
            if correlation is None
            else AssessmentQueries(correlation.book, store.store_id, key)
        )

    def binding(self) -> ServiceBinding:
        return ServiceBinding(SERVICE, pb_grpc.add_CortexServiceServicer_to_server, self)

    async def GetEvent(  # noqa: N802 (gRPC method name)
        self, request: pb.GetEventRequest, context: Any
    ) -> pb.GetEventResponse:
        try:
            event = await asyncio.to_thread(self._queries.get_event, request.name)
        except CortexError as exc:
            await _abort(context, exc)
        return pb.GetEventResponse(event=event)

    async def ListEvents(  # noqa: N802 (gRPC method name)
        self, request: pb.ListEventsRequest, context: Any
    ) -> pb.ListEventsResponse:
        try:
            page = await asyncio.to_thread(
                self._queries.list_events,
                request.page_size,
                request.page_token,
                request.filter,
                request.order_by,
            )
        except CortexError as exc:
            await _abort(context, exc)
        return pb.ListEventsResponse(
            events=page.events,
            next_page_token=page.next_page_token,
            total_size=_int32(page.total_size),
        )

    async def GetGuardian(  # noqa: N802 (gRPC method name)
        self, request: pb.GetGuardianRequest, context: Any
    ) -> pb.GetGuardianResponse:
        try:
            view = self._queries.get_guardian(request.name)
        except CortexError as exc:
            await _abort(context, exc)
        return pb.GetGuardianResponse(guardian=self._guardian(view))

    async def ListGuardians(  # noqa: N802 (gRPC method name)
        self, request: pb.ListGuardiansRequest, context: Any
    ) -> pb.ListGuardiansResponse:
        try:
            page = self._queries.list_guardians(
                request.page_size, request.page_token, request.filter, request.order_by
            )
        except CortexError as exc:
            await _abort(context, exc)
        return pb.ListGuardiansResponse(
            guardians=[self._guardian(g) for g in page.guardians],
            next_page_token=page.next_page_token,
            total_size=_int32(page.total_size),
        )

    def _guardian(self, view: GuardianView) -> guardian_pb2.Guardian:
        scoring = None if self._scoring is None else self._scoring(view.guardian_id)
        return _convert.guardian(view, scoring)

    # -- assessments (the book lives on the correlation thread: every access goes there) -----

    def _assessment_core(self) -> tuple[CorrelationRuntime, AssessmentQueries]:
        if self._correlation is None or self._assessments is None:
            raise CorrelationOffError(_CORRELATION_OFF)
        return self._correlation, self._assessments

    async def _message(self, a: Assessment) -> assessment_pb2.Assessment:
        return await asyncio.to_thread(_convert.assessment, a, self._store.get)

    async def GetAssessment(  # noqa: N802 (gRPC method name)
        self, request: pb.GetAssessmentRequest, context: Any
    ) -> pb.GetAssessmentResponse:
        try:
            runtime, core = self._assessment_core()
            found = await runtime.call(lambda: core.get(request.name))
        except CortexError as exc:
            await _abort(context, exc)
        return pb.GetAssessmentResponse(assessment=await self._message(found))

    async def ListAssessments(  # noqa: N802 (gRPC method name)
        self, request: pb.ListAssessmentsRequest, context: Any
    ) -> pb.ListAssessmentsResponse:
        try:
            runtime, core = self._assessment_core()
            page = await runtime.call(
                lambda: core.list(
                    request.page_size, request.page_token, request.filter, request.order_by
                )
            )
        except CortexError as exc:
            await _abort(context, exc)
        return pb.ListAssessmentsResponse(
            assessments=[await self._message(a) for a in page.assessments],
            next_page_token=page.next_page_token,
            total_size=_int32(page.total_size),
        )

    async def SubmitVerdict(  # noqa: N802 (gRPC method name)
        self, request: pb.SubmitVerdictRequest, context: Any
    ) -> pb.SubmitVerdictResponse:
        actor = peer_identity(context).spiffe_id
        try:
            runtime, core = self._assessment_core()
            verdict = _convert.VERDICT_NAMES.get(request.verdict)
            if verdict is None:
                raise VerdictArgumentError(
                    "verdict must be VERDICT_TRUE_POSITIVE, VERDICT_FALSE_POSITIVE or "
                    "VERDICT_BENIGN"
                )
            judged = await runtime.call(
                lambda: core.verdict(request.name, verdict, request.comment, actor)
            )
        except CortexError as exc:
            await _abort(context, exc)
        return pb.SubmitVerdictResponse(assessment=await self._message(judged))

    async def SubscribeAssessments(  # noqa: N802 (gRPC method name)
        self, request: pb.SubscribeAssessmentsRequest, context: Any
    ) -> AsyncIterator[pb.SubscribeAssessmentsResponse]:
        try:
            self._assessment_core()
            if self._changes is None:
                raise CorrelationOffError(_CORRELATION_OFF)
            heartbeat = (
                request.heartbeat_interval.ToTimedelta()
                if request.HasField("heartbeat_interval")
                else None
            )
            stream = self._changes.subscribe(
                request.filter,
                request.resume_token,
                request.include_existing,
                heartbeat,
                clock=time.time_ns,
            )
            first = await anext(stream, None)
        except CortexError as exc:
            await _abort(context, exc)
        if first is None:
            return
        yield first
        async for message in stream:
            yield message

    # -- playbook runs -------------------------------------------------------------------------

    def _run_core(self) -> RunQueries:
        if self._runs is None:
            raise PlaybooksOffError("this Cortex keeps no playbook runs")
        return self._runs

    async def GetPlaybookRun(  # noqa: N802 (gRPC method name)
        self, request: pb.GetPlaybookRunRequest, context: Any
    ) -> pb.GetPlaybookRunResponse:
        try:
            run = await asyncio.to_thread(self._run_core().get, request.name)
        except CortexError as exc:
            await _abort(context, exc)
        return pb.GetPlaybookRunResponse(playbook_run=_convert.playbook_run(run))

    async def ListPlaybookRuns(  # noqa: N802 (gRPC method name)
        self, request: pb.ListPlaybookRunsRequest, context: Any
    ) -> pb.ListPlaybookRunsResponse:
        try:
            core = self._run_core()
            page = await asyncio.to_thread(
                core.list, request.page_size, request.page_token, request.filter, request.order_by
            )
        except CortexError as exc:
            await _abort(context, exc)
        return pb.ListPlaybookRunsResponse(
            playbook_runs=[_convert.playbook_run(r) for r in page.runs],
            next_page_token=page.next_page_token,
            total_size=_int32(page.total_size),
        )

    async def _change_run(
        self, name: str, change: Callable[[PlaybookRuntime, str], RunRecord]
    ) -> RunRecord:
        if self._playbooks is None:
            raise PlaybooksOffError("this Cortex runs no playbooks ([playbooks])")
        playbooks = self._playbooks
        run_id = run_id_of(name)
        try:
            return await asyncio.to_thread(change, playbooks, run_id)
        except KeyError:
            raise PlaybookRunNotFoundError(f"{name} does not exist", name=name[:300]) from None
        except RunStateError as exc:
            raise PlaybookRunStateError(str(exc), name=name[:300]) from None

    async def ReplayPlaybookRun(  # noqa: N802 (gRPC method name)
        self, request: pb.ReplayPlaybookRunRequest, context: Any
    ) -> pb.ReplayPlaybookRunResponse:
        try:
            run = await self._change_run(request.name, lambda p, rid: p.replay(rid))
        except CortexError as exc:
            await _abort(context, exc)
        return pb.ReplayPlaybookRunResponse(playbook_run=_convert.playbook_run(run))

    async def ApprovePlaybookRun(  # noqa: N802 (gRPC method name)
        self, request: pb.ApprovePlaybookRunRequest, context: Any
    ) -> pb.ApprovePlaybookRunResponse:
        actor = peer_identity(context).spiffe_id
        try:
            run = await self._change_run(
                request.name, lambda p, rid: p.decide(rid, approve=True, actor=actor)
            )
        except CortexError as exc:
            await _abort(context, exc)
        return pb.ApprovePlaybookRunResponse(playbook_run=_convert.playbook_run(run))

    async def RejectPlaybookRun(  # noqa: N802 (gRPC method name)
        self, request: pb.RejectPlaybookRunRequest, context: Any
    ) -> pb.RejectPlaybookRunResponse:
        actor = peer_identity(context).spiffe_id
        try:
            run = await self._change_run(
                request.name, lambda p, rid: p.decide(rid, approve=False, actor=actor)
            )
        except CortexError as exc:
            await _abort(context, exc)
        return pb.RejectPlaybookRunResponse(playbook_run=_convert.playbook_run(run))


def _int32(n: int) -> int:
    """total_size is int32 in the API: saturate rather than fail a listing of a huge store."""
    return min(n, 2**31 - 1)


def error_info(exc: CortexError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo a refusal carries (reason, domain `cortex.qsc`, metadata)."""
    metadata: dict[str, str] = {}
    if isinstance(exc, ReadApiError):
        reason = exc.reason
        metadata.update(exc.metadata)
    elif isinstance(exc, FilterError):
        reason = "INVALID_ORDER_BY" if exc.argument == "order_by" else "INVALID_FILTER"
        metadata.update(argument=exc.argument, position=str(exc.position))
    elif isinstance(exc, StoreIntegrityError):
        reason = "STORE_INTEGRITY"
    elif isinstance(exc, StoreArgumentError):
        reason = "INVALID_QUERY"
    else:
        reason = to_status(exc).code.name
    return error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)


def rich_status(exc: CortexError) -> grpc.Status:
    """`exc` as a grpc.Status whose trailer holds the google.rpc.Status with its ErrorInfo."""
    mapped = to_status(exc)
    detail = any_pb2.Any()
    detail.Pack(error_info(exc))
    message = status_pb2.Status(code=mapped.code.value[0], message=mapped.details, details=[detail])
    return rpc_status.to_status(message)


async def _abort(context: Any, exc: CortexError) -> NoReturn:
    """End the call with `exc`'s rich status, keeping the trailers already set (the
    interceptor's handshake report), since abort replaces trailing metadata wholesale."""
    status = rich_status(exc)
    kept = tuple(context.trailing_metadata() or ())
    await context.abort(status.code, status.details, (*kept, *status.trailing_metadata))
    raise AssertionError("abort returned")  # pragma: no cover (abort always raises)
