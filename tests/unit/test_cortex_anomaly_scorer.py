"""The anomaly scorer's core without a network: its circuit breaker, batching by schema, the
events it stores, and what it counts when the ML service fails (the real service is in
tests/integration/test_cortex_anomaly_scoring.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from cortex.anomaly import SCORE_RULE, AnomalyScorer
from cortex.anomaly_client import RowResult, ScoreResult
from cortex.breaker import CircuitBreaker
from cortex.config import MlSection
from cortex.errors import AnomalyServiceError
from qsc.common.v1 import classification_pb2, event_pb2


def test_the_breaker_opens_after_failures_in_a_row_and_a_trial_decides() -> None:
    now = [0]
    b = CircuitBreaker(2, 100, clock=lambda: now[0])
    assert b.allow()
    assert not b.failed()  # one failure: still closed
    assert b.allow()
    assert b.failed()  # the second opens it
    assert b.is_open
    assert not b.allow()
    now[0] = 100
    assert b.allow()  # half open: one trial
    assert not b.failed()  # the trial failed: open again, for as long
    assert not b.allow()
    now[0] = 250
    assert b.allow()
    assert b.succeeded()  # closes it
    assert not b.is_open
    assert not b.succeeded()


class FakeScorer:
    """Scores the first feature: a value over 50 is anomalous; fails while `down`."""

    def __init__(self) -> None:
        self.down = False
        self.calls: list[tuple[int, tuple[str, ...], int]] = []

    async def score(
        self,
        schema_version: int,
        feature_names: Sequence[str],
        rows: Sequence[tuple[str, Sequence[float]]],
    ) -> ScoreResult:
        self.calls.append((schema_version, tuple(feature_names), len(rows)))
        if self.down:
            raise AnomalyServiceError("UNAVAILABLE", "connection refused")
        return ScoreResult(
            "m1",
            -0.5,
            tuple(
                RowResult(key, -v[0] / 100, min(1.0, v[0] / 100), v[0] > 50, ()) for key, v in rows
            ),
        )


def window(guardian: str, first: float, names: tuple[str, ...] = ("cpu", "mem")) -> event_pb2.Event:
    e = event_pb2.Event(id=f"{guardian}-{first}")
    e.guardian.id = guardian
    e.guardian.host = guardian.removeprefix("alpha-")
    t = e.host_telemetry
    t.feature_schema_version = 1
    for i, name in enumerate(names):
        t.features.add(name=name, value=first if i == 0 else 1.0)
    return e


def run_scorer(scorer: AnomalyScorer, batch: Sequence[event_pb2.Event]) -> None:
    scorer.observe(batch)
    asyncio.run(scorer.score_batch([scorer._queue.popleft() for _ in range(len(scorer._queue))]))


def make(client: FakeScorer, stored: list[event_pb2.Event]) -> AnomalyScorer:
    async def record(events: Sequence[event_pb2.Event]) -> None:
        stored.extend(events)

    return AnomalyScorer(
        MlSection(address="ml:1", failures_to_open=1), client, record=record, stamp=lambda e: e
    )


def test_windows_become_scores_per_host_grouped_by_schema() -> None:
    client, stored = FakeScorer(), list[event_pb2.Event]()
    scorer = make(client, stored)
    other = event_pb2.Event(id="x")  # not a window: ignored
    run_scorer(
        scorer,
        [window("alpha-a", 10), window("alpha-b", 80), other, window("alpha-c", 5, ("cpu",))],
    )
    assert sorted(c[2] for c in client.calls) == [1, 2]  # two schemas, two calls
    by_host = {e.anomaly_score.host: e for e in stored}
    assert set(by_host) == {"a", "b", "c"}
    assert all(e.rule.id == SCORE_RULE for e in stored)
    assert by_host["a"].severity == classification_pb2.SEVERITY_INFO
    assert by_host["b"].severity == classification_pb2.SEVERITY_MEDIUM
    assert by_host["b"].anomaly_score.is_anomaly
    assert by_host["b"].labels["guardian.host"] == "b"
    assert by_host["b"].labels["window.event"] == "alpha-b-80"
    status = scorer.status("alpha-b")
    assert status.state == "up"
    assert status.counts.scored == 1
    assert status.counts.model_version == "m1"


def test_ml_down_counts_windows_unscored_and_stores_one_event_per_outage() -> None:
    client, stored = FakeScorer(), list[event_pb2.Event]()
    scorer = make(client, stored)
    client.down = True
    run_scorer(scorer, [window("alpha-a", 10)])
    run_scorer(scorer, [window("alpha-a", 20)])  # the breaker is open: no call made
    assert len(client.calls) == 1
    assert [e.rule.id for e in stored] == ["cortex.ml_unavailable"]
    status = scorer.status("alpha-a")
    assert status.state == "down"
    assert "connection refused" in status.last_error
    assert status.counts.unscored == 2
    assert scorer.status("alpha-unknown").counts.scored == 0


def test_a_full_queue_counts_windows_unscored() -> None:
    client = FakeScorer()
    section = MlSection(address="ml:1", max_batch_windows=1, max_pending_windows=2)
    scorer = AnomalyScorer(section, client, record=lambda e: asyncio.sleep(0), stamp=lambda e: e)
    scorer.observe([window("alpha-a", i) for i in range(5)])
    assert len(scorer._queue) == 2
    assert scorer.status("alpha-a").counts.unscored == 3
