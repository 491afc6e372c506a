"""`qsc.guardian.v1.GuardianService`: Subscribe and GetStatus over a guardian's outbox.

Subscribe, per call:

1. **Who.** A subscriber whose role is in `StreamSettings.unsealed_roles` may subscribe unsealed;
   every other role must offer a sealed session (`PERMISSION_DENIED` naming the role otherwise).
   The authorization table has already decided who may call Subscribe at all.
2. **Where.** `start_at_latest` starts after the latest seq; otherwise after `start_after_seq`. A
   cursor older than retention gets `OUT_OF_RANGE` whose message says `oldest available seq <K>`
   (also mid-stream, should the disk budget drop what a slow subscriber has not read yet). A cursor
   *ahead* of the latest seq also gets `OUT_OF_RANGE`, naming `latest seq <L>`: the guardian's
   outbox was lost or replaced, and waiting would silently hand out new events under seqs the
   subscriber believes it has.
3. **Sealing.** With `sealed_session` set, the first response is the `SealedSessionAccept`, from
   `sealing.accept_offer` with the subscriber's TLS client certificate (auth context
   `x509_pem_cert`), the guardian's TLS key and certificate chain, and
   `context = batching.subscribe_context(request)`: the request with `sealed_session` cleared,
   serialized with `deterministic=True`. The subscriber signs the same bytes, so a proxy cannot
   rewrite the filter, resume point or hints undetected. Then only `sealed_batch` and `progress`.
   A bad offer ends the call with `UNAUTHENTICATED` and the handshake's (non-secret) reason.
4. **Batches** hold at most the request's `max_batch_events` (capped by the guardian's), fit the
   server's message limit, and wait at most `max_batch_delay` for more events once the subscriber
   has caught up. `EventBatch.first_seq`/`last_seq` cover the whole range read, including events a
   filter left out, so consecutive batches tile the seq space.
5. **Progress** (`latest_seq`, `oldest_seq`, `delivered_through_seq`) is sent when nothing else was
   sent for `heartbeat_interval`, and after a stretch the filter removed entirely (once caught up,
   or at most every `max_batch_delay`), so a filtered subscriber can still advance its cursor.
6. **Drain.** When the server drains (SIGTERM), a stream sends the batch it holds and ends with OK.

Per batch the hot path is: `outbox.read_after` -> filter (only if the request has one) ->
`batching.encode_batch` (no parse) -> `SessionSealer.seal_serialized` -> yield.
A slow subscriber only slows its own reads: events are appended to the outbox without waiting for
anyone, and each stream reads with its own cursor.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Protocol

from cryptography import x509

from mesh.errors import (
    FailedPreconditionError,
    IdentityError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from mesh.identity import SigningKey, TlsMaterial, peer_identity, signing_key
from mesh.logs import log_event
from mesh.ratelimit import KeyedBuckets
from mesh.server import ServiceBinding
from mesh.stream import outbox as outbox_mod
from mesh.stream.batching import (
    BatchLimits,
    CursorTooOldError,
    EventMatcher,
    StreamSettings,
    batch_limits,
    compile_filter,
    encode_batch,
    select,
    start_cursor,
    subscribe_context,
)
from mesh.stream.outbox import Outbox, OutboxStatus, Record
from mesh.stream.sealing import HandshakeError, SessionSealer, accept_offer
from qsc.common.v1 import event_pb2, identity_pb2, pipeline_details_pb2, transport_status_pb2
from qsc.guardian.v1 import guardian_service_pb2 as pb
from qsc.guardian.v1 import guardian_service_pb2_grpc as pb_grpc
from qsc.guardian.v1.sealed_session_pb2 import SealedSessionAccept

__all__ = [
    "GUARDIAN_SERVICE",
    "GuardianServicer",
    "SealingIdentity",
    "StatusSource",
    "package_version",
    "status_response",
]

GUARDIAN_SERVICE: Final = pb.DESCRIPTOR.services_by_name["GuardianService"].full_name
AUTH_PEER_CERT: Final = "x509_pem_cert"
_log = logging.getLogger("qsc.guardian.stream")


def package_version() -> str:
    try:
        return importlib.metadata.version("qsc")
    except importlib.metadata.PackageNotFoundError:  # running from a tree that is not installed
        return "0+unknown"


@dataclass(frozen=True, repr=False)
class SealingIdentity:
    """The guardian's signing key and certificate chain (leaf first) for sealed sessions."""

    key: SigningKey
    chain: tuple[x509.Certificate, ...]

    @classmethod
    def from_tls(cls, material: TlsMaterial) -> SealingIdentity:
        chain = tuple(x509.load_pem_x509_certificates(material.cert_chain))
        return cls(signing_key(material), chain)

    def __repr__(self) -> str:
        return f"SealingIdentity(leaf={self.chain[0].subject.rfc4514_string()!r}, key=<hidden>)"


class StatusSource(Protocol):
    """What GetStatus needs from the guardian besides the outbox (the sensor registry)."""

    def statuses(self) -> Sequence[pb.SensorStatus]: ...
    def loss_totals(self) -> pipeline_details_pb2.LossCounters: ...


def status_response(
    *,
    guardian: identity_pb2.GuardianRef,
    version: str,
    start_time: float,
    now: float,
    sensors: Sequence[pb.SensorStatus],
    loss: pipeline_details_pb2.LossCounters,
    outbox: OutboxStatus,
    retention: timedelta,
    subscribers: int,
    transport: transport_status_pb2.TransportStatus | None = None,
) -> pb.GetStatusResponse:
    """A GetStatusResponse from plain state. Total loss adds the outbox's budget drops."""
    total = pipeline_details_pb2.LossCounters()
    total.CopyFrom(loss)
    total.outbox_dropped += outbox.dropped_total
    response = pb.GetStatusResponse(
        guardian=guardian,
        version=version,
        sensors=sensors,
        loss=total,
        outbox=pb.OutboxStatus(
            depth=max(outbox.depth, 0),
            first_seq=outbox.first_seq if outbox.depth > 0 else 0,
            last_seq=outbox.last_seq,
            disk_bytes=outbox.disk_bytes,
            disk_budget_bytes=outbox.disk_budget_bytes,
            dropped=outbox.dropped_total,
        ),
        subscriber_count=subscribers,
    )
    if transport is not None:
        response.transport.CopyFrom(transport)
    response.start_time.FromNanoseconds(int(start_time * 1e9))
    response.uptime.FromNanoseconds(max(0, int((now - start_time) * 1e9)))
    response.outbox.retention.FromTimedelta(retention)
    return response


class GuardianServicer(pb_grpc.GuardianServiceServicer):
    """The GuardianService of one guardian; see the module docstring. Async only."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        guardian: identity_pb2.GuardianRef,
        settings: StreamSettings,
        sealing: SealingIdentity,
        draining: asyncio.Event,
        status: StatusSource,
        retention: timedelta,
        start_time: float | None = None,
        clock: Callable[[], float] = time.time,
        transport: Callable[[], transport_status_pb2.TransportStatus] | None = None,
    ) -> None:
        self._outbox = outbox
        self._guardian = guardian
        self._settings = settings
        self._sealing = sealing
        self._draining = draining
        self._status = status
        self._retention = retention
        self._clock = clock
        self._start_time = clock() if start_time is None else start_time
        self._version = package_version()
        self._subscribers = 0
        self._handshakes = KeyedBuckets(
            settings.sealed_handshakes_per_second, settings.sealed_handshake_burst
        )
        self._transport = transport

    @property
    def subscriber_count(self) -> int:
        return self._subscribers

    def binding(self) -> ServiceBinding:
        return ServiceBinding(GUARDIAN_SERVICE, pb_grpc.add_GuardianServiceServicer_to_server, self)

    async def GetStatus(  # noqa: N802 (gRPC method name)
        self, request: pb.GetStatusRequest, context: Any
    ) -> pb.GetStatusResponse:
        return status_response(
            guardian=self._guardian,
            version=self._version,
            start_time=self._start_time,
            now=self._clock(),
            sensors=self._status.statuses(),
            loss=self._status.loss_totals(),
            outbox=self._outbox.status(),
            retention=self._retention,
            subscribers=self._subscribers,
            transport=self._transport() if self._transport else None,
        )

    async def Subscribe(  # noqa: N802 (gRPC method name)
        self, request: pb.SubscribeRequest, context: Any
    ) -> AsyncIterator[pb.SubscribeResponse]:
        peer = peer_identity(context)
        sealed = request.HasField("sealed_session")
        if not sealed and peer.role not in self._settings.unsealed_roles:
            allowed = ", ".join(sorted(self._settings.unsealed_roles)) or "no role"
            raise PermissionDeniedError(
                f"role {peer.role} must open a sealed session (set sealed_session); "
                f"unsealed subscriptions are allowed for: {allowed}"
            )
        limits = batch_limits(request, self._settings)
        matcher = compile_filter(request)
        snapshot = self._outbox.status()
        cursor = start_cursor(request, snapshot.first_seq, snapshot.last_seq)
        if sealed and not self._handshakes.take(peer.spiffe_id):
            raise ResourceExhaustedError(
                f"{peer.spiffe_id} opens sealed sessions faster than "
                f"{self._settings.sealed_handshakes_per_second:g}/s; retry after a backoff"
            )
        accept, sealer = self._accept(request, context) if sealed else (None, None)
        stream = _Subscription(self._outbox, limits, matcher, sealer, self._draining, cursor)
        self._subscribers += 1
        log_event(
            _log,
            "subscriber connected",
            peer=peer.spiffe_id,
            sealed=sealed,
            start_after_seq=cursor,
            filtered=matcher is not None,
            key_id=sealer.key_id if sealer else None,
        )
        try:
            if accept is not None:
                yield pb.SubscribeResponse(session_accept=accept)
            async for response in stream.responses():
                yield response
        finally:
            self._subscribers -= 1
            log_event(
                _log,
                "subscriber gone",
                peer=peer.spiffe_id,
                delivered_through_seq=stream.cursor,
                batches=stream.batches,
            )

    def _accept(
        self, request: pb.SubscribeRequest, context: Any
    ) -> tuple[SealedSessionAccept, SessionSealer]:
        pems = list(context.auth_context().get(AUTH_PEER_CERT, ()))
        if len(pems) != 1:
            raise IdentityError("the TLS session carries no client certificate to seal to")
        client_cert = x509.load_pem_x509_certificate(pems[0])
        try:
            return accept_offer(
                request.sealed_session,
                client_cert=client_cert,
                guardian_key=self._sealing.key,
                guardian_chain=self._sealing.chain,
                context=subscribe_context(request),
            )
        except HandshakeError as exc:
            raise IdentityError(f"sealed session offer refused: {exc}") from None


class _Subscription:
    """One Subscribe stream's loop; `cursor` is the last seq it has covered."""

    def __init__(
        self,
        outbox: Outbox,
        limits: BatchLimits,
        matcher: EventMatcher | None,
        sealer: SessionSealer | None,
        draining: asyncio.Event,
        cursor: int,
    ) -> None:
        self._outbox = outbox
        self._limits = limits
        self._matcher = matcher
        self._sealer = sealer
        self._draining = draining
        self._drained: asyncio.Future[Any] | None = None
        self.cursor = cursor
        self.batches = 0

    async def responses(self) -> AsyncIterator[pb.SubscribeResponse]:
        loop = asyncio.get_running_loop()
        limits = self._limits
        self._drained = asyncio.ensure_future(self._draining.wait())
        last_sent = loop.time()
        owed = False  # a filtered-out stretch moved the cursor and nobody was told
        try:
            while not self._draining.is_set():
                records = self._read(self.cursor, limits.max_events, limits.max_payload_bytes)
                if records:
                    records = await self._linger(records)
                    response = self._batch(records)
                    if response is not None:
                        yield response
                        owed, last_sent = False, loop.time()
                        continue
                    owed = True
                    caught_up = self.cursor >= self._outbox.last_seq
                    if not caught_up and loop.time() - last_sent < limits.max_delay:
                        continue
                elif not owed and (idle := loop.time() - last_sent) < limits.heartbeat:
                    await self._wait(self.cursor, limits.heartbeat - idle)
                    continue
                yield self._progress()
                owed, last_sent = False, loop.time()
            if owed:
                yield self._progress()
        finally:
            self._drained.cancel()

    def _read(self, after: int, max_events: int, max_bytes: int) -> list[Record]:
        try:
            return self._outbox.read_after(after, max_events, max_bytes)
        except outbox_mod.OutOfRangeError as exc:
            # The disk budget dropped what this subscriber had not read yet.
            raise CursorTooOldError(self.cursor, exc.oldest_available_seq) from None

    async def _linger(self, records: list[Record]) -> list[Record]:
        """Wait up to max_delay for a partial batch to fill, when the read reached the end of
        the outbox; a read cut by a limit (a backlog) is sent at once."""
        limits = self._limits
        if (
            len(records) >= limits.max_events
            or limits.max_delay <= 0
            or records[-1].seq < self._outbox.last_seq
        ):
            return records
        size = sum(len(r.payload) for r in records)
        if size >= limits.max_payload_bytes:
            return records
        # Wakes once a full batch exists, at the deadline, or on drain.
        await self._wait(self.cursor + limits.max_events - 1, limits.max_delay)
        more = self._read(
            records[-1].seq, limits.max_events - len(records), limits.max_payload_bytes - size
        )
        for record in more:
            size += len(record.payload)
            if size > limits.max_payload_bytes:
                break  # read_after always returns one record; this one waits for the next batch
            records.append(record)
        return records

    def _batch(self, records: list[Record]) -> pb.SubscribeResponse | None:
        """The response for `records` (None if the filter left nothing); moves the cursor."""
        first, last = self.cursor + 1, records[-1].seq
        events = select([r.payload for r in records], self._matcher)
        if not events:
            self.cursor = last
            return None
        data = encode_batch(events, first, last)
        if len(data) > self._limits.max_batch_bytes:
            # Only a single stored event can get here (reads are bounded by bytes otherwise).
            raise FailedPreconditionError(
                f"event seq {records[0].seq} is {len(records[0].payload)} bytes, more than one "
                f"message of this guardian can carry; raise [server] max_message_bytes"
            )
        if self._sealer is not None:
            sealed = self._sealer.seal_serialized(data, first, last, len(events))
            response = pb.SubscribeResponse(sealed_batch=sealed)
        else:
            response = pb.SubscribeResponse()
            response.batch.MergeFromString(data)  # parsed in C; no per-event Python work
        self.cursor = last
        self.batches += 1
        return response

    def _progress(self) -> pb.SubscribeResponse:
        latest, oldest = self._outbox.last_seq, self._outbox.first_seq
        progress = event_pb2.Progress(
            latest_seq=latest,
            oldest_seq=oldest if oldest <= latest else 0,
            delivered_through_seq=self.cursor,
        )
        progress.time.GetCurrentTime()
        return pb.SubscribeResponse(progress=progress)

    async def _wait(self, seq: int, timeout: float) -> None:
        """Until the outbox holds a seq above `seq`, `timeout` passes, or the server drains."""
        if timeout <= 0 or self._drained is None or self._drained.done():
            return
        waiter = asyncio.ensure_future(self._outbox.wait_for_seq_after(seq, timeout))
        try:
            await asyncio.wait((waiter, self._drained), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()  # a no-op once done; a cancelled waiter just unregisters itself
