"""Alpha's host sensors: eBPF (bcc, tracepoints, ring buffer), or a degraded fallback.

Interface for the guardian runtime and the rules engine
-------------------------------------------------------

    from alpha.sensors import start_sensor
    from alpha.sensors.model import SensorConfig

    sensor = start_sensor(SensorConfig(), on_observations=handle_batch)   # started
    ...
    sensor.status()   # -> SensorStatus, for GetStatus and sensor-health events
    sensor.stop()

`start_sensor(config, on_observations=None)` tries the eBPF sensor and, when it cannot run
here (disabled by `config.disable_ebpf` / `QSC_ALPHA_SENSOR__DISABLE_EBPF=1`, not root, no
tracefs or kernel headers, bcc missing or failing to compile), starts the `FallbackSensor`
(netlink process connector, else /proc polling) whose status is degraded and carries the
reasons. Both sensors offer:

- `start()`, `stop()` (also a context manager);
- delivery, either `on_observations(list[Observation])`, called from the sensor's poll thread
  with each batch (keep it quick: a slow callback backs up into the kernel ring buffer, whose
  losses are counted), or, without a callback, `observations(timeout=None, max_events=65536)`,
  which drains a bounded queue (overflow drops whole batches and counts them);
- `status() -> SensorStatus`: `mode` ("ebpf" | "netlink" | "proc_poll"), `state` (healthy,
  degraded, failed, stopped), `reasons`, `loss` (`LossCounters`: kernel ring-buffer reserve
  failures per kind counted in the kernel, queue drops, decode errors, consumer errors,
  netlink overruns), `stats` (`SensorStats`: events total and per second, last event and
  last poll time, in-kernel filtered count, counts per kind) and the attached `probes`;
- `loss() -> LossCounters`.

An `Observation` (alpha.sensors.model) is plain data: kind, wall and boot timestamps (ns),
pid/tid/ppid/uid/gid/euid, comm, syscall and return value, the `ProcessInfo` (exec_id,
parent_exec_id, bounded ancestry, exe, args, cwd, cgroup, container id) and one typed detail
per kind. No protobuf here but in `convert` (observations -> `qsc.common.v1.Event`s, which the
runtime passes to the pipeline and `emit_many`).

Host setup for eBPF (bcc from Debian, kernel headers, tracefs): `tools/setup-bpf.sh`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from alpha.sensors.ebpf import EbpfSensor
from alpha.sensors.fallback import FallbackSensor
from alpha.sensors.model import (
    LossCounters,
    Observation,
    ObservationCallback,
    SensorConfig,
    SensorStatus,
    SensorUnavailable,
)
from alpha.sensors.proctable import PROC

__all__ = [
    "EbpfSensor",
    "FallbackSensor",
    "Sensor",
    "SensorConfig",
    "SensorUnavailable",
    "start_sensor",
]

log = logging.getLogger(__name__)


class Sensor(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def observations(
        self, timeout: float | None = None, max_events: int = 65536
    ) -> list[Observation]: ...

    def status(self) -> SensorStatus: ...

    def loss(self) -> LossCounters: ...


def start_sensor(
    config: SensorConfig,
    on_observations: ObservationCallback | None = None,
    *,
    proc: Path = PROC,
) -> Sensor:
    """The best sensor this host allows, started. Raises SensorUnavailable only when
    `config.fallback` is "netlink" and the process connector is refused too."""
    reasons: list[str] = []
    if config.disable_ebpf:
        reasons.append("eBPF disabled by configuration (sensor.disable_ebpf)")
    else:
        sensor = EbpfSensor(config, on_observations, proc=proc)
        try:
            sensor.start()
            return sensor
        except SensorUnavailable as exc:
            reasons.append(f"eBPF unavailable: {exc}")
            log.warning("eBPF sensor unavailable, falling back: %s", exc)
    fallback = FallbackSensor(config, on_observations, ebpf_reasons=tuple(reasons), proc=proc)
    fallback.start()
    return fallback
