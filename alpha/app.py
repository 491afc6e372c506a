"""Guardian-Alpha assembled: the guardian runtime, the rules pipeline and the event sources.

    alpha = Alpha(config)                # rules loaded, outbox opened, services and workers added
    port = await alpha.start()           # serving, workers started
    alpha.reload_rules_in_background()   # SIGHUP, as mesh.service wires it
    await alpha.stop()                   # drain, stop the workers, close the outbox

Workers start in this order, after the server listens: the syscall sensor (its process table
serves the others), memory scans, sockets (which take connects from the eBPF sensor when it
runs), the sshd log, then the host telemetry windows (which count what all of them see).
"""

from __future__ import annotations

import threading

from alpha.config import AlphaConfig
from alpha.counters import PipelineCounters
from alpha.memscan import MemoryScanner, ScanMemoryCore
from alpha.pipeline import Pipeline
from alpha.rules import RuleEngine
from alpha.sensors.convert import Lookups
from alpha.server import AlphaServicer
from alpha.sources.auth import AuthSource
from alpha.sources.common import LateLookup
from alpha.sources.memscan import MemscanSource
from alpha.sources.network import NetworkSource, socket_protocol
from alpha.sources.syscalls import SyscallSource
from alpha.sources.telemetry import (
    TelemetrySource,
    switched_off_features,
    unobserved_features,
)
from mesh.guardian import Guardian
from mesh.metrics import EventCounts, MetricsExporter, guardian_collectors


class Alpha:
    def __init__(self, config: AlphaConfig) -> None:
        self.config = config
        # Rules first: a broken rule file stops the start before anything is opened.
        self.engine = RuleEngine.default(config.rules.files)
        self.guardian = Guardian(config.guardian_config())
        # Prometheus ([metrics]): events counted where the pipeline hands them to the outbox.
        self.event_counts = EventCounts()
        self.metrics = MetricsExporter(config.metrics, component="alpha")
        try:
            registry = self.guardian.sensors
            rules_health = registry.register("rules", mode="yaml")
            self.lookup = LateLookup()
            self.pipeline = Pipeline(
                self.engine,
                self.event_counts.wrap(self.guardian.emit_many),
                emit_unmatched=config.rules.emit_unmatched,
                lookups=Lookups(process=self.lookup, protocol=socket_protocol),
                rules_health=rules_health,
                counts=PipelineCounters(registry).add,
            )
            self.syscalls = SyscallSource(config.sensor, self.pipeline, registry, self.lookup)
            scanner = MemoryScanner(config.memscan, process_lookup=self.lookup)
            self.memscan = MemscanSource(scanner, self.pipeline, registry)
            core = ScanMemoryCore(
                scanner, emit=self.memscan.emit_findings, dedup=self.memscan.scheduler.dedup
            )
            self.guardian.add_service(AlphaServicer(self.pipeline, core).binding())
            self.guardian.add_worker(self.syscalls)
            self.guardian.add_worker(self.memscan)
            self.network: NetworkSource | None = None
            if config.network.enabled:
                self.network = NetworkSource(
                    config.network, self.pipeline, registry, self.lookup, self.syscalls
                )
                self.guardian.add_worker(self.network)
            self.auth: AuthSource | None = None
            if config.auth.enabled:
                self.auth = AuthSource(config.auth, self.pipeline, registry)
                self.guardian.add_worker(self.auth)
            self.telemetry: TelemetrySource | None = None
            if config.telemetry.enabled:
                self.telemetry = TelemetrySource(
                    config.telemetry,
                    self.pipeline,
                    registry,
                    self.guardian.ref.host,
                    lambda: unobserved_features(
                        self.syscalls, network=config.network.enabled, auth=config.auth.enabled
                    ),
                    switched_off=switched_off_features(
                        network=config.network.enabled, auth=config.auth.enabled
                    ),
                )
                self.guardian.add_worker(self.telemetry)
        except BaseException:
            self.guardian.outbox.close()
            raise

    def reload_rules_in_background(self) -> threading.Thread:
        """SIGHUP: reload on a thread; events keep flowing on the old rules until the swap."""

        def reload() -> None:
            if self.pipeline.reload_rules():
                self.syscalls.arm()  # a rule's action: kill may have come or gone

        thread = threading.Thread(target=reload, name="qsc-alpha-rules-reload", daemon=True)
        thread.start()
        return thread

    async def start(self) -> int:
        """Metrics (when configured), serve, then start the workers in the order above; return
        the bound port."""
        self.metrics.start(guardian_collectors(self.guardian, self.event_counts))
        return await self.guardian.start()

    async def stop(self) -> None:
        """Drain, stop the workers in reverse, close the outbox. Idempotent."""
        try:
            await self.guardian.stop()
        finally:
            self.metrics.stop()
