"""Alpha's core: candidate events -> rules -> the guardian's outbox, with every loss counted.

    pipeline = Pipeline(engine, guardian.emit_many, losses=syscalls_handle.count_loss)
    pipeline.add_hook(scheduler.observe_batch)            # memscan on-exec / W+X triggers
    pipeline.handle_observations(batch)                   # from the sensor (one thread)
    pipeline.handle_findings(events)                      # memscan, network, auth (any thread)
    pipeline.add_observer(counter.observe)                # every event, before the rules
    pipeline.handle_measurements(events)                  # host telemetry windows, no rules
    pipeline.reload_rules()                               # SIGHUP, in a thread of its own

Per event, the highest-priority rule that fires names the event: rule (id, name, MITRE
techniques), severity, category and summary; other rules that fired are listed in the label
`also_matched`. Raw sensor events no rule matched are dropped and counted, unless
`emit_unmatched`; detector findings (memory, sockets, auth) are emitted either way, since the
detector has already judged them. Observers (alpha.telemetry's window counter) see every sensor
event and finding before the rules, matched or not. Measurements (host telemetry windows) are
the guardian's own reports: they skip the rules and are emitted as they are. Every count
(`PipelineStats`) also goes to `counts`, which alpha.counters turns into `GetStatus` entries.

Losses, by stage, go to `losses(stage, n)` (a SensorHandle's `count_loss`): observations that
cannot be converted (decode) and events the outbox refused (outbox). The sensor's own stages
(ring buffer, queue) are reported by `alpha.sources.syscalls`. A rule reload builds the new
ruleset off to the side and swaps it in (alpha.rules.engine), so no event waits and none is
lost; a failed reload keeps the old rules and says so through the `rules` sensor handle
(degraded).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final

from alpha.rules import Match, RuleEngine, RuleError
from alpha.rules.engine import KIND_CATEGORY
from alpha.sensors.convert import NO_LOOKUPS, Lookups, observation_to_event
from alpha.sensors.model import Observation
from mesh.guardian.sensors import LossStage, SensorHandle
from mesh.logs import log_event
from qsc.common.v1 import classification_pb2, event_pb2

Event = event_pb2.Event
EventSink = Callable[[list[Event]], object]  # Guardian.emit_many
LossSink = Callable[[LossStage, int], None]  # SensorHandle.count_loss
ObservationHook = Callable[[list[Observation]], object]
EventObserver = Callable[[Sequence[Event]], object]  # e.g. alpha.telemetry.WindowCounter.observe
EventSource = Callable[[list[Observation]], list[Event]]  # e.g. network scans from connects
CountSink = Callable[[Mapping[str, int]], None]  # PipelineStats field -> increment

ALSO_MATCHED_LABEL: Final = "also_matched"
log = logging.getLogger("qsc.alpha.pipeline")


def _no_losses(_stage: LossStage, _n: int) -> None:
    pass


def boot_epoch_ns() -> int:
    """Wall clock of the boot: the sensor's start times count from it (CLOCK_BOOTTIME)."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def best_match(matches: Sequence[Match]) -> Match:
    """The match that names the event: the highest severity; on a tie, the first loaded."""
    best = matches[0]
    for m in matches[1:]:
        if m.severity > best.severity:
            best = m
    return best


def annotate(candidate: Event, matches: Sequence[Match]) -> Event:
    """The candidate as the best matching rule reports it; the others listed in a label."""
    best = best_match(matches)
    event = best.apply(candidate)
    others = [m.rule_id for m in matches if m is not best]
    if others:
        event.labels[ALSO_MATCHED_LABEL] = ",".join(others)
    return event


def classify_by_kind(event: Event) -> None:
    """An event no rule named: severity INFO and its kind's category, unless already set."""
    if not event.severity:
        event.severity = classification_pb2.SEVERITY_INFO
    if not event.category:
        kind = event.WhichOneof("detail") or ""
        event.category = KIND_CATEGORY.get(kind, 0)  # type: ignore[assignment]


@dataclass(frozen=True)
class PipelineStats:
    observations: int = 0  # observations handed in by the sensor
    candidates: int = 0  # events converted from them
    no_detail: int = 0  # observations without an event kind (forks, W+X maps)
    findings: int = 0  # detector findings handed in
    matched: int = 0  # events a rule fired on
    unmatched_dropped: int = 0  # raw sensor events no rule fired on, not emitted
    measurements: int = 0  # the guardian's own reports (host telemetry), emitted without rules
    emitted: int = 0
    convert_errors: int = 0  # counted as decode losses
    emit_errors: int = 0  # counted as outbox losses
    reloads: int = 0
    reload_failures: int = 0


class Pipeline:
    """Thread-safe: the sensor thread, the detectors' threads and reloads may call at once."""

    def __init__(
        self,
        engine: RuleEngine,
        emit_many: EventSink,
        *,
        emit_unmatched: bool = False,
        lookups: Lookups = NO_LOOKUPS,
        losses: LossSink = _no_losses,
        rules_health: SensorHandle | None = None,
        enrich: Callable[[Event], None] | None = None,
        boot_epoch: Callable[[], int] = boot_epoch_ns,
        counts: CountSink | None = None,
    ) -> None:
        self.engine = engine
        self._emit_many = emit_many
        self.emit_unmatched = emit_unmatched
        self.lookups = lookups
        self._losses = losses
        self._rules_health = rules_health
        self._enrich = enrich
        self._boot_epoch = boot_epoch
        self._counts = counts
        self._hooks: list[ObservationHook] = []
        self._observers: list[EventObserver] = []
        self._sources: list[EventSource] = []
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._stats = PipelineStats()
        self.rules_loaded_ns = time.time_ns()  # ListRules' load_time: start, or last reload

    # --- wiring

    def add_hook(self, hook: ObservationHook) -> None:
        """Also hand every observation batch to `hook` (e.g. memscan's on-exec trigger)."""
        self._hooks.append(hook)

    def add_observer(self, observer: EventObserver) -> None:
        """Also hand `observer` every event before the rules: each converted sensor event
        (matched or not), each derived event and each finding. It must not change them."""
        self._observers.append(observer)

    def _observe(self, events: Sequence[Event]) -> None:
        if not events:
            return
        for observer in self._observers:
            try:
                observer(events)
            except Exception:  # an observer (telemetry) must not cost the batch its events
                log.exception("event observer failed")

    def add_source(self, source: EventSource) -> None:
        """Events derived from each observation batch (e.g. scans seen in connects), which go
        through the rules like findings."""
        self._sources.append(source)

    def set_losses(self, losses: LossSink) -> None:
        self._losses = losses

    def set_enrich(self, enrich: Callable[[Event], None] | None) -> None:
        """Fill in what the converter cannot know (blocklists) before the rules see events."""
        self._enrich = enrich

    def stats(self) -> PipelineStats:
        with self._lock:
            return self._stats

    def _bump(self, **deltas: int) -> None:
        with self._lock:
            s = self._stats
            self._stats = replace(s, **{k: getattr(s, k) + v for k, v in deltas.items()})
        if self._counts is not None:
            self._counts(deltas)  # e.g. alpha.counters: the same counts in GetStatus

    # --- events

    def _rules(
        self, candidates: Iterable[Event], *, keep_unmatched: bool
    ) -> tuple[list[Event], int]:
        out: list[Event] = []
        unmatched = 0
        evaluate = self.engine.evaluate
        enrich = self._enrich
        for candidate in candidates:
            if enrich is not None:
                enrich(candidate)
            matches = evaluate(candidate)
            if matches:
                out.append(annotate(candidate, matches))
                continue
            unmatched += 1
            if keep_unmatched:
                classify_by_kind(candidate)
                out.append(candidate)
        return out, unmatched

    def handle_observations(self, batch: list[Observation]) -> int:
        """Convert, evaluate and emit one sensor batch; feed the hooks. Returns events emitted."""
        if not batch:
            return 0
        for hook in self._hooks:
            try:
                hook(batch)
            except Exception:  # a hook (memscan) must not cost the batch its events
                log.exception("observation hook failed")
        epoch = self._boot_epoch()
        candidates: list[Event] = []
        no_detail = errors = 0
        for obs in batch:
            try:
                event = observation_to_event(obs, epoch, self.lookups)
            except Exception:  # one odd observation must not cost the batch: counted
                if not errors:
                    log.exception("cannot convert a %s observation", obs.kind)
                errors += 1
                continue
            if event is None:
                no_detail += 1
            else:
                candidates.append(event)
        if errors:
            self._losses(LossStage.DECODE, errors)
        self._observe(candidates)
        events, unmatched = self._rules(candidates, keep_unmatched=self.emit_unmatched)
        derived: list[Event] = []
        for source in self._sources:
            try:
                derived.extend(source(batch))
            except Exception:
                log.exception("event source failed")
        self._observe(derived)
        found, _ = self._rules(derived, keep_unmatched=True)
        matched = len(events) - (unmatched if self.emit_unmatched else 0)
        self._bump(
            observations=len(batch),
            candidates=len(candidates),
            no_detail=no_detail,
            findings=len(derived),
            convert_errors=errors,
            matched=matched,
            unmatched_dropped=0 if self.emit_unmatched else unmatched,
        )
        return self._emit(events + found)

    def handle_findings(self, events: list[Event]) -> int:
        """Evaluate and emit detector findings (always emitted, with a rule when one fires)."""
        if not events:
            return 0
        self._observe(events)
        out, unmatched = self._rules(events, keep_unmatched=True)
        self._bump(findings=len(events), matched=len(out) - unmatched)
        return self._emit(out)

    def handle_measurements(self, events: list[Event]) -> int:
        """Emit the guardian's own measurements (host telemetry windows) without the rules or
        the observers: INFO and the kind's category unless set. Returns events emitted."""
        if not events:
            return 0
        for event in events:
            classify_by_kind(event)
        self._bump(measurements=len(events))
        return self._emit(events)

    def _emit(self, events: list[Event]) -> int:
        if not events:
            return 0
        try:
            self._emit_many(events)
            self._bump(emitted=len(events))
            return len(events)
        except Exception:
            log.exception("emitting %d events failed; retrying one by one", len(events))
        # One bad event (too large for a message) must not take its batch with it.
        done = 0
        for event in events:
            try:
                self._emit_many([event])
                done += 1
            except Exception:
                self._losses(LossStage.OUTBOX, 1)
                self._bump(emit_errors=1)
        self._bump(emitted=done)
        return done

    # --- rules

    def reload_rules(self) -> bool:
        """Load the rule files again and switch to them (SIGHUP). On failure the old rules stay
        and the `rules` sensor reports degraded with the reason; a later good reload clears it."""
        with self._reload_lock:
            old = self.engine.ruleset.version
            try:
                ruleset = self.engine.reload()
            except RuleError as err:
                self._bump(reload_failures=1)
                reason = f"rules reload failed, keeping version {old}: {err}"
                log_event(log, "rules reload failed", level=logging.ERROR, error=str(err))
                if self._rules_health is not None:
                    self._rules_health.degraded(reason, mode="yaml")
                return False
            self._bump(reloads=1)
            self.rules_loaded_ns = time.time_ns()
            log_event(
                log,
                "rules reloaded",
                version=ruleset.version,
                rules=len(ruleset.enabled_rules),
            )
            if self._rules_health is not None:
                self._rules_health.healthy(mode="yaml")
            return True
