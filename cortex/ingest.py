"""`Ingest`: every configured guardian into the event store, exactly once, and silence as events.

    ingest = Ingest(store, config.guardians, config.ingest, tls=config.server.tls,
                    own=OwnIdentity.of(identity))
    await ingest.start()          # one FanIn over the guardians, plus the watch task
    ingest.tracker.guardians()    # -> GuardianView per guardian (the API's GuardianDirectory)
    ingest.reload(new_guardians)  # SIGHUP: follow the new list (cursors stay in the store)
    await ingest.stop()

Guarantees and the decisions behind them:

* **Exactly once by (guardian id, seq).** One `mesh.stream.fanin.FanIn` with a sealed
  `GuardianSubscriber` per guardian (`consumer_commits=True`, resuming from the store's cursor
  through `cortex.store.StoreCursorStore`). The consumer stores a batch and its cursor with one
  `append_batch` call (one transaction, in a worker thread): a crash at any instant leaves both
  or neither, and the store skips a (guardian id, seq) it already holds.
* **A guardian stores only under its own id.** Events whose `guardian.id` is not the configured
  id are refused before anything is stored: that guardian becomes REFUSED and the fan-in is
  rebuilt without it (the batch was not accepted, so nothing is lost), until a reload changes
  its entry. Identity and policy refusals of the subscriber are REFUSED too (never retried).
* **Silence is a signal.** The watch task looks at every guardian each `watch_interval`; one
  without contact (batch or live stream, which carries heartbeats) for longer than
  `silence_deadline` makes the Cortex store `cortex.guardian_lost`, once per silence. A gap
  event stored from a guardian makes it store `cortex.guardian_gap`, a sensor turning degraded
  or failed `cortex.sensor_degraded`. Lost and degraded carry MITRE T1562.001 (Impair Defenses:
  Disable or Modify Tools), what an intruder silencing a guardian does; a gap is usually a disk
  budget, so it carries none.
* **The Cortex's own events** are stored in the same store under the guardian id
  `cortex-<host>` (role CORTEX, its own SPIFFE ID as the cursor's owner), with their own gapless
  seq: the store's cursor for that id is the last seq used, committed in the transaction that
  stores the event, so numbering resumes after a restart. A finding is stored in its own
  transaction right after the batch that showed it: a crash in between loses the finding, never
  the guardian's gap or sensor event it is derived from.
* **A store failure stops ingest** (the fan-in stops on a consumer error; the batch was not
  accepted, so a restart redelivers it): `Ingest.failure` holds it, logged at ERROR.

This module builds `qsc.common.v1.Event`s for the Cortex's own findings, as a guardian's
sources do; everything else in it works on plain values.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from cortex.config import GuardianSection, IngestSection
from cortex.errors import GuardianMismatchError
from cortex.guardian_view import GuardianView
from cortex.guardians import GapFinding, GuardianTracker, SensorFinding
from cortex.store import StoreCursorStore
from cortex.store.runs import NewRun
from crypto.pki import Identity
from mesh.channel import ChannelConfig, open_channel
from mesh.identity import TlsFiles
from mesh.ids import uuid7
from mesh.logs import log_event
from mesh.stream.cursor import StoredCursor
from mesh.stream.fanin import ConsumerError, FanIn, FanInFailedError, FanInSource
from mesh.stream.subscriber import (
    DeliveredBatch,
    Dialer,
    ReconnectPolicy,
    SubscriberConfig,
)
from qsc.common.v1 import classification_pb2, event_pb2, identity_pb2

__all__ = [
    "GUARDIAN_GAP",
    "GUARDIAN_LOST",
    "SENSOR_DEGRADED",
    "Ingest",
    "IngestStore",
    "OwnIdentity",
]

_log = logging.getLogger(__name__)

CORTEX_RULE_PREFIX: Final = "cortex."  # the rule ids of the Cortex's own events
GUARDIAN_LOST: Final = "cortex.guardian_lost"
GUARDIAN_GAP: Final = "cortex.guardian_gap"
SENSOR_DEGRADED: Final = "cortex.sensor_degraded"
_IMPAIR_DEFENSES: Final = ("T1562.001", "Impair Defenses: Disable or Modify Tools")
_RULE_NAMES: Final = {
    GUARDIAN_LOST: "Guardian went silent",
    GUARDIAN_GAP: "Guardian reported lost events",
    SENSOR_DEGRADED: "Guardian sensor degraded or failed",
}


class IngestStore(Protocol):
    """What ingest needs of an event store (`cortex.store.SqliteEventStore` is one)."""

    def append_batch(
        self,
        guardian_id: str,
        events: Sequence[event_pb2.Event],
        cursor: StoredCursor | None,
        *,
        new_runs: Sequence[NewRun] = (),
    ) -> int: ...

    def cursor(self, guardian_id: str) -> StoredCursor | None: ...

    def commit_cursor(self, guardian_id: str, cursor: StoredCursor) -> None: ...


@dataclass(frozen=True)
class OwnIdentity:
    """Who the Cortex's own events are from."""

    guardian_id: str  # `cortex-<host>`
    host: str
    spiffe_id: str

    @classmethod
    def of(cls, identity: Identity) -> OwnIdentity:
        return cls(f"cortex-{identity.host}", identity.host, identity.spiffe_id)


class Ingest:
    """Follows the configured guardians into the store; see the module docstring."""

    def __init__(
        self,
        store: IngestStore,
        guardians: Sequence[GuardianSection],
        settings: IngestSection,
        *,
        tls: TlsFiles,
        own: OwnIdentity,
        dial: Dialer = open_channel,
        clock: Callable[[], int] = time.time_ns,
        on_stored: Callable[[Sequence[event_pb2.Event]], Awaitable[None]] | None = None,
        on_recorded: Callable[[Sequence[event_pb2.Event]], None] | None = None,
    ) -> None:
        self.store = store
        # Given every batch once it is committed (the correlation runtime), in store order.
        self._on_stored = on_stored
        # Given the Cortex's own events as each commit ends, under the numbering lock, so in
        # seq order (the assessment change log).
        self._on_recorded = on_recorded
        self.settings = settings
        self.own = own
        self.tracker = GuardianTracker(guardians, clock=clock)
        self._guardians = tuple(guardians)
        self._tls = tls
        self._dial = dial
        self._clock = clock
        self._own_seq = 0
        self._prepared = False
        self._own_lock = asyncio.Lock()
        self._reloaded = asyncio.Event()
        self._stopping = False
        self._fanin: FanIn | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None
        self._check_ids(guardians)

    def _check_ids(self, guardians: Sequence[GuardianSection]) -> None:
        for g in guardians:
            if g.id == self.own.guardian_id:
                raise GuardianMismatchError(g.id, "is the id of the Cortex's own events")

    @property
    def own_seq(self) -> int:
        """The seq of the Cortex's latest own event (0: none yet)."""
        return self._own_seq

    # -- lifecycle -------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Read where the Cortex's own numbering stands, so `record` may run before `start`."""
        stored = await asyncio.to_thread(self.store.cursor, self.own.guardian_id)
        self._own_seq = 0 if stored is None else stored.seq
        self._prepared = True

    async def start(self) -> None:
        if not self._prepared:
            await self.prepare()
        await asyncio.to_thread(self._seed, self._guardians)
        fanin = self._build()  # unusable TLS files fail the start, not a guardian later
        self._run_task = asyncio.create_task(self._run(fanin), name="cortex:ingest")
        self._watch_task = asyncio.create_task(self._watch(), name="cortex:watch")

    async def stop(self) -> None:
        """Stop following (the batch being stored finishes or is redelivered later). Idempotent."""
        self._stopping = True
        self._reloaded.set()
        if self._fanin is not None:
            self._fanin.stop()
        for task in (self._run_task, self._watch_task):
            if task is not None and not task.done():
                if task is self._watch_task:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def reload(self, guardians: Sequence[GuardianSection]) -> None:
        """Follow `guardians` from now on (SIGHUP). Resumes every guardian from its stored
        cursor; unchanged entries keep their tracked state."""
        self._check_ids(guardians)
        self._guardians = tuple(guardians)
        self.tracker.configure(guardians)
        self._seed(guardians)
        log_event(_log, "guardian list reloaded", guardians=[g.id for g in guardians])
        self._reloaded.set()

    def _seed(self, guardians: Sequence[GuardianSection]) -> None:
        for g in guardians:
            cursor = self.store.cursor(g.id)
            if cursor is not None:
                self.tracker.seed(g.id, cursor.seq)

    # -- the fan-in ------------------------------------------------------------------------

    def _source(self, g: GuardianSection) -> FanInSource:
        s = self.settings
        config = SubscriberConfig(
            channel=ChannelConfig(g.address, self._tls, server_name_override=g.server_name),
            expected_role=g.role,
            expected_host=g.host,
            sealed=True,
            max_batch_events=s.max_batch_events,
            max_batch_delay=s.max_batch_delay,
            heartbeat_interval=s.heartbeat_interval,
            idle_timeout=s.idle_timeout,
            reconnect=ReconnectPolicy(
                initial_backoff=s.reconnect_initial, max_backoff=s.reconnect_max
            ),
        )
        return FanInSource(
            g.id,
            config,
            cursor_store=StoreCursorStore(self.store, g.id),
            consumer_commits=True,
        )

    def _build(self) -> FanIn | None:
        refused = self.tracker.refused()
        sources = [self._source(g) for g in self._guardians if g.id not in refused]
        self._reloaded.clear()
        self._fanin = FanIn(sources, self._consume, dial=self._dial) if sources else None
        return self._fanin

    async def _run(self, fanin: FanIn | None) -> None:
        try:
            await self._follow(fanin)
        except Exception as exc:  # a bug: say so loudly rather than go quiet
            self.failure = exc
            log_event(_log, "ingest stopped", level=logging.ERROR, exc_info=exc, error=str(exc))

    async def _follow(self, fanin: FanIn | None) -> None:
        while not self._stopping:
            if fanin is None:
                await self._reloaded.wait()  # nothing to follow until the list changes
            else:
                outcome = await self._run_one(fanin)
                self.tracker.observe(fanin.states())
                if outcome == "stop":
                    return
                if outcome == "wait":  # every guardian failed: until the list changes
                    await self._reloaded.wait()
            if self._stopping:
                return
            fanin = self._build()

    async def _run_one(self, fanin: FanIn) -> str:
        """Run `fanin` until it ends: "rebuild" (a reload, or a guardian the Cortex refused),
        "wait" (every guardian failed) or "stop" (stopping, or the store failed)."""
        run = asyncio.create_task(fanin.run(), name="cortex:fanin")
        reload = asyncio.create_task(self._reloaded.wait())
        try:
            await asyncio.wait({run, reload}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reload.cancel()
            if not run.done():
                fanin.stop()
        try:
            await run
        except ConsumerError as exc:
            cause = exc.__cause__
            if isinstance(cause, GuardianMismatchError) and not self._stopping:
                self.tracker.refuse(exc.source, str(cause))
                log_event(
                    _log,
                    "guardian refused: its events name another guardian id",
                    level=logging.ERROR,
                    guardian=exc.source,
                    error=str(cause),
                )
                return "rebuild"
            if self._stopping:
                return "stop"
            self.failure = exc
            log_event(_log, "ingest stopped: the store failed", level=logging.ERROR, error=str(exc))
            return "stop"
        except FanInFailedError as exc:
            log_event(_log, "every guardian failed", level=logging.ERROR, error=str(exc))
            return "stop" if self._stopping else "wait"
        return "stop" if self._stopping else "rebuild"

    async def _consume(self, name: str, batch: DeliveredBatch) -> None:
        for event in batch.events:
            if event.guardian.id != name:
                raise GuardianMismatchError(
                    name, f"sent an event of guardian id {event.guardian.id!r} (seq {event.seq})"
                )
            if _cortex_only(event):
                # Assessment records and model resets are trusted at restore: only the Cortex
                # writes them.
                raise GuardianMismatchError(
                    name, f"sent an event only the Cortex writes (seq {event.seq})"
                )
        await asyncio.to_thread(self.store.append_batch, name, batch.events, batch.cursor)
        if self._on_stored is not None and batch.events:
            await self._on_stored(batch.events)
        findings = self.tracker.on_batch(name, batch.events, batch.received_at)
        if findings:
            views = {v.guardian_id: v for v in self.tracker.guardians()}
            await self.record([self._finding_event(views[name], f) for f in findings])

    # -- silence ---------------------------------------------------------------------------

    async def _watch(self) -> None:
        interval = self.settings.watch_interval.total_seconds()
        deadline_ns = int(self.settings.silence_deadline.total_seconds() * 1e9)
        while True:
            await asyncio.sleep(interval)
            self.check()
            lost = self.tracker.silent(deadline_ns)
            if lost:
                try:
                    await self.record([self._lost_event(v, deadline_ns) for v in lost])
                except Exception as exc:  # the store is down: say so, keep watching
                    log_event(
                        _log,
                        "cannot store guardian_lost",
                        level=logging.ERROR,
                        exc_info=exc,
                        guardians=[v.guardian_id for v in lost],
                    )

    def check(self) -> None:
        """Bring the tracker up to date with the fan-in now."""
        if self._fanin is not None:
            self.tracker.observe(self._fanin.states())

    # -- the Cortex's own events -----------------------------------------------------------

    async def record(
        self,
        events: Sequence[event_pb2.Event],
        *,
        runs: Callable[[], Sequence[NewRun]] | None = None,
    ) -> None:
        """Number `events` (the Cortex's own) and store them with their cursor, in one
        transaction; the numbering moves only once they are stored. `runs` gives the playbook
        runs they trigger, stored in the same transaction (called under the numbering lock,
        so runs are planned in the order their changes are stored)."""
        if not events:
            return
        async with self._own_lock:
            seq = self._own_seq
            for event in events:
                seq += 1
                event.seq = seq
            cursor = StoredCursor(self.own.spiffe_id, seq)
            new_runs = () if runs is None else runs()
            await asyncio.to_thread(
                functools.partial(
                    self.store.append_batch,
                    self.own.guardian_id,
                    events,
                    cursor,
                    new_runs=new_runs,
                )
            )
            self._own_seq = seq
            if self._on_recorded is not None:
                self._on_recorded(events)
        if self._on_stored is not None:  # outside the lock: what it stores comes back here
            await self._on_stored(events)
        for event in events:
            log_event(
                _log,
                event.summary,
                level=logging.WARNING
                if event.severity >= classification_pb2.SEVERITY_MEDIUM
                else logging.INFO,
                rule=event.rule.id,
                guardian=event.labels.get("guardian.id", ""),
                seq=event.seq,
            )

    def _event(
        self,
        rule: str,
        subject: GuardianView,
        severity: classification_pb2.Severity.ValueType,
        summary: str,
        *,
        mitre: bool,
        labels: dict[str, str],
    ) -> event_pb2.Event:
        event = event_pb2.Event(
            severity=severity,
            category=classification_pb2.CATEGORY_SYSTEM,
            rule=classification_pb2.RuleRef(id=rule, name=_RULE_NAMES[rule]),
            summary=summary,
            labels={
                "guardian.id": subject.guardian_id,
                "guardian.role": subject.role,
                "guardian.host": subject.host,
                "guardian.address": subject.address,
                **labels,
            },
        )
        if mitre:
            tid, tname = _IMPAIR_DEFENSES
            event.rule.techniques.add(id=tid, name=tname)
        return self.stamp(event)

    def stamp(self, event: event_pb2.Event) -> event_pb2.Event:
        """Make `event` one of the Cortex's own: an id, the Cortex as its guardian, now as its
        time (`record` numbers it)."""
        now = self._clock()
        event.id = uuid7(now / 1e9)
        event.guardian.CopyFrom(
            identity_pb2.GuardianRef(
                id=self.own.guardian_id, role=identity_pb2.ROLE_CORTEX, host=self.own.host
            )
        )
        event.time.FromNanoseconds(now)
        event.observed_time.FromNanoseconds(now)
        return event

    def _lost_event(self, view: GuardianView, deadline_ns: int) -> event_pb2.Event:
        last = view.last_contact_ns
        silent_s = deadline_ns / 1e9 if last is None else (self._clock() - last) / 1e9
        what = "never answered" if last is None else f"silent for {silent_s:.1f}s"
        return self._event(
            GUARDIAN_LOST,
            view,
            classification_pb2.SEVERITY_HIGH,
            f"guardian {view.guardian_id} ({view.host}) {what}, past the deadline of "
            f"{deadline_ns / 1e9:g}s: {view.state.name.lower()}"
            + (f": {view.last_error}" if view.last_error else ""),
            mitre=True,
            labels={
                "state": view.state.name.lower(),
                "committed_seq": str(view.committed_seq),
                "last_contact_ns": "" if last is None else str(last),
            },
        )

    def _finding_event(
        self, view: GuardianView, finding: GapFinding | SensorFinding
    ) -> event_pb2.Event:
        if isinstance(finding, GapFinding):
            return self._event(
                GUARDIAN_GAP,
                view,
                classification_pb2.SEVERITY_MEDIUM,
                f"guardian {view.guardian_id} ({view.host}) lost {finding.count} events "
                f"(seq {finding.first_seq}-{finding.last_seq}, {finding.reason})",
                mitre=False,
                labels={
                    "gap.first_seq": str(finding.first_seq),
                    "gap.last_seq": str(finding.last_seq),
                    "gap.count": str(finding.count),
                    "gap.reason": finding.reason,
                    "source_seq": str(finding.seq),
                },
            )
        return self._event(
            SENSOR_DEGRADED,
            view,
            classification_pb2.SEVERITY_HIGH
            if finding.state == "failed"
            else classification_pb2.SEVERITY_MEDIUM,
            f"guardian {view.guardian_id} ({view.host}) sensor {finding.sensor} {finding.state}"
            + (f": {'; '.join(finding.reasons)}" if finding.reasons else ""),
            mitre=True,
            labels={
                "sensor": finding.sensor,
                "sensor.state": finding.state,
                "source_seq": str(finding.seq),
            },
        )


def _cortex_only(event: event_pb2.Event) -> bool:
    return (
        event.guardian.role == identity_pb2.ROLE_CORTEX
        or event.WhichOneof("detail") == "assessment_change"
        or event.rule.id.startswith(CORTEX_RULE_PREFIX)
    )
