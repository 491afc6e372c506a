"""cortex.windows: stored host telemetry windows as qsc-ml rows, and verdicts as their labels.

The rows are read back with the ML service's own reader (ml.data) here; tests/integration
test_cortex_windows_cli.py runs the commands on a real store and `qsc-ml train`/`tune` on them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cortex import windows as w
from cortex.assessments import Assessment, VerdictRecord
from mesh import host_features
from ml import schema
from ml.data import JSONL_SUFFIXES, read_windows
from qsc.common.v1 import event_pb2

S = 10**9
T0 = 1_800_000_000 * S


def telemetry(
    host: str = "web-01",
    start: int = T0,
    seconds: int = 60,
    *,
    values: dict[str, float] | None = None,
    unmeasured: tuple[str, ...] = (),
    version: int = 1,
    drop: str = "",
) -> event_pb2.Event:
    e = event_pb2.Event()
    e.guardian.host = host
    e.time.FromNanoseconds(start + seconds * S)
    t = e.host_telemetry
    t.host = host
    t.window_start.FromNanoseconds(start)
    t.window_end.FromNanoseconds(start + seconds * S)
    t.feature_schema_version = version
    given = {name: float(i) for i, name in enumerate(host_features.FEATURES)} | (values or {})
    for name, value in given.items():
        if name != drop:
            t.features.add(name=name, value=value)
    t.unmeasured.extend(unmeasured)
    return e


def test_the_schema_is_the_ml_services() -> None:
    assert host_features.FEATURES == schema.FEATURES
    assert host_features.SCHEMA_VERSION == schema.SCHEMA_VERSION
    assert host_features.FLOAT32_MAX == schema.FLOAT32_MAX
    assert w.JSONL_SUFFIXES == JSONL_SUFFIXES
    for name, domain in schema.DOMAINS.items():
        for value in (domain.minimum, domain.maximum, -1.0, 100.5, 1e39, float("nan")):
            assert host_features.in_domain(name, value) == domain.allows(value), (name, value)


def test_window_of_reads_a_window_and_names_what_it_cannot() -> None:
    window = w.window_of(telemetry(values={"cpu_percent": 12.5}))
    assert isinstance(window, w.Window)
    assert window.host == "web-01"
    assert (window.start_ns, window.end_ns) == (T0, T0 + 60 * S)
    assert window.values[host_features.FEATURES.index("cpu_percent")] == 12.5
    assert w.window_of(telemetry(version=2)) == w.SKIP_SCHEMA
    assert w.window_of(telemetry(drop="exec_rate")) == w.SKIP_INCOMPLETE
    assert w.window_of(telemetry(values={"cpu_percent": 101.0})) == w.SKIP_DOMAIN
    assert w.window_of(telemetry(values={"file_changes": -1.0})) == w.SKIP_DOMAIN
    extra = telemetry()
    extra.host_telemetry.features.add(name="a_feature_from_later", value=1.0)
    assert isinstance(w.window_of(extra), w.Window)  # a newer Alpha's extra feature is left out
    twice = telemetry()
    twice.host_telemetry.features.add(name="exec_rate", value=1.0)
    assert w.window_of(twice) == w.SKIP_INCOMPLETE
    with pytest.raises(ValueError, match="host_telemetry"):
        w.window_of(event_pb2.Event())


def test_unmeasured_windows_are_skipped_unless_asked_and_counted() -> None:
    skip, keep = w.Tally(), w.Tally(include_unmeasured=True)
    events = [
        telemetry(),
        telemetry(unmeasured=("exec_rate", "file_changes")),
        telemetry(version=3),
    ]
    kept = [x for x in map(skip.admit, events) if x is not None]
    assert len(kept) == 1
    assert skip.skipped == {w.SKIP_UNMEASURED: 1, w.SKIP_SCHEMA: 1}
    assert skip.unmeasured == {"exec_rate": 1, "file_changes": 1}
    assert "unmeasured (exec_rate 1, file_changes 1)" in skip.skipped_text()
    assert len([x for x in map(keep.admit, events) if x is not None]) == 2


@pytest.mark.parametrize("name", ["rows.csv", "rows.jsonl", "rows.ndjson"])
def test_rows_read_back_with_the_ml_reader(tmp_path: Path, name: str) -> None:
    plain = w.RowFormat.for_name(name, labelled=False)
    windows = [
        w.window_of(telemetry("web-01", T0, values={"cpu_percent": 0.1 + 0.2})),
        w.window_of(telemetry("web-02", T0 + 60 * S, values={"network_bytes_out": 3e9})),
    ]
    assert all(isinstance(x, w.Window) for x in windows)
    rows = [x for x in windows if isinstance(x, w.Window)]
    path = tmp_path / name
    path.write_text(plain.header() + "".join(plain.row(x) for x in rows))
    back = read_windows([path])
    assert back.features == schema.FEATURES
    assert back.hosts == ("web-01", "web-02")
    assert back.times is not None
    assert list(back.times) == [T0 / S, T0 / S + 60]
    assert np.array_equal(back.values, np.array([x.values for x in rows]))  # exact floats
    assert back.labels is None

    labelled = w.RowFormat.for_name(name, labelled=True)
    path = tmp_path / f"labelled-{name}"
    path.write_text(
        labelled.header()
        + labelled.row(rows[0], True, "cortex.rule_a")
        + labelled.row(rows[1], False, "")
    )
    back = read_windows([path], features=schema.FEATURES, require_labels=True)
    assert back.labels is not None
    assert back.labels.tolist() == [True, False]
    assert back.kinds == ("cortex.rule_a", "")
    with pytest.raises(ValueError, match="label"):
        labelled.row(rows[0])


def assessment(
    verdict: str | None,
    *,
    key: tuple[tuple[str, str], ...] = (("host", "web-01"),),
    first: int = T0,
    last: int = T0 + 90 * S,
    state: str = "resolved",
    rule: str = "cortex.rule_a",
) -> Assessment:
    return Assessment(
        id=f"a-{verdict}-{first}",
        rule_id=rule,
        title="t",
        description="",
        severity="high",
        mitre=(),
        correlation_key="k",
        key=key,
        state=state,  # type: ignore[arg-type]
        revision=2,
        confidence=0.9,
        prior=0.1,
        confidence_id=3,
        factors=(),
        steps_present=frozenset(),
        event_ids=(),
        event_count=1,
        first_event_ns=first,
        last_event_ns=last,
        create_ns=first,
        update_ns=last,
        close_ns=last if state == "resolved" else 0,
        verdict=None if verdict is None else VerdictRecord(verdict, "", "soar", last),  # type: ignore[arg-type]
    )


def test_label_span_of_a_judged_assessment() -> None:
    tp = w.label_span(assessment("true_positive"))
    assert tp is not None
    assert (tp.hosts, tp.malicious, tp.first_ns, tp.last_ns) == (("web-01",), True, T0, T0 + 90 * S)
    fp = w.label_span(assessment("false_positive"))
    benign = w.label_span(assessment("benign"))
    assert fp is not None
    assert benign is not None
    assert not fp.malicious
    assert not benign.malicious
    assert w.label_span(assessment(None)) is None
    assert w.label_span(assessment("true_positive", state="open")) is None
    by_user = assessment("benign", key=(("user", "alice"),))
    assert w.label_span(by_user) is None  # no host at all
    from_events = w.label_span(by_user, ["web-02", "web-01", "web-02", ""])
    assert from_events is not None
    assert from_events.hosts == ("web-01", "web-02")


def test_overlapping_windows_get_the_label_and_malicious_wins() -> None:
    minute = [telemetry("web-01", T0 + i * 60 * S) for i in range(-1, 4)]
    windows = [x for x in map(w.window_of, minute) if isinstance(x, w.Window)]
    # Events over [T0 + 30 s, T0 + 90 s]: the windows starting at T0 and T0 + 60 s.
    tp = w.label_span(assessment("true_positive", first=T0 + 30 * S, last=T0 + 90 * S))
    # A false positive over [T0 + 100 s, T0 + 120 s] (exactly the start of the third window).
    fp = w.label_span(
        assessment("false_positive", first=T0 + 100 * S, last=T0 + 120 * S, rule="cortex.b")
    )
    elsewhere = w.label_span(assessment("true_positive", key=(("host", "db-01"),)))
    assert tp is not None
    assert fp is not None
    assert elsewhere is not None
    book = w.LabelledWindows()
    for span in (fp, tp, elsewhere):
        for window in windows:
            book.add(window, span)
    rows = [(x.start_ns - T0) // S for x, _, _ in book.rows()]
    assert rows == [0, 60, 120]
    labels = {(x.start_ns - T0) // S: (m, rules) for x, m, rules in book.rows()}
    assert labels[0] == (True, "cortex.rule_a")
    assert labels[60] == (True, "cortex.rule_a")  # both overlap it: the true positive wins
    assert labels[120] == (False, "cortex.b")
    assert book.counts() == (2, 1)
    # Window edges: [start, end) against the closed span.
    edge = windows[1]  # [T0, T0 + 60 s)
    assert edge.overlaps(T0 + 59 * S, T0 + 59 * S)
    assert edge.overlaps(T0 - 5 * S, T0)
    assert not edge.overlaps(T0 + 60 * S, T0 + 70 * S)
