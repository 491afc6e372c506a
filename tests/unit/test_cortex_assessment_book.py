"""Assessments from hits: held back under the threshold, raised, updated, expired, judged."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from cortex.assessments import AssessmentBook
from cortex.correlate import Correlator, VerdictModel, load_texts
from cortex.errors import AssessmentNotFoundError, AssessmentResolvedError, VerdictArgumentError
from tests.unit.correlate_events import T0, ev

RULE = """
- correlation: Many of one alert
  id: test.burst
  description: five or more
  type: event_count
  group_by: [host]
  timespan: 60s
  severity: high
  mitre: [T1110]
  prior: 0.05
  threshold: 0.9
  steps:
    - step: alert
      source: alpha.process
      filter: 'rule.id = "alpha.x"'
      count: 5
      lr: 30
"""


def setup() -> tuple[Correlator, AssessmentBook]:
    ticks = itertools.count(T0, 10**6)
    return Correlator(load_texts([("r.yaml", RULE)])), AssessmentBook(
        VerdictModel(), clock=lambda: next(ticks)
    )


def feed(c: Correlator, book: AssessmentBook, n: int, host: str = "web-1") -> list:  # type: ignore[type-arg]
    out = []
    for i in range(n):
        for hit in c.observe(ev("alpha.x", host=host, at=i * 0.1)):
            changed = book.apply(hit)
            if changed is not None:
                out.append(changed)
    return out


def test_under_the_threshold_nothing_is_shown_then_one_assessment_rises() -> None:
    c, book = setup()
    # 5 alerts: LR 30 at prior 0.05 is 0.61 < 0.9: held back.
    assert feed(c, book, 5) == []
    assert book.held_back == 1
    # More of the same pushes it over: one assessment, then updates of it.
    changes = feed(c, book, 60)
    assert changes
    assert len({a.id for a in changes}) == 1
    first, last = changes[0], changes[-1]
    assert (first.state, first.revision) == ("open", 1)
    assert first.confidence >= 0.9
    assert last.revision == len(changes)
    assert last.correlation_key == "test.burst/host=web-1"
    assert last.hosts == ("web-1",)
    assert last.event_count > first.event_count
    assert [f.step for f in last.factors] == ["alert"]
    assert list(book.all()) == [last]


def test_the_window_end_expires_it() -> None:
    c, book = setup()
    (assessment, *_) = feed(c, book, 64)
    closed = [book.apply(h) for h in c.expire(T0 + 3600 * 10**9)]
    assert [a.state for a in closed if a] == ["expired"]
    assert book.get(assessment.id).state == "expired"
    assert book.get(assessment.id).close_ns > 0


def test_a_verdict_resolves_once_and_the_model_learns() -> None:
    c, book = setup()
    changes = feed(c, book, 64)
    target = changes[-1]
    judged = book.verdict(target.id, "false_positive", "a load test", "spiffe://t/soar/s1")
    assert judged.state == "resolved"
    assert judged.verdict is not None
    assert (judged.verdict.verdict, judged.verdict.actor) == (
        "false_positive",
        "spiffe://t/soar/s1",
    )
    assert judged.revision == target.revision + 1
    with pytest.raises(AssessmentResolvedError):
        book.verdict(target.id, "true_positive", "", "x")
    # Later evidence of that window does not reopen it.
    assert feed(c, book, 200) == []
    # The model now doubts the factor: the same evidence on another host scores lower.
    rule = load_texts([("r.yaml", RULE)]).rules[0]
    assert book.model.lr("test.burst", rule.steps[0]) < 30


def test_bad_verdicts_and_unknown_names_are_refused() -> None:
    c, book = setup()
    target = feed(c, book, 64)[-1]
    with pytest.raises(VerdictArgumentError):
        book.verdict(target.id, "maybe", "", "x")
    with pytest.raises(VerdictArgumentError):
        book.verdict(target.id, "benign", "x" * 3000, "x")
    with pytest.raises(AssessmentNotFoundError):
        book.get("0190f000-0000-7000-8000-000000000000")


def test_the_book_is_bounded() -> None:
    ticks = itertools.count(T0, 10**6)
    c = Correlator(load_texts([("r.yaml", RULE)]))
    book = AssessmentBook(VerdictModel(), clock=lambda: next(ticks), max_assessments=3)
    for h in range(10):
        feed(c, book, 64, host=f"h{h}")
    assert len(list(book.all())) == 3


def test_a_stored_record_reads_back_as_the_same_assessment() -> None:
    from cortex.assessment_records import from_event, to_event

    c, book = setup()
    a = feed(c, book, 64)[-1]
    judged = book.verdict(a.id, "benign", "a drill", "spiffe://t/soar/s1")
    for original in (a, judged):
        back = from_event(to_event(original))
        assert back == original
    assert from_event(ev("alpha.x")) is None  # not an assessment record


def test_restored_open_assessments_expire_when_no_window_comes_back() -> None:
    c, book = setup()
    a = feed(c, book, 64)[-1]
    fresh = AssessmentBook(VerdictModel(), clock=lambda: T0)
    fresh.load(a)
    fresh.load(replace(a, revision=a.revision - 1, confidence=0.0))  # an older revision: ignored
    assert fresh.get(a.id).revision == a.revision
    assert fresh.expire_orphans(a.last_event_ns + 30 * 10**9, {"test.burst": 60 * 10**9}) == []
    (expired,) = fresh.expire_orphans(a.last_event_ns + 61 * 10**9, {"test.burst": 60 * 10**9})
    assert (expired.state, expired.revision) == ("expired", a.revision + 1)


def test_verdicts_loaded_from_the_store_teach_a_fresh_model() -> None:
    c, book = setup()
    a = feed(c, book, 64)[-1]
    judged = book.verdict(a.id, "false_positive", "", "x")
    fresh = AssessmentBook(VerdictModel())
    fresh.load(judged)
    assert fresh.learn_from_verdicts() == 1
    step = load_texts([("r.yaml", RULE)]).rules[0].steps[0]
    assert fresh.model.lr("test.burst", step) == book.model.lr("test.burst", step)


def test_list_pages_by_keyset_and_binds_tokens_to_the_filter() -> None:
    from cortex.assessment_queries import AssessmentQueries
    from cortex.errors import FilterError, PageTokenError

    c, book = setup()
    for h in range(5):
        feed(c, book, 64, host=f"h{h}")
    queries = AssessmentQueries(book, "store-1", b"k" * 32)
    names, token = [], ""
    while True:
        page = queries.list(2, token, "state = OPEN", "")
        assert page.total_size == 5
        names += [a.correlation_key for a in page.assessments]
        token = page.next_page_token
        if not token:
            break
    assert names == [f"test.burst/host=h{h}" for h in (4, 3, 2, 1, 0)]  # newest first, once each
    first = queries.list(2, "", "state = OPEN", "").next_page_token
    with pytest.raises(PageTokenError):
        queries.list(2, first, "severity >= HIGH", "")
    by_confidence = queries.list(10, "", 'host = "h1" OR host = "h2"', "confidence")
    assert [a.hosts for a in by_confidence.assessments] in ([("h1",), ("h2",)], [("h2",), ("h1",)])
    with pytest.raises(FilterError):
        queries.list(10, "", "confidence >= lots", "")
    with pytest.raises(FilterError):
        queries.list(10, "", "", "colour desc")
