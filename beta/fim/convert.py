"""FIM domain types -> `qsc.common.v1` events (the only FIM module that imports `qsc.*`).

`change_to_event` builds an `Event` with detail `file_integrity`, category INTEGRITY, a severity
that weighs what changed (privilege-relevant changes such as a new setuid bit or file capability
are CRITICAL), and a rule reference with MITRE ATT&CK techniques. The runtime stamps id, guardian
and sequence number. `apply_health` forwards the realtime sensor's health to the guardian's
sensor registry, which emits the sensor-health events (losses counted as kernel queue overflows).
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from typing import Final

from beta.fim.baseline import Change, ChangeKind, Entry
from beta.fim.metadata import FileMeta, FileType, MetaField
from beta.fim.realtime import HealthObservation, SensorStatus
from mesh.guardian.sensors import LossStage, SensorHandle
from qsc.common.v1 import (
    classification_pb2 as cls,
)
from qsc.common.v1 import (
    event_pb2,
    heal_details_pb2,
    integrity_details_pb2,
)

__all__ = [
    "apply_health",
    "change_to_event",
    "changes_to_events",
    "file_metadata",
    "rule_ref",
    "severity_of",
]

_S = cls.Severity
_DE = cls.MITRE_TACTIC_DEFENSE_EVASION
_PE = cls.MITRE_TACTIC_PRIVILEGE_ESCALATION
_I = cls.MITRE_TACTIC_IMPACT
_TECHNIQUES: Final = {
    "T1565.001": ("Stored Data Manipulation", (_I,)),
    "T1222.002": ("Linux and Mac File and Directory Permissions Modification", (_DE,)),
    "T1548.001": ("Setuid and Setgid", (_PE, _DE)),
    "T1070.004": ("File Deletion", (_DE,)),
    "T1070.002": ("Clear Linux or Mac System Logs", (_DE,)),
    "T1562.001": ("Disable or Modify Tools", (_DE,)),
}
# kind -> (rule id, rule name, techniques)
_RULES: Final = {
    ChangeKind.CREATED: ("beta.fim.created", "Watched file created", ()),
    ChangeKind.DELETED: ("beta.fim.deleted", "Watched file deleted", ("T1070.004",)),
    ChangeKind.CONTENT_CHANGED: (
        "beta.fim.content_changed",
        "Watched file content changed",
        ("T1565.001",),
    ),
    ChangeKind.METADATA_CHANGED: (
        "beta.fim.metadata_changed",
        "Watched file metadata changed",
        ("T1222.002",),
    ),
    ChangeKind.BASELINE_TAMPERED: (
        "beta.fim.baseline_tampered",
        "Integrity baseline failed verification",
        ("T1562.001",),
    ),
    ChangeKind.LOG_ROTATED: ("beta.fim.log_rotated", "Log rotated", ()),
    ChangeKind.LOG_TRUNCATED: (
        "beta.fim.log_truncated",
        "Log truncated or cleared",
        ("T1070.002",),
    ),
}
_ESCALATION_RULE: Final = ("beta.fim.privilege", "Privilege-relevant file change", ("T1548.001",))
_PERMISSION_FIELDS: Final = frozenset(
    {
        MetaField.FILE_TYPE,
        MetaField.MODE,
        MetaField.UID,
        MetaField.GID,
        MetaField.CAPABILITIES,
        MetaField.SELINUX_LABEL,
        MetaField.SYMLINK_TARGET,
    }
)
_SETID: Final = stat.S_ISUID | stat.S_ISGID
_WRITE_OTHERS: Final = stat.S_IWGRP | stat.S_IWOTH


def _grants_privilege(old: FileMeta | None, new: FileMeta | None) -> bool:
    """A setuid/setgid bit, a file capability or group/other write that was not there before."""
    if new is None:
        return False
    old_mode = old.mode if old is not None else 0
    if new.file_type is FileType.REGULAR and new.mode & _SETID & ~old_mode:
        return True
    if new.mode & _WRITE_OTHERS & ~old_mode and new.file_type is not FileType.SYMLINK:
        return True
    caps = new.capabilities
    return caps is not None and caps != (old.capabilities if old is not None else None)


def severity_of(change: Change) -> cls.Severity.ValueType:
    kind = change.kind
    old = change.old.meta if change.old else None
    new = change.new.meta if change.new else None
    escalates = _grants_privilege(old, new)
    if kind is ChangeKind.BASELINE_TAMPERED:
        return _S.Value("SEVERITY_CRITICAL")
    if kind is ChangeKind.LOG_ROTATED:
        return _S.Value("SEVERITY_MEDIUM" if change.fields else "SEVERITY_INFO")
    if kind in (ChangeKind.LOG_TRUNCATED, ChangeKind.DELETED):
        return _S.Value("SEVERITY_HIGH")
    if escalates:
        return _S.Value("SEVERITY_CRITICAL")
    if kind is ChangeKind.CONTENT_CHANGED:
        return _S.Value("SEVERITY_HIGH")
    if kind is ChangeKind.CREATED:
        return _S.Value("SEVERITY_MEDIUM")
    fields = set(change.fields)
    if fields & _PERMISSION_FIELDS:
        return _S.Value("SEVERITY_HIGH")
    if MetaField.XATTRS in fields:
        return _S.Value("SEVERITY_MEDIUM")
    return _S.Value("SEVERITY_LOW")  # inode, size or times only


def _rule(change: Change) -> cls.RuleRef:
    old = change.old.meta if change.old else None
    new = change.new.meta if change.new else None
    rule_id, name, techniques = _RULES[change.kind]
    if change.kind in (ChangeKind.CREATED, ChangeKind.METADATA_CHANGED) and _grants_privilege(
        old, new
    ):
        rule_id, name, techniques = _ESCALATION_RULE
    return rule_ref(rule_id, name, techniques)


def rule_ref(rule_id: str, name: str, techniques: Iterable[str]) -> cls.RuleRef:
    """A Beta rule reference with its ATT&CK techniques (ids from the table above)."""
    ref = cls.RuleRef(id=rule_id, name=name)
    for tid in techniques:
        tname, tactics = _TECHNIQUES[tid]
        ref.techniques.add(id=tid, name=tname, tactics=tactics)
    return ref


def file_metadata(meta: FileMeta) -> integrity_details_pb2.FileMetadata:
    pb = integrity_details_pb2.FileMetadata(
        file_type=integrity_details_pb2.FileType.Value("FILE_TYPE_" + meta.file_type.name),
        mode=meta.mode,
        uid=meta.uid,
        gid=meta.gid,
        inode=meta.inode,
        size=meta.size,
        symlink_target=meta.symlink_target or "",
        xattrs=dict(meta.xattrs),
    )
    pb.mtime.FromNanoseconds(meta.mtime_ns)
    pb.ctime.FromNanoseconds(meta.ctime_ns)
    return pb


def _digest(entry: Entry | None) -> bytes:
    return entry.blake3 if entry is not None and entry.blake3 is not None else b""


def _summary(change: Change) -> str:
    what = {
        ChangeKind.CREATED: "created",
        ChangeKind.DELETED: "deleted",
        ChangeKind.CONTENT_CHANGED: "content changed",
        ChangeKind.METADATA_CHANGED: "metadata changed",
        ChangeKind.BASELINE_TAMPERED: "integrity baseline failed verification",
        ChangeKind.LOG_ROTATED: "log rotated",
        ChangeKind.LOG_TRUNCATED: "log truncated",
    }[change.kind]
    text = f"{change.path}: {what}"
    if change.fields:
        text += f" ({', '.join(f.value for f in change.fields)})"
    if change.detail:
        text += f": {change.detail}"
    return text[:512]


def change_to_event(change: Change) -> event_pb2.Event:
    detail = integrity_details_pb2.FileIntegrity(
        path=change.path,
        change=integrity_details_pb2.FileChange.Value("FILE_CHANGE_" + change.kind.name),
        old_blake3=_digest(change.old),
        new_blake3=_digest(change.new),
        changed_metadata=[
            integrity_details_pb2.MetadataField.Value("METADATA_FIELD_" + f.name)
            for f in change.fields
        ],
        detection=integrity_details_pb2.IntegrityDetection.Value(
            "INTEGRITY_DETECTION_" + change.detection.name
        ),
        baseline_version=change.baseline_version,
        heal_policy=heal_details_pb2.HealPolicy.Value("HEAL_POLICY_" + change.heal.upper()),
    )
    if change.old is not None:
        detail.old_metadata.CopyFrom(file_metadata(change.old.meta))
    if change.new is not None:
        detail.new_metadata.CopyFrom(file_metadata(change.new.meta))
    event = event_pb2.Event(
        severity=severity_of(change),
        category=cls.CATEGORY_INTEGRITY,
        rule=_rule(change),
        summary=_summary(change),
        file_integrity=detail,
    )
    observed_ns = int(change.time * 1e9)
    # When it happened: the inode's last change, which cannot be set back (unlike mtime); the
    # observation time for a deletion or when ctime is implausible (clock skew).
    happened_ns = observed_ns
    if change.new is not None and change.kind is not ChangeKind.LOG_ROTATED:
        ctime = change.new.meta.ctime_ns
        if 0 < ctime <= observed_ns:
            happened_ns = ctime
    event.time.FromNanoseconds(happened_ns)
    event.observed_time.FromNanoseconds(observed_ns)
    return event


def changes_to_events(changes: Iterable[Change]) -> list[event_pb2.Event]:
    return [change_to_event(c) for c in changes]


def apply_health(obs: HealthObservation, handle: SensorHandle) -> None:
    """Forward a health observation to the guardian's sensor registry (which emits the
    sensor-health event). Overflows are counted before the state change, so the event that
    announces the degraded mode carries them."""
    if obs.overflows_delta:
        handle.count_loss(LossStage.KERNEL_QUEUE, obs.overflows_delta)
    if obs.state is SensorStatus.HEALTHY:
        handle.healthy(mode=obs.mode)
    elif obs.state is SensorStatus.DEGRADED:
        handle.degraded(*(obs.reasons or ("degraded",)), mode=obs.mode)
    else:
        handle.failed(*(obs.reasons or ("failed",)), mode=obs.mode)
