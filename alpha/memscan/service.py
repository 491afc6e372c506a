"""The pure core behind `qsc.alpha.v1.AlphaService/ScanMemory`: validate, scan, answer.

The servicer decodes nothing itself: it hands the request message to `ScanMemoryCore.scan_memory`
and returns the response, letting `mesh.status` map the errors raised here (INVALID_ARGUMENT for
a malformed request, NOT_FOUND when every pid asked for is absent). A scan blocks for a few ms per
process: an asyncio servicer runs it in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

from alpha.errors import AlphaInvalidArgumentError, AlphaNotFoundError
from alpha.memscan import convert
from alpha.memscan.dedup import Deduper
from alpha.memscan.model import Finding, ScanResult, ThreatKind, Trigger
from alpha.memscan.scanner import MemoryScanner
from qsc.alpha.v1 import alpha_service_pb2
from qsc.common.v1 import event_pb2

EventSink = Callable[[list[event_pb2.Event]], object]  # e.g. Guardian.emit_many

MAX_PIDS: Final = 4096
_PID_MAX_LIMIT: Final = 4194304  # the kernel's ceiling for kernel.pid_max (PID_MAX_LIMIT)
_KIND_ORDER: Final = {kind: i for i, kind in enumerate(ThreatKind)}


def read_pid_max(proc: Path) -> int:
    try:
        return int((proc / "sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return _PID_MAX_LIMIT


def validate_pids(pids: Iterable[int], pid_max: int) -> list[int]:
    """The distinct pids asked for, ascending; raises AlphaInvalidArgumentError naming the first
    bad one. Empty means every process."""
    wanted = list(pids)
    if len(wanted) > MAX_PIDS:
        raise AlphaInvalidArgumentError(
            f"pids: at most {MAX_PIDS} per request, got {len(wanted)}; send none to scan all"
        )
    for pid in wanted:
        if pid <= 0:
            raise AlphaInvalidArgumentError(
                f"pids: {pid} is not a process id; send no pids to scan every process"
            )
        if pid > pid_max:
            raise AlphaInvalidArgumentError(f"pids: {pid} is above this host's pid_max {pid_max}")
    return sorted(set(wanted))


class ScanMemoryCore:
    """`emit` receives the events of the findings (allowlisted ones excepted) unless the request
    says `skip_events`; with `dedup` (the scheduler's), they are recorded as reported so the
    periodic scan does not repeat what an operator has just been told."""

    def __init__(
        self,
        scanner: MemoryScanner,
        *,
        emit: EventSink | None = None,
        dedup: Deduper | None = None,
    ) -> None:
        self.scanner = scanner
        self._emit = emit
        self._dedup = dedup
        self._pid_max = read_pid_max(scanner.proc)

    def run(self, pids: Iterable[int], *, include_allowlisted: bool = False) -> ScanResult:
        """Validated scan, as domain types: every process when `pids` is empty."""
        wanted = validate_pids(pids, self._pid_max)
        if not wanted:
            return self.scanner.scan_all(Trigger.ON_DEMAND, include_allowlisted=include_allowlisted)
        result = self.scanner.scan_pids(
            wanted,
            Trigger.ON_DEMAND,
            include_allowlisted=include_allowlisted,
            report_missing=True,
        )
        if len(result.missing) == len(wanted):
            shown = ", ".join(str(p) for p in result.missing[:10])
            more = ", ..." if len(result.missing) > 10 else ""
            raise AlphaNotFoundError(f"no such process: {shown}{more}")
        return result

    def scan_memory(
        self, request: alpha_service_pb2.ScanMemoryRequest
    ) -> alpha_service_pb2.ScanMemoryResponse:
        result = self.run(request.pids, include_allowlisted=request.include_allowlisted)
        findings = sorted(result.findings, key=lambda f: (f.pid, _KIND_ORDER[f.kind]))
        if not request.skip_events:
            self._publish([f for f in findings if not f.allowlisted])
        response = alpha_service_pb2.ScanMemoryResponse(
            processes_scanned=result.scanned,
            processes_skipped=result.skipped + result.errors,
            missing_pids=result.missing,
        )
        response.findings.extend(convert.finding_to_proto(f) for f in findings)
        response.duration.FromNanoseconds(int(result.duration_s * 1e9))
        return response

    def _publish(self, findings: list[Finding]) -> None:
        if self._dedup is not None:
            self._dedup.admit(findings)
        if findings and self._emit is not None:
            self._emit(convert.findings_to_events(findings))
