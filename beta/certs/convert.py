"""Certificate reports <-> `qsc.common.v1` messages (the only qsc.* import here)."""

from __future__ import annotations

import datetime as dt
from typing import Final

from beta.certs.check import CertificateReport, Problem
from beta.certs.ocsp import RevocationMethod, RevocationResult, RevocationState
from qsc.common.v1 import certificate_details_pb2 as pb
from qsc.common.v1 import classification_pb2 as cls
from qsc.common.v1 import event_pb2

__all__ = ["report_to_event", "report_to_proto", "revocation_to_proto"]

_PROBLEM: Final[dict[Problem, pb.CertificateProblem.ValueType]] = {
    Problem.EXPIRED: pb.CERTIFICATE_PROBLEM_EXPIRED,
    Problem.EXPIRING_SOON: pb.CERTIFICATE_PROBLEM_EXPIRING_SOON,
    Problem.NOT_YET_VALID: pb.CERTIFICATE_PROBLEM_NOT_YET_VALID,
    Problem.CHAIN_INVALID: pb.CERTIFICATE_PROBLEM_CHAIN_INVALID,
    Problem.REVOKED: pb.CERTIFICATE_PROBLEM_REVOKED,
    Problem.REVOCATION_UNKNOWN: pb.CERTIFICATE_PROBLEM_REVOCATION_UNKNOWN,
    Problem.REVOCATION_UNAVAILABLE: pb.CERTIFICATE_PROBLEM_REVOCATION_UNAVAILABLE,
    Problem.KEY_MISMATCH: pb.CERTIFICATE_PROBLEM_KEY_MISMATCH,
    Problem.WEAK_KEY: pb.CERTIFICATE_PROBLEM_WEAK_KEY,
    Problem.WEAK_SIGNATURE: pb.CERTIFICATE_PROBLEM_WEAK_SIGNATURE,
    Problem.HOSTNAME_MISMATCH: pb.CERTIFICATE_PROBLEM_HOSTNAME_MISMATCH,
    Problem.MALFORMED: pb.CERTIFICATE_PROBLEM_MALFORMED,
    Problem.UNREADABLE: pb.CERTIFICATE_PROBLEM_UNREADABLE,
}
_STATE: Final[dict[RevocationState, pb.RevocationState.ValueType]] = {
    RevocationState.NOT_CHECKED: pb.REVOCATION_STATE_NOT_CHECKED,
    RevocationState.GOOD: pb.REVOCATION_STATE_GOOD,
    RevocationState.REVOKED: pb.REVOCATION_STATE_REVOKED,
    RevocationState.UNKNOWN: pb.REVOCATION_STATE_UNKNOWN,
    RevocationState.ERROR: pb.REVOCATION_STATE_ERROR,
}
_METHOD: Final[dict[RevocationMethod, pb.RevocationMethod.ValueType]] = {
    RevocationMethod.OCSP: pb.REVOCATION_METHOD_OCSP,
    RevocationMethod.CRL: pb.REVOCATION_METHOD_CRL,
}


def _set_time(target: object, value: dt.datetime | None) -> None:
    if value is not None:
        target.FromDatetime(value)  # type: ignore[attr-defined]


def revocation_to_proto(r: RevocationResult) -> pb.RevocationStatus:
    msg = pb.RevocationStatus(
        state=_STATE[r.state],
        method=_METHOD[r.method] if r.method else pb.REVOCATION_METHOD_UNSPECIFIED,
        revocation_reason=r.revocation_reason,
        url=r.url,
        error=r.error,
    )
    _set_time(msg.revocation_time, r.revocation_time)
    _set_time(msg.this_update, r.this_update)
    _set_time(msg.next_update, r.next_update)
    return msg


def report_to_proto(r: CertificateReport) -> pb.CertificateStatus:
    msg = pb.CertificateStatus(
        path=str(r.path),
        index=r.index,
        subject=r.subject,
        issuer=r.issuer,
        serial_number=r.serial_number,
        sha256_fingerprint=r.sha256_fingerprint,
        days_until_expiry=r.days_until_expiry,
        problems=[_PROBLEM[p] for p in r.problems],
        expiry_threshold_days=r.expiry_threshold_days,
        revocation=revocation_to_proto(r.revocation),
        chain_error=r.chain_error,
        key_algorithm=r.key_algorithm,
        key_bits=r.key_bits,
        signature_algorithm=r.signature_algorithm,
        subject_alt_names=list(r.subject_alt_names),
        missing_hostnames=list(r.missing_hostnames),
    )
    _set_time(msg.not_before, r.not_before)
    _set_time(msg.not_after, r.not_after)
    return msg


def _summary(r: CertificateReport) -> str:
    who = r.subject or "certificate"
    where = f"{r.path}" + (f"#{r.index}" if r.index else "")
    if not r.problems:
        return f"{where}: {who} ok, expires in {r.days_until_expiry} days"
    return f"{where}: {who}: {'; '.join(r.details)}"


def report_to_event(
    r: CertificateReport, *, observed: dt.datetime | None = None
) -> event_pb2.Event:
    """An event for the outbox; the guardian runtime stamps id, guardian and observed time."""
    event = event_pb2.Event(
        severity=cls.Severity.ValueType(int(r.severity)),
        category=cls.CATEGORY_CERTIFICATE,
        summary=_summary(r),
        certificate_status=report_to_proto(r),
    )
    _set_time(event.time, observed)
    return event
