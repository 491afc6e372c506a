"""The memory-scan source ("memscan"): periodic rounds; on-exec and W+X scans triggered by the
pipeline. Triggered scans refused by the rate or queue bound are counted as losses.
"""

from __future__ import annotations

import asyncio

from alpha.memscan import Finding, MemoryScanner, ScanScheduler
from alpha.memscan.convert import findings_to_events
from alpha.pipeline import Event, Pipeline
from alpha.sources.common import MONITOR_INTERVAL_S, Periodic
from mesh.guardian.sensors import LossStage, SensorHandle, SensorRegistry, SensorState


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
        self._monitor = Periodic("qsc-alpha-memscan-monitor", MONITOR_INTERVAL_S, self.monitor)
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
