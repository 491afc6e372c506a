"""Cortex domain types -> protobuf: the one place besides the servicer that builds `qsc.*` messages.

`GuardianView` -> `qsc.cortex.v1.Guardian`, `Assessment` -> `qsc.cortex.v1.Assessment`,
`RunRecord` -> `qsc.cortex.v1.PlaybookRun`. Events
need none: the store keeps and returns `qsc.common.v1.Event` messages as they arrived.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from cortex.anomaly import ScoringStatus
from cortex.assessments import Assessment
from cortex.guardian_view import ConnectionState, GuardianView
from cortex.store.runs import RunRecord
from qsc.common.v1 import classification_pb2, event_pb2, identity_pb2
from qsc.cortex.v1 import assessment_pb2, guardian_pb2, playbook_run_pb2

_STATES: Final = {
    ConnectionState.CONNECTING: guardian_pb2.CONNECTION_STATE_CONNECTING,
    ConnectionState.CONNECTED: guardian_pb2.CONNECTION_STATE_CONNECTED,
    ConnectionState.DISCONNECTED: guardian_pb2.CONNECTION_STATE_DISCONNECTED,
    ConnectionState.REFUSED: guardian_pb2.CONNECTION_STATE_REFUSED,
}
# An unknown role string (a configuration typo) shows as ROLE_UNSPECIFIED rather than failing
# the whole listing: the guardian is still worth seeing, with its host and last error.
_ROLES: Final = {
    "alpha": identity_pb2.ROLE_ALPHA,
    "beta": identity_pb2.ROLE_BETA,
}


_SCORING: Final = {
    "off": guardian_pb2.SCORING_STATE_OFF,
    "up": guardian_pb2.SCORING_STATE_UP,
    "down": guardian_pb2.SCORING_STATE_DOWN,
}


def guardian(view: GuardianView, scoring: ScoringStatus | None = None) -> guardian_pb2.Guardian:
    """`view` as the API's Guardian resource, with how its host windows are scored (None:
    scoring is off). Sequence numbers and counts are clamped at 0 (the message's fields are
    unsigned: a negative value from a bug must not fail the call)."""
    message = guardian_pb2.Guardian(
        name=view.name,
        guardian=identity_pb2.GuardianRef(
            id=view.guardian_id,
            role=_ROLES.get(view.role, identity_pb2.ROLE_UNSPECIFIED),
            host=view.host,
        ),
        address=view.address,
        state=_STATES[view.state],
        sealed=view.sealed,
        committed_seq=max(0, view.committed_seq),
        latest_seq=max(0, view.latest_seq),
        lag_events=view.lag_events,
        events_lost=max(0, view.events_lost),
        degraded_sensors=list(view.degraded_sensors),
        version=view.version,
        last_error=view.last_error,
    )
    message.lag.FromNanoseconds(max(0, view.lag_ns))
    if view.connect_time_ns is not None:
        message.connect_time.FromNanoseconds(view.connect_time_ns)
    if view.last_contact_ns is not None:
        message.last_contact_time.FromNanoseconds(view.last_contact_ns)
    s = message.anomaly_scoring
    if scoring is None:
        s.state = guardian_pb2.SCORING_STATE_OFF
    else:
        s.state = _SCORING[scoring.state]
        s.last_error = scoring.last_error
        s.windows_scored = scoring.counts.scored
        s.windows_unscored = scoring.counts.unscored
        s.model_version = scoring.counts.model_version
        if scoring.counts.last_score_ns:
            s.last_score_time.FromNanoseconds(scoring.counts.last_score_ns)
    return message


_A_STATES: Final = {
    "open": assessment_pb2.ASSESSMENT_STATE_OPEN,
    "resolved": assessment_pb2.ASSESSMENT_STATE_RESOLVED,
    "expired": assessment_pb2.ASSESSMENT_STATE_EXPIRED,
}
_VERDICTS: Final = {
    "true_positive": assessment_pb2.VERDICT_TRUE_POSITIVE,
    "false_positive": assessment_pb2.VERDICT_FALSE_POSITIVE,
    "benign": assessment_pb2.VERDICT_BENIGN,
}
VERDICT_NAMES: Final = {number: name for name, number in _VERDICTS.items()}
SEVERITY_NUMBERS: Final = {  # a rule's severity name -> the API's Severity
    "info": classification_pb2.SEVERITY_INFO,
    "low": classification_pb2.SEVERITY_LOW,
    "medium": classification_pb2.SEVERITY_MEDIUM,
    "high": classification_pb2.SEVERITY_HIGH,
    "critical": classification_pb2.SEVERITY_CRITICAL,
}
MAX_CONTRIBUTING: Final = 16  # events listed whole in an assessment; the count says how many


def assessment(
    a: Assessment, lookup: Callable[[str], event_pb2.Event | None]
) -> assessment_pb2.Assessment:
    """`a` as the API's Assessment; `lookup` reads a contributing event from the store (None
    when it aged out), for the most recent MAX_CONTRIBUTING of them."""
    message = assessment_pb2.Assessment(
        name=a.name,
        title=a.title,
        description=a.description,
        confidence=a.confidence,
        prior=a.prior,
        severity=SEVERITY_NUMBERS[a.severity],
        state=_A_STATES[a.state],
        contributing_event_count=a.event_count,
        hosts=list(a.hosts),
        correlation_key=a.correlation_key,
        revision=a.revision,
    )
    for f in a.factors:
        message.factors.add(
            name=f.step,
            description=f"{f.source}: {f.count} event(s), weight {f.weight:.2f}",
            count=f.count,
            likelihood_ratio=f.lr,
            log_odds=f.contribution,
        )
    for technique in a.mitre:
        message.techniques.add(id=technique)
    guardians: dict[str, None] = {}
    for event in _events(a.event_ids[-MAX_CONTRIBUTING:], lookup):
        guardian = f"guardians/{event.guardian.id}"
        guardians[guardian] = None
        c = message.contributing_events.add(
            event=f"events/{event.id}",
            guardian=guardian,
            seq=event.seq,
            rule_id=event.rule.id,
            severity=event.severity,
            summary=event.summary,
        )
        c.time.CopyFrom(event.time)
    message.guardians.extend(guardians)
    message.first_event_time.FromNanoseconds(a.first_event_ns)
    message.last_event_time.FromNanoseconds(a.last_event_ns)
    message.create_time.FromNanoseconds(a.create_ns)
    message.update_time.FromNanoseconds(a.update_ns)
    if a.close_ns:
        message.close_time.FromNanoseconds(a.close_ns)
    if a.verdict is not None:
        message.verdict.verdict = _VERDICTS[a.verdict.verdict]
        message.verdict.comment = a.verdict.comment
        message.verdict.actor = a.verdict.actor
        message.verdict.time.FromNanoseconds(a.verdict.time_ns)
    return message


def _events(
    ids: Iterable[str], lookup: Callable[[str], event_pb2.Event | None]
) -> Iterable[event_pb2.Event]:
    for event_id in ids:
        event = lookup(event_id)
        if event is not None:
            yield event


_RUN_STATES: Final = {
    "awaiting_approval": playbook_run_pb2.RUN_STATE_AWAITING_APPROVAL,
    "pending": playbook_run_pb2.RUN_STATE_PENDING,
    "running": playbook_run_pb2.RUN_STATE_RUNNING,
    "succeeded": playbook_run_pb2.RUN_STATE_SUCCEEDED,
    "failed": playbook_run_pb2.RUN_STATE_FAILED,
    "cancelled": playbook_run_pb2.RUN_STATE_CANCELLED,
    "skipped": playbook_run_pb2.RUN_STATE_SKIPPED,
}


def playbook_run(run: RunRecord) -> playbook_run_pb2.PlaybookRun:
    """`run` as the API's PlaybookRun (no secret is in a run: steps name endpoints only)."""
    message = playbook_run_pb2.PlaybookRun(
        name=run.name,
        playbook=run.playbook,
        assessment=f"assessments/{run.assessment_id}",
        trigger=run.trigger,
        state=_RUN_STATES[run.state],
        error=run.error,
        assessment_revision=run.revision,
        decided_by=run.approved_by,
        dead_letter=run.dead_letter,
    )
    message.create_time.FromNanoseconds(run.create_ns)
    if run.start_ns:
        message.start_time.FromNanoseconds(run.start_ns)
    if run.end_ns:
        message.end_time.FromNanoseconds(run.end_ns)
    for s in run.steps:
        step = message.steps.add(
            name=s.name,
            state=_RUN_STATES[s.state],
            attempts=s.attempts,
            message=s.message,
            kind=str(s.spec.get("kind", "")),
            target=s.target,
            webhook_id=s.webhook_id if s.spec.get("kind") != "guardian" else "",
        )
        if s.start_ns:
            step.start_time.FromNanoseconds(s.start_ns)
        if s.end_ns:
            step.end_time.FromNanoseconds(s.end_ns)
        if s.state == "pending" and s.attempts and s.next_ns:
            step.next_attempt_time.FromNanoseconds(s.next_ns)
    return message
