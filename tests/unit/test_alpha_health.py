"""Sensor-health events while the syscall sensor loses events, on a fake clock: state changes are
emitted at once, losses only in the runtime's periodic loss reports, with the exact counts.

The loop below is what runs in production: `SyscallSource.monitor()` once per
MONITOR_INTERVAL_S (alpha.sources.common), and `SensorRegistry.report_losses()` once per
`[guardian] loss_report_interval` (mesh.guardian.runtime).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from alpha.pipeline import Pipeline
from alpha.rules import RuleEngine
from alpha.sensors.health import LOSS_REASON, LOSS_WINDOW_NS, LossWindow
from alpha.sensors.model import (
    LossCounters,
    Observation,
    SensorConfig,
    SensorMode,
    SensorState,
    SensorStats,
    SensorStatus,
)
from alpha.sources.common import MONITOR_INTERVAL_S, LateLookup
from alpha.sources.syscalls import SyscallSource
from mesh.guardian.config import GuardianSection
from mesh.guardian.sensors import SensorRegistry
from qsc.common.v1 import event_pb2, pipeline_details_pb2

INTERVAL_S = GuardianSection(role="alpha").loss_report_interval.total_seconds()
HEALTHY = pipeline_details_pb2.SENSOR_STATE_HEALTHY
DEGRADED = pipeline_details_pb2.SENSOR_STATE_DEGRADED


@dataclass
class Clock:
    ns: int = 1_000_000_000_000

    def monotonic_ns(self) -> int:
        return self.ns

    def wall(self) -> float:
        return self.ns / 1e9

    def advance(self, seconds: float) -> None:
        self.ns += int(seconds * 1e9)


@dataclass
class OverdrivenSensor:
    """The eBPF sensor's status logic (alpha.sensors.ebpf.EbpfSensor.status) over counters the
    test drives: degraded with LOSS_REASON while the loss window says so."""

    window: LossWindow
    kernel: int = 0
    queue: int = 0

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def observations(self, timeout: float | None = None, max_events: int = 0) -> list[Observation]:
        return []

    def loss(self) -> LossCounters:
        return LossCounters(
            kernel=self.kernel, kernel_by_kind=(("open", self.kernel),), queue=self.queue
        )

    def status(self) -> SensorStatus:
        loss = self.loss()
        self.window.observe(loss.total)
        reason = self.window.reason()
        state = SensorState.HEALTHY if reason is None else SensorState.DEGRADED
        return SensorStatus(
            SensorMode.EBPF, state, (reason,) if reason else (), loss, SensorStats()
        )


@dataclass
class Harness:
    clock: Clock = field(default_factory=Clock)
    emitted: list[tuple[float, event_pb2.Event]] = field(default_factory=list)
    next_report: float = 0.0

    def __post_init__(self) -> None:
        self.registry = SensorRegistry(self.emit, clock=self.clock.wall)
        self.sensor = OverdrivenSensor(LossWindow(clock=self.clock.monotonic_ns))
        pipeline = Pipeline(RuleEngine.default(), lambda _events: None)
        self.source = SyscallSource(SensorConfig(), pipeline, self.registry, LateLookup())
        self.source.sensor = self.sensor
        self.source.handle = self.registry.register("syscalls", mode="ebpf")
        self.next_report = self.clock.wall() + INTERVAL_S

    def emit(self, event: event_pb2.Event) -> None:
        self.emitted.append((self.clock.wall(), event))

    def tick(self) -> None:
        """One monitor period: the source copies the sensor's status; the runtime's loss report
        runs when its interval is due."""
        self.clock.advance(MONITOR_INTERVAL_S)
        self.source.monitor()
        if self.clock.wall() >= self.next_report:
            self.registry.report_losses()
            self.next_report += INTERVAL_S

    def health(self) -> list[tuple[float, pipeline_details_pb2.SensorHealth]]:
        return [
            (t, e.sensor_health) for t, e in self.emitted if e.sensor_health.sensor == "syscalls"
        ]


def test_an_overdriven_sensor_reports_state_changes_at_once_and_losses_once_per_interval() -> None:
    h = Harness()
    overdriven_s = 35
    started = h.clock.wall()
    for _ in range(overdriven_s):
        h.sensor.kernel += 1000
        h.sensor.queue += 7
        h.tick()
    last_loss = h.clock.wall()
    while h.clock.wall() < last_loss + LOSS_WINDOW_NS / 1e9 + 2 * INTERVAL_S:
        h.tick()
    h.registry.report_losses()  # the last report, at shutdown

    events = h.health()
    changes = [(t, e) for t, e in events if e.state != e.previous_state]
    reports = [(t, e) for t, e in events if e.state == e.previous_state]
    # unspecified -> healthy (registration), healthy -> degraded, degraded -> healthy.
    assert [(e.previous_state, e.state) for _, e in changes] == [
        (0, HEALTHY),
        (HEALTHY, DEGRADED),
        (DEGRADED, HEALTHY),
    ]
    # Degraded at the first tick that saw a loss, healthy again a window after the last one.
    assert changes[1][0] == started + MONITOR_INTERVAL_S
    assert last_loss + LOSS_WINDOW_NS / 1e9 <= changes[2][0] < last_loss + 61
    # Never a reason that changes with the counts: that was one event per second.
    assert {tuple(e.reasons) for _, e in events} == {(), (LOSS_REASON,)}
    # Loss reports: at most one per interval, none once nothing more is lost.
    times = [t for t, _ in reports]
    assert all(b - a >= INTERVAL_S for a, b in itertools.pairwise(times))
    assert len(reports) <= math.ceil(overdriven_s / INTERVAL_S)
    assert all(t <= last_loss + INTERVAL_S for t in times)
    assert len(events) <= 3 + math.ceil(overdriven_s / INTERVAL_S)
    # Exact counts: the deltas add up to every event lost, and the last total says the same.
    assert sum(e.loss_delta.ring_buffer_lost for _, e in events) == overdriven_s * 1000
    assert sum(e.loss_delta.user_queue_dropped for _, e in events) == overdriven_s * 7
    final = events[-1][1].loss
    assert (final.ring_buffer_lost, final.user_queue_dropped) == (35_000, 245)
    status = h.registry.snapshot("syscalls")
    assert status.loss["ring_buffer_lost"] == 35_000
    assert status.loss["user_queue_dropped"] == 245


def test_loss_window() -> None:
    clock = Clock()
    window = LossWindow(window_ns=10, clock=clock.monotonic_ns)
    assert (window.recent(), window.reason()) == (False, None)
    window.observe(0)  # nothing lost yet
    assert not window.recent()
    window.observe(3)
    assert window.reason() == LOSS_REASON
    clock.ns += 9
    window.observe(3)  # the same total: no new loss, the window is not renewed
    assert window.recent()
    clock.ns += 1
    assert not window.recent()
    window.observe(4)
    assert window.recent()
