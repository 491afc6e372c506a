"""What a memory scan finds: threat kinds, triggers, findings, per-pid outcomes, round results.

The kinds and what each means: the `scanner` module docstring.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from alpha.memscan.procfs import (
    MapEntry,
    ProcStatus,
)
from alpha.sensors.model import ProcessInfo


class ThreatKind(enum.StrEnum):
    """As `qsc.common.v1.MemoryThreatKind` and the rule field `mem.kind`."""

    WRITABLE_EXECUTABLE = "writable_executable"
    ANONYMOUS_EXECUTABLE = "anonymous_executable"
    MEMFD_EXECUTABLE = "memfd_executable"
    DELETED_EXECUTABLE = "deleted_executable"
    TRACED = "traced"
    LD_PRELOAD = "ld_preload"
    BACKDOORED_LIBRARY = "backdoored_library"


JIT_KINDS: Final = frozenset({ThreatKind.WRITABLE_EXECUTABLE, ThreatKind.ANONYMOUS_EXECUTABLE})


class Trigger(enum.StrEnum):
    """As `qsc.common.v1.MemoryScanTrigger` and the rule field `mem.trigger`."""

    PERIODIC = "periodic"
    EXEC = "exec"
    ON_DEMAND = "on_demand"
    SYSCALL = "syscall"


@dataclass(frozen=True, slots=True)
class ScannedProcess:
    """The process a finding is about: `info` from the sensor's process table when the scanner
    was given one (same exec_id and ancestry as the sensor's events), else built from /proc."""

    info: ProcessInfo
    status: ProcStatus  # at scan time: effective and saved ids, threads
    auid: int | None  # login uid; None when unset or unreadable
    args_truncated: bool = False


@dataclass(frozen=True, slots=True)
class TracerInfo:
    pid: int
    comm: str
    exe: str
    uid: int | None
    exec_id: str
    start_boot_ns: int  # 0 when not known
    tid: int  # the traced thread (the process itself, or one of its threads)


@dataclass(frozen=True, slots=True)
class Finding:
    kind: ThreatKind
    trigger: Trigger
    process: ScannedProcess
    time_ns: int  # wall clock of the scan
    regions: tuple[MapEntry, ...] = ()  # at most max_regions
    regions_truncated: bool = False
    tracer: TracerInfo | None = None
    preloaded: tuple[str, ...] = ()
    preload_sources: tuple[str, ...] = ()  # "environ" and/or the ld.so.preload path
    # backdoored_library: the known-bad files mapped, as maps names them or, for a generic name
    # (liblzma.so.5) that is a symlink, the file it leads to.
    libraries: tuple[str, ...] = ()
    allowlisted: bool = False
    # What makes this finding "the same" for dedup: every offending item, before truncation.
    identity: frozenset[Hashable] = field(default=frozenset(), compare=False)

    @property
    def pid(self) -> int:
        return self.process.info.pid

    @property
    def exec_id(self) -> str:
        return self.process.info.exec_id


class Outcome(enum.StrEnum):
    SCANNED = "scanned"
    GONE = "gone"  # exited before or during the scan
    DENIED = "denied"  # /proc refused access
    KERNEL_THREAD = "kernel_thread"
    ERROR = "error"  # an unexpected read or parse failure; logged


@dataclass(frozen=True, slots=True)
class PidScan:
    pid: int
    outcome: Outcome
    findings: tuple[Finding, ...] = ()
    error: str = ""


@dataclass(frozen=True, slots=True)
class ScanResult:
    """Totals of a scan of many processes. `skipped` counts processes that exited during the
    scan or that /proc refused (`denied` of them); kernel threads are neither."""

    findings: tuple[Finding, ...]
    scanned: int
    skipped: int
    denied: int
    errors: int
    kernel_threads: int
    duration_s: float
    missing: tuple[int, ...] = ()  # requested pids that did not exist

    @staticmethod
    def collect(
        scans: Iterable[PidScan], duration_s: float, missing: Sequence[int] = ()
    ) -> ScanResult:
        findings: list[Finding] = []
        counts = dict.fromkeys(Outcome, 0)
        for scan in scans:
            counts[scan.outcome] += 1
            findings.extend(scan.findings)
        return ScanResult(
            findings=tuple(findings),
            scanned=counts[Outcome.SCANNED],
            skipped=counts[Outcome.GONE] + counts[Outcome.DENIED],
            denied=counts[Outcome.DENIED],
            errors=counts[Outcome.ERROR],
            kernel_threads=counts[Outcome.KERNEL_THREAD],
            duration_s=duration_s,
            missing=tuple(missing),
        )
