"""The Cortex's Prometheus families (`[metrics]`, served by mesh.metrics.MetricsExporter).

Most read counters the Cortex keeps anyway, at scrape time: the guardian tracker (per guardian
lag, cursor, connection state, reported losses), the playbook runner's `RunnerStats`, the
anomaly scorer's per-guardian counts and the correlation runtime's failures. Two are counted
here because nothing else counts them: events stored per guardian (`IngestCounts.stored`, from
the ingest's on-stored hook) and assessment changes per rule and state (`IngestCounts.changed`).

The scrape runs on the exporter's thread while the event loop mutates what it reads; every read
copies a builtin dict or tuple first (atomic under the GIL) and tolerates a value one batch old.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cortex.guardian_view import ConnectionState

if TYPE_CHECKING:
    from cortex.app import Cortex
    from cortex.assessments import Assessment
    from qsc.common.v1 import event_pb2

__all__ = ["CortexCollector", "IngestCounts"]

_STATES: Final = tuple(s.name.lower() for s in ConnectionState)


class IngestCounts:
    """What the Cortex counts itself: stored events per guardian, assessment changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stored: dict[str, int] = {}
        self._changes: dict[tuple[str, str, str], int] = {}

    def stored(self, events: Sequence[event_pb2.Event]) -> None:
        tally: dict[str, int] = {}
        for event in events:
            tally[event.guardian.id] = tally.get(event.guardian.id, 0) + 1
        with self._lock:
            for gid, n in tally.items():
                self._stored[gid] = self._stored.get(gid, 0) + n

    def changed(self, changes: Iterable[Assessment]) -> None:
        with self._lock:
            for a in changes:
                key = (a.rule_id, str(a.state), a.severity)
                self._changes[key] = self._changes.get(key, 0) + 1

    def snapshot(self) -> tuple[dict[str, int], dict[tuple[str, str, str], int]]:
        with self._lock:
            return dict(self._stored), dict(self._changes)


class CortexCollector(Collector):
    def __init__(self, cortex: Cortex, counts: IngestCounts) -> None:
        self._cortex = cortex
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        yield from self._ingest()
        yield from self._guardians()
        yield from self._correlation()
        yield from self._playbooks()
        yield from self._scoring()

    def _ingest(self) -> Iterator[Metric]:
        stored, changes = self._counts.snapshot()
        family = CounterMetricFamily(
            "qsc_cortex_ingested_events",
            "Guardian events stored (exactly once by guardian and seq) since start.",
            labels=["guardian"],
        )
        for gid, n in sorted(stored.items()):
            family.add_metric([gid], n)
        yield family
        assessed = CounterMetricFamily(
            "qsc_cortex_assessment_changes",
            "Assessment changes stored (created, updated, closed, judged), by rule, state and "
            "severity.",
            labels=["rule", "state", "severity"],
        )
        for (rule, state, severity), n in sorted(changes.items()):
            assessed.add_metric([rule, state, severity], n)
        yield assessed

    def _guardians(self) -> Iterator[Metric]:
        views = self._cortex.ingest.tracker.guardians()
        lag_events = GaugeMetricFamily(
            "qsc_cortex_guardian_lag_events",
            "Events the guardian reported beyond what the Cortex has committed.",
            labels=["guardian"],
        )
        lag_seconds = GaugeMetricFamily(
            "qsc_cortex_guardian_lag_seconds",
            "Upper bound on the age of the oldest event not yet committed (0: caught up).",
            labels=["guardian"],
        )
        committed = GaugeMetricFamily(
            "qsc_cortex_guardian_committed_seq",
            "The guardian's last committed sequence number.",
            labels=["guardian"],
        )
        state = GaugeMetricFamily(
            "qsc_cortex_guardian_connection_state",
            "1 for the subscription's current state (connecting, connected, disconnected, "
            "refused), else 0.",
            labels=["guardian", "state"],
        )
        lost = CounterMetricFamily(
            "qsc_cortex_guardian_reported_lost_events",
            "Events the guardian's gap events reported lost, as stored since start.",
            labels=["guardian"],
        )
        degraded = GaugeMetricFamily(
            "qsc_cortex_guardian_degraded_sensors",
            "Sensors of the guardian reported degraded or failed.",
            labels=["guardian"],
        )
        for v in views:
            gid = v.guardian_id
            lag_events.add_metric([gid], v.lag_events)
            lag_seconds.add_metric([gid], v.lag_ns / 1e9)
            committed.add_metric([gid], v.committed_seq)
            for name in _STATES:
                state.add_metric([gid, name], 1 if v.state.name.lower() == name else 0)
            lost.add_metric([gid], v.events_lost)
            degraded.add_metric([gid], len(v.degraded_sensors))
        yield from (lag_events, lag_seconds, committed, state, lost, degraded)

    def _correlation(self) -> Iterator[Metric]:
        runtime = self._cortex.correlation
        yield GaugeMetricFamily(
            "qsc_cortex_correlation_enabled", "1 when correlation runs.", value=runtime is not None
        )
        yield CounterMetricFamily(
            "qsc_cortex_correlation_failures",
            "Stored batches whose correlation raised (logged; ingest went on).",
            value=0 if runtime is None else runtime.failures,
        )

    def _playbooks(self) -> Iterator[Metric]:
        playbooks = self._cortex.playbooks
        deliveries = CounterMetricFamily(
            "qsc_cortex_playbook_deliveries",
            "Playbook step deliveries by outcome (delivered, retried, dead_letter, postponed).",
            labels=["outcome"],
        )
        attempts = CounterMetricFamily(
            "qsc_cortex_playbook_attempts", "Playbook delivery attempts (webhooks, actions)."
        )
        if playbooks is not None:
            stats = playbooks.runner.stats
            for outcome, n in (
                ("delivered", stats.delivered),
                ("retried", stats.retried),
                ("dead_letter", stats.dead_letters),
                ("postponed", stats.postponed),
            ):
                deliveries.add_metric([outcome], n)
            attempts.add_metric([], stats.attempts)
        yield deliveries
        yield attempts

    def _scoring(self) -> Iterator[Metric]:
        scorer = self._cortex.scorer
        windows = CounterMetricFamily(
            "qsc_cortex_anomaly_windows",
            "Host telemetry windows sent to the ML service, by outcome (scored, unscored).",
            labels=["guardian", "outcome"],
        )
        calls = CounterMetricFamily(
            "qsc_cortex_anomaly_score_calls", "Score calls to the ML service."
        )
        up = GaugeMetricFamily(
            "qsc_cortex_anomaly_scoring_up",
            "1 while the ML service answers (circuit closed), 0 while down or off.",
        )
        if scorer is not None:
            for gid in self._cortex.ingest.tracker.ids():
                counts = scorer.status(gid).counts
                windows.add_metric([gid, "scored"], counts.scored)
                windows.add_metric([gid, "unscored"], counts.unscored)
            calls.add_metric([], scorer.calls)
            up.add_metric([], 1 if scorer.status("").state == "up" else 0)
        else:
            up.add_metric([], 0)
        yield windows
        yield calls
        yield up
