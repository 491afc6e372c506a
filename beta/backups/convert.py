"""Backup verification results <-> `qsc.common.v1` messages (the only qsc.* import here)."""

from __future__ import annotations

from collections import Counter
from typing import Final

from beta.backups.verify import BackupFailure, FailureKind, VerifyDepth, VerifyResult
from qsc.common.v1 import classification_pb2 as cls
from qsc.common.v1 import event_pb2
from qsc.common.v1 import integrity_details_pb2 as pb

__all__ = ["depth_from_proto", "failure_to_proto", "result_to_event", "result_to_proto"]

_KIND: Final[dict[FailureKind, pb.BackupFailureKind.ValueType]] = {
    FailureKind.MISSING: pb.BACKUP_FAILURE_KIND_MISSING,
    FailureKind.TRUNCATED: pb.BACKUP_FAILURE_KIND_TRUNCATED,
    FailureKind.SIZE_MISMATCH: pb.BACKUP_FAILURE_KIND_SIZE_MISMATCH,
    FailureKind.CONTENT_MISMATCH: pb.BACKUP_FAILURE_KIND_CONTENT_MISMATCH,
    FailureKind.UNEXPECTED_FILE: pb.BACKUP_FAILURE_KIND_UNEXPECTED_FILE,
    FailureKind.MANIFEST_TAMPERED: pb.BACKUP_FAILURE_KIND_MANIFEST_TAMPERED,
    FailureKind.DECRYPTION_FAILURE: pb.BACKUP_FAILURE_KIND_DECRYPTION_FAILURE,
    FailureKind.UNREADABLE: pb.BACKUP_FAILURE_KIND_UNREADABLE,
}
_DEPTH: Final[dict[VerifyDepth, pb.VerifyDepth.ValueType]] = {
    VerifyDepth.STRUCTURAL: pb.VERIFY_DEPTH_STRUCTURAL,
    VerifyDepth.FULL: pb.VERIFY_DEPTH_FULL,
}
# A tampered manifest means nothing about the set can be trusted any more; lost or damaged
# content means a restore would fail; a stray file or an unreadable one needs a look.
_SEVERITY: Final[dict[FailureKind, cls.Severity.ValueType]] = {
    FailureKind.MANIFEST_TAMPERED: cls.SEVERITY_CRITICAL,
    FailureKind.MISSING: cls.SEVERITY_HIGH,
    FailureKind.TRUNCATED: cls.SEVERITY_HIGH,
    FailureKind.SIZE_MISMATCH: cls.SEVERITY_HIGH,
    FailureKind.CONTENT_MISMATCH: cls.SEVERITY_HIGH,
    FailureKind.DECRYPTION_FAILURE: cls.SEVERITY_HIGH,
    FailureKind.UNEXPECTED_FILE: cls.SEVERITY_MEDIUM,
    FailureKind.UNREADABLE: cls.SEVERITY_MEDIUM,
}


def depth_from_proto(
    value: pb.VerifyDepth.ValueType, default: VerifyDepth = VerifyDepth.FULL
) -> VerifyDepth:
    """UNSPECIFIED means the configured default."""
    for depth, number in _DEPTH.items():
        if number == value:
            return depth
    return default


def failure_to_proto(f: BackupFailure) -> pb.BackupFailure:
    return pb.BackupFailure(
        kind=_KIND[f.kind],
        path=f.path,
        expected_size=f.expected_size,
        actual_size=f.actual_size,
        expected_sha3_256=f.expected_sha3_256,
        actual_sha3_256=f.actual_sha3_256,
        message=f.message,
    )


def result_to_proto(r: VerifyResult) -> pb.BackupIntegrity:
    msg = pb.BackupIntegrity(
        backup_set=r.backup_set,
        depth=_DEPTH[r.depth],
        passed=r.passed,
        files_expected=r.files_expected,
        files_checked=r.files_checked,
        bytes_checked=r.bytes_checked,
        failures=[failure_to_proto(f) for f in r.failures],
        failure_count=r.failure_count,
        manifest_path=str(r.manifest_path),
        subset_index=r.subset_index,
        subset_count=r.subset_count if r.subset_count > 1 else 0,
    )
    if r.manifest_created is not None:
        msg.manifest_create_time.FromDatetime(r.manifest_created)
    msg.duration.FromTimedelta(r.duration)
    return msg


def _summary(r: VerifyResult) -> str:
    what = f"backup set {r.backup_set or '?'}: {r.depth.value} verify"
    if r.subset_count > 1:
        what += f" (subset {r.subset_index + 1}/{r.subset_count})"
    if r.passed:
        return f"{what} passed, {r.files_checked} files, {r.bytes_checked} bytes read"
    kinds = Counter(f.kind for f in r.failures)
    listed = ", ".join(
        f"{n} {k.value}" for k, n in sorted(kinds.items(), key=lambda kv: kv[0].value)
    )
    more = "" if r.failure_count == len(r.failures) else f" (first {len(r.failures)} listed)"
    return f"{what} failed: {r.failure_count} failures{more}: {listed}"


def result_to_event(r: VerifyResult) -> event_pb2.Event:
    """An event for the outbox; the guardian runtime stamps id, guardian and observed time."""
    severity = max((_SEVERITY[f.kind] for f in r.failures), default=cls.SEVERITY_INFO)
    if not r.passed and not r.failures:  # failures exist but none listed (max_failures=0)
        severity = cls.SEVERITY_HIGH
    event = event_pb2.Event(
        severity=severity,
        category=cls.CATEGORY_BACKUP,
        summary=_summary(r),
        backup_integrity=result_to_proto(r),
    )
    event.time.FromDatetime(r.started + r.duration)
    return event
