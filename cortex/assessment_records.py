"""Assessments as stored records: `Assessment` <-> `qsc.common.v1.AssessmentChange` in an event.

Every revision of an assessment is one of the Cortex's own events (detail `assessment_change`,
rule id = the correlation's id), in the same encrypted, hash-chained store as the guardians'
events: `store verify` covers them, `ListEvents` finds them (`kind = assessment_change`), and
after a restart the Cortex reads them back to rebuild its assessments and, from their verdicts,
what it learned.

`qsc-cortex model reset` stores a marker among them: an event of the Cortex's own with rule id
`cortex.model_reset` and no detail (`reset_event`). Read back in store order, it makes the
book forget the verdicts before it (`AssessmentBook.forget_verdicts`): the model learns only
from the verdicts stored after the latest reset, across restarts. `STORED` selects both kinds.
"""

from __future__ import annotations

from typing import Final, cast

from cortex._convert import SEVERITY_NUMBERS
from cortex.assessments import Assessment, State, Verdict, VerdictRecord
from cortex.correlate import Factor
from qsc.common.v1 import classification_pb2, event_pb2, identity_pb2

KIND: Final = "assessment_change"
RESET_RULE: Final = "cortex.model_reset"
STORED: Final = f'kind = {KIND} OR rule.id = "{RESET_RULE}"'  # what `restore` reads back
_SEVERITY: Final = SEVERITY_NUMBERS
_STATES: Final = ("open", "resolved", "expired")
_VERDICTS: Final = ("true_positive", "false_positive", "benign")


def to_event(a: Assessment) -> event_pb2.Event:
    """An event (without id, seq or guardian: the Cortex's `record` sets those) holding `a`."""
    event = event_pb2.Event(
        severity=_SEVERITY[a.severity],
        category=classification_pb2.CATEGORY_SYSTEM,
        summary=f"assessment {a.state}: {a.title} (confidence {a.confidence:.2f}, "
        f"revision {a.revision})",
        labels={"assessment.id": a.id, "assessment.revision": str(a.revision)},
    )
    event.rule.id = a.rule_id
    event.rule.name = a.title
    for technique in a.mitre:
        event.rule.techniques.add(id=technique)
    c = event.assessment_change
    c.assessment_id = a.id
    c.correlation_id = a.rule_id
    for key, value in a.key:
        c.key.add(key=key, value=value)
    c.state = a.state
    c.revision = a.revision
    c.confidence = a.confidence
    c.prior = a.prior
    c.confidence_id = a.confidence_id
    for f in a.factors:
        c.factors.add(
            step=f.step,
            source=f.source,
            count=f.count,
            likelihood_ratio=f.lr,
            weight=f.weight,
            log_odds=f.contribution,
            seed_likelihood_ratio=f.seed_lr,
        )
    c.steps_present.extend(sorted(a.steps_present))
    c.event_ids.extend(a.event_ids)
    c.event_count = a.event_count
    c.first_event_time.FromNanoseconds(a.first_event_ns)
    c.last_event_time.FromNanoseconds(a.last_event_ns)
    c.create_time.FromNanoseconds(a.create_ns)
    c.update_time.FromNanoseconds(a.update_ns)
    if a.close_ns:
        c.close_time.FromNanoseconds(a.close_ns)
    if a.verdict is not None:
        c.verdict = a.verdict.verdict
        c.verdict_comment = a.verdict.comment
        c.verdict_actor = a.verdict.actor
        c.verdict_time.FromNanoseconds(a.verdict.time_ns)
    c.title = a.title
    c.description = a.description
    c.severity = a.severity
    c.techniques.extend(a.mitre)
    return event


def from_event(event: event_pb2.Event) -> Assessment | None:
    """The assessment an `assessment_change` event holds; None for another event or a record
    this version cannot read (an unknown state or severity)."""
    if event.WhichOneof("detail") != KIND:
        return None
    c = event.assessment_change
    if c.state not in _STATES or c.severity not in _SEVERITY or not c.assessment_id:
        return None
    verdict = None
    if c.verdict:
        if c.verdict not in _VERDICTS:
            return None
        verdict = VerdictRecord(
            cast(Verdict, c.verdict),
            c.verdict_comment,
            c.verdict_actor,
            c.verdict_time.ToNanoseconds(),
        )
    return Assessment(
        id=c.assessment_id,
        rule_id=c.correlation_id,
        title=c.title,
        description=c.description,
        severity=c.severity,
        mitre=tuple(c.techniques),
        correlation_key=f"{c.correlation_id}/" + ",".join(f"{k.key}={k.value}" for k in c.key),
        key=tuple((k.key, k.value) for k in c.key),
        state=cast(State, c.state),
        revision=c.revision,
        confidence=c.confidence,
        prior=c.prior,
        confidence_id=c.confidence_id,
        factors=tuple(
            Factor(
                step=f.step,
                source=f.source,
                count=f.count,
                lr=f.likelihood_ratio,
                weight=f.weight,
                contribution=f.log_odds,
                seed_lr=f.seed_likelihood_ratio,
            )
            for f in c.factors
        ),
        steps_present=frozenset(c.steps_present),
        event_ids=tuple(c.event_ids),
        event_count=c.event_count,
        first_event_ns=c.first_event_time.ToNanoseconds(),
        last_event_ns=c.last_event_time.ToNanoseconds(),
        create_ns=c.create_time.ToNanoseconds(),
        update_ns=c.update_time.ToNanoseconds(),
        close_ns=c.close_time.ToNanoseconds() if c.HasField("close_time") else 0,
        verdict=verdict,
    )


def reset_event(actor: str) -> event_pb2.Event:
    """The marker of a verdict model reset (without id, seq, time or guardian: the writer sets
    those); `actor` says who reset it."""
    event = event_pb2.Event(
        severity=classification_pb2.SEVERITY_INFO,
        category=classification_pb2.CATEGORY_SYSTEM,
        summary="verdict model reset: the likelihood ratios are the rules' seeds again; "
        "only verdicts given after this record teach the model",
        labels={"model.reset.actor": actor},
    )
    event.rule.id = RESET_RULE
    event.rule.name = "Verdict model reset"
    return event


def is_reset(event: event_pb2.Event) -> bool:
    """True for the marker `reset_event` makes: a detail-less event of the Cortex's own with
    its rule id."""
    return (
        event.rule.id == RESET_RULE
        and event.WhichOneof("detail") is None
        and event.guardian.role == identity_pb2.ROLE_CORTEX
    )
