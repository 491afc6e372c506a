"""`cortex.guardians.GuardianTracker`: fan-in states and stored batches into GuardianViews."""

from __future__ import annotations

import dataclasses

import grpc

from cortex.config import GuardianSection
from cortex.guardian_view import ConnectionState, GuardianView
from cortex.guardians import GapFinding, GuardianTracker, SensorFinding
from mesh.stream.fanin import GuardianPhase, GuardianState
from mesh.stream.subscriber import GuardianIdentityError, SubscriptionRefusedError
from qsc.common.v1 import event_pb2, pipeline_details_pb2

S = 1_000_000_000
WEB = GuardianSection(id="alpha-web-01", address="web-01:7443", role="alpha", host="web-01")
DB = GuardianSection(id="beta-db-01", address="db-01:7444", role="beta", host="db-01")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * S

    def __call__(self) -> int:
        return self.now


def state(name: str, phase: GuardianPhase, **kw: object) -> GuardianState:
    values: dict[str, object] = {
        "name": name,
        "target": "t:1",
        "phase": phase,
        "guardian": f"spiffe://td/alpha/{name}",
        "cursor": 0,
        "latest_seq": 0,
        "batches": 0,
        "events": 0,
        "received_batches": 0,
        "connects": 0,
        "reconnects": 0,
        "last_error": "",
        "last_batch_at": None,
        "error": None,
    }
    values.update(kw)
    return GuardianState(**values)  # type: ignore[arg-type]


def gap(seq: int, first: int, last: int) -> event_pb2.Event:
    event = event_pb2.Event(seq=seq)
    event.gap.first_seq, event.gap.last_seq, event.gap.count = first, last, last - first + 1
    return event


def sensor(seq: int, name: str, st: int, *reasons: str) -> event_pb2.Event:
    event = event_pb2.Event(seq=seq)
    event.sensor_health.sensor = name
    event.sensor_health.state = st  # type: ignore[assignment]
    event.sensor_health.reasons.extend(reasons)
    return event


def view(tracker: GuardianTracker, guardian_id: str = WEB.id) -> GuardianView:
    return {v.guardian_id: v for v in tracker.guardians()}[guardian_id]


def test_views_follow_the_configuration_order_before_any_contact() -> None:
    tracker = GuardianTracker([WEB, DB], clock=Clock())
    views = tracker.guardians()
    assert [v.guardian_id for v in views] == [WEB.id, DB.id]
    first = views[0]
    assert (first.state, first.spiffe_id, first.address, first.role) == (
        ConnectionState.CONNECTING,
        "",
        "web-01:7443",
        "alpha",
    )
    assert first.sealed
    assert first.last_contact_ns is None
    assert first.name == "guardians/alpha-web-01"


def test_connection_cursor_latest_and_lag() -> None:
    clock = Clock()
    tracker = GuardianTracker([WEB], clock=clock)
    tracker.observe({WEB.id: state(WEB.id, GuardianPhase.CONNECTED, cursor=10, latest_seq=15)})
    v = view(tracker)
    assert v.state is ConnectionState.CONNECTED
    assert v.spiffe_id == "spiffe://td/alpha/alpha-web-01"
    assert (v.committed_seq, v.latest_seq, v.lag_events) == (10, 15, 5)
    assert v.connect_time_ns == v.last_contact_ns == clock.now
    clock.now += 2 * S
    assert view(tracker).lag_ns == 2 * S
    tracker.on_batch(WEB.id, [event_pb2.Event(seq=s) for s in range(11, 16)])
    v = view(tracker)
    assert (v.committed_seq, v.lag_events, v.lag_ns) == (15, 0, 0)


def test_gap_events_count_lost_and_sensors_degrade_and_recover() -> None:
    tracker = GuardianTracker([WEB], clock=Clock())
    failed, healthy = (
        pipeline_details_pb2.SENSOR_STATE_FAILED,
        pipeline_details_pb2.SENSOR_STATE_HEALTHY,
    )
    degraded = pipeline_details_pb2.SENSOR_STATE_DEGRADED
    findings = tracker.on_batch(
        WEB.id,
        [
            event_pb2.Event(seq=1),
            gap(2, 100, 109),
            sensor(3, "ebpf.exec", failed, "no BTF"),
            sensor(4, "auth_log", degraded),
            gap(5, 200, 204),
        ],
    )
    assert findings == [
        GapFinding(WEB.id, 2, 100, 109, 10, "GAP_REASON_UNSPECIFIED"),
        SensorFinding(WEB.id, 3, "ebpf.exec", "failed", ("no BTF",)),
        SensorFinding(WEB.id, 4, "auth_log", "degraded", ()),
        GapFinding(WEB.id, 5, 200, 204, 5, "GAP_REASON_UNSPECIFIED"),
    ]
    v = view(tracker)
    assert v.events_lost == 15
    assert v.degraded_sensors == ("auth_log", "ebpf.exec")
    # Still failed (a loss report): no new finding; healthy again: off the list.
    assert tracker.on_batch(WEB.id, [sensor(6, "ebpf.exec", failed)]) == []
    tracker.on_batch(WEB.id, [sensor(7, "auth_log", healthy)])
    assert view(tracker).degraded_sensors == ("ebpf.exec",)
    assert view(tracker).committed_seq == 7


def test_identity_and_policy_refusals_are_refused_other_failures_disconnected() -> None:
    tracker = GuardianTracker([WEB, DB], clock=Clock())
    identity = GuardianIdentityError("certificate names host db-02, not db-01")
    tracker.observe(
        {
            WEB.id: state(WEB.id, GuardianPhase.FAILED, error=identity, last_error=str(identity)),
            DB.id: state(DB.id, GuardianPhase.RECONNECTING, last_error="UNAVAILABLE"),
        }
    )
    assert view(tracker, WEB.id).state is ConnectionState.REFUSED
    assert "db-02" in view(tracker, WEB.id).last_error
    assert view(tracker, DB.id).state is ConnectionState.DISCONNECTED
    denied = SubscriptionRefusedError(grpc.StatusCode.PERMISSION_DENIED, "role beta")
    tracker.observe({DB.id: state(DB.id, GuardianPhase.FAILED, error=denied)})
    assert view(tracker, DB.id).state is ConnectionState.REFUSED
    other = RuntimeError("cursor out of range")
    tracker.observe({DB.id: state(DB.id, GuardianPhase.FAILED, error=other)})
    assert view(tracker, DB.id).state is ConnectionState.DISCONNECTED


def test_silence_is_reported_once_per_silence() -> None:
    clock = Clock()
    tracker = GuardianTracker([WEB, DB], clock=clock)
    deadline = 30 * S
    tracker.observe({WEB.id: state(WEB.id, GuardianPhase.CONNECTED)})
    clock.now += 31 * S
    # DB never answered since the tracker began; WEB is still connected (heartbeats).
    tracker.observe({WEB.id: state(WEB.id, GuardianPhase.CONNECTED)})
    assert [v.guardian_id for v in tracker.silent(deadline)] == [DB.id]
    assert tracker.silent(deadline) == []
    tracker.observe({WEB.id: state(WEB.id, GuardianPhase.RECONNECTING)})
    clock.now += 29 * S
    assert tracker.silent(deadline) == []
    clock.now += 2 * S
    (lost,) = tracker.silent(deadline)
    assert lost.guardian_id == WEB.id
    assert lost.state is ConnectionState.DISCONNECTED
    # Contact again re-arms it.
    tracker.observe({WEB.id: state(WEB.id, GuardianPhase.CONNECTED)})
    tracker.observe({WEB.id: state(WEB.id, GuardianPhase.RECONNECTING)})
    clock.now += 31 * S
    assert [v.guardian_id for v in tracker.silent(deadline)] == [WEB.id]


def test_a_refusal_by_the_cortex_holds_until_the_entry_changes() -> None:
    tracker = GuardianTracker([WEB, DB], clock=Clock())
    tracker.refuse(WEB.id, "sent events of guardian id 'alpha-other'")
    tracker.observe({WEB.id: state(WEB.id, GuardianPhase.CONNECTED)})
    assert view(tracker).state is ConnectionState.REFUSED
    assert tracker.refused() == {WEB.id}
    assert [v.guardian_id for v in tracker.silent(-1)] == [DB.id]  # refused is not silent
    tracker.configure([WEB, DB])  # unchanged: still refused
    assert tracker.refused() == {WEB.id}
    moved = dataclasses.replace(WEB, address="web-01:7445")
    tracker.configure([moved])
    assert tracker.refused() == frozenset()
    assert [v.address for v in tracker.guardians()] == ["web-01:7445"]
