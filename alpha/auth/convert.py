"""Auth findings -> `qsc.common.v1.Event` (the only qsc.* import of alpha.auth)."""

from __future__ import annotations

from typing import Final

from alpha.auth.detect import AuthFinding, Outcome
from alpha.auth.sshd import Method
from qsc.common.v1 import auth_details_pb2 as pb
from qsc.common.v1 import classification_pb2 as cls
from qsc.common.v1 import event_pb2

__all__ = ["finding_to_event", "finding_to_proto"]

_METHOD: Final[dict[Method, pb.AuthMethod.ValueType]] = {
    Method.UNKNOWN: pb.AUTH_METHOD_UNSPECIFIED,
    Method.PASSWORD: pb.AUTH_METHOD_PASSWORD,
    Method.PUBLICKEY: pb.AUTH_METHOD_PUBLICKEY,
    Method.KEYBOARD_INTERACTIVE: pb.AUTH_METHOD_KEYBOARD_INTERACTIVE,
    Method.GSSAPI: pb.AUTH_METHOD_GSSAPI,
    Method.HOSTBASED: pb.AUTH_METHOD_HOSTBASED,
    Method.NONE: pb.AUTH_METHOD_NONE,
}
_OUTCOME: Final[dict[Outcome, pb.AuthOutcome.ValueType]] = {
    Outcome.ACCEPTED: pb.AUTH_OUTCOME_ACCEPTED,
    Outcome.FAILED: pb.AUTH_OUTCOME_FAILED,
}
_LOG_SOURCE: Final[dict[str, pb.AuthLogSource.ValueType]] = {
    "file": pb.AUTH_LOG_SOURCE_FILE,
    "journal": pb.AUTH_LOG_SOURCE_JOURNAL,
}
# The detector's own view; a rule that fires replaces it with its priority.
_SEVERITY: Final[dict[str, cls.Severity.ValueType]] = {
    "failure": cls.SEVERITY_INFO,
    "failure_burst": cls.SEVERITY_MEDIUM,
    "accepted": cls.SEVERITY_INFO,
    "accepted_new_source": cls.SEVERITY_LOW,
    "accepted_after_burst": cls.SEVERITY_HIGH,
}
_MAX_SUMMARY_USER: Final = 64


def finding_to_proto(f: AuthFinding) -> pb.AuthEvent:
    msg = pb.AuthEvent(
        service=f.service,
        outcome=_OUTCOME[f.outcome],
        method=_METHOD[f.method],
        user=f.user,
        invalid_user=f.invalid_user,
        key_fingerprint=f.key_fingerprint,
        failures_in_window=min(f.source_failures, 0xFFFFFFFF),
        distinct_users_in_window=min(f.source_users, 0xFFFFFFFF),
        user_failures_in_window=min(f.user_failures, 0xFFFFFFFF),
        user_distinct_sources_in_window=min(f.user_sources, 0xFFFFFFFF),
        new_source_address=f.new_source,
        service_pid=f.service_pid,
        log_source=_LOG_SOURCE.get(f.log_source, pb.AUTH_LOG_SOURCE_UNSPECIFIED),
    )
    msg.source.address = f.address
    msg.source.port = f.port
    msg.window.FromTimedelta(f.window)
    if f.previous_login_ns is not None:
        msg.previous_login_time.FromNanoseconds(f.previous_login_ns)
    return msg


def _summary(f: AuthFinding) -> str:
    user = f.user if len(f.user) <= _MAX_SUMMARY_USER else f.user[:_MAX_SUMMARY_USER] + "..."
    who = f"{'invalid user ' if f.invalid_user else ''}{user!r} from {f.address}"
    window = int(f.window.total_seconds())
    if f.outcome is Outcome.FAILED:
        return (
            f"{f.service}: failed {f.method.value} login for {who}"
            f" ({f.source_failures} failures, {f.source_users} users from this address,"
            f" {f.user_failures} failures on this user in {window}s)"
        )
    text = f"{f.service}: accepted {f.method.value} login for {who}"
    if f.new_source:
        text += " (first login of this user from this address)"
    if f.source_failures:
        text += f" after {f.source_failures} failures from this address in {window}s"
    return text


def finding_to_event(f: AuthFinding) -> event_pb2.Event:
    """An event for the rules and the outbox; the runtime stamps id, guardian and seq."""
    event = event_pb2.Event(
        severity=_SEVERITY[f.reason],
        category=cls.CATEGORY_AUTHENTICATION,
        summary=_summary(f),
        auth_event=finding_to_proto(f),
    )
    event.time.FromNanoseconds(f.time_ns)
    return event
