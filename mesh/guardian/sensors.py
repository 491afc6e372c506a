"""The sensor registry: each sensor's state, mode, loss counters and event count.

A sensor (an eBPF program, the inotify watcher, the auth-log follower, ...) registers once and
reports through its handle, from any thread:

    handle = guardian.sensors.register("ebpf.exec", mode="ebpf")
    handle.count_event(n)                     # events it produced
    handle.count_loss(LossStage.RING_BUFFER, lost)
    handle.degraded("not root: eBPF disabled, polling /proc", mode="proc_poll")
    handle.healthy()

Every change of state, reasons or mode is appended to the guardian's stream as a sensor-health
event (which always passes subscription filters), so a degraded mode is visible to subscribers,
never only in a log; registering counts as a change from "unspecified". Losses are reported by
`report_losses()` (the runtime calls it periodically) as sensor-health events whose state equals
their previous state, with the loss since the last report. `GetStatus` reads `statuses()` and
`loss_totals()`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Final

from mesh.logs import log_event
from mesh.stream.outbox import OutboxClosedError
from qsc.common.v1 import classification_pb2, event_pb2, pipeline_details_pb2
from qsc.guardian.v1 import guardian_service_pb2 as pb

__all__ = [
    "LOSS_STAGES",
    "LossStage",
    "SensorHandle",
    "SensorRegistry",
    "SensorSnapshot",
    "SensorState",
]

_log = logging.getLogger("qsc.guardian.sensors")
MAX_REASONS: Final = 8
MAX_REASON_CHARS: Final = 256


class SensorState(IntEnum):
    """The states of `qsc.common.v1.SensorState`, same numbers."""

    UNSPECIFIED = pipeline_details_pb2.SENSOR_STATE_UNSPECIFIED
    HEALTHY = pipeline_details_pb2.SENSOR_STATE_HEALTHY
    DEGRADED = pipeline_details_pb2.SENSOR_STATE_DEGRADED
    FAILED = pipeline_details_pb2.SENSOR_STATE_FAILED


class LossStage(StrEnum):
    """Pipeline stages that can lose events; the values are the `LossCounters` field names."""

    RING_BUFFER = "ring_buffer_lost"
    KERNEL_QUEUE = "kernel_queue_overflows"
    DECODE = "decode_errors"
    USER_QUEUE = "user_queue_dropped"
    OUTBOX = "outbox_dropped"


LOSS_STAGES: Final = tuple(stage.value for stage in LossStage)
_SEVERITY: Final = {
    SensorState.UNSPECIFIED: classification_pb2.SEVERITY_INFO,
    SensorState.HEALTHY: classification_pb2.SEVERITY_INFO,
    SensorState.DEGRADED: classification_pb2.SEVERITY_MEDIUM,
    SensorState.FAILED: classification_pb2.SEVERITY_HIGH,
}


@dataclass(frozen=True)
class SensorSnapshot:
    """One sensor, as GetStatus shows it."""

    name: str
    state: SensorState
    reasons: tuple[str, ...]
    mode: str
    loss: dict[str, int]
    events: int
    last_event_time: float | None
    state_change_time: float


@dataclass
class _Sensor:
    name: str
    mode: str
    state: SensorState
    reasons: tuple[str, ...]
    state_change_time: float
    loss: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LOSS_STAGES, 0))
    reported_loss: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LOSS_STAGES, 0))
    events: int = 0
    last_event_time: float | None = None


def _stage(stage: LossStage | str) -> str:
    try:
        return LossStage(stage).value
    except ValueError:
        raise ValueError(
            f"unknown loss stage {stage!r}; stages: {', '.join(LOSS_STAGES)}"
        ) from None


def _reasons(reasons: Iterable[str]) -> tuple[str, ...]:
    # Reasons travel in events and GetStatus: bounded, one line each.
    out = [" ".join(r.split())[:MAX_REASON_CHARS] for r in reasons if r and r.strip()]
    return tuple(out[:MAX_REASONS])


class SensorHandle:
    """What a sensor holds to report its health, events and losses. Thread-safe."""

    __slots__ = ("_name", "_registry")

    def __init__(self, registry: SensorRegistry, name: str) -> None:
        self._registry = registry
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def state(self) -> SensorState:
        return self._registry.snapshot(self._name).state

    def healthy(self, *, mode: str | None = None) -> None:
        self._registry.set_state(self._name, SensorState.HEALTHY, (), mode)

    def degraded(self, reason: str, *more: str, mode: str | None = None) -> None:
        self._registry.set_state(self._name, SensorState.DEGRADED, (reason, *more), mode)

    def failed(self, reason: str, *more: str, mode: str | None = None) -> None:
        self._registry.set_state(self._name, SensorState.FAILED, (reason, *more), mode)

    def count_event(self, n: int = 1) -> None:
        self._registry.count_event(self._name, n)

    def count_loss(self, stage: LossStage | str, n: int = 1) -> None:
        self._registry.count_loss(self._name, stage, n)

    def __repr__(self) -> str:
        return f"SensorHandle({self._name!r})"


class SensorRegistry:
    """Every sensor of one guardian; see the module docstring.

    `emit` appends one event to the guardian's outbox (stamping id, guardian and times). It is
    called with the registry's lock held so health events enter the stream in the order the
    changes happened; it must not call back into the registry.
    """

    def __init__(
        self,
        emit: Callable[[event_pb2.Event], object],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._emit = emit
        self._clock = clock
        self._lock = threading.Lock()
        self._sensors: dict[str, _Sensor] = {}

    def register(
        self,
        name: str,
        mode: str,
        *,
        state: SensorState = SensorState.HEALTHY,
        reasons: Iterable[str] = (),
    ) -> SensorHandle:
        """Add a sensor (names are unique) and announce it with a sensor-health event."""
        if not name or len(name) > 128 or not name.isprintable():
            raise ValueError("a sensor name is 1 to 128 printable characters")
        if state is SensorState.UNSPECIFIED:
            raise ValueError("register a sensor as healthy, degraded or failed")
        with self._lock:
            if name in self._sensors:
                raise ValueError(f"sensor {name!r} is already registered")
            sensor = _Sensor(name, mode, SensorState.UNSPECIFIED, (), self._clock())
            self._sensors[name] = sensor
            self._change_locked(sensor, state, _reasons(reasons), mode)
        return SensorHandle(self, name)

    def handle(self, name: str) -> SensorHandle:
        with self._lock:
            if name not in self._sensors:
                raise KeyError(f"no sensor named {name!r}")
        return SensorHandle(self, name)

    def set_state(
        self, name: str, state: SensorState, reasons: Iterable[str], mode: str | None
    ) -> None:
        with self._lock:
            sensor = self._sensors[name]
            self._change_locked(
                sensor, state, _reasons(reasons), sensor.mode if mode is None else mode
            )

    def count_event(self, name: str, n: int = 1) -> None:
        if n < 0:
            raise ValueError("n must not be negative")
        now = self._clock()
        with self._lock:
            sensor = self._sensors[name]
            sensor.events += n
            if n:
                sensor.last_event_time = now

    def count_loss(self, name: str, stage: LossStage | str, n: int = 1) -> None:
        if n < 0:
            raise ValueError("loss counters only grow")
        key = _stage(stage)
        with self._lock:
            self._sensors[name].loss[key] += n

    def report_losses(self) -> int:
        """Emit a loss report for every sensor that lost events since its last health event;
        return how many were emitted."""
        reported = 0
        with self._lock:
            for sensor in self._sensors.values():
                if sensor.loss != sensor.reported_loss:
                    self._emit_locked(sensor, sensor.state)
                    reported += 1
        return reported

    def snapshot(self, name: str) -> SensorSnapshot:
        with self._lock:
            return self._snapshot_locked(self._sensors[name])

    def snapshots(self) -> list[SensorSnapshot]:
        with self._lock:
            return [self._snapshot_locked(s) for s in self._sensors.values()]

    # --- GetStatus ------------------------------------------------------------------------

    def statuses(self) -> list[pb.SensorStatus]:
        return [sensor_status(s) for s in self.snapshots()]

    def loss_totals(self) -> pipeline_details_pb2.LossCounters:
        """Every sensor's losses summed per stage."""
        totals = dict.fromkeys(LOSS_STAGES, 0)
        for snap in self.snapshots():
            for stage, n in snap.loss.items():
                totals[stage] += n
        return pipeline_details_pb2.LossCounters(**totals)

    # --- internals --------------------------------------------------------------------------

    def _snapshot_locked(self, s: _Sensor) -> SensorSnapshot:
        return SensorSnapshot(
            s.name,
            s.state,
            s.reasons,
            s.mode,
            dict(s.loss),
            s.events,
            s.last_event_time,
            s.state_change_time,
        )

    def _change_locked(
        self, sensor: _Sensor, state: SensorState, reasons: tuple[str, ...], mode: str
    ) -> None:
        if (state, reasons, mode) == (sensor.state, sensor.reasons, sensor.mode):
            return  # repeating the current state is not news
        previous = sensor.state
        if state != previous:
            sensor.state_change_time = self._clock()
        sensor.state, sensor.reasons, sensor.mode = state, reasons, mode
        log_event(
            _log,
            "sensor state",
            level=logging.INFO if state is SensorState.HEALTHY else logging.WARNING,
            sensor=sensor.name,
            state=state.name.lower(),
            previous=previous.name.lower(),
            mode=mode,
            reasons=list(reasons),
        )
        self._emit_locked(sensor, previous)

    def _emit_locked(self, sensor: _Sensor, previous: SensorState) -> None:
        event = health_event(sensor, previous)
        sensor.reported_loss = dict(sensor.loss)
        try:
            self._emit(event)
        except OutboxClosedError:
            # Shutting down: nothing can carry it any more.
            log_event(
                _log,
                "sensor health not recorded: the outbox is closed",
                level=logging.WARNING,
                sensor=sensor.name,
            )


def _timestamp(seconds: float, target: object) -> None:
    target.FromNanoseconds(int(seconds * 1e9))  # type: ignore[attr-defined]


def health_event(sensor: _Sensor, previous: SensorState) -> event_pb2.Event:
    """The sensor-health event for `sensor` now (a state change, or a loss report)."""
    delta = {k: sensor.loss[k] - sensor.reported_loss[k] for k in LOSS_STAGES}
    lost = sum(delta.values())
    if sensor.state != previous:
        what = f"sensor {sensor.name} {sensor.state.name.lower()}"
    else:
        what = f"sensor {sensor.name} lost {lost} events"
    summary = f"{what}: {'; '.join(sensor.reasons)}" if sensor.reasons else what
    severity = _SEVERITY[sensor.state]
    if sensor.state == previous and lost:
        severity = max(severity, classification_pb2.SEVERITY_MEDIUM)
    return event_pb2.Event(
        severity=severity,
        category=classification_pb2.CATEGORY_SYSTEM,
        summary=summary,
        sensor_health=pipeline_details_pb2.SensorHealth(
            sensor=sensor.name,
            state=int(sensor.state),  # type: ignore[arg-type]
            previous_state=int(previous),  # type: ignore[arg-type]
            reasons=sensor.reasons,
            mode=sensor.mode,
            loss=pipeline_details_pb2.LossCounters(**sensor.loss),
            loss_delta=pipeline_details_pb2.LossCounters(**delta),
        ),
    )


def sensor_status(snap: SensorSnapshot) -> pb.SensorStatus:
    status = pb.SensorStatus(
        name=snap.name,
        state=int(snap.state),  # type: ignore[arg-type]
        reasons=snap.reasons,
        mode=snap.mode,
        loss=pipeline_details_pb2.LossCounters(**snap.loss),
        events=snap.events,
    )
    if snap.last_event_time is not None:
        _timestamp(snap.last_event_time, status.last_event_time)
    _timestamp(snap.state_change_time, status.state_change_time)
    return status
