"""The correlation loader (FILE:LINE errors), the engine (windows, sequences, bounds) and the
confidence model (factors, damping, learning from verdicts)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from cortex.correlate import (
    Correlator,
    Hit,
    RuleSet,
    VerdictModel,
    explain,
    load_files,
    load_texts,
    score,
)
from cortex.correlate.score import LR_MAX, LR_MIN, confidence_band
from cortex.errors import CorrelationRuleError
from mesh.errors import InvalidArgumentError
from tests.unit.correlate_events import ev

COUNT_RULE = """
- correlation: Many of one alert
  id: test.burst
  type: event_count
  group_by: [host]
  timespan: 60s
  severity: medium
  prior: 0.05
  steps:
    - step: alert
      source: alpha.process
      filter: 'rule.id = "alpha.x"'
      count: 5
      lr: 30
"""

SEQ_RULE = """
- correlation: A then B
  id: test.seq
  type: sequence
  group_by: [host, user]
  timespan: 5m
  severity: high
  prior: 0.05
  until: 'rule.id = "alpha.reset"'
  steps:
    - step: a
      source: alpha.auth
      filter: 'rule.id = "alpha.a"'
      lr: 10
    - step: b
      source: alpha.auth
      filter: 'rule.id = "alpha.b"'
      lr: 10
    - step: noisy
      source: alpha.process
      filter: 'rule.id = "alpha.noisy"'
      lr: 8
      optional: true
"""


def rules(text: str, name: str = "rules.yaml") -> RuleSet:
    return load_texts([(name, textwrap.dedent(text))])


def engine(text: str, **kwargs: int) -> Correlator:
    return Correlator(rules(text), **kwargs)


def feed(c: Correlator, *events: object) -> list[Hit]:
    return [h for e in events for h in c.observe(e)]  # type: ignore[arg-type]


# --- loader -----------------------------------------------------------------------------------


def test_the_default_files_load() -> None:
    ruleset = load_files()
    assert len(ruleset.rules) >= 7
    assert all(r.file.endswith(".yaml") and r.line > 0 for r in ruleset.rules)
    assert len(ruleset.version) == 16


BAD = [
    ("- correlation: [unclosed", 2, "YAML syntax"),
    ("correlation: x", 1, "YAML list"),
    ("- id: x", 1, "- correlation: TITLE"),
    (
        COUNT_RULE.replace("  severity: medium\n", "  severity: medium\n  colour: red\n"),
        8,
        "unknown key 'colour'",
    ),
    (COUNT_RULE.replace("  prior: 0.05\n", ""), 2, "lacks prior"),
    (COUNT_RULE.replace("prior: 0.05", "prior: 2"), 8, "prior must be between"),
    (COUNT_RULE.replace("timespan: 60s", "timespan: soon"), 6, "duration"),
    (COUNT_RULE.replace("timespan: 60s", "timespan: 30d"), 6, "at most 7d"),
    (COUNT_RULE.replace("group_by: [host]", "group_by: [colour]"), 5, "'colour' is not one of"),
    (COUNT_RULE.replace("id: test.burst", "id: Burst"), 3, "must look like"),
    (COUNT_RULE.replace("type: event_count", "type: magic"), 4, "is not one of"),
    (COUNT_RULE.replace("count: 5", "count: 1"), 10, "count` of 2 or more"),
    (COUNT_RULE.replace('rule.id = "alpha.x"', 'rule.id = "alpha.x" AND'), 12, "filter position"),
    (COUNT_RULE.replace('rule.id = "alpha.x"', 'colour = "red"'), 12, "filter position 1"),
    (COUNT_RULE.replace("source: alpha.process", "source: telepathy"), 11, "source 'telepathy'"),
    (COUNT_RULE.replace("lr: 30", "lr: 0"), 14, "lr must be between"),
    (COUNT_RULE.replace("severity: medium", "severity: apocalyptic"), 7, "severity is one of"),
    (COUNT_RULE + COUNT_RULE, 17, "duplicate correlation id 'test.burst'"),
    (
        COUNT_RULE.replace("  prior: 0.05\n", "  prior: 0.05\n  mitre: [TA0001]\n"),
        9,
        "ATT&CK technique",
    ),
    (
        COUNT_RULE.replace("  prior: 0.05\n", "  prior: 0.05\n  until: 'kind = process_exit'\n"),
        9,
        "sequences only",
    ),
    (
        SEQ_RULE.replace(
            "      filter: 'rule.id = \"alpha.b\"'\n      lr: 10\n",
            "      filter: 'rule.id = \"alpha.b\"'\n      lr: 10\n      optional: true\n",
        ),
        11,
        "at least two required",
    ),
    (SEQ_RULE.replace("    - step: b\n", "    - step: a\n"), 11, "named twice"),
]


@pytest.mark.parametrize(("text", "line", "reason"), BAD)
def test_a_bad_file_is_refused_naming_the_line_and_the_reason(
    text: str, line: int, reason: str
) -> None:
    with pytest.raises(CorrelationRuleError) as caught:
        rules(text)
    err = caught.value
    assert isinstance(err, InvalidArgumentError)
    assert (err.file, err.line) == ("rules.yaml", line), str(err)
    assert reason in err.reason, str(err)
    assert str(err).startswith(f"rules.yaml:{line}: ")


def test_a_later_file_switches_a_rule_off_or_replaces_it() -> None:
    off = "- correlation: test.burst\n  enabled: false\n"
    ruleset = load_texts([("a.yaml", COUNT_RULE), ("b.yaml", off)])
    assert ruleset.get("test.burst") is not None
    assert not ruleset.enabled
    replaced = COUNT_RULE.replace("  prior: 0.05\n", "  prior: 0.05\n  replace: true\n").replace(
        "count: 5", "count: 9"
    )
    rule = load_texts([("a.yaml", COUNT_RULE), ("b.yaml", replaced)]).get("test.burst")
    assert rule is not None
    assert rule.steps[0].count == 9
    assert rule.file == "b.yaml"
    with pytest.raises(CorrelationRuleError, match=r"no correlation 'test\.nope'"):
        load_texts([("b.yaml", "- correlation: test.nope\n  enabled: false\n")])


def test_a_missing_or_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CorrelationRuleError, match=r"nope\.yaml: cannot read"):
        load_files([tmp_path / "nope.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(CorrelationRuleError, match=r"bad\.yaml: not UTF-8 text"):
        load_files([bad])


# --- engine: windows, sequences, bounds -----------------------------------------------------


def test_windows_slide_instead_of_falling_into_buckets() -> None:
    c = engine(COUNT_RULE)
    # Five alerts between 50 s and 70 s: a fixed minute bucket would split them 3 + 2.
    hits = feed(c, *(ev("alpha.x", at=t) for t in (50, 55, 58, 62, 70)))
    assert [h.change for h in hits] == ["opened"]
    assert hits[0].evidence[0].count == 5


def test_evidence_older_than_the_window_does_not_count() -> None:
    c = engine(COUNT_RULE)
    assert not feed(c, *(ev("alpha.x", at=t) for t in (0, 10, 20, 30, 100)))
    assert not feed(c, ev("alpha.x", at=30, host="db-1"))  # another key


def test_a_storm_is_a_few_updates_not_one_per_event() -> None:
    c = engine(COUNT_RULE)
    hits = feed(c, *(ev("alpha.x", at=i * 0.01) for i in range(1000)))
    assert hits[0].change == "opened"
    assert 1 < len(hits) <= 12  # counts 5, then each power of two up to the evidence cap
    assert all(h.change == "updated" for h in hits[1:])
    assert [h.revision for h in hits] == list(range(1, len(hits) + 1))


def test_a_sequence_needs_its_order_and_until_drops_it() -> None:
    a = ev("alpha.a", "auth_event", at=0, user="u", source="192.0.2.1")
    b = ev("alpha.b", "auth_event", at=10, user="u", source="192.0.2.1")
    assert [h.change for h in feed(engine(SEQ_RULE), a, b)] == ["opened"]
    assert not feed(engine(SEQ_RULE), b, a)
    reset = ev("alpha.reset", "auth_event", at=5, user="u", source="192.0.2.1")
    assert not feed(engine(SEQ_RULE), a, reset, b)
    other_user = ev("alpha.b", "auth_event", at=10, user="v", source="192.0.2.1")
    assert not feed(engine(SEQ_RULE), a, other_user)
    late = ev("alpha.b", "auth_event", at=400, user="u", source="192.0.2.1")
    assert not feed(engine(SEQ_RULE), a, late)


def test_a_sequence_restarts_after_its_maxspan() -> None:
    c = engine(SEQ_RULE)
    first = ev("alpha.a", "auth_event", at=0, user="u")
    again = ev("alpha.a", "auth_event", at=400, user="u")
    b = ev("alpha.b", "auth_event", at=410, user="u")
    hits = feed(c, first, again, b)
    assert [h.change for h in hits] == ["opened"]
    assert hits[0].first_ns > first.time.ToNanoseconds()


def test_events_without_a_group_key_are_not_joined() -> None:
    a = ev("alpha.a", "auth_event", at=0, user="")
    b = ev("alpha.b", "auth_event", at=10, user="")
    assert not feed(engine(SEQ_RULE), a, b)


def test_state_is_bounded_per_rule_and_evictions_are_counted() -> None:
    c = engine(COUNT_RULE, max_keys=10)
    feed(c, *(ev("alpha.x", host=f"h{i}", at=i) for i in range(100)))
    stats = c.stats()["test.burst"]
    assert (stats.states, stats.evicted) == (10, 90)
    c2 = engine(COUNT_RULE, max_evidence=8)
    hits = feed(c2, *(ev("alpha.x", at=i * 0.01) for i in range(500)))
    assert max(e.count for h in hits for e in h.evidence) <= 8


def test_windows_close_after_their_timespan() -> None:
    c = engine(COUNT_RULE)
    feed(c, *(ev("alpha.x", at=t) for t in range(5)))
    t0 = ev("alpha.x", at=0).time.ToNanoseconds()
    assert c.expire(t0 + 30 * 10**9) == []
    closed = c.expire(t0 + 120 * 10**9)
    assert [h.change for h in closed] == ["closed"]
    assert c.stats()["test.burst"].states == 0


# --- confidence -------------------------------------------------------------------------------


def seq_hit(noisy: bool = True) -> Hit:
    c = engine(SEQ_RULE)
    events = [ev("alpha.a", "auth_event", at=0, user="u")]
    if noisy:
        events.append(ev("alpha.noisy", "auth_event", at=1, user="u"))
    events.append(ev("alpha.b", "auth_event", at=2, user="u"))
    return feed(c, *events)[-1]


def test_every_factor_is_listed_strongest_first() -> None:
    s = score(seq_hit())
    assert [f.step for f in s.factors] == ["a", "b", "noisy"]
    assert sum(f.contribution for f in s.factors) == pytest.approx(
        s.log_odds - math.log(0.05 / 0.95)
    )
    assert 0 < s.posterior < 1
    assert s.confidence_id == confidence_band(s.posterior)
    text = explain(seq_hit().rule, s)
    assert "noisy" in text
    assert "log-odds" in text


def test_false_positive_verdicts_take_weight_from_a_noisy_factor() -> None:
    hit = seq_hit()
    model = VerdictModel()
    before = score(hit, model)
    for _ in range(30):
        model.record("test.seq", frozenset({"a", "b", "noisy"}), "false_positive")
    for _ in range(5):
        model.record("test.seq", frozenset({"a", "b"}), "true_positive")
    after = score(hit, model)
    noisy_before = next(f for f in before.factors if f.step == "noisy")
    noisy_after = next(f for f in after.factors if f.step == "noisy")
    assert noisy_after.lr < noisy_before.lr / 4
    assert after.posterior < before.posterior - 0.05


def test_true_positive_verdicts_add_weight() -> None:
    hit = seq_hit()
    model = VerdictModel()
    before = score(hit, model).posterior
    for _ in range(30):
        model.record("test.seq", frozenset({"a", "b", "noisy"}), "true_positive")
    for _ in range(10):
        model.record("test.seq", frozenset({"a"}), "benign")
    after = score(hit, model)
    assert after.posterior > before
    lrs = {f.step: f.lr for f in after.factors}
    assert lrs["b"] > 10  # present in every true positive, absent from the benign ones


def test_learned_ratios_stay_bounded_and_survive_a_snapshot() -> None:
    model = VerdictModel()
    for _ in range(10_000):
        model.record("test.seq", frozenset({"noisy"}), "false_positive")
        model.record("test.seq", frozenset({"a"}), "true_positive")
    rule = seq_hit().rule
    steps = {s.name: s for s in rule.steps}
    assert LR_MIN <= model.lr("test.seq", steps["noisy"]) < 1
    assert 1 < model.lr("test.seq", steps["a"]) <= LR_MAX
    again = VerdictModel.from_snapshot(model.snapshot())
    assert again.lr("test.seq", steps["noisy"]) == model.lr("test.seq", steps["noisy"])
    with pytest.raises(ValueError, match="non-negative"):
        VerdictModel.from_snapshot({"test.seq": {"malicious": -1}})
    model.reset()
    assert model.lr("test.seq", steps["a"]) == steps["a"].lr


def test_repeated_evidence_grows_sub_linearly() -> None:
    c = engine(COUNT_RULE)
    hits = feed(c, *(ev("alpha.x", at=i * 0.01) for i in range(64)))
    first, last = score(hits[0]), score(hits[-1])
    assert last.factors[0].weight > first.factors[0].weight
    assert last.factors[0].weight <= 3.0
    assert last.posterior > first.posterior
