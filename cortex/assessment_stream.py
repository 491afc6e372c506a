"""SubscribeAssessments: a snapshot, then every change, resumable across disconnects and restarts.

    log = AssessmentLog(store, own_guardian_id, token_key, snapshot=...)
    log.start(own_seq)                         # where the Cortex's own numbering stands
    ingest.record(..., hook)                   # `log.recorded(events)` after each own commit
    async for message in log.subscribe(filter_, resume_token, include_existing, heartbeat):
        ...                                    # SubscribeAssessmentsResponse messages

The ordered log is the store itself. Every revision of an assessment is one of the Cortex's own
events (`cortex.assessment_records`), numbered by the Cortex's own seq in the transaction that
stores it; a resume token is that seq, authenticated (`cortex.paging`, bound to this store and
to the change log, not to the filter: a client may resume with another filter). So a token from
before a restart resumes after it, and what a client missed while disconnected is read back
from the store, in order.

A subscriber registers for live changes *before* it reads anything, then reads the store after
its position, then drains what arrived meanwhile, skipping what it already sent: nothing falls
between the two. A subscriber that falls more than `QUEUE_LIMIT` changes behind is not cut off:
its queue is dropped and it catches up from the store again. Delivery is at least once: a
client may see a revision twice (after `include_existing`, or a clock stepped back between two
stored changes) and deduplicates by (name, revision).

Heartbeats (progress messages) carry the position up to which every change has been sent or
filtered out, so an idle client on a narrow filter still resumes from close to now. A token
older than what retention left (`qsc-cortex store retain`) is OUT_OF_RANGE with an ErrorInfo
naming the oldest token that still resumes without loss.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from cortex import assessment_records as records
from cortex.assessment_queries import FIELDS
from cortex.assessments import Assessment
from cortex.errors import (
    PageTokenError,
    ResumeTokenError,
    ResumeTokenExpiredError,
    SubscriptionArgumentError,
    SubscriptionLimitError,
)
from cortex.filter import parse
from cortex.paging import PageBinding, PageTokens
from cortex.queries import ReadableStore
from cortex.record_filter import RecordFilter, parse_record_filter
from cortex.store.api import Position
from cortex.store.sqlite import MAX_LIMIT
from mesh.logs import log_event
from qsc.common.v1 import event_pb2
from qsc.cortex.v1 import assessment_pb2
from qsc.cortex.v1 import cortex_service_pb2 as pb

__all__ = ["AssessmentLog", "LogEntry"]

_log = logging.getLogger("qsc.cortex.subscriptions")

DEFAULT_HEARTBEAT: Final = dt.timedelta(seconds=10)
MIN_HEARTBEAT: Final = dt.timedelta(milliseconds=100)
MAX_HEARTBEAT: Final = dt.timedelta(hours=1)
QUEUE_LIMIT: Final = 10_000  # changes a subscriber may be behind before it reads the store
MAX_SUBSCRIBERS: Final = 256
_CONVERTED_CACHE: Final = 1024  # converted changes kept, so N subscribers convert once
_COLLECTION: Final = "assessment-changes"

Convert = Callable[[Assessment], assessment_pb2.Assessment]
Snapshot = Callable[[RecordFilter[Assessment]], Awaitable[list[Assessment]]]


@dataclass(frozen=True)
class LogEntry:
    """One stored change: the Cortex's own seq, when it was stored, the assessment after it."""

    seq: int
    time_ns: int
    assessment: Assessment


@dataclass(eq=False)  # identity: one per subscription, kept in a set
class _Subscriber:
    queue: asyncio.Queue[LogEntry] = field(default_factory=asyncio.Queue)
    overflowed: bool = False


class AssessmentLog:
    """The change log of assessments over the store, and its live subscribers."""

    def __init__(
        self,
        store: ReadableStore,
        own_guardian_id: str,
        token_key: bytes,
        *,
        snapshot: Snapshot,
        convert: Convert,
    ) -> None:
        self._store = store
        self._own = own_guardian_id
        self._tokens = PageTokens(token_key)
        self._binding = PageBinding(_COLLECTION, store.store_id, "", "")
        self._snapshot = snapshot
        self._convert = convert
        self._latest = 0  # the Cortex's latest own seq: every change up to it is stored
        self._subscribers: set[_Subscriber] = set()
        self._converted: OrderedDict[tuple[str, int], assessment_pb2.Assessment] = OrderedDict()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @property
    def latest(self) -> int:
        return self._latest

    def start(self, own_seq: int) -> None:
        self._latest = max(self._latest, own_seq)

    def token(self, seq: int) -> str:
        return self._tokens.issue(self._binding, str(seq))

    def recorded(self, events: Sequence[event_pb2.Event]) -> None:
        """The Cortex stored `events` of its own (in seq order, in the order they were
        committed): hand the assessment changes among them to every subscriber."""
        for event in events:
            self._latest = max(self._latest, event.seq)
            if event.WhichOneof("detail") != records.KIND:
                continue
            assessment = records.from_event(event)
            if assessment is None:
                continue
            entry = LogEntry(event.seq, event.time.ToNanoseconds(), assessment)
            for sub in self._subscribers:
                if sub.overflowed:
                    continue
                if sub.queue.qsize() >= QUEUE_LIMIT:
                    sub.overflowed = True  # it reads the store instead
                    while not sub.queue.empty():
                        sub.queue.get_nowait()
                else:
                    sub.queue.put_nowait(entry)

    # -- a subscription ----------------------------------------------------------------------

    def _open(self, resume_token: str) -> int:
        if not resume_token:
            return -1
        try:
            position = self._tokens.open(self._binding, resume_token)
        except PageTokenError:
            raise ResumeTokenError(
                "resume_token is not valid for this Cortex: malformed, altered or issued by "
                "another store; subscribe without one (and include_existing) to start afresh",
                argument="resume_token",
            ) from None
        try:
            return int(position)
        except ValueError:
            raise ResumeTokenError("resume_token is malformed", argument="resume_token") from None

    def _check_in_range(self, seq: int) -> None:
        """OUT_OF_RANGE when changes after `seq` are gone (retention cut them)."""
        if seq > self._latest:
            raise ResumeTokenError(
                f"resume_token is ahead of this Cortex's change log ({seq} > {self._latest})",
                argument="resume_token",
            )
        own = parse(f'guardian = "{self._own}"').to_sql(self._store.blind)
        first = self._store.query(own, limit=1)
        oldest = first.events[0].seq if first.events else self._latest + 1
        if seq + 1 < oldest:
            raise ResumeTokenExpiredError(
                f"resume_token is older than the change log this Cortex keeps (changes up to "
                f"seq {oldest - 1} were removed by retention); resume from oldest_token or "
                "subscribe afresh with include_existing",
                oldest_token=self.token(oldest - 1),
            )

    def _read_after(self, seq: int) -> tuple[list[LogEntry], bool]:
        """Up to about `QUEUE_LIMIT` stored changes after `seq`, in seq order, and whether
        there may be more (on a worker thread)."""
        where = parse(f'guardian = "{self._own}" AND kind = {records.KIND} AND seq > {seq}').to_sql(
            self._store.blind
        )
        out: list[LogEntry] = []
        after: Position | None = None
        while True:
            page = self._store.query(where, after=after, limit=MAX_LIMIT)
            for event in page.events:
                assessment = records.from_event(event)
                if assessment is not None:
                    out.append(LogEntry(event.seq, event.time.ToNanoseconds(), assessment))
            if page.next is None:
                break
            if len(out) >= QUEUE_LIMIT:
                out.sort(key=lambda e: e.seq)
                return out, True
            after = page.next
        out.sort(key=lambda e: e.seq)  # pages run by time; a stepped clock must not reorder
        return out, False

    async def _message(self, entry: LogEntry, kind: int) -> pb.SubscribeAssessmentsResponse:
        a = entry.assessment
        key = (a.id, a.revision)
        converted = self._converted.get(key)
        if converted is None:
            converted = await asyncio.to_thread(self._convert, a)
            self._converted[key] = converted
            while len(self._converted) > _CONVERTED_CACHE:
                self._converted.popitem(last=False)
        message = pb.SubscribeAssessmentsResponse()
        change = message.change
        change.type = kind  # type: ignore[assignment]
        change.assessment.CopyFrom(converted)
        change.resume_token = self.token(entry.seq)
        change.change_time.FromNanoseconds(entry.time_ns)
        return message

    def _progress(
        self, seq: int, now_ns: int, *, snapshot_complete: bool = False
    ) -> pb.SubscribeAssessmentsResponse:
        message = pb.SubscribeAssessmentsResponse()
        message.progress.resume_token = self.token(seq)
        message.progress.time.FromNanoseconds(now_ns)
        message.progress.snapshot_complete = snapshot_complete
        return message

    async def subscribe(
        self,
        filter_: str,
        resume_token: str,
        include_existing: bool,
        heartbeat: dt.timedelta | None,
        *,
        clock: Callable[[], int],
    ) -> AsyncIterator[pb.SubscribeAssessmentsResponse]:
        """The stream of one subscription (see the module docstring). Argument errors are
        raised before the first message."""
        flt = parse_record_filter(filter_, FIELDS)
        interval = _heartbeat(heartbeat)
        position = self._open(resume_token)
        if position >= 0:
            await asyncio.to_thread(self._check_in_range, position)
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            raise SubscriptionLimitError(
                f"this Cortex serves at most {MAX_SUBSCRIBERS} assessment subscriptions"
            )
        sub = _Subscriber()
        self._subscribers.add(sub)  # before anything is read: nothing falls in between
        log_event(_log, "assessment subscription", filter=flt.canonical, resume=position >= 0)
        try:
            snapshot_revisions: dict[str, int] = {}
            if position < 0:
                position = self._latest
                if include_existing:
                    existing = await self._snapshot(flt)
                    for a in existing:
                        snapshot_revisions[a.id] = a.revision
                        entry = LogEntry(position, a.update_ns, a)
                        yield await self._message(entry, pb.CHANGE_TYPE_EXISTING)
                    yield self._progress(position, clock(), snapshot_complete=True)
            else:
                sub.overflowed = True  # catch up from the store first
            async for message in self._follow(
                sub, flt, position, snapshot_revisions, interval, clock
            ):
                yield message
        finally:
            self._subscribers.discard(sub)

    async def _follow(
        self,
        sub: _Subscriber,
        flt: RecordFilter[Assessment],
        position: int,
        skip: dict[str, int],
        interval: float,
        clock: Callable[[], int],
    ) -> AsyncIterator[pb.SubscribeAssessmentsResponse]:
        sent = position  # every change up to here was sent or filtered out
        while True:
            if sub.overflowed:
                sub.overflowed = False
                entries, more = await asyncio.to_thread(self._read_after, sent)
                sub.overflowed = sub.overflowed or more
                for entry in entries:
                    if entry.seq <= sent:
                        continue
                    sent = entry.seq
                    if flt.matches(entry.assessment):
                        yield await self._message(entry, _change_type(entry.assessment))
                continue  # what arrived meanwhile is in the queue (or overflowed again)
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
                # cancellation that ends the stream (a client gone, the server draining).
                async with asyncio.timeout(interval):
                    entry = await sub.queue.get()
            except TimeoutError:
                if sub.queue.empty() and not sub.overflowed:
                    sent = max(sent, self._latest)  # nothing pending: all up to latest seen
                yield self._progress(sent, clock())
                continue
            if entry.seq <= sent:
                continue
            sent = entry.seq
            a = entry.assessment
            if skip and skip.get(a.id, -1) >= a.revision:
                continue  # the snapshot already showed this revision
            if flt.matches(a):
                yield await self._message(entry, _change_type(a))


def _change_type(a: Assessment) -> int:
    return pb.CHANGE_TYPE_CREATED if a.revision == 1 else pb.CHANGE_TYPE_UPDATED


def _heartbeat(requested: dt.timedelta | None) -> float:
    if requested is None or requested == dt.timedelta(0):
        return DEFAULT_HEARTBEAT.total_seconds()
    if not MIN_HEARTBEAT <= requested <= MAX_HEARTBEAT:
        raise SubscriptionArgumentError(
            f"heartbeat_interval must be 0 (the default, {DEFAULT_HEARTBEAT.seconds} s) or "
            f"between {MIN_HEARTBEAT.total_seconds():g} s and {MAX_HEARTBEAT.seconds} s",
            argument="heartbeat_interval",
        )
    return requested.total_seconds()
