"""A verdict model reset read back in store order: verdicts before it teach nothing, later ones
do, and only the Cortex's own marker counts."""

from __future__ import annotations

from dataclasses import replace

from cortex import assessment_records as records
from cortex.assessments import Assessment, AssessmentBook, VerdictRecord
from cortex.config import CorrelationSection
from cortex.correlate import VerdictModel, load_texts
from cortex.correlation import load_stored
from qsc.common.v1 import event_pb2, identity_pb2
from tests.unit.test_cortex_assessment_book import RULE

RULESET = load_texts([("r.yaml", RULE)])
(STEP,) = RULESET.rules[0].steps


def judged(n: int, verdict: str = "false_positive") -> Assessment:
    return Assessment(
        id=f"0190f000-0000-7000-8000-{n:012d}",
        rule_id="test.burst",
        title="t",
        description="",
        severity="high",
        mitre=(),
        correlation_key=f"test.burst/host=h{n}",
        key=(("host", f"h{n}"),),
        state="resolved",
        revision=2,
        confidence=0.95,
        prior=0.05,
        confidence_id=3,
        factors=(),
        steps_present=frozenset({"alert"}),
        event_ids=(),
        event_count=5,
        first_event_ns=1,
        last_event_ns=2,
        create_ns=1,
        update_ns=3,
        close_ns=3,
        verdict=VerdictRecord(verdict, "", "spiffe://t/soar/s1", 3),  # type: ignore[arg-type]
    )


def marker(role: identity_pb2.Role.ValueType = identity_pb2.ROLE_CORTEX) -> event_pb2.Event:
    event = records.reset_event("tester")
    event.guardian.role = role
    event.time.FromNanoseconds(10)
    return event


def book_of(*events: event_pb2.Event) -> AssessmentBook:
    book = AssessmentBook(VerdictModel(), max_assessments=CorrelationSection().max_assessments)
    load_stored(book, events)
    book.learn_from_verdicts()
    return book


def test_verdicts_before_the_reset_teach_nothing_later_ones_do() -> None:
    before = book_of(records.to_event(judged(1)), records.to_event(judged(2)))
    assert before.model.lr("test.burst", STEP) < STEP.lr
    reset = book_of(records.to_event(judged(1)), records.to_event(judged(2)), marker())
    assert reset.model.lr("test.burst", STEP) == STEP.lr
    assert reset.model_reset_ns == 10
    assert len(list(reset.all())) == 2  # the assessments stay
    open_then_judged = replace(judged(3), state="open", verdict=None, revision=1)
    later = book_of(
        records.to_event(judged(1)),
        records.to_event(open_then_judged),
        marker(),
        records.to_event(judged(3, "true_positive")),
    )
    assert [a.id for a in later.teaching()] == [judged(3).id]
    assert later.model.lr("test.burst", STEP) > STEP.lr


def test_only_the_cortex_own_marker_resets() -> None:
    spoofed = marker(identity_pb2.ROLE_ALPHA)
    assert not records.is_reset(spoofed)
    book = book_of(records.to_event(judged(1)), spoofed)
    assert book.model.lr("test.burst", STEP) < STEP.lr
    with_detail = marker()
    with_detail.auth_event.user = "x"
    assert not records.is_reset(with_detail)
