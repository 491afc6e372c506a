"""The subscriber side of the guardian stream: resumable, deduplicated, (by default) sealed.

    config = SubscriberConfig(channel=ChannelConfig("web-01:7443", tls), expected_role="alpha")
    store = FileCursorStore(path)               # mesh.stream.cursor; optional
    async with GuardianSubscriber(config, cursor_store=store) as sub:
        async for batch in sub.batches():       # or: async for event in sub.events()
            store_events(batch.events)
            await sub.commit()                  # optional: batches() also commits by itself

To run several guardians into one consumer, see :mod:`mesh.stream.fanin`.

Guarantees and the decisions behind them:

* **Exactly once to the consumer.** The wire is at-least-once (a guardian resends after a
  reconnect); every event whose seq is at or below ``cursor`` is dropped, so the consumer sees
  each seq at most once, in increasing order. ``cursor`` is the seq through which everything was
  handed to the consumer: batches() sets it to a batch's ``last_seq`` as it yields the batch
  (``last_seq`` also covers events the filter removed), events() to each event's seq.
* **Resume.** UNAVAILABLE, a stream that ends (the guardian drains on SIGTERM), a guardian
  restart, a stream silent for ``idle_timeout``, and other transient codes make the subscriber
  dial again after a backoff with jitter (:class:`ReconnectPolicy`, reset once a stream is
  established) and ask for the events after ``cursor``. Each attempt opens a fresh channel with
  the ``dial`` callable (:func:`mesh.channel.open_channel` unless a caller, e.g. a test, passes
  its own), so only this policy decides when the guardian is dialled again.
* **Sealed sessions** (default). Each connection runs the handshake of
  :mod:`mesh.stream.sealing` with the key of our TLS certificate, and verifies the guardian:
  chain to our CA, our trust domain, role (``expected_role``, or any guardian role when None) and
  host (``expected_host``, when set), and its signature. A failure raises
  :class:`GuardianIdentityError` and is never retried: a wrong guardian does not become right.
  The cursor only moves to the ``last_seq`` of batches that opened, never to the (unauthenticated)
  Progress; a plain batch on a sealed stream is a downgrade and raises
  :class:`StreamProtocolError`.
* **A batch that does not open** (tampered, replayed, reordered) raises
  :class:`SealedBatchRejectedError` (a :class:`SealedStreamError`) and *stops*: it means an active
  attacker on the path or a broken guardian, which must be seen, not papered over by a silent
  reconnect loop. Nothing of that batch was delivered and the cursor stays at the last batch that
  opened, so a caller that decides to go on (a new subscriber, a fresh session) loses nothing.
* **Cursor out of range.** Cursor 0 asks for everything retained: it starts at the oldest
  retained event, whatever the guardian answers. Any other cursor older than the guardian
  retains raises :class:`CursorOutOfRangeError` with ``oldest_available_seq``; the caller decides
  whether to jump there (``qsc tail --from-oldest`` does, loudly). A cursor ahead of the
  guardian's latest (its outbox was reset) raises it too, with ``ahead`` set. Neither is retried.
* **Gap events** are ordinary events for the consumer: they are the guardian's loss report. The
  subscriber also logs each at WARNING.
* **Cursor store** (optional, :mod:`mesh.stream.cursor`): read once, before the first dial, for
  the resume point. A stored cursor of another guardian is refused (:class:`ForeignCursorError`)
  once the guardian is identified, before anything is delivered or saved. With
  ``commit_cursor`` (default) the subscriber writes the store after each batch once the consumer
  comes back for more (a crash while it handles a batch redelivers that batch on restart) and in
  :meth:`GuardianSubscriber.commit`. Without it only :meth:`~GuardianSubscriber.commit` writes,
  and a consumer may instead store ``batch.cursor`` itself, in the transaction that stores the
  batch. The guardian's identity is the verified SPIFFE ID on sealed streams; on unsealed ones
  (debugging only) it is what GetStatus reports, not cryptographically bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import random
import re
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Final, Self

import grpc
import grpc.aio
from cryptography import x509

from crypto import pki
from crypto.errors import CryptoError, PkiError
from mesh.backoff import backoff_bound, jittered_delay
from mesh.channel import ChannelConfig, RetryPolicy, open_channel
from mesh.errors import (
    ConfigError,
    IdentityError,
    MeshError,
    OutOfRangeError,
    UnavailableError,
)
from mesh.identity import load_tls, signing_key
from mesh.logs import log_event
from mesh.stream.cursor import (
    CursorFileError,
    CursorStore,
    CursorStoreError,
    ForeignCursorError,
    StoredCursor,
    refuse_foreign,
)
from mesh.stream.sealing import (
    DEFAULT_SUITES,
    HandshakeError,
    SealedStreamError,
    SessionOpener,
    SubscriberHandshake,
    Suite,
)
from qsc.common.v1 import classification_pb2, event_pb2, identity_pb2
from qsc.guardian.v1 import guardian_service_pb2 as pb
from qsc.guardian.v1 import guardian_service_pb2_grpc as pb_grpc

__all__ = [
    "GUARDIAN_ROLES",
    "CursorFileError",
    "CursorOutOfRangeError",
    "CursorStoreError",
    "DeliveredBatch",
    "Dialer",
    "ForeignCursorError",
    "GuardianIdentityError",
    "GuardianSubscriber",
    "GuardianUnavailableError",
    "ReconnectPolicy",
    "SealedBatchRejectedError",
    "StreamProtocolError",
    "SubscriberConfig",
    "SubscriberError",
    "SubscriberStats",
    "SubscriptionFilter",
    "SubscriptionRefusedError",
    "gap_of",
]

_log = logging.getLogger(__name__)

GUARDIAN_ROLES: Final = ("alpha", "beta")
_ROLE_NAMES: Final = {identity_pb2.ROLE_ALPHA: "alpha", identity_pb2.ROLE_BETA: "beta"}
# Codes after which dialling again can help. Everything else is the guardian saying no.
_RETRYABLE: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,  # the server cancelled us (shutdown grace over)
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # streams per peer: the old stream may linger
        grpc.StatusCode.INTERNAL,  # e.g. a connection cut mid-message
        grpc.StatusCode.UNKNOWN,
    }
)
_OLDEST_RE: Final = re.compile(r"oldest available seq\D{0,3}(\d+)", re.IGNORECASE)

# Opens the channel of one connection attempt (mesh.channel.open_channel by default).
Dialer = Callable[[ChannelConfig], grpc.aio.Channel]


# --- errors ---------------------------------------------------------------------------------


class SubscriberError(MeshError):
    """Base of the subscriber's own errors; none of them is retried by the subscriber."""


class GuardianIdentityError(SubscriberError, IdentityError):
    """The guardian failed verification (CA, trust domain, role, host or signature)."""


class SubscriptionRefusedError(SubscriberError):
    """The guardian refused the subscription (PERMISSION_DENIED, UNAUTHENTICATED, ...)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"guardian refused the subscription: {code.name}: {details}")
        self.code = code
        self.details = details


class CursorOutOfRangeError(SubscriberError, OutOfRangeError):
    """The resume point is outside what the guardian retains.

    ``ahead`` False: events ``cursor + 1`` to ``oldest_available_seq - 1`` are gone; resume after
    ``oldest_available_seq - 1`` to go on. ``ahead`` True: the cursor is past the guardian's
    latest seq (its outbox was reset, or the cursor belongs elsewhere).
    """

    def __init__(self, cursor: int, oldest_available_seq: int | None, details: str) -> None:
        self.cursor = cursor
        self.oldest_available_seq = oldest_available_seq
        self.details = details
        self.ahead = oldest_available_seq is None or cursor >= oldest_available_seq - 1
        if self.ahead:
            message = (
                f"cursor {cursor} is ahead of what the guardian holds (its outbox was reset, or "
                f"the cursor belongs to another guardian): {details}"
            )
        else:
            message = (
                f"cursor {cursor} is older than the guardian retains: events {cursor + 1} to "
                f"{self.lost_last} are no longer available (oldest available seq "
                f"{oldest_available_seq})"
            )
        super().__init__(message)

    @property
    def lost_first(self) -> int:
        return self.cursor + 1

    @property
    def lost_last(self) -> int:
        return (self.oldest_available_seq or 1) - 1

    @property
    def lost_count(self) -> int:
        return 0 if self.ahead else self.lost_last - self.cursor


class GuardianUnavailableError(SubscriberError, UnavailableError):
    """No stream could be established for ``ReconnectPolicy.give_up_after``."""


class StreamProtocolError(SubscriberError):
    """The guardian broke the stream protocol (e.g. a plain batch on a sealed stream)."""


class SealedBatchRejectedError(SealedStreamError):
    """A sealed batch did not open: tampered, replayed, reordered or from another session.

    Says which batch and guardian, never which check failed (that would be an oracle).
    """

    def __init__(self, guardian: str, batch_number: int, first_seq: int, last_seq: int) -> None:
        Exception.__init__(
            self,
            f"sealed batch {batch_number} (seq {first_seq}-{last_seq}) from {guardian} failed "
            "its integrity check (tampered, replayed, reordered or from another session); "
            "the stream is aborted and nothing of that batch was delivered",
        )
        self.guardian = guardian
        self.batch_number = batch_number
        self.first_seq = first_seq
        self.last_seq = last_seq


# --- configuration --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReconnectPolicy:
    """Wait before reconnect attempt n: uniform in [(1 - jitter) * b, b] with
    b = min(max_backoff, initial_backoff * multiplier**(n-1)). The jitter keeps many
    subscribers cut off by one guardian restart from dialling back in lockstep; its lower bound
    keeps a subscriber from hammering a guardian that is down."""

    initial_backoff: timedelta = timedelta(milliseconds=200)
    max_backoff: timedelta = timedelta(seconds=10)
    multiplier: float = 2.0
    jitter: float = 0.5
    # Raise GuardianUnavailableError after this long without an established stream; None: never.
    give_up_after: timedelta | None = None

    def __post_init__(self) -> None:
        if self.initial_backoff <= timedelta(0):
            raise ConfigError("reconnect.initial_backoff", "must be positive")
        if self.max_backoff < self.initial_backoff:
            raise ConfigError("reconnect.max_backoff", "must be at least initial_backoff")
        if not self.multiplier >= 1.0:
            raise ConfigError("reconnect.multiplier", "must be at least 1.0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ConfigError("reconnect.jitter", "must be between 0 and 1")
        if self.give_up_after is not None and self.give_up_after <= timedelta(0):
            raise ConfigError("reconnect.give_up_after", "must be positive when set")

    def bound(self, attempt: int) -> float:
        """The longest wait, in seconds, before attempt `attempt` (1-based) of a reconnect."""
        return backoff_bound(
            attempt,
            initial=self.initial_backoff.total_seconds(),
            maximum=self.max_backoff.total_seconds(),
            multiplier=self.multiplier,
        )

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        return jittered_delay(self.bound(attempt), self.jitter, rng)


@dataclasses.dataclass(frozen=True)
class SubscriptionFilter:
    """Server-side filter (``qsc.guardian.v1.EventFilter``); gap and sensor health events
    always pass. Empty: every event."""

    categories: tuple[classification_pb2.Category.ValueType, ...] = ()
    min_severity: classification_pb2.Severity.ValueType = classification_pb2.SEVERITY_UNSPECIFIED
    rule_ids: tuple[str, ...] = ()
    detail_kinds: tuple[event_pb2.DetailKind.ValueType, ...] = ()

    @property
    def empty(self) -> bool:
        return self == SubscriptionFilter()

    def to_proto(self) -> pb.EventFilter:
        return pb.EventFilter(
            categories=self.categories,
            min_severity=self.min_severity,
            rule_ids=self.rule_ids,
            detail_kinds=self.detail_kinds,
        )


@dataclasses.dataclass(frozen=True)
class SubscriberConfig:
    """Where to subscribe and how. The sealed-session key is the key of ``channel.tls``."""

    channel: ChannelConfig
    # "alpha" or "beta"; None accepts either (the role is still checked to be a guardian's).
    expected_role: str | None = None
    # The guardian's certificate host; None accepts any host of our CA (TLS still checks that the
    # certificate names the dialled address).
    expected_host: str | None = None
    sealed: bool = True
    filter: SubscriptionFilter = SubscriptionFilter()
    # Where to start when no stored cursor applies: after this seq (0: all retained), or at the
    # guardian's latest seq (only events appended from now on; until a first batch fixes the
    # position, a reconnect asks for the latest again).
    start_after_seq: int = 0
    start_at_latest: bool = False
    # Resume from the cursor store's seq when it holds one (else the start_* fields).
    prefer_stored_cursor: bool = True
    # Hints to the guardian; 0 / None: its defaults.
    max_batch_events: int = 0
    max_batch_delay: timedelta | None = None
    heartbeat_interval: timedelta | None = None
    # No message at all (not even a heartbeat) for this long: the stream is dead, dial again.
    idle_timeout: timedelta | None = timedelta(seconds=30)
    reconnect: ReconnectPolicy = dataclasses.field(default_factory=ReconnectPolicy)
    suites: tuple[Suite, ...] = DEFAULT_SUITES

    def __post_init__(self) -> None:
        if self.expected_role is not None and self.expected_role not in GUARDIAN_ROLES:
            raise ConfigError(
                "expected_role", f"must be one of {', '.join(GUARDIAN_ROLES)}, or unset"
            )
        if self.expected_host is not None:
            try:
                pki.normalize_host(self.expected_host)
            except PkiError as exc:
                raise ConfigError("expected_host", str(exc)) from None
        if self.start_after_seq < 0:
            raise ConfigError("start_after_seq", "must not be negative")
        if self.start_at_latest and self.start_after_seq:
            raise ConfigError("start_at_latest", "cannot be combined with start_after_seq")
        if not 0 <= self.max_batch_events < 2**32:
            raise ConfigError("max_batch_events", "must be in 0..2**32-1")
        for name in ("max_batch_delay", "heartbeat_interval", "idle_timeout"):
            value = getattr(self, name)
            if value is not None and value <= timedelta(0):
                raise ConfigError(name, "must be positive when set")
        if (
            self.idle_timeout is not None
            and self.heartbeat_interval is not None
            and self.idle_timeout <= self.heartbeat_interval
        ):
            raise ConfigError("idle_timeout", "must be longer than heartbeat_interval")
        if not self.suites:
            raise ConfigError("suites", "must name at least one sealing suite")


# --- delivered data -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveredBatch:
    """Events new to this consumer (increasing seq), covering the outbox range up to
    ``last_seq``: every event in (previous cursor, last_seq] that passes the filter is here."""

    events: Sequence[event_pb2.Event]
    first_seq: int
    last_seq: int
    # When the batch was received (time.time()), for latency measurements.
    received_at: float
    # The SPIFFE ID of the guardian it came from (verified on sealed streams).
    guardian: str

    @property
    def cursor(self) -> StoredCursor:
        """The cursor to store once this batch is stored: it resumes right after the batch."""
        return StoredCursor(self.guardian, self.last_seq)


@dataclasses.dataclass
class SubscriberStats:
    """Counters since the subscriber was created."""

    connects: int = 0
    reconnects: int = 0
    batches: int = 0
    events: int = 0
    duplicate_events: int = 0
    holes: int = 0
    gap_events: int = 0
    last_error: str = ""
    # Why recent streams were interrupted, oldest first (bounded).
    interruptions: collections.deque[str] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=32)
    )


def gap_of(event: event_pb2.Event) -> event_pb2.Event | None:
    """The event itself if it is a gap event (a loss report), else None."""
    return event if event.WhichOneof("detail") == "gap" else None


# --- one connection -------------------------------------------------------------------------


class _StreamInterruptedError(Exception):
    """The stream ended or went silent; dial again."""


class _Connection:
    """One Subscribe call: the handshake, then decoded EventBatches in wire order."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        call: grpc.aio.UnaryStreamCall[pb.SubscribeRequest, pb.SubscribeResponse],
        idle_timeout: float | None,
    ) -> None:
        self.channel = channel
        self.call = call
        self._responses = call.__aiter__()
        self._idle = idle_timeout
        self.opener: SessionOpener | None = None
        self.guardian = ""

    async def read(self) -> pb.SubscribeResponse | None:
        """The next response; None at a clean end of the stream."""
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that arrives as the read completes, and the subscriber's task would not stop.
            async with asyncio.timeout(self._idle):
                return await self._responses.__anext__()
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise _StreamInterruptedError(f"no message for {self._idle:g}s") from None

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close(grace=None)


# --- the subscriber -------------------------------------------------------------------------


class GuardianSubscriber:
    """Subscribes to one guardian; see the module docstring. One consumer at a time."""

    def __init__(
        self,
        config: SubscriberConfig,
        *,
        cursor_store: CursorStore | None = None,
        commit_cursor: bool = True,
        dial: Dialer = open_channel,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.store = cursor_store
        # False: batches()/events() never write the store; the consumer commits (see module doc).
        self.commit_cursor = commit_cursor
        self.stats = SubscriberStats()
        self._dial = dial
        self._rng = rng
        tls = config.channel.tls
        material = load_tls(tls)  # IdentityError naming the file, now rather than at dial
        self._trust_domain = material.trust_domain
        self._cas = pki.load_certificates(tls.ca)
        # The TLS key signs our sealed-session offers (the guardian checks it against our cert).
        self._identity_key = signing_key(material) if config.sealed else None
        # Our interceptors must not retry behind our back: this loop owns reconnects.
        self._channel_config = dataclasses.replace(
            config.channel, retry=RetryPolicy(max_attempts=1)
        )
        self._cursor = config.start_after_seq
        self._positioned = not config.start_at_latest
        self._committed: int | None = None
        self._stored: StoredCursor | None = None
        self._store_read = False
        self._guardian: str | None = None
        self._latest_seq = 0
        self._oldest_seq = 0
        self._connected = False
        self._running = False
        self._closed = False

    # -- state ---------------------------------------------------------------------------------

    @property
    def cursor(self) -> int:
        """The seq through which every event was handed to the consumer."""
        return self._cursor

    @property
    def guardian(self) -> str | None:
        """The guardian's SPIFFE ID once a connection identified it."""
        return self._guardian

    @property
    def latest_seq(self) -> int:
        """The guardian's latest seq per its last Progress (informational, unauthenticated)."""
        return self._latest_seq

    @property
    def oldest_seq(self) -> int:
        return self._oldest_seq

    @property
    def connected(self) -> bool:
        """A stream is established (verified, subscribed) and not yet interrupted."""
        return self._connected

    async def commit(self) -> None:
        """Persist ``cursor`` to the store (no-op without a store or before identification)."""
        if self.store is None or self._guardian is None or self._committed == self._cursor:
            return
        cursor = StoredCursor(self._guardian, self._cursor)
        await self.store.commit(cursor)
        self._committed = cursor.seq

    async def close(self) -> None:
        self._closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- consumer APIs ---------------------------------------------------------------------------

    async def batches(self) -> AsyncGenerator[DeliveredBatch, None]:
        """Non-empty batches of new events, until an error or the consumer stops."""
        async with contextlib.aclosing(self._deduplicated()) as stream:
            async for batch in stream:
                self._cursor = batch.last_seq
                if batch.events:
                    yield batch
                if self.commit_cursor:
                    await self.commit()

    async def events(self) -> AsyncGenerator[event_pb2.Event, None]:
        """New events one by one, until an error or the consumer stops."""
        async with contextlib.aclosing(self._deduplicated()) as stream:
            async for batch in stream:
                for event in batch.events:
                    self._cursor = event.seq
                    yield event
                self._cursor = batch.last_seq
                if self.commit_cursor:
                    await self.commit()

    # -- the reconnect loop ----------------------------------------------------------------------

    async def _deduplicated(self) -> AsyncGenerator[DeliveredBatch, None]:
        if self._running:
            raise RuntimeError("this subscriber already has a consumer")
        if self._closed:
            raise RuntimeError("this subscriber is closed")
        self._running = True
        attempt = 0
        down_since: float | None = None
        try:
            if self.store is not None and not self._store_read:
                # Whose cursor it is gets checked once the guardian is identified.
                self._stored = await self.store.load()
                self._store_read = True
                if self._stored is not None and self.config.prefer_stored_cursor:
                    self._cursor, self._positioned = self._stored.seq, True
            while not self._closed:
                conn: _Connection | None = None
                try:
                    conn = await self._connect()
                    self._connected = True
                    attempt, down_since = 0, None
                    while True:
                        batch = await self._next_batch(conn)
                        if batch is None:
                            raise _StreamInterruptedError("the guardian ended the stream")
                        delivered = self._dedup(batch)
                        if delivered is not None:
                            yield delivered
                except grpc.aio.AioRpcError as exc:
                    restart = self._check_status(exc)
                    if restart is not None:
                        self._cursor, self._positioned, attempt = restart, True, 0
                        continue
                    reason = f"{exc.code().name}: {exc.details()}"
                except _StreamInterruptedError as exc:
                    reason = str(exc)
                finally:
                    self._connected = False
                    if conn is not None:
                        await conn.close()
                attempt += 1
                now = time.monotonic()
                down_since = now if down_since is None else down_since
                self.stats.reconnects += 1
                self.stats.last_error = reason
                self.stats.interruptions.append(reason)
                give_up = self.config.reconnect.give_up_after
                if give_up is not None and now - down_since >= give_up.total_seconds():
                    raise GuardianUnavailableError(
                        f"no stream from {self.config.channel.target} for "
                        f"{give_up.total_seconds():g}s; last error: {reason}"
                    )
                delay = self.config.reconnect.delay(attempt, self._rng)
                log_event(
                    _log,
                    "guardian stream interrupted; reconnecting",
                    level=logging.WARNING,
                    target=self.config.channel.target,
                    reason=reason,
                    attempt=attempt,
                    delay_ms=round(delay * 1000),
                    cursor=self._cursor,
                )
                await asyncio.sleep(delay)
        finally:
            self._running = False

    def _check_status(self, exc: grpc.aio.AioRpcError) -> int | None:
        """Raise unless dialling again can help; a cursor to restart at right away, or None."""
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.OUT_OF_RANGE:
            match = _OLDEST_RE.search(details)
            oldest = int(match.group(1)) if match else None
            if self._cursor == 0 and oldest is not None and oldest > 1:
                # Cursor 0 asks for everything retained (the proto's contract), which starts
                # at the oldest retained seq; a guardian may answer OUT_OF_RANGE instead.
                log_event(
                    _log, "starting at the oldest retained event", oldest_available_seq=oldest
                )
                return oldest - 1
            raise CursorOutOfRangeError(self._cursor, oldest, details) from None
        if code not in _RETRYABLE:
            raise SubscriptionRefusedError(code, details) from None
        return None

    def _request(self) -> pb.SubscribeRequest:
        cfg = self.config
        request = pb.SubscribeRequest(max_batch_events=cfg.max_batch_events)
        if self._positioned:
            request.start_after_seq = self._cursor
        else:
            request.start_at_latest = True
        if not cfg.filter.empty:
            request.filter.CopyFrom(cfg.filter.to_proto())
        if cfg.max_batch_delay is not None:
            request.max_batch_delay.FromTimedelta(cfg.max_batch_delay)
        heartbeat = cfg.heartbeat_interval
        if heartbeat is None and cfg.idle_timeout is not None:
            # Ask for heartbeats well inside our idle timeout, so that a quiet stream is never
            # mistaken for a dead one (the guardian only ever lowers its interval for a hint).
            heartbeat = cfg.idle_timeout / 3
        if heartbeat is not None:
            request.heartbeat_interval.FromTimedelta(heartbeat)
        return request

    async def _connect(self) -> _Connection:
        cfg = self.config
        request = self._request()
        handshake: SubscriberHandshake | None = None
        if cfg.sealed:
            assert self._identity_key is not None
            # The offer signs the request as the guardian sees it, minus the offer itself.
            context = request.SerializeToString(deterministic=True)
            handshake, offer = SubscriberHandshake.start(
                self._identity_key, suites=cfg.suites, context=context
            )
            request.sealed_session.CopyFrom(offer)
        channel = self._dial(self._channel_config)
        try:
            idle = None if cfg.idle_timeout is None else cfg.idle_timeout.total_seconds()
            if not cfg.sealed:
                guardian = await self._unsealed_identity(channel)
            call = pb_grpc.GuardianServiceStub(channel).Subscribe(request)
            conn = _Connection(channel, call, idle)
            if handshake is not None:
                conn.opener = await self._finish_handshake(conn, handshake)
                guardian = conn.opener.peer.spiffe_id
        except BaseException:
            await channel.close(grace=None)
            raise
        conn.guardian = guardian
        try:
            await self._adopt_guardian(guardian)
        except BaseException:
            await conn.close()
            raise
        self.stats.connects += 1
        log_event(
            _log,
            "subscribed",
            guardian=guardian,
            target=cfg.channel.target,
            sealed=cfg.sealed,
            key_id=conn.opener.key_id if conn.opener is not None else None,
            after_seq=self._cursor if self._positioned else "latest",
        )
        return conn

    async def _finish_handshake(
        self, conn: _Connection, handshake: SubscriberHandshake
    ) -> SessionOpener:
        first = await conn.read()
        if first is None:
            raise _StreamInterruptedError("the guardian ended the stream before the session accept")
        if first.WhichOneof("payload") != "session_accept":
            raise StreamProtocolError(
                "the guardian answered a sealed subscription with "
                f"{first.WhichOneof('payload')!r} instead of a session accept"
            )
        accept = first.session_accept
        target = self.config.channel.target
        try:
            leaf = x509.load_der_x509_certificate(accept.certificate_chain[0])
            claimed = pki.parse_identity(leaf)
        except (IndexError, ValueError, CryptoError):
            raise GuardianIdentityError(
                f"guardian at {target} sent no usable certificate in its session accept"
            ) from None
        role = self.config.expected_role
        if role is None:
            # Any guardian role; finish() then checks the chain, host and signature as usual.
            if claimed.role not in GUARDIAN_ROLES:
                raise GuardianIdentityError(
                    f"guardian at {target} failed verification: its certificate is for role "
                    f"{claimed.role!r}, not a guardian role ({', '.join(GUARDIAN_ROLES)})"
                )
            role = claimed.role
        ca = next((c for c in self._cas if c.subject == leaf.issuer), self._cas[0])
        try:
            return handshake.finish(
                accept,
                ca_cert=ca,
                expected_role=role,
                expected_host=self.config.expected_host,
                trust_domain=self._trust_domain,
            )
        except HandshakeError as exc:
            raise GuardianIdentityError(
                f"guardian at {target} failed verification: {exc}"
            ) from None

    async def _unsealed_identity(self, channel: grpc.aio.Channel) -> str:
        """GetStatus's word for who the guardian is: unsealed streams are for debugging."""
        status = await pb_grpc.GuardianServiceStub(channel).GetStatus(pb.GetStatusRequest())
        ref = status.guardian
        role = _ROLE_NAMES.get(ref.role)
        target = self.config.channel.target
        if role is None or not ref.host:
            raise GuardianIdentityError(f"guardian at {target} reports no guardian identity")
        if self.config.expected_role is not None and role != self.config.expected_role:
            raise GuardianIdentityError(
                f"guardian at {target} reports role {role!r}, expected "
                f"{self.config.expected_role!r}"
            )
        host = ref.host
        if self.config.expected_host is not None:
            want = pki.normalize_host(self.config.expected_host)
            if host != want:
                raise GuardianIdentityError(
                    f"guardian at {target} reports host {host!r}, expected {want!r}"
                )
        return pki.spiffe_id(self._trust_domain, role, host)

    async def _adopt_guardian(self, guardian: str) -> None:
        if self._guardian is not None and guardian != self._guardian:
            # Sequence numbers are per guardian: resuming one's cursor on another skips or
            # replays events.
            raise ForeignCursorError(
                f"{self.config.channel.target} is now {guardian}, but this stream was with "
                f"{self._guardian}"
            )
        if self._guardian is None and self.store is not None:
            # Refuse another guardian's cursor before anything is delivered or saved.
            refuse_foreign(self.store, self._stored, guardian)
        self._guardian = guardian

    # -- messages --------------------------------------------------------------------------------

    async def _next_batch(self, conn: _Connection) -> DeliveredBatch | None:
        """The next batch (possibly empty: an advance over filtered events); None at the end."""
        sealed = conn.opener is not None
        while True:
            response = await conn.read()
            if response is None:
                return None
            kind = response.WhichOneof("payload")
            if kind == "sealed_batch" and conn.opener is not None:
                sealed_batch = response.sealed_batch
                try:
                    batch = conn.opener.open(sealed_batch)
                except SealedStreamError:
                    raise SealedBatchRejectedError(
                        conn.guardian,
                        sealed_batch.batch_number,
                        sealed_batch.first_seq,
                        sealed_batch.last_seq,
                    ) from None
            elif kind == "batch" and not sealed:
                batch = response.batch
            elif kind == "progress":
                self._progress(response.progress, sealed)
                if not sealed and self._positioned:
                    through = response.progress.delivered_through_seq
                    if through > self._cursor:
                        return DeliveredBatch(
                            (), self._cursor + 1, through, time.time(), conn.guardian
                        )
                continue
            else:
                what = "sealed" if sealed else "unsealed"
                raise StreamProtocolError(f"unexpected {kind!r} message on a {what} stream")
            return DeliveredBatch(
                batch.events, batch.first_seq, batch.last_seq, time.time(), conn.guardian
            )

    def _progress(self, progress: event_pb2.Progress, sealed: bool) -> None:
        self._latest_seq = max(self._latest_seq, progress.latest_seq)
        self._oldest_seq = progress.oldest_seq
        if not self._positioned and not sealed and progress.delivered_through_seq:
            self._cursor, self._positioned = progress.delivered_through_seq, True

    def _dedup(self, batch: DeliveredBatch) -> DeliveredBatch | None:
        """Drop what the consumer already has; None when nothing is new."""
        cursor = self._cursor
        events = batch.events
        if batch.last_seq <= cursor and self._positioned:
            self.stats.duplicate_events += len(events)
            return None
        if not self._positioned:
            # start_at_latest: the first batch fixes where this subscription starts.
            self._positioned = True
            cursor = batch.first_seq - 1
            self._cursor = cursor
        elif batch.first_seq > cursor + 1:
            self._report_hole(cursor, batch.first_seq)
        if events and events[0].seq <= cursor:
            kept = [e for e in events if e.seq > cursor]
            self.stats.duplicate_events += len(events) - len(kept)
            events = kept
        if events and events[-1].seq > batch.last_seq:
            raise StreamProtocolError(
                f"batch for seq {batch.first_seq}-{batch.last_seq} holds event "
                f"{events[-1].seq} beyond its range"
            )
        self.stats.batches += 1
        self.stats.events += len(events)
        for event in events:
            if event.WhichOneof("detail") == "gap":
                self._report_gap(event)
        return dataclasses.replace(batch, events=events, first_seq=max(batch.first_seq, cursor + 1))

    def _report_hole(self, cursor: int, first: int) -> None:
        if cursor == 0:
            return  # "everything retained" starts where retention starts
        self.stats.holes += 1
        log_event(
            _log,
            "guardian stream skipped sequence numbers; the guardian should report them as a gap",
            level=logging.WARNING,
            guardian=self._guardian,
            first_missing=cursor + 1,
            last_missing=first - 1,
        )

    def _report_gap(self, event: event_pb2.Event) -> None:
        self.stats.gap_events += 1
        gap = event.gap
        log_event(
            _log,
            "guardian reports lost events",
            level=logging.WARNING,
            guardian=self._guardian,
            gap_seq=event.seq,
            first_lost=gap.first_seq,
            last_lost=gap.last_seq,
            count=gap.count,
        )
