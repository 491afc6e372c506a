"""Alpha's memory forensics: periodic, on-exec and on-demand scans of /proc/PID/{maps,status,...}.

Interface for the Alpha runtime
-------------------------------

    from alpha.memscan import MemScanConfig, MemoryScanner, ScanScheduler, ScanMemoryCore
    from alpha.memscan.convert import findings_to_events

    scanner = MemoryScanner(config.memscan, process_lookup=table.info)   # lookup optional
    scheduler = ScanScheduler(scanner, lambda fs: guardian.emit_many(findings_to_events(fs)))
    scheduler.start()                  # periodic rounds (interval +/- jitter, CPU-bounded slices)
    sensor callback: scheduler.observe_batch(batch)   # on-exec and W+X mmap/mprotect scans
    scheduler.stats()                  # SchedulerStats, for GetStatus
    core = ScanMemoryCore(scanner, emit=guardian.emit_many, dedup=scheduler.dedup)
    servicer: return core.scan_memory(request)        # AlphaService.ScanMemory
    scheduler.stop()

`process_lookup` (e.g. the sensor's `ProcessTable.info`) gives findings the same exec_id and
ancestry as the sensor's events; without it they are computed from /proc the way the table seeds
them. Findings reach `on_findings` once per (exec_id, kind), again when they grow; allowlisted
JIT runtimes are left out. Kinds and their meaning: `scanner` module docstring.

Modules: `config`, `model` (what a scan finds), `scanner`, `dedup`, `scheduler`, `service`
(ScanMemory), `convert` (findings -> events), `procfs` (the /proc readers).
"""

from __future__ import annotations

from alpha.memscan.config import (
    DEFAULT_BACKDOORED_LIBRARIES,
    DEFAULT_JIT_ALLOWLIST,
    BackdooredLibraries,
    JitAllowlist,
    MemScanConfig,
)
from alpha.memscan.dedup import Deduper
from alpha.memscan.model import (
    Finding,
    Outcome,
    PidScan,
    ScannedProcess,
    ScanResult,
    ThreatKind,
    TracerInfo,
    Trigger,
)
from alpha.memscan.scanner import MemoryScanner
from alpha.memscan.scheduler import ScanScheduler, SchedulerStats
from alpha.memscan.service import ScanMemoryCore

__all__ = [
    "DEFAULT_BACKDOORED_LIBRARIES",
    "DEFAULT_JIT_ALLOWLIST",
    "BackdooredLibraries",
    "Deduper",
    "Finding",
    "JitAllowlist",
    "MemScanConfig",
    "MemoryScanner",
    "Outcome",
    "PidScan",
    "ScanMemoryCore",
    "ScanResult",
    "ScanScheduler",
    "ScannedProcess",
    "SchedulerStats",
    "ThreatKind",
    "TracerInfo",
    "Trigger",
]
