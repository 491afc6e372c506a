"""The Cortex's correlation at run time: stored events in, assessments out, one thread.

    runtime = CorrelationRuntime(config.correlation)    # rules loaded (CorrelationRuleError)
    await runtime.observe(events)                        # after the store committed them
    page = await runtime.call(lambda: queries.list(...)) # every book access on the same thread
    runtime.reload(paths)                                # SIGHUP: a bad file keeps the old set

The engine, the assessment book and the verdict model live on one worker thread (a
single-thread executor): events from all guardians go through it in the order their batches
were stored, the API reads and judges through it, so nothing is shared between threads and the
event loop never runs the engine's CPU. Events reach it only after their batch is stored: what
an assessment names can always be read back. A failure inside is logged and counted, never
allowed to stop ingest.

Every change of an assessment is handed to `persist` (the Cortex stores it as one of its own
events, `cortex.assessment_records`); `restore` reads them back at start and replays the stored
events of the longest rule timespan through the engine, so after a crash open correlations go
on, nothing raised is lost and nothing is raised twice. A model reset marker among the records
(`qsc-cortex model reset`) makes the verdicts before it teach nothing (`load_stored`);
`stored_book` rebuilds the same book and model for the tools beside a running Cortex.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from cortex import assessment_records as records
from cortex.assessments import Assessment, AssessmentBook
from cortex.config import CorrelationSection
from cortex.correlate import Correlator, RuleSet, VerdictModel, load_files
from cortex.filter import parse
from cortex.filter.literals import format_time
from cortex.queries import ReadableStore
from cortex.store.api import Position
from cortex.store.sqlite import MAX_LIMIT
from mesh.logs import log_event
from qsc.common.v1 import event_pb2

_log = logging.getLogger("qsc.cortex.correlation")
T = TypeVar("T")


class CorrelationRuntime:
    def __init__(
        self, section: CorrelationSection, *, clock: Callable[[], int] = time.time_ns
    ) -> None:
        self.section = section
        self._clock = clock
        self.ruleset: RuleSet = load_files(list(section.rules) or None)
        self.engine = Correlator(self.ruleset, max_keys=section.max_keys)
        self.book = AssessmentBook(
            VerdictModel(), clock=clock, max_assessments=section.max_assessments
        )
        self.failures = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="qsc-correlate")
        self._expiry: asyncio.Task[None] | None = None
        self._pending: list[Assessment] = []  # changes not yet handed to `persist`
        self._persist: Callable[[Sequence[Assessment]], Awaitable[None]] | None = None

    def persist_with(self, persist: Callable[[Sequence[Assessment]], Awaitable[None]]) -> None:
        """Hand every change to `persist` (the Cortex stores it as one of its own events)."""
        self._persist = persist

    async def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the correlation thread (the book and model are not shared), then store
        the assessment changes it made."""

        def run() -> tuple[T, list[Assessment]]:
            return fn(), self._take_pending()

        result, changes = await asyncio.get_running_loop().run_in_executor(self._executor, run)
        if changes and self._persist is not None:
            await self._persist(changes)
        return result

    def _take_pending(self) -> list[Assessment]:
        for judged in self.book.judged:  # verdicts change assessments outside the engine
            self._publish(judged)
        self.book.judged.clear()
        taken, self._pending = self._pending, []
        return taken

    async def observe(self, events: Sequence[event_pb2.Event]) -> None:
        if all(e.WhichOneof("detail") == records.KIND for e in events):
            return  # the Cortex's own assessment records, coming back from the store
        try:
            await self.call(lambda: self._observe(events))
        except Exception as exc:  # a bug in a rule or the engine: loud, but ingest goes on
            self.failures += 1
            log_event(_log, "correlation failed", level=logging.ERROR, exc_info=exc)

    def _observe(self, events: Sequence[event_pb2.Event], *, replay: bool = False) -> None:
        for event in events:
            if event.WhichOneof("detail") == records.KIND or records.is_reset(event):
                continue  # the Cortex's own assessment records: not evidence
            for hit in self.engine.observe(event):
                self._publish(self.book.apply(hit, replay=replay))

    def _expire(self) -> None:
        now = self._clock()
        for hit in self.engine.expire(now):
            self._publish(self.book.apply(hit))
        spans = {r.id: r.timespan_ns for r in self.ruleset.rules}
        for expired in self.book.expire_orphans(now, spans):
            self._publish(expired)

    async def restore(self, store: ReadableStore) -> tuple[int, int]:
        """After a restart: the stored assessment records back into the book (and verdicts
        into the model), then the stored events of the last timespan through the engine, so
        open windows go on where they were. Returns (assessments, events replayed)."""
        kind = parse(records.STORED).to_sql(store.blind)
        restored = 0
        after: Position | None = None
        while True:
            page = await asyncio.to_thread(store.query, kind, after=after, limit=MAX_LIMIT)
            restored += await self.call(functools.partial(load_stored, self.book, page.events))
            if page.next is None:
                break
            after = page.next
        await self.call(self.book.learn_from_verdicts)
        spans = [r.timespan_ns for r in self.ruleset.enabled]
        since = self._clock() - (max(spans) if spans else 0)
        recent = parse(f'time >= "{format_time(since)}"').to_sql(store.blind)
        replayed = 0
        after = None
        while spans:
            page = await asyncio.to_thread(store.query, recent, after=after, limit=MAX_LIMIT)
            events = page.events
            await self.call(functools.partial(self._observe, events, replay=True))
            replayed += len(events)
            if page.next is None:
                break
            after = page.next
        log_event(_log, "correlation restored", assessments=restored, events_replayed=replayed)
        return restored, replayed

    def _publish(self, changed: Assessment | None) -> None:
        if changed is None:
            return
        self._pending.append(changed)
        if changed.revision == 1:
            log_event(
                _log,
                f"assessment raised: {changed.title}",
                level=logging.WARNING,
                assessment=changed.name,
                rule=changed.rule_id,
                key=changed.correlation_key,
                confidence=round(changed.confidence, 3),
            )

    async def start(self) -> None:
        self._expiry = asyncio.create_task(self._expire_loop(), name="cortex:correlation-expiry")

    async def _expire_loop(self) -> None:
        interval = self.section.expire_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)
            try:
                await self.call(self._expire)
            except Exception as exc:
                self.failures += 1
                log_event(_log, "expiring correlations failed", level=logging.ERROR, exc_info=exc)

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            await asyncio.gather(self._expiry, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def reload(self, rules: Sequence[Path]) -> None:
        """Load `rules` (empty: the defaults) and correlate with them from now on; open
        correlation windows start afresh, assessments and learned weights stay. A file that
        does not load raises CorrelationRuleError and changes nothing."""
        ruleset = await asyncio.to_thread(load_files, list(rules) or None)

        def swap() -> None:
            self.ruleset = ruleset
            self.engine = Correlator(ruleset, max_keys=self.section.max_keys)

        await self.call(swap)


def load_stored(book: AssessmentBook, events: Sequence[event_pb2.Event]) -> int:
    """Stored records back into `book`, in store order: each assessment revision (the latest of
    each id wins), and a model reset marker forgets the verdicts before it. Returns how many
    revisions were read."""
    loaded = 0
    for event in events:
        if records.is_reset(event):
            book.forget_verdicts(event.time.ToNanoseconds())
            continue
        assessment = records.from_event(event)
        if assessment is not None:
            book.load(assessment)
            loaded += 1
    return loaded


def stored_book(store: ReadableStore, section: CorrelationSection) -> AssessmentBook:
    """The book and verdict model a Cortex with `section` starts with on `store` (what
    `restore` rebuilds before replaying events), for the tools beside it (`qsc-cortex model
    show`): every stored record read back, then the verdicts since the latest reset taught."""
    book = AssessmentBook(VerdictModel(), max_assessments=section.max_assessments)
    where = parse(records.STORED).to_sql(store.blind)
    after: Position | None = None
    while True:
        page = store.query(where, after=after, limit=MAX_LIMIT)
        load_stored(book, page.events)
        if page.next is None:
            break
        after = page.next
    book.learn_from_verdicts()
    return book
