"""BetaService messages <-> Beta's domain types (besides the servicer, the only `qsc.*` user
here; FIM, backup and certificate events have their own converters beside their cores)."""

from __future__ import annotations

from collections import Counter
from typing import Final

from beta.fim import Change, ChangeKind, ScanProgress
from beta.fim.convert import change_to_event
from beta.sources.fim import ScanOutcome
from qsc.beta.v1 import beta_service_pb2 as pb
from qsc.common.v1 import integrity_details_pb2

__all__ = ["change_detail", "progress_to_proto", "summary_to_proto"]

# Where each change kind is counted in a ScanSummary. A rotated log is accepted churn of its
# metadata; a truncated one lost content.
_COUNTED: Final = {
    ChangeKind.CREATED: "created",
    ChangeKind.DELETED: "deleted",
    ChangeKind.CONTENT_CHANGED: "content_changed",
    ChangeKind.LOG_TRUNCATED: "content_changed",
    ChangeKind.METADATA_CHANGED: "metadata_changed",
    ChangeKind.LOG_ROTATED: "metadata_changed",
}


def progress_to_proto(p: ScanProgress) -> pb.ScanIntegrityResponse:
    msg = pb.ScanProgress(
        files_scanned=p.files_done, files_total=p.files_total, bytes_hashed=p.bytes_done
    )
    msg.elapsed.FromNanoseconds(int(p.elapsed * 1e9))
    return pb.ScanIntegrityResponse(progress=msg)


def change_detail(change: Change) -> integrity_details_pb2.FileIntegrity:
    """The FileIntegrity of one change, exactly as its event would carry it."""
    return change_to_event(change).file_integrity


def summary_to_proto(outcome: ScanOutcome, *, quick: bool) -> pb.ScanIntegrityResponse:
    mode = pb.SCAN_MODE_QUICK if quick else pb.SCAN_MODE_FULL
    report = outcome.report
    if report is None:
        return pb.ScanIntegrityResponse(summary=pb.ScanSummary(mode=mode, baseline_tampered=True))
    counts = Counter(_COUNTED.get(c.kind, "") for c in report.changes)
    # Files the scan looked at and found as recorded (a deleted file was not looked at).
    differing = sum(n for kind, n in counts.items() if kind and kind != "deleted")
    summary = pb.ScanSummary(
        mode=mode,
        files_scanned=report.files,
        bytes_hashed=report.bytes,
        unchanged=max(0, report.files - differing),
        created=counts["created"],
        deleted=counts["deleted"],
        content_changed=counts["content_changed"],
        metadata_changed=counts["metadata_changed"],
        errors=len(report.issues),
        baseline_tampered=any(c.kind is ChangeKind.BASELINE_TAMPERED for c in report.changes),
    )
    summary.duration.FromNanoseconds(int(report.seconds * 1e9))
    return pb.ScanIntegrityResponse(summary=summary)
