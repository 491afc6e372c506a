"""FIM changes and health -> qsc.common.v1 events."""

from __future__ import annotations

import stat

import pytest

from beta.fim.baseline import Change, ChangeKind, Detection, Entry, tampered_change
from beta.fim.convert import apply_health, change_to_event, changes_to_events, severity_of
from beta.fim.metadata import CAPABILITY_XATTR, FileMeta, FileType, MetaField
from beta.fim.realtime import HealthObservation, SensorStatus
from mesh.guardian.sensors import SensorRegistry
from qsc.common.v1 import classification_pb2, event_pb2, integrity_details_pb2, pipeline_details_pb2

NOW = 1_800_000_000.0
H1, H2 = bytes(range(32)), bytes(range(1, 33))


def _meta(mode: int = 0o644, **kw: object) -> FileMeta:
    base: dict[str, object] = {
        "file_type": FileType.REGULAR,
        "mode": mode,
        "uid": 0,
        "gid": 0,
        "inode": 10,
        "size": 5,
        "mtime_ns": int((NOW - 60) * 1e9),
        "ctime_ns": int((NOW - 30) * 1e9),
    }
    base.update(kw)
    return FileMeta(**base)  # type: ignore[arg-type]


def _change(kind: ChangeKind, old: FileMeta | None, new: FileMeta | None, **kw: object) -> Change:
    return Change(
        path="/etc/sudoers",
        kind=kind,
        detection=Detection.REALTIME,
        old=Entry("/etc/sudoers", old, H1) if old else None,
        new=Entry("/etc/sudoers", new, H2) if new else None,
        baseline_version=7,
        heal="approve",
        time=NOW,
        **kw,  # type: ignore[arg-type]
    )


def test_content_change_event() -> None:
    change = _change(
        ChangeKind.CONTENT_CHANGED,
        _meta(),
        _meta(size=9, xattrs=(("user.a", b"1"),)),
        fields=(MetaField.SIZE, MetaField.MTIME, MetaField.CTIME),
    )
    event = change_to_event(change)
    assert event.WhichOneof("detail") == "file_integrity"
    assert event.category == classification_pb2.CATEGORY_INTEGRITY
    assert event.severity == classification_pb2.SEVERITY_HIGH
    fi = event.file_integrity
    assert fi.path == "/etc/sudoers"
    assert fi.change == integrity_details_pb2.FILE_CHANGE_CONTENT_CHANGED
    assert (fi.old_blake3, fi.new_blake3) == (H1, H2)
    assert list(fi.changed_metadata) == [
        integrity_details_pb2.METADATA_FIELD_SIZE,
        integrity_details_pb2.METADATA_FIELD_MTIME,
        integrity_details_pb2.METADATA_FIELD_CTIME,
    ]
    assert fi.detection == integrity_details_pb2.INTEGRITY_DETECTION_REALTIME
    assert fi.baseline_version == 7
    assert fi.heal_policy == 2  # HEAL_POLICY_APPROVE
    assert fi.old_metadata.size == 5
    assert fi.new_metadata.size == 9
    assert fi.new_metadata.file_type == integrity_details_pb2.FILE_TYPE_REGULAR
    assert dict(fi.new_metadata.xattrs) == {"user.a": b"1"}
    assert fi.new_metadata.ctime.ToNanoseconds() == int((NOW - 30) * 1e9)
    assert event.rule.id == "beta.fim.content_changed"
    assert [t.id for t in event.rule.techniques] == ["T1565.001"]
    # When it happened is the inode change; when it was seen is the observation.
    assert event.time.ToNanoseconds() == int((NOW - 30) * 1e9)
    assert event.observed_time.ToNanoseconds() == int(NOW * 1e9)
    assert "content changed" in event.summary
    # A round trip through the wire format keeps everything.
    assert event_pb2.Event.FromString(event.SerializeToString()) == event


def test_created_and_deleted_carry_one_side_only() -> None:
    created = change_to_event(_change(ChangeKind.CREATED, None, _meta()))
    assert not created.file_integrity.HasField("old_metadata")
    assert created.file_integrity.old_blake3 == b""
    deleted = change_to_event(_change(ChangeKind.DELETED, _meta(), None))
    assert not deleted.file_integrity.HasField("new_metadata")
    assert deleted.file_integrity.new_blake3 == b""
    assert deleted.time == deleted.observed_time
    assert deleted.severity == classification_pb2.SEVERITY_HIGH


@pytest.mark.parametrize(
    ("kind", "old", "new", "fields", "expected"),
    [
        (ChangeKind.METADATA_CHANGED, _meta(), _meta(mode=0o4755), (MetaField.MODE,), "CRITICAL"),
        (
            ChangeKind.METADATA_CHANGED,
            _meta(),
            _meta(xattrs=((CAPABILITY_XATTR, b"\x01"),)),
            (MetaField.CAPABILITIES,),
            "CRITICAL",
        ),
        (ChangeKind.METADATA_CHANGED, _meta(), _meta(mode=0o666), (MetaField.MODE,), "CRITICAL"),
        (ChangeKind.METADATA_CHANGED, _meta(), _meta(mode=0o600), (MetaField.MODE,), "HIGH"),
        (ChangeKind.METADATA_CHANGED, _meta(), _meta(uid=5), (MetaField.UID,), "HIGH"),
        (ChangeKind.METADATA_CHANGED, _meta(), _meta(), (MetaField.XATTRS,), "MEDIUM"),
        (ChangeKind.METADATA_CHANGED, _meta(), _meta(inode=11), (MetaField.INODE,), "LOW"),
        (ChangeKind.CREATED, None, _meta(), (), "MEDIUM"),
        (ChangeKind.CREATED, None, _meta(mode=0o2755), (), "CRITICAL"),
        (ChangeKind.LOG_ROTATED, _meta(), _meta(), (), "INFO"),
        (ChangeKind.LOG_ROTATED, _meta(), _meta(mode=0o666), (MetaField.MODE,), "MEDIUM"),
        (ChangeKind.LOG_TRUNCATED, _meta(), _meta(size=0), (), "HIGH"),
    ],
)
def test_severity(
    kind: ChangeKind,
    old: FileMeta | None,
    new: FileMeta | None,
    fields: tuple[MetaField, ...],
    expected: str,
) -> None:
    change = _change(kind, old, new, fields=fields)
    assert severity_of(change) == classification_pb2.Severity.Value("SEVERITY_" + expected)


def test_privilege_changes_name_the_setuid_technique() -> None:
    event = change_to_event(
        _change(ChangeKind.METADATA_CHANGED, _meta(), _meta(mode=0o4755), fields=(MetaField.MODE,))
    )
    assert event.rule.id == "beta.fim.privilege"
    (technique,) = event.rule.techniques
    assert technique.id == "T1548.001"
    assert classification_pb2.MITRE_TACTIC_PRIVILEGE_ESCALATION in technique.tactics
    assert stat.S_ISUID & event.file_integrity.new_metadata.mode


def test_baseline_tampered_and_log_truncated_events() -> None:
    tampered, truncated = changes_to_events(
        [
            tampered_change("/var/lib/qsc/b.qsc", "authentication failed"),
            _change(ChangeKind.LOG_TRUNCATED, _meta(), _meta(size=0), detail="shrank"),
        ]
    )
    assert tampered.severity == classification_pb2.SEVERITY_CRITICAL
    assert tampered.file_integrity.change == integrity_details_pb2.FILE_CHANGE_BASELINE_TAMPERED
    assert tampered.file_integrity.path == "/var/lib/qsc/b.qsc"
    assert "authentication failed" in tampered.summary
    assert truncated.rule.techniques[0].id == "T1070.002"
    assert truncated.file_integrity.change == integrity_details_pb2.FILE_CHANGE_LOG_TRUNCATED


def test_apply_health_emits_sensor_health_with_the_overflows() -> None:
    events: list[event_pb2.Event] = []
    registry = SensorRegistry(events.append)
    handle = registry.register("fim.inotify", mode="inotify")
    degraded = HealthObservation(
        SensorStatus.DEGRADED, ("queue overflowed; rescan started",), "inotify", 1, 1, 0, NOW
    )
    apply_health(degraded, handle)
    apply_health(HealthObservation(SensorStatus.HEALTHY, (), "inotify", 1, 0, 0, NOW), handle)
    states = [e.sensor_health.state for e in events]
    assert states == [
        pipeline_details_pb2.SENSOR_STATE_HEALTHY,
        pipeline_details_pb2.SENSOR_STATE_DEGRADED,
        pipeline_details_pb2.SENSOR_STATE_HEALTHY,
    ]
    health = events[1].sensor_health
    assert list(health.reasons) == ["queue overflowed; rescan started"]
    assert health.loss.kernel_queue_overflows == 1
