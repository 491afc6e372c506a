"""The telemetry source ("telemetry"): one `host_telemetry` event per window (alpha.telemetry).

The window counter observes every event the pipeline sees; this source's thread samples memory
every second, and at each window's end closes the counts and the /proc gauges, and emits the
window through `Pipeline.handle_measurements` (severity INFO, category ANOMALY: the anomaly
score's inputs). Windows follow one another without a gap: each starts where the last ended. A
window cut short by a stop is not emitted (its counts would read as a quiet full window).

Features whose source is off (no eBPF probe for them, the socket poller or the sshd follower
disabled) or whose /proc file could not be read are named in `unmeasured`, and the source's
sensor entry says so (degraded, with the names), except for the features whose source the
configuration turns off ([network], [auth] disabled): a choice, not a failure.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from typing import Final

from alpha.pipeline import Event, Pipeline
from alpha.sensors.ebpf import EbpfSensor
from alpha.sensors.model import SensorMode
from alpha.sources.common import log
from alpha.sources.syscalls import SyscallSource
from alpha.telemetry import (
    FEATURE_SCHEMA_VERSION,
    GaugeSampler,
    TelemetryConfig,
    Window,
    WindowCounter,
    measure,
)
from mesh.guardian.sensors import SensorHandle, SensorRegistry
from qsc.common.v1 import event_pb2

MEMORY_SAMPLE_S: Final = 1.0
_FILE_PROBES: Final = frozenset({"open", "chmod", "chown", "unlink", "rename", "link"})


def unobserved_features(
    syscalls: SyscallSource | None, *, network: bool, auth: bool
) -> tuple[str, ...]:
    """The features no running source can count: they are reported as unmeasured."""
    sensor = syscalls.sensor if syscalls is not None else None
    probes: frozenset[str] = frozenset()
    mode: SensorMode | None = None
    if sensor is not None:
        mode = sensor.status().mode
        if isinstance(sensor, EbpfSensor) and sensor.program is not None:
            probes = frozenset(sensor.program.probes)
    ebpf = mode is SensorMode.EBPF
    out: list[str] = []
    if sensor is None or (ebpf and "exec" not in probes):
        out.append("exec_rate")
    if not (probes & _FILE_PROBES):
        out.append("file_changes")
    if not ("net" in probes or network):
        out.append("distinct_destination_addresses")
    if not network:
        out.append("new_listening_ports")
    if not ("setid" in probes or mode is SensorMode.NETLINK):
        out.append("privilege_changes")
    if not auth:
        out.extend(("failed_logins", "successful_logins"))
    return tuple(out)


def switched_off_features(*, network: bool, auth: bool) -> frozenset[str]:
    """The features whose source the configuration turns off: listed unmeasured, but not a
    degraded sensor (that is for a source that should count and cannot)."""
    off: set[str] = set()
    if not network:
        off.add("new_listening_ports")
    if not auth:
        off.update(("failed_logins", "successful_logins"))
    return frozenset(off)


def window_to_event(window: Window, host: str) -> Event:
    """The `host_telemetry` event of a window; the guardian stamps id, guardian and seq."""
    event = event_pb2.Event()
    event.time.FromNanoseconds(window.end_ns)
    t = event.host_telemetry
    t.host = host
    t.window_start.FromNanoseconds(window.start_ns)
    t.window_end.FromNanoseconds(window.end_ns)
    t.feature_schema_version = FEATURE_SCHEMA_VERSION
    for name, value in window.features:
        t.features.add(name=name, value=value)
    t.events_counted = window.events
    t.unmeasured.extend(window.unmeasured)
    seconds = (window.end_ns - window.start_ns) / 1e9
    event.summary = (
        f"host telemetry over {seconds:.0f}s: {window.events} events, exec rate "
        f"{window.value('exec_rate'):.2f}/s, cpu {window.value('cpu_percent'):.0f}%"
    )
    return event


class TelemetrySource:
    """Closes a window every `config.window` and emits it; see the module docstring."""

    def __init__(
        self,
        config: TelemetryConfig,
        pipeline: Pipeline,
        registry: SensorRegistry,
        host: str,
        unobserved: Callable[[], Iterable[str]] = tuple,
        *,
        name: str = "telemetry",
        switched_off: frozenset[str] = frozenset(),
    ) -> None:
        self.config = config
        self.switched_off = switched_off
        self.pipeline = pipeline
        self.host = host
        self.counter = WindowCounter()
        self._registry = registry
        self._unobserved = unobserved
        self._name = name
        self.handle: SensorHandle | None = None
        self.windows = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        pipeline.add_observer(self.counter.observe)

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        self.handle = self._registry.register(self._name, mode="window")
        self._thread = threading.Thread(target=self._run, name="qsc-alpha-telemetry", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        window_s = self.config.window.total_seconds()
        gauges = GaugeSampler()
        self.counter.close()  # what came before the first window is no part of it
        start_ns, start_mono = time.time_ns(), time.monotonic()
        while True:
            left = start_mono + window_s - time.monotonic()
            if self._stop.wait(max(0.0, min(MEMORY_SAMPLE_S, left))):
                return
            if time.monotonic() < start_mono + window_s:
                gauges.sample_memory()
                continue
            try:
                end_ns, end_mono = time.time_ns(), time.monotonic()
                window = measure(
                    self.counter.close(),
                    gauges.close(),
                    start_ns=start_ns,
                    end_ns=end_ns,
                    duration_s=end_mono - start_mono,
                    unobserved=self._unobserved(),
                )
                start_ns, start_mono = end_ns, end_mono
                self.emit(window)
            except Exception:  # never silently stop measuring: logged, next window
                log.exception("telemetry window failed")
                start_ns, start_mono = time.time_ns(), time.monotonic()

    def emit(self, window: Window) -> None:
        self.pipeline.handle_measurements([window_to_event(window, self.host)])
        self.windows += 1
        handle = self.handle
        if handle is None:
            return
        handle.count_event()
        unexpected = [f for f in window.unmeasured if f not in self.switched_off]
        if unexpected:
            handle.degraded(f"not measured: {', '.join(unexpected)}")
        else:
            handle.healthy()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
