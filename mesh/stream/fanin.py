"""Many guardians into one consumer: a subscriber per guardian, one consumer call at a time.

    async def consume(source: str, batch: DeliveredBatch) -> None:
        ...                                    # store batch.events (and batch.cursor, see below)

    fanin = FanIn(
        [FanInSource("web-01", config_01, cursor_store=FileCursorStore(p1)), ...], consume
    )
    task = asyncio.create_task(fanin.run())    # until stop(), cancellation or a consumer error
    fanin.states()                             # {source: GuardianState}, e.g. for a status RPC
    fanin.stop(); await task

Guarantees and the decisions behind them:

* **One consumer, called serially.** The consumer is an async callable, awaited for one batch at
  a time across all guardians (a fair lock: a busy guardian cannot starve a quiet one), so it
  needs no locking of its own and can run one database transaction per batch.
* **Back-pressure.** A guardian's subscriber reads its next batch only once the consumer has
  accepted the previous one: at most one batch per guardian waits, and a slow consumer slows the
  streams (gRPC flow control then slows the guardians' sending) instead of filling memory.
* **Commit after acceptance.** A batch is accepted when the consumer returns; only then does that
  guardian's cursor move. By default the fan-in then commits it through the source's cursor
  store. With ``consumer_commits`` the fan-in never writes the cursor: the consumer stores
  ``batch.cursor`` itself, in the transaction that stores the events, and the store is only read
  to resume; a crash at any point then neither loses nor repeats a batch.
* **Failures stay per guardian.** Each subscriber reconnects by itself after transient errors
  (:mod:`mesh.stream.subscriber`); what it raises is permanent (identity error, sealed batch
  rejected, cursor out of range, a foreign or unreadable cursor, giving up): that guardian is
  marked ``failed`` with the error, logged, and the others go on. When every guardian has
  failed, :meth:`FanIn.run` raises :class:`FanInFailedError`.
* **A consumer error stops everything.** The consumer raising means it cannot store what it is
  given (a bug, its database is down); going on would skip that batch. :meth:`FanIn.run` stops
  every subscriber and raises :class:`ConsumerError` from the consumer's exception; the failed
  batch was not accepted, so its cursor was not committed and a restart redelivers it.
* **Shutdown.** :meth:`FanIn.stop` (or cancelling ``run``) cancels every subscriber and closes
  its stream; a batch the consumer was handling when cancelled counts as not accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from mesh.channel import open_channel
from mesh.errors import ConfigError, MeshError
from mesh.logs import log_event
from mesh.stream.cursor import CursorStore
from mesh.stream.subscriber import (
    DeliveredBatch,
    Dialer,
    GuardianSubscriber,
    SubscriberConfig,
)

__all__ = [
    "Consumer",
    "ConsumerError",
    "FanIn",
    "FanInFailedError",
    "FanInSource",
    "GuardianPhase",
    "GuardianState",
]

_log = logging.getLogger(__name__)

# Called with the source's name and one batch; returning accepts the batch.
Consumer = Callable[[str, DeliveredBatch], Awaitable[None]]


class ConsumerError(MeshError):
    """The consumer raised on a batch; the fan-in stopped and the batch was not accepted."""

    def __init__(self, source: str, batch: DeliveredBatch, cause: BaseException) -> None:
        super().__init__(
            f"the consumer failed on the batch seq {batch.first_seq}-{batch.last_seq} of "
            f"{source} ({batch.guardian}): {type(cause).__name__}: {cause}"
        )
        self.source = source
        self.first_seq = batch.first_seq
        self.last_seq = batch.last_seq


class FanInFailedError(MeshError):
    """Every guardian of the fan-in failed permanently; the message lists why."""


@dataclasses.dataclass(frozen=True)
class FanInSource:
    """One guardian of the fan-in."""

    # The consumer's name for this guardian (e.g. the Cortex config's); unique in the fan-in.
    name: str
    config: SubscriberConfig
    cursor_store: CursorStore | None = None
    # True: the consumer stores ``batch.cursor`` itself; the fan-in only reads the store.
    consumer_commits: bool = False


class GuardianPhase(enum.StrEnum):
    CONNECTING = "connecting"  # no stream established yet
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"  # the stream was interrupted; backing off or dialling
    FAILED = "failed"  # permanently, see ``error``; the others go on
    STOPPED = "stopped"  # the fan-in shut down


@dataclasses.dataclass(frozen=True)
class GuardianState:
    """A snapshot of one guardian's subscription in the fan-in."""

    name: str
    target: str
    phase: GuardianPhase
    # The guardian's SPIFFE ID, once a connection identified it.
    guardian: str | None
    # The seq through which the consumer accepted this guardian's events (the resume point
    # until a first batch is accepted).
    cursor: int
    # The guardian's latest seq per its last Progress (informational, unauthenticated).
    latest_seq: int
    # Accepted by the consumer since the fan-in started.
    batches: int
    events: int
    # Batches read from the stream (deduplicated; with a filter, also the empty advances over
    # what it removed): ``batches`` plus at most the one with, or waiting for, the consumer.
    # That bound is the back-pressure.
    received_batches: int
    connects: int
    reconnects: int
    # The permanent failure when ``phase`` is FAILED, else the last transient one ("" if none).
    last_error: str
    # time.time() when the consumer last accepted a batch of this guardian.
    last_batch_at: float | None
    error: BaseException | None


@dataclasses.dataclass(eq=False)
class _Follower:
    source: FanInSource
    sub: GuardianSubscriber
    batches: int = 0
    events: int = 0
    last_batch_at: float | None = None
    # The batch the consumer holds, not yet accepted.
    held: DeliveredBatch | None = None
    error: BaseException | None = None
    stopped: bool = False

    def state(self) -> GuardianState:
        sub, stats = self.sub, self.sub.stats
        if self.error is not None:
            phase = GuardianPhase.FAILED
        elif self.stopped:
            phase = GuardianPhase.STOPPED
        elif sub.connected:
            phase = GuardianPhase.CONNECTED
        elif stats.connects or stats.reconnects:
            phase = GuardianPhase.RECONNECTING
        else:
            phase = GuardianPhase.CONNECTING
        return GuardianState(
            name=self.source.name,
            target=self.source.config.channel.target,
            phase=phase,
            guardian=sub.guardian,
            cursor=sub.cursor if self.held is None else self.held.first_seq - 1,
            latest_seq=sub.latest_seq,
            batches=self.batches,
            events=self.events,
            received_batches=stats.batches,
            connects=stats.connects,
            reconnects=stats.reconnects,
            last_error=str(self.error) if self.error is not None else stats.last_error,
            last_batch_at=self.last_batch_at,
            error=self.error,
        )


class FanIn:
    """Runs a subscriber per source into one consumer; see the module docstring. Runs once."""

    def __init__(
        self,
        sources: Sequence[FanInSource],
        consumer: Consumer,
        *,
        dial: Dialer = open_channel,
    ) -> None:
        if not sources:
            raise ConfigError("fanin.sources", "must name at least one guardian")
        names = [s.name for s in sources]
        if any(not n for n in names) or len(set(names)) != len(names):
            raise ConfigError("fanin.sources", "every guardian needs a unique, non-empty name")
        self._consumer = consumer
        # Built now: unusable TLS files fail here, not as a guardian's failure later.
        self._followers = [
            _Follower(
                source,
                GuardianSubscriber(
                    source.config,
                    cursor_store=source.cursor_store,
                    commit_cursor=not source.consumer_commits,
                    dial=dial,
                ),
            )
            for source in sources
        ]
        self._turn = asyncio.Lock()  # FIFO-fair: the consumer's batches in arrival order
        self._stop = asyncio.Event()
        self._consumer_error: ConsumerError | None = None
        self._started = False

    def states(self) -> Mapping[str, GuardianState]:
        """A snapshot per source, by name, in the order the sources were given."""
        return {f.source.name: f.state() for f in self._followers}

    def stop(self) -> None:
        """Make :meth:`run` cancel every subscriber and return. Idempotent."""
        self._stop.set()

    async def run(self) -> None:
        """Follow every guardian until stop(), cancellation, a consumer error (ConsumerError)
        or the failure of every guardian (FanInFailedError)."""
        if self._started:
            raise RuntimeError("a fan-in runs once; build a new one")
        self._started = True
        tasks = [
            asyncio.create_task(self._follow(f), name=f"fanin:{f.source.name}")
            for f in self._followers
        ]
        stopping = asyncio.create_task(self._stop.wait(), name="fanin:stop")
        try:
            pending = set(tasks)
            while pending and not stopping.done():
                done, _ = await asyncio.wait(
                    {*pending, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                pending -= done
        finally:
            stopping.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, stopping, return_exceptions=True)
            for f in self._followers:
                f.stopped = True
                await f.sub.close()
        if self._consumer_error is not None:
            raise self._consumer_error  # its __cause__ is the consumer's exception
        if not self._stop.is_set():
            reasons = "; ".join(f"{f.source.name}: {f.error}" for f in self._followers)
            raise FanInFailedError(f"every guardian of the fan-in failed: {reasons}")

    async def _follow(self, follower: _Follower) -> None:
        source, sub = follower.source, follower.sub
        try:
            async with contextlib.aclosing(sub.batches()) as batches:
                async for batch in batches:
                    follower.held = batch
                    try:
                        async with self._turn:
                            if self._stop.is_set():
                                return  # stopping (or the consumer failed): hand over no more
                            await self._consumer(source.name, batch)
                    except Exception as exc:
                        self._consumer_failed(source.name, batch, exc)
                        return
                    follower.held = None
                    follower.batches += 1
                    follower.events += len(batch.events)
                    follower.last_batch_at = time.time()
                    if not source.consumer_commits:
                        await sub.commit()
        except Exception as exc:
            # The subscriber retries what can be retried: what reaches here is permanent.
            follower.error = exc
            log_event(
                _log,
                "guardian failed; the fan-in goes on without it",
                level=logging.ERROR,
                exc_info=exc if not isinstance(exc, MeshError) else None,
                source=source.name,
                target=source.config.channel.target,
                guardian=sub.guardian,
                cursor=sub.cursor,
                error=str(exc),
            )

    def _consumer_failed(self, source: str, batch: DeliveredBatch, exc: Exception) -> None:
        if self._consumer_error is None:
            error = ConsumerError(source, batch, exc)
            error.__cause__ = exc
            self._consumer_error = error
        log_event(
            _log,
            "the consumer failed; stopping the fan-in",
            level=logging.ERROR,
            exc_info=exc,
            source=source,
            first_seq=batch.first_seq,
            last_seq=batch.last_seq,
        )
        self._stop.set()
