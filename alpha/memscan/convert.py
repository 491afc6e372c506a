"""Memory-scan findings -> protobuf: `qsc.common.v1.Event` (detail `memory_threat`) for the
outbox, `qsc.alpha.v1.MemoryFinding` for `ScanMemory`.

The event carries what the rule fields `mem.*` and `proc.*` read (alpha/rules/fields/): the
threat kind and trigger, the offending regions, the tracer, the preloaded libraries, and the
process as /proc (or the sensor's process table) knew it. `id`, `guardian` and `observed_time` are
left to `Guardian.emit`, the `rule` to the rules engine.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Final

from alpha.memscan.model import Finding, ScannedProcess, ThreatKind, TracerInfo, Trigger
from alpha.memscan.procfs import DELETED_SUFFIX, MapEntry
from qsc.alpha.v1 import alpha_service_pb2
from qsc.common.v1 import classification_pb2, event_pb2, memory_details_pb2, process_pb2

Severity = classification_pb2.Severity

_UNSET_AUID: Final = 4294967295

KIND_TO_PROTO: Final[Mapping[ThreatKind, memory_details_pb2.MemoryThreatKind.ValueType]] = {
    ThreatKind.WRITABLE_EXECUTABLE: memory_details_pb2.MEMORY_THREAT_KIND_WRITABLE_EXECUTABLE,
    ThreatKind.ANONYMOUS_EXECUTABLE: memory_details_pb2.MEMORY_THREAT_KIND_ANONYMOUS_EXECUTABLE,
    ThreatKind.MEMFD_EXECUTABLE: memory_details_pb2.MEMORY_THREAT_KIND_MEMFD_EXECUTABLE,
    ThreatKind.DELETED_EXECUTABLE: memory_details_pb2.MEMORY_THREAT_KIND_DELETED_EXECUTABLE,
    ThreatKind.TRACED: memory_details_pb2.MEMORY_THREAT_KIND_TRACED,
    ThreatKind.LD_PRELOAD: memory_details_pb2.MEMORY_THREAT_KIND_LD_PRELOAD,
    ThreatKind.BACKDOORED_LIBRARY: memory_details_pb2.MEMORY_THREAT_KIND_BACKDOORED_LIBRARY,
}
TRIGGER_TO_PROTO: Final[Mapping[Trigger, memory_details_pb2.MemoryScanTrigger.ValueType]] = {
    Trigger.PERIODIC: memory_details_pb2.MEMORY_SCAN_TRIGGER_PERIODIC,
    Trigger.EXEC: memory_details_pb2.MEMORY_SCAN_TRIGGER_EXEC,
    Trigger.ON_DEMAND: memory_details_pb2.MEMORY_SCAN_TRIGGER_ON_DEMAND,
    Trigger.SYSCALL: memory_details_pb2.MEMORY_SCAN_TRIGGER_SYSCALL,
}
# The detector's judgement; the rules engine may raise or lower it with the rule's priority.
SEVERITY: Final[Mapping[ThreatKind, classification_pb2.Severity.ValueType]] = {
    ThreatKind.WRITABLE_EXECUTABLE: Severity.SEVERITY_HIGH,
    ThreatKind.ANONYMOUS_EXECUTABLE: Severity.SEVERITY_MEDIUM,
    ThreatKind.MEMFD_EXECUTABLE: Severity.SEVERITY_CRITICAL,  # fileless execution
    ThreatKind.DELETED_EXECUTABLE: Severity.SEVERITY_MEDIUM,
    ThreatKind.TRACED: Severity.SEVERITY_HIGH,
    ThreatKind.LD_PRELOAD: Severity.SEVERITY_HIGH,
    ThreatKind.BACKDOORED_LIBRARY: Severity.SEVERITY_HIGH,
}
_WHAT: Final[Mapping[ThreatKind, str]] = {
    ThreatKind.WRITABLE_EXECUTABLE: "writable+executable memory",
    ThreatKind.ANONYMOUS_EXECUTABLE: "anonymous executable memory",
    ThreatKind.MEMFD_EXECUTABLE: "executable running from a memfd",
    ThreatKind.DELETED_EXECUTABLE: "deleted executable code",
    ThreatKind.TRACED: "process traced",
    ThreatKind.LD_PRELOAD: "preloaded libraries",
    ThreatKind.BACKDOORED_LIBRARY: "known backdoored library",
}


def severity_of(finding: Finding) -> classification_pb2.Severity.ValueType:
    if finding.allowlisted:
        return Severity.SEVERITY_INFO
    if finding.kind is ThreatKind.DELETED_EXECUTABLE and not finding.process.info.exe.endswith(
        DELETED_SUFFIX
    ):
        # Only libraries are deleted: the usual trace of a package upgrade under a running daemon.
        return Severity.SEVERITY_LOW
    return SEVERITY[finding.kind]


def _boot_epoch_ns() -> int:
    """Wall clock of the boot: /proc start times count from it (CLOCK_BOOTTIME)."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def region_to_proto(entry: MapEntry) -> memory_details_pb2.MemoryRegion:
    return memory_details_pb2.MemoryRegion(
        start=entry.start,
        end=entry.end,
        permissions=entry.perms,
        offset=entry.offset,
        path=entry.path,
        inode=entry.inode,
    )


def tracer_to_proto(tracer: TracerInfo, boot_epoch_ns: int) -> process_pb2.ProcessRef:
    ref = process_pb2.ProcessRef(
        pid=tracer.pid, exec_id=tracer.exec_id, comm=tracer.comm, exe=tracer.exe
    )
    if tracer.uid is not None:
        ref.uid = tracer.uid
    if tracer.start_boot_ns:
        ref.start_time.FromNanoseconds(boot_epoch_ns + tracer.start_boot_ns)
    return ref


def threat_to_proto(
    finding: Finding, boot_epoch_ns: int | None = None
) -> memory_details_pb2.MemoryThreat:
    threat = memory_details_pb2.MemoryThreat(
        kind=KIND_TO_PROTO[finding.kind],
        trigger=TRIGGER_TO_PROTO[finding.trigger],
        regions=[region_to_proto(r) for r in finding.regions],
        regions_truncated=finding.regions_truncated,
        preloaded_libraries=finding.preloaded,
    )
    if finding.tracer is not None:
        epoch = _boot_epoch_ns() if boot_epoch_ns is None else boot_epoch_ns
        threat.tracer.CopyFrom(tracer_to_proto(finding.tracer, epoch))
    return threat


def process_to_proto(
    scanned: ScannedProcess, boot_epoch_ns: int | None = None
) -> process_pb2.Process:
    info, status = scanned.info, scanned.status
    proc = process_pb2.Process(
        pid=info.pid,
        ppid=max(info.ppid, 0),
        # The table's ids are -1 when it could not read them: the scan's own status then.
        uid=info.uid if info.uid >= 0 else status.uids[0],
        gid=info.gid if info.gid >= 0 else status.gids[0],
        euid=info.euid if info.euid is not None and info.euid >= 0 else status.uids[1],
        egid=status.gids[1],
        auid=_UNSET_AUID if scanned.auid is None else scanned.auid,
        comm=info.comm,
        exe=info.exe,
        args=info.args,
        args_truncated=scanned.args_truncated,
        cwd=info.cwd,
        exec_id=info.exec_id,
        parent_exec_id=info.parent_exec_id,
        cgroup=info.cgroup,
        container_id=info.container_id,
        ancestry=[
            process_pb2.ProcessRef(pid=a.pid, exec_id=a.exec_id, comm=a.comm, exe=a.exe)
            for a in info.ancestry
        ],
    )
    if info.start_boot_ns:
        epoch = _boot_epoch_ns() if boot_epoch_ns is None else boot_epoch_ns
        proc.start_time.FromNanoseconds(epoch + info.start_boot_ns)
    return proc


def summary(finding: Finding) -> str:
    """One line for people: what, in which process, and the gist of the evidence."""
    info = finding.process.info
    text = f"{_WHAT[finding.kind]} in {info.comm or '?'} (pid {info.pid}, exe {info.exe or '?'})"
    if finding.tracer is not None:
        tracer = finding.tracer
        text += f" by {tracer.comm or '?'} (pid {tracer.pid}, exe {tracer.exe or '?'})"
    elif finding.preloaded:
        text += f": {', '.join(finding.preloaded)}"
    elif finding.libraries:
        text += f": {', '.join(finding.libraries)}"
    elif finding.regions:
        more = "+" if finding.regions_truncated else ""
        text += f": {len(finding.regions)}{more} region(s), first {finding.regions[0].perms}"
        text += f" {finding.regions[0].path or '[anonymous]'}"
    if finding.allowlisted:
        text += " (allowlisted JIT runtime)"
    return text


def finding_to_event(finding: Finding, boot_epoch_ns: int | None = None) -> event_pb2.Event:
    epoch = _boot_epoch_ns() if boot_epoch_ns is None else boot_epoch_ns
    event = event_pb2.Event(
        severity=severity_of(finding),
        category=classification_pb2.CATEGORY_MEMORY,
        summary=summary(finding),
    )
    event.time.FromNanoseconds(finding.time_ns)
    event.process.CopyFrom(process_to_proto(finding.process, epoch))
    event.memory_threat.CopyFrom(threat_to_proto(finding, epoch))
    return event


def findings_to_events(findings: Iterable[Finding]) -> list[event_pb2.Event]:
    epoch = _boot_epoch_ns()
    return [finding_to_event(f, epoch) for f in findings]


def finding_to_proto(
    finding: Finding, boot_epoch_ns: int | None = None
) -> alpha_service_pb2.MemoryFinding:
    epoch = _boot_epoch_ns() if boot_epoch_ns is None else boot_epoch_ns
    return alpha_service_pb2.MemoryFinding(
        process=process_to_proto(finding.process, epoch),
        threat=threat_to_proto(finding, epoch),
        allowlisted=finding.allowlisted,
        severity=severity_of(finding),
    )
