"""Host windows scored by the ML service: Alpha's telemetry in, the Cortex's anomaly events out.

    scorer = AnomalyScorer(section, client, record=ingest.record, stamp=ingest.stamp)
    scorer.observe(events)            # every stored batch: its host_telemetry windows queued
    await scorer.start() / stop()
    scorer.status("alpha-web-01")     # what ListGuardians shows under `anomaly_scoring`

Each `host_telemetry` window a guardian sends is stored first (ingest), then queued here; one
task takes up to `max_batch_windows` at a time, after `batch_delay` to let a batch fill, and
scores them in one `AnomalyService/Score` call on one reused channel. Every scored window
becomes one of the Cortex's own events (detail `anomaly_score`, rule `cortex.anomaly_score`,
labels naming the guardian and host it is about, so correlation keys by `subject.host` join it
with that host's alerts): INFO when normal, MEDIUM (HIGH at confidence >= 0.9) when anomalous.

The ML service may be down. A circuit breaker opens after `failures_to_open` failed calls in a
row: for `open_for` no call is made, then one trial batch decides. Windows that cannot be
scored stay in the store unscored (`qsc-cortex export-windows` still has them) and are counted;
correlation goes on without the anomaly factor. The breaker's opening and closing are stored as
`cortex.ml_unavailable` / `cortex.ml_restored` events, and `status` says DOWN with the error.
A full queue (`max_pending_windows`) counts windows unscored rather than grow without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from cortex.anomaly_client import ScoreResult
from cortex.breaker import CircuitBreaker
from cortex.config import MlSection
from cortex.errors import AnomalyServiceError
from mesh.logs import log_event
from qsc.common.v1 import classification_pb2, event_pb2, identity_pb2

__all__ = ["SCORE_RULE", "AnomalyScorer", "GuardianScoring", "ScoringStatus"]

_log = logging.getLogger("qsc.cortex.anomaly")

SCORE_RULE: Final = "cortex.anomaly_score"
ML_UNAVAILABLE: Final = "cortex.ml_unavailable"
ML_RESTORED: Final = "cortex.ml_restored"
_RULE_NAMES: Final = {
    SCORE_RULE: "Host window scored by the anomaly model",
    ML_UNAVAILABLE: "ML service unavailable: host windows are not scored",
    ML_RESTORED: "ML service available again",
}
HIGH_CONFIDENCE: Final = 0.9
TELEMETRY: Final = "host_telemetry"

State = Literal["off", "up", "down"]


class Scorer(Protocol):
    async def score(
        self,
        schema_version: int,
        feature_names: Sequence[str],
        rows: Sequence[tuple[str, Sequence[float]]],
    ) -> ScoreResult: ...


@dataclass
class GuardianScoring:
    scored: int = 0
    unscored: int = 0
    last_score_ns: int = 0
    model_version: str = ""


@dataclass(frozen=True)
class ScoringStatus:
    state: State
    last_error: str
    counts: GuardianScoring = field(default_factory=GuardianScoring)


@dataclass(frozen=True)
class _Window:
    guardian_id: str
    guardian_host: str
    guardian_role: int
    event_id: str
    window: event_pb2.Event


class AnomalyScorer:
    def __init__(
        self,
        section: MlSection,
        client: Scorer,
        *,
        record: Callable[[Sequence[event_pb2.Event]], Awaitable[None]],
        stamp: Callable[[event_pb2.Event], event_pb2.Event],
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.section = section
        self._client = client
        self._record = record
        self._stamp = stamp
        self._clock = clock
        self.breaker = CircuitBreaker(
            section.failures_to_open, int(section.open_for.total_seconds() * 1e9)
        )
        self._queue: deque[_Window] = deque()
        self._ready = asyncio.Event()
        self._per_guardian: dict[str, GuardianScoring] = {}
        self._state: State = "up"
        self._last_error = ""
        self._task: asyncio.Task[None] | None = None
        self.calls = 0

    # -- what the API shows ----------------------------------------------------------------

    def status(self, guardian_id: str) -> ScoringStatus:
        counts = self._per_guardian.get(guardian_id, GuardianScoring())
        return ScoringStatus(self._state, self._last_error, counts)

    def _counts(self, guardian_id: str) -> GuardianScoring:
        return self._per_guardian.setdefault(guardian_id, GuardianScoring())

    # -- in --------------------------------------------------------------------------------

    def observe(self, events: Sequence[event_pb2.Event]) -> None:
        """Queue the host windows among `events` (a stored batch of one guardian)."""
        for event in events:
            if event.WhichOneof("detail") != TELEMETRY:
                continue
            if len(self._queue) >= self.section.max_pending_windows:
                self._counts(event.guardian.id).unscored += 1
                continue
            self._queue.append(
                _Window(
                    event.guardian.id, event.guardian.host, event.guardian.role, event.id, event
                )
            )
            self._ready.set()

    # -- the scoring task ------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cortex:anomaly-scoring")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            await asyncio.sleep(self.section.batch_delay.total_seconds())
            batch = [
                self._queue.popleft()
                for _ in range(min(len(self._queue), self.section.max_batch_windows))
            ]
            if not self._queue:
                self._ready.clear()
            try:
                await self.score_batch(batch)
            except Exception as exc:  # storing failed (the store is down): loud, go on
                log_event(_log, "storing anomaly scores failed", level=logging.ERROR, exc_info=exc)

    async def score_batch(self, batch: Sequence[_Window]) -> None:
        """Score `batch` (grouped by feature schema) and store what comes of it."""
        if not batch:
            return
        if not self.breaker.allow():
            for w in batch:
                self._counts(w.guardian_id).unscored += 1
            return
        groups: dict[tuple[int, tuple[str, ...]], list[_Window]] = {}
        for w in batch:
            t = w.window.host_telemetry
            names = tuple(f.name for f in t.features)
            groups.setdefault((t.feature_schema_version, names), []).append(w)
        out: list[event_pb2.Event] = []
        for (version, names), windows in groups.items():
            rows = [
                (w.event_id, [f.value for f in w.window.host_telemetry.features]) for w in windows
            ]
            self.calls += 1
            try:
                result = await self._client.score(version, names, rows)
            except AnomalyServiceError as exc:
                for w in windows:
                    self._counts(w.guardian_id).unscored += 1
                self._state, self._last_error = "down", str(exc)
                if self.breaker.failed():
                    log_event(_log, "ML service unavailable", level=logging.ERROR, error=str(exc))
                    out.append(self._service_event(ML_UNAVAILABLE, str(exc)))
                continue
            if self.breaker.succeeded():
                log_event(_log, "ML service available again")
                out.append(self._service_event(ML_RESTORED, ""))
            self._state, self._last_error = "up", ""
            now = self._clock()
            for w, row in zip(windows, result.rows, strict=True):
                counts = self._counts(w.guardian_id)
                counts.scored += 1
                counts.last_score_ns = now
                counts.model_version = result.model_version
                out.append(self._score_event(w, row.score, row.confidence, row.is_anomaly, result))
        if out:
            await self._record(out)

    # -- the Cortex's own events -----------------------------------------------------------

    def _score_event(
        self,
        w: _Window,
        score: float,
        confidence: float,
        is_anomaly: bool,
        result: ScoreResult,
    ) -> event_pb2.Event:
        t = w.window.host_telemetry
        host = t.host or w.guardian_host
        if not is_anomaly:
            severity = classification_pb2.SEVERITY_INFO
        elif confidence >= HIGH_CONFIDENCE:
            severity = classification_pb2.SEVERITY_HIGH
        else:
            severity = classification_pb2.SEVERITY_MEDIUM
        verdict = "anomalous" if is_anomaly else "normal"
        event = event_pb2.Event(
            severity=severity,
            category=classification_pb2.CATEGORY_ANOMALY,
            rule=classification_pb2.RuleRef(id=SCORE_RULE, name=_RULE_NAMES[SCORE_RULE]),
            summary=f"host {host}: window {verdict} (score {score:.3f}, confidence "
            f"{confidence:.2f}, model {result.model_version[:12]})",
            labels={
                "guardian.id": w.guardian_id,
                "guardian.host": w.guardian_host,
                "guardian.role": _role_name(w.guardian_role),
                "window.event": w.event_id,
            },
        )
        a = event.anomaly_score
        a.host = host
        a.window_start.CopyFrom(t.window_start)
        a.window_end.CopyFrom(t.window_end)
        a.score = score
        a.confidence = confidence
        a.is_anomaly = is_anomaly
        a.threshold = result.threshold
        a.model_version = result.model_version
        a.feature_schema_version = t.feature_schema_version
        a.features.extend(t.features)
        return self._stamp(event)

    def _service_event(self, rule: str, error: str) -> event_pb2.Event:
        event = event_pb2.Event(
            severity=classification_pb2.SEVERITY_MEDIUM
            if rule == ML_UNAVAILABLE
            else classification_pb2.SEVERITY_INFO,
            category=classification_pb2.CATEGORY_SYSTEM,
            rule=classification_pb2.RuleRef(id=rule, name=_RULE_NAMES[rule]),
            summary=_RULE_NAMES[rule] + (f": {error}" if error else ""),
            labels={"ml.address": self.section.address, **({"error": error} if error else {})},
        )
        return self._stamp(event)


def _role_name(role: int) -> str:
    try:
        return identity_pb2.Role.Name(role).removeprefix("ROLE_").lower()  # type: ignore[arg-type]
    except ValueError:
        return ""
