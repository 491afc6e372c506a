"""Alpha's event sources as guardian workers: the syscall sensor, memory scans, sockets, auth log.

Each worker registers a sensor in the guardian's registry and keeps it current: its state and
reasons (every change is a sensor-health event in the stream), its events and, by stage, its
losses. Blocking work runs on threads of its own; `start`/`stop` are what `Guardian` awaits.

- `SyscallSource` ("syscalls"): the eBPF sensor, or its degraded fallback, drained by one thread
  into `Pipeline.handle_observations`. Ring-buffer, queue, decode and consumer losses are read
  from the sensor every second.
- `MemscanSource` ("memscan"): periodic rounds; on-exec and W+X scans triggered by the pipeline.
- `NetworkSource` ("sockets"): sock_diag polling; with the eBPF sensor also scans from connects
  and blocklist marks on its connect/accept events.
- `AuthSource` ("auth_log"): the sshd log (a file, followed across rotation, or the journal).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from alpha.auth import (
    AuthDetector,
    FileFollower,
    FollowError,
    JournalFollower,
    load_history,
    save_history,
)
from alpha.auth import finding_to_event as auth_event
from alpha.config import AuthSection, NetworkSection
from alpha.memscan import Finding, MemoryScanner, ScanScheduler
from alpha.memscan.convert import findings_to_events
from alpha.network import NetworkDetector, SocketPoller, SocketUnavailableError, annotate_blocklists
from alpha.network import finding_to_event as network_event
from alpha.pipeline import Event, Pipeline
from alpha.sensors import Sensor, start_sensor
from alpha.sensors.ebpf import EbpfSensor
from alpha.sensors.fallback import FallbackSensor
from alpha.sensors.model import (
    Kind,
    LossCounters,
    Observation,
    ProcessInfo,
    SensorConfig,
    SensorMode,
    SensorUnavailable,
)
from alpha.sensors.model import SensorState as ModelState
from alpha.sensors.proctable import PROC, parse_inet_table
from mesh.guardian.sensors import LossStage, SensorHandle, SensorRegistry, SensorState
from mesh.logs import log_event

log = logging.getLogger("qsc.alpha.sources")

MONITOR_INTERVAL_S: Final = 1.0
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


class LateLookup:
    """A process lookup bound once the sensor (and its process table) exists: the memory
    scanner and the servicer are built before the guardian starts its workers."""

    def __init__(self) -> None:
        self.target: Callable[[int], ProcessInfo | None] | None = None

    def __call__(self, pid: int) -> ProcessInfo | None:
        target = self.target
        return target(pid) if target is not None else None


def _read_table(path: str, limit: int = 4 << 20) -> str:
    """A /proc/net table to its end (seq files return one page per read)."""
    chunks: list[bytes] = []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        size = 0
        while size < limit and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        return ""
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", "replace")


def socket_protocol(pid: int, fd: int, proc: Path = PROC) -> str:
    """ "tcp" or "udp" for an inet socket fd of a live process, "" when it cannot be told (the
    process is gone). A connecting inet socket that is not UDP is taken as TCP: raw sockets
    rarely connect."""
    try:
        target = os.readlink(f"{proc}/{pid}/fd/{fd}")
    except OSError:
        return ""
    if not target.startswith("socket:["):
        return ""
    inode = int(target[len("socket:[") : -1])
    for table in ("udp", "udp6"):
        if inode in parse_inet_table(_read_table(f"{proc}/{pid}/net/{table}")):
            return "udp"
    return "tcp"


class _Periodic:
    """A daemon thread calling `tick()` every `interval` seconds until stopped."""

    def __init__(self, name: str, interval: float, tick: Callable[[], object]) -> None:
        self._interval = interval
        self._tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # a source bug must not end the source: logged, next round
                log.exception("%s: tick failed", self._thread.name)
            self._stop.wait(self._interval)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


# --- the syscall sensor ---------------------------------------------------------------------------


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
        self._thread = threading.Thread(target=self._run, name="qsc-alpha-pipeline", daemon=True)
        self._thread.start()

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


# --- memory scans ---------------------------------------------------------------------------------


class MemscanSource:
    """Periodic memory scans, and the scans the pipeline triggers on exec and W+X maps."""

    def __init__(
        self,
        scanner: MemoryScanner,
        pipeline: Pipeline,
        registry: SensorRegistry,
        *,
        name: str = "memscan",
    ) -> None:
        self.scanner = scanner
        self.pipeline = pipeline
        self._registry = registry
        self._name = name
        self.scheduler = ScanScheduler(scanner, self._on_findings)
        self.handle: SensorHandle | None = None
        self._dropped = 0
        self._monitor = _Periodic("qsc-alpha-memscan-monitor", MONITOR_INTERVAL_S, self.monitor)
        pipeline.add_hook(self.scheduler.observe_batch)

    @property
    def name(self) -> str:
        return self._name

    def _on_findings(self, findings: list[Finding]) -> None:
        events = findings_to_events(findings)
        self.pipeline.handle_findings(events)
        if self.handle is not None:
            self.handle.count_event(len(events))

    def emit_findings(self, events: list[Event]) -> object:
        """For ScanMemoryCore: on-demand findings go through the rules too."""
        if self.handle is not None:
            self.handle.count_event(len(events))
        return self.pipeline.handle_findings(events)

    async def start(self) -> None:
        cfg = self.scanner.config
        if cfg.enabled:
            self.handle = self._registry.register(self._name, mode="procfs")
        else:
            self.handle = self._registry.register(
                self._name,
                mode="procfs",
                state=SensorState.DEGRADED,
                reasons=("periodic and triggered scans disabled (memscan.enabled = false)",),
            )
        self.scheduler.start()
        self._monitor.start()

    def monitor(self) -> None:
        if self.handle is None:
            return
        dropped = self.scheduler.stats().triggered_dropped
        if dropped > self._dropped:
            # Triggered scans refused (rate or queue bound): what they would have found is lost.
            self.handle.count_loss(LossStage.USER_QUEUE, dropped - self._dropped)
            self._dropped = dropped

    async def stop(self) -> None:
        self._monitor.stop()
        await asyncio.to_thread(self.scheduler.stop)
        self.monitor()


# --- sockets --------------------------------------------------------------------------------------


class NetworkSource:
    """The socket poller and detectors. With the eBPF sensor's connects, outbound scans and
    blocklists come from them (`on_observations`, `enrich`), as NetworkDetectConfig says."""

    def __init__(
        self,
        config: NetworkSection,
        pipeline: Pipeline,
        registry: SensorRegistry,
        lookup: LateLookup,
        syscalls: SyscallSource,
        *,
        name: str = "sockets",
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self._registry = registry
        self._lookup = lookup
        self._syscalls = syscalls
        self._name = name
        self.detector: NetworkDetector | None = None
        self.poller: SocketPoller | None = None
        self.handle: SensorHandle | None = None
        self._lock = threading.Lock()  # the detector is single-threaded: poller vs pipeline
        self._periodic: _Periodic | None = None
        self._standing: tuple[str, ...] = ()  # why this source is degraded even when polls work

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        ebpf = self._syscalls.ebpf_connections
        detect = dataclasses.replace(self.config, ebpf_connections=ebpf)
        self.detector = NetworkDetector(detect)
        self.poller = SocketPoller(backend=self.config.backend, process_info=self._lookup)
        reasons = () if ebpf else ("connects seen only by polling (no eBPF connect probe)",)
        self.handle = self._registry.register(
            self._name,
            mode="sock_diag+ebpf" if ebpf else "sock_diag",
            state=SensorState.HEALTHY if ebpf else SensorState.DEGRADED,
            reasons=reasons,
        )
        self._standing = reasons
        if ebpf:
            matcher = self.detector.blocklists
            self.pipeline.add_source(self.on_observations)
            if matcher:
                self.pipeline.set_enrich(lambda event: annotate_blocklists(event, matcher))
        self._periodic = _Periodic(
            "qsc-alpha-sockets", self.config.poll_interval.total_seconds(), self.poll_once
        )
        self._periodic.start()

    def on_observations(self, batch: list[Observation]) -> list[Event]:
        detector = self.detector
        if detector is None:
            return []
        findings = []
        with self._lock:
            for obs in batch:
                if obs.kind is Kind.CONNECT:
                    findings.extend(detector.on_observation(obs))
        return [network_event(f) for f in findings]

    def poll_once(self) -> None:
        poller, detector, handle = self.poller, self.detector, self.handle
        if poller is None or detector is None or handle is None:
            return
        try:
            result = poller.poll()
        except SocketUnavailableError as exc:
            handle.degraded(f"socket poll failed: {exc}")
            return
        with self._lock:
            findings = detector.on_poll(result)
        if self._standing:
            handle.degraded(*self._standing)
        else:
            handle.healthy()
        if findings:
            events = [network_event(f) for f in findings]
            handle.count_event(len(events))
            self.pipeline.handle_findings(events)

    async def stop(self) -> None:
        if self._periodic is not None:
            await asyncio.to_thread(self._periodic.stop)
        if self.poller is not None:
            self.poller.close()


# --- the sshd log ---------------------------------------------------------------------------------


class AuthSource:
    """Follows the sshd log and feeds its findings (failures with window counts, logins from
    new addresses) to the pipeline; the position and the login history persist."""

    def __init__(
        self,
        config: AuthSection,
        pipeline: Pipeline,
        registry: SensorRegistry,
        *,
        name: str = "auth_log",
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self._registry = registry
        self._name = name
        self.handle: SensorHandle | None = None
        self.detector: AuthDetector | None = None
        self._follower: FileFollower | JournalFollower | None = None
        self._periodic: _Periodic | None = None
        self._history_path = config.state_directory / "auth.history.json"
        self._dropped = 0

    @property
    def name(self) -> str:
        return self._name

    def source(self) -> str:
        cfg = self.config
        if cfg.source != "auto":
            return cfg.source
        return "file" if cfg.log_path.exists() else "journal"

    async def start(self) -> None:
        cfg = self.config
        source = self.source()
        self.handle = self._registry.register(self._name, mode=source)
        try:
            cfg.state_directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            history = load_history(
                self._history_path, cfg.history_max_users, cfg.history_addresses_per_user
            )
        except (OSError, ValueError) as exc:
            # Without its history every login would look new: say so, and go on without it.
            self.handle.degraded(f"login history unavailable: {exc}")
            history = None
        self.detector = AuthDetector(cfg, history=history)
        try:
            if source == "file":
                self._follower = FileFollower(
                    cfg.log_path,
                    cfg.state_directory / "auth.follow.json",
                    start_at_end=cfg.start_at_end,
                )
            else:
                journal = JournalFollower(
                    cfg.state_directory / "auth.journal.cursor", cfg.journal_units
                )
                journal.start()
                self._follower = journal
        except (FollowError, OSError) as exc:
            self.handle.failed(f"cannot follow the sshd log ({source}): {exc}")
            return
        self._periodic = _Periodic(
            "qsc-alpha-auth", cfg.poll_interval.total_seconds(), self.poll_once
        )
        self._periodic.start()

    def poll_once(self) -> None:
        follower, detector, handle = self._follower, self.detector, self.handle
        if follower is None or detector is None or handle is None:
            return
        try:
            lines = follower.poll()
        except (FollowError, OSError) as exc:
            handle.degraded(f"reading the sshd log failed: {exc}")
            return
        if isinstance(follower, FileFollower) and not follower.path.exists():
            handle.degraded(f"{follower.path} does not exist (yet); waiting for it")
        elif isinstance(follower, JournalFollower) and not follower.running:
            handle.failed("journalctl exited")
        else:
            handle.healthy()
        if isinstance(follower, JournalFollower) and follower.dropped > self._dropped:
            handle.count_loss(LossStage.USER_QUEUE, follower.dropped - self._dropped)
            self._dropped = follower.dropped
        if not lines:
            return
        events = [auth_event(f) for f in detector.observe_lines(lines)]
        if events:
            handle.count_event(len(events))
            self.pipeline.handle_findings(events)
        # Only once the events are in the outbox: a crash before re-reads, never skips.
        follower.checkpoint()
        if detector.history.changed:
            with contextlib.suppress(OSError):
                save_history(self._history_path, detector.history)

    async def stop(self) -> None:
        if self._periodic is not None:
            await asyncio.to_thread(self._periodic.stop)
        follower = self._follower
        if isinstance(follower, JournalFollower):
            await asyncio.to_thread(follower.stop)
        elif follower is not None:
            follower.close()
        if self.detector is not None and self.detector.history.changed:
            try:
                save_history(self._history_path, self.detector.history)
            except OSError as exc:
                log_event(log, "login history not saved", level=logging.WARNING, error=str(exc))
