"""The syscall source ("syscalls"): the eBPF sensor, or its degraded fallback, drained by one
thread into `Pipeline.handle_observations`. Ring-buffer, queue, decode and consumer losses are
read from the sensor every second (MONITOR_INTERVAL_S).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Final

from alpha.pipeline import Event, Pipeline, boot_epoch_ns
from alpha.rules import Ruleset
from alpha.sensors import Sensor, start_sensor
from alpha.sensors.convert import enforcement_event
from alpha.sensors.ebpf import EbpfSensor
from alpha.sensors.fallback import FallbackSensor
from alpha.sensors.model import (
    Kind,
    LossCounters,
    Observation,
    SensorConfig,
    SensorMode,
    SensorUnavailable,
)
from alpha.sensors.model import SensorState as ModelState
from alpha.sources.common import MONITOR_INTERVAL_S, LateLookup, log
from mesh.guardian.sensors import LossStage, SensorHandle, SensorRegistry, SensorState
from mesh.logs import log_event

_STATE: Final = {
    ModelState.STARTING: SensorState.HEALTHY,
    ModelState.HEALTHY: SensorState.HEALTHY,
    ModelState.DEGRADED: SensorState.DEGRADED,
    ModelState.FAILED: SensorState.FAILED,
    ModelState.STOPPED: SensorState.FAILED,
}
# LossCounters field -> the registry's stage.
_LOSS_STAGES: Final = (
    ("kernel", LossStage.RING_BUFFER),
    ("queue", LossStage.USER_QUEUE),
    ("decode", LossStage.DECODE),
    ("consumer", LossStage.USER_QUEUE),
    ("source", LossStage.KERNEL_QUEUE),
)


@dataclass
class _LossSync:
    """Turns the sensor's cumulative counters into count_loss deltas."""

    last: LossCounters = dataclasses.field(default_factory=LossCounters)

    def sync(self, now: LossCounters, handle: SensorHandle) -> None:
        for name, stage in _LOSS_STAGES:
            delta = getattr(now, name) - getattr(self.last, name)
            if delta > 0:
                handle.count_loss(stage, delta)
        self.last = now


def kill_checks(ruleset: Ruleset) -> dict[str, tuple[str, ...]]:
    """The kernel checks that enabled rules with `action: kill` name, with those rules' ids."""
    out: dict[str, list[str]] = {}
    for rule in ruleset.enabled_rules:
        if rule.action == "kill" and rule.enforce is not None:
            out.setdefault(rule.enforce, []).append(rule.id)
    return {check: tuple(ids) for check, ids in out.items()}


class SyscallSource:
    """The eBPF sensor (or the fallback) feeding the pipeline; see the module docstring."""

    def __init__(
        self,
        config: SensorConfig,
        pipeline: Pipeline,
        registry: SensorRegistry,
        lookup: LateLookup,
        *,
        name: str = "syscalls",
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self._registry = registry
        self._lookup = lookup
        self._name = name
        self.sensor: Sensor | None = None
        self.handle: SensorHandle | None = None
        self._losses = _LossSync()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_monitor = 0.0
        self._kill_rules: dict[str, tuple[str, ...]] = {}  # kernel check -> rule ids

    @property
    def name(self) -> str:
        return self._name

    @property
    def ebpf_connections(self) -> bool:
        """True when the running sensor reports connect/accept (the eBPF sensor's net probe)."""
        sensor = self.sensor
        return (
            isinstance(sensor, EbpfSensor)
            and sensor.program is not None
            and "net" in sensor.program.probes
        )

    @property
    def ebpf_tcp_closes(self) -> bool:
        """True when the running sensor reports every TCP socket's end with its final counts."""
        sensor = self.sensor
        return (
            isinstance(sensor, EbpfSensor)
            and sensor.program is not None
            and "tcp" in sensor.program.probes
        )

    async def start(self) -> None:
        # bcc compiles the program here: seconds of CPU, off the event loop.
        try:
            sensor = await asyncio.to_thread(start_sensor, self.config, None)
        except SensorUnavailable as exc:
            # Only when the fallback was pinned to netlink and refused: stay up for the other
            # sources, and say loudly that syscalls are not watched.
            self.handle = self._registry.register(
                self._name, mode=self.config.fallback, state=SensorState.FAILED, reasons=(str(exc),)
            )
            return
        self.sensor = sensor
        if isinstance(sensor, EbpfSensor | FallbackSensor):
            self._lookup.target = sensor.table.info
        status = sensor.status()
        self.handle = self._registry.register(
            self._name,
            mode=status.mode.value,
            state=_STATE[status.state],
            reasons=status.reasons,
        )
        self.pipeline.set_losses(self.handle.count_loss)
        if isinstance(sensor, EbpfSensor):
            self.pipeline.add_source(self._enforcements)
            self.arm()
        self._thread = threading.Thread(target=self._run, name="qsc-alpha-pipeline", daemon=True)
        self._thread.start()

    def arm(self) -> tuple[str, ...]:
        """Arm the kernel checks of the rules with `action: kill` (at start and after each
        rules reload); the sensor's `enforcement` mode decides whether they kill or report."""
        sensor = self.sensor
        if not isinstance(sensor, EbpfSensor):
            return ()
        wanted = kill_checks(self.pipeline.engine.ruleset)
        armed = sensor.set_enforcement(wanted)
        if wanted:
            log_event(
                log,
                "enforcement armed",
                mode=self.config.enforcement,
                checks=list(armed),
                rules=sorted(r for c in wanted.values() for r in c),
            )
        self._kill_rules = wanted
        return armed

    def _enforcements(self, batch: list[Observation]) -> list[Event]:
        """Every kernel enforcement as an event, with the rules that armed its check."""
        out = []
        epoch = 0
        for obs in batch:
            if obs.kind is Kind.ENFORCE:
                epoch = epoch or boot_epoch_ns()
                check = getattr(obs.detail, "check", "")
                out.append(enforcement_event(obs, epoch, self._kill_rules.get(check, ())))
        return out

    def _run(self) -> None:
        sensor, handle = self.sensor, self.handle
        assert sensor is not None
        assert handle is not None
        batch_max = self.config.batch_max
        while not self._stop.is_set():
            try:
                batch = sensor.observations(timeout=0.2, max_events=batch_max)
                if batch:
                    handle.count_event(len(batch))
                    self.pipeline.handle_observations(batch)
                now = time.monotonic()
                if now >= self._next_monitor:
                    self._next_monitor = now + MONITOR_INTERVAL_S
                    self.monitor()
            except Exception:  # never silently idle: the loop goes on, the state says why
                log.exception("alpha pipeline loop failed; continuing")

    def monitor(self) -> None:
        """Copy the sensor's state, reasons and loss counters into the registry."""
        sensor, handle = self.sensor, self.handle
        if sensor is None or handle is None:
            return
        status = sensor.status()
        self._losses.sync(status.loss, handle)
        state = _STATE[status.state]
        mode = status.mode.value
        if state is SensorState.HEALTHY:
            handle.healthy(mode=mode)
        elif state is SensorState.DEGRADED:
            handle.degraded(*(status.reasons or ("degraded",)), mode=mode)
        else:
            handle.failed(*(status.reasons or ("failed",)), mode=mode)

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
        if self.sensor is not None:
            # Detaching ~80 tracepoints takes a few seconds (see alpha.sensors.ebpf._detach).
            await asyncio.to_thread(self.sensor.stop)
            if self.handle is not None:
                self._losses.sync(self.sensor.loss(), self.handle)
        log_event(log, "alpha pipeline stopped", **dataclasses.asdict(self.pipeline.stats()))

    def mode(self) -> SensorMode | None:
        return self.sensor.status().mode if self.sensor is not None else None
