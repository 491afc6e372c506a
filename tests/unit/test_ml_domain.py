"""Out-of-range input, in process: a value no host can produce (outside its feature's domain in
ml.schema.DOMAINS) is refused, naming the request field and the feature, by the scorer and by
training; a value in its domain but beyond what training saw (the card's
`training.feature_ranges`) is flagged OUT_OF_RANGE, an anomaly whatever its score, never normal.
(Over the wire: tests/integration/test_ml_server.py.)"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crypto.keyring import KeyManager
from ml import _convert
from ml.__main__ import EXIT_USAGE, main
from ml.api import ScoreBatch, Verdict
from ml.card import ModelCard
from ml.data import Windows, read_windows
from ml.errors import InvalidInputError, TrainingError
from ml.forest import TrainParams
from ml.schema import DOMAINS, FEATURES, FLOAT32_MAX, SCHEMA_VERSION, FeatureDomain
from ml.scorer import LoadedModel
from ml.store import save_model
from ml.synthetic import SyntheticConfig, generate
from ml.training import check_domains, train_model, tune_model

NORMAL = [20.0, 45.0, 2e7, 6e7, 1.0, 250.0, 1.5, 20.0, 10.0, 1.0, 0.0, 2.0]
PERCENT = [f for f in FEATURES if f.endswith("_percent")]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ml-domain")


@pytest.fixture(scope="module")
def keys(base: Path) -> KeyManager:
    return KeyManager.create(base / "keys", "ml")


@pytest.fixture(scope="module")
def model(base: Path, keys: KeyManager) -> LoadedModel:
    train = generate(SyntheticConfig(hosts=3, days=2, seed=4, anomaly_rate=0.01))
    stored, _, _ = train_model(
        train, TrainParams(n_estimators=30, contamination=0.02), base / "models", keys
    )
    return LoadedModel(stored)


def _batch(*rows: list[float], names: tuple[str, ...] = FEATURES) -> ScoreBatch:
    return ScoreBatch(SCHEMA_VERSION, names, [f"r{i}" for i in range(len(rows))], list(rows))


def _row(**values: float) -> list[float]:
    row = dict(zip(FEATURES, NORMAL, strict=True))
    row.update(values)
    return [row[f] for f in FEATURES]


# --- domains ----------------------------------------------------------------------------------


def test_domains_follow_the_feature_definitions() -> None:
    assert PERCENT == ["cpu_percent", "memory_percent"]
    for name, domain in DOMAINS.items():
        if name in PERCENT:
            assert (domain.minimum, domain.maximum, domain.unit) == (0.0, 100.0, "percentage")
        else:  # counts and rates
            assert (domain.minimum, domain.maximum) == (0.0, FLOAT32_MAX)
    assert DOMAINS["exec_rate"].unit == "rate per second"
    assert DOMAINS["failed_logins"].unit == "count"
    assert np.float32(FLOAT32_MAX) == np.finfo(np.float32).max


def test_a_domain_allows_its_closed_interval_and_no_nan() -> None:
    percent = FeatureDomain(0.0, 100.0, "percentage")
    assert percent.allows(0.0)
    assert percent.allows(100.0)
    assert percent.allows(42.5)
    assert not percent.allows(-1e-9)
    assert not percent.allows(100.000001)
    assert not percent.allows(math.nan)
    assert not percent.allows(math.inf)
    assert percent.describe() == "a percentage in [0, 100]"
    assert DOMAINS["failed_logins"].describe() == "a count >= 0 (and at most 3.40282e+38)"


PCT = "must be a percentage in [0, 100]"
CAP = "(and at most 3.40282e+38)"
COUNT = f"must be a count >= 0 {CAP}"
BIG = FLOAT32_MAX * 1.0001  # finite as a double, infinite as a float32
FINITE = "values must be finite numbers"


@pytest.mark.parametrize(
    ("feature", "value", "reason"),
    [
        ("cpu_percent", -1e9, f"cpu_percent is -1e+09; cpu_percent {PCT}"),
        ("cpu_percent", 1e308, f"cpu_percent is 1e+308; cpu_percent {PCT}"),
        ("cpu_percent", math.nan, f"cpu_percent is nan; {FINITE}"),
        ("cpu_percent", -math.inf, f"cpu_percent is -inf; {FINITE}"),
        ("memory_percent", 100.5, f"memory_percent is 100.5; memory_percent {PCT}"),
        ("memory_percent", -0.0001, f"memory_percent is -0.0001; memory_percent {PCT}"),
        ("failed_logins", -1.0, f"failed_logins is -1; failed_logins {COUNT}"),
        ("process_count", 1e308, f"process_count is 1e+308; process_count {COUNT}"),
        ("network_bytes_in", BIG, f"network_bytes_in is 3.40316e+38; network_bytes_in {COUNT}"),
        ("exec_rate", -0.5, f"exec_rate is -0.5; exec_rate must be a rate per second >= 0 {CAP}"),
    ],
)  # fmt: skip
def test_a_value_outside_its_domain_is_refused_naming_field_and_feature(
    model: LoadedModel, feature: str, value: float, reason: str
) -> None:
    j = FEATURES.index(feature)
    with pytest.raises(InvalidInputError) as info:
        model.score(_batch(NORMAL, NORMAL, _row(**{feature: value})), max_rows=10)
    assert info.value.field == f"rows[2].values[{j}]"
    assert info.value.reason == reason
    assert str(info.value).startswith(f"rows[2].values[{j}]: {feature} is ")
    # The column index is the request's, whatever order the model takes the features in.
    order = tuple(reversed(FEATURES))
    shuffled = dict(zip(FEATURES, _row(**{feature: value}), strict=True))
    with pytest.raises(InvalidInputError) as info:
        model.score(_batch([shuffled[f] for f in order], names=order), max_rows=10)
    assert info.value.field == f"rows[0].values[{order.index(feature)}]"


def test_the_first_bad_cell_is_named() -> None:
    windows = Windows(FEATURES, np.array([NORMAL, _row(exec_rate=-1, cpu_percent=101)]))
    with pytest.raises(TrainingError, match=r"training row 2: cpu_percent is 101; "):
        check_domains(windows)


def test_domain_edges_are_accepted(model: LoadedModel) -> None:
    edges = [_row(cpu_percent=0.0, memory_percent=100.0), _row(network_bytes_out=FLOAT32_MAX)]
    out = model.score(_batch(*edges), max_rows=10)
    assert out.keys == ["r0", "r1"]
    # Accepted, but nothing like what training saw: flagged, never normal.
    assert out.verdicts == [Verdict.OUT_OF_RANGE, Verdict.OUT_OF_RANGE]
    assert out.out_of_range == [("cpu_percent", "memory_percent"), ("network_bytes_out",)]


# --- training ranges --------------------------------------------------------------------------


def _ranges(model: LoadedModel) -> dict[str, tuple[float, float]]:
    ranges = model.card.feature_ranges
    assert ranges is not None
    return dict(zip(model.features, ranges, strict=True))


def test_the_card_records_the_training_range(model: LoadedModel) -> None:
    ranges = _ranges(model)
    assert list(ranges) == list(FEATURES)
    doc = model.card.doc["training"]["feature_ranges"]
    assert {k: tuple(v) for k, v in doc.items()} == ranges
    for low, high in ranges.values():
        assert low <= high


def test_beyond_the_training_range_is_flagged_never_normal(model: LoadedModel) -> None:
    ranges = _ranges(model)
    high = ranges["process_count"][1]
    at_edges = _row(process_count=high, file_changes=ranges["file_changes"][0])
    above = _row(process_count=high * 1.01 + 1)
    below = _row(memory_percent=ranges["memory_percent"][0] / 2)
    both = _row(process_count=high * 2, exec_rate=ranges["exec_rate"][1] * 2)
    out = model.score(_batch(NORMAL, at_edges, above, below, both), max_rows=10)
    assert out.range_checked
    assert out.out_of_range == [
        (),
        (),
        ("process_count",),
        ("memory_percent",),
        ("process_count", "exec_rate"),
    ]
    assert out.verdicts[:2] == [Verdict.NORMAL, Verdict.NORMAL]
    assert out.verdicts[2:] == [Verdict.OUT_OF_RANGE] * 3
    assert out.is_anomaly.tolist() == [False, False, True, True, True]
    # The forest alone calls the rows just past an edge normal; the flag overrides it, with at
    # least the confidence of a row exactly at the threshold.
    at_threshold = model.card.calibration.confidence(np.array([model.threshold]))[0]
    assert out.decision[2] > 0
    assert out.decision[3] > 0
    assert np.all(out.confidence[2:] >= at_threshold)
    assert np.all(out.confidence[2:] > out.confidence[0])
    raw_score, raw_confidence, raw_anomaly = model.score_matrix(np.array([above]))
    assert not raw_anomaly[0]
    assert out.score[2] == raw_score[0]  # the score itself is the forest's, untouched
    assert raw_confidence[0] < at_threshold


def test_flagged_features_are_named_in_model_order(model: LoadedModel) -> None:
    ranges = _ranges(model)
    row = _row(privilege_changes=ranges["privilege_changes"][1] + 5, cpu_percent=0.0)
    assert ranges["cpu_percent"][0] > 0.0
    order = tuple(reversed(FEATURES))
    by_name = dict(zip(FEATURES, row, strict=True))
    out = model.score(_batch([by_name[f] for f in order], names=order), max_rows=10)
    assert out.out_of_range == [("cpu_percent", "privilege_changes")]


def test_the_flag_travels_in_the_protobuf(model: LoadedModel) -> None:
    ranges = _ranges(model)
    batch = _batch(NORMAL, _row(exec_rate=ranges["exec_rate"][1] + 1))
    response = _convert.score_response(model.score(batch, max_rows=10))
    assert response.range_checked
    normal, flagged = response.scores
    assert (normal.verdict, list(normal.out_of_range_features)) == (1, [])
    assert flagged.verdict == 3  # VERDICT_OUT_OF_RANGE
    assert list(flagged.out_of_range_features) == ["exec_rate"]
    assert flagged.is_anomaly
    back = _convert.batch_scores(response)
    assert back.verdicts == [Verdict.NORMAL, Verdict.OUT_OF_RANGE]
    info = _convert.model_response(model, max_batch_rows=10)
    assert [(r.name, r.min, r.max) for r in info.feature_ranges] == [
        (name, low, high) for name, (low, high) in ranges.items()
    ]
    assert _convert.model_info(info).feature_ranges == tuple(ranges.values())


def test_a_card_without_ranges_is_not_range_checked_and_says_so(
    model: LoadedModel, keys: KeyManager, tmp_path: Path
) -> None:
    doc = {k: v for k, v in model.card.doc.items() if k not in ("auth", "version")}
    doc["training"] = {k: v for k, v in doc["training"].items() if k != "feature_ranges"}
    stored = save_model(tmp_path / "old", model.path.read_bytes(), doc, keys)
    old = LoadedModel(stored)
    assert old.card.feature_ranges is None
    out = old.score(_batch(NORMAL, _row(process_count=1e9)), max_rows=10)
    assert not out.range_checked
    assert not any(out.out_of_range)
    assert out.verdicts[0] == Verdict.NORMAL
    response = _convert.score_response(out)
    assert not response.range_checked
    assert [list(s.out_of_range_features) for s in response.scores] == [[], []]
    assert list(_convert.model_response(old, max_batch_rows=1).feature_ranges) == []


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda r: r.pop("cpu_percent"), "name exactly the model's features"),
        (lambda r: r.update(bogus=[0, 1]), "name exactly the model's features"),
        (lambda r: r.update(cpu_percent=[5.0, 1.0]), "finite, min <= max"),
        (lambda r: r.update(cpu_percent=[0.0]), r"cpu_percent must be \[min, max\]"),
        (lambda r: r.update(cpu_percent=[0.0, "high"]), "expected a number"),
    ],
)
def test_malformed_ranges_do_not_parse(model: LoadedModel, edit: Any, needle: str) -> None:
    doc = {**model.card.doc}
    ranges = {k: list(v) for k, v in doc["training"]["feature_ranges"].items()}
    edit(ranges)
    doc["training"] = {**doc["training"], "feature_ranges": ranges}
    with pytest.raises(ValueError, match=needle):
        ModelCard.from_json(doc)


def test_a_nan_range_does_not_parse(model: LoadedModel) -> None:
    doc = {**model.card.doc}
    ranges = {k: list(v) for k, v in doc["training"]["feature_ranges"].items()}
    ranges["cpu_percent"] = [math.nan, 1.0]
    doc["training"] = {**doc["training"], "feature_ranges": ranges}
    with pytest.raises(ValueError, match="finite"):
        ModelCard.from_json(doc)


# --- training refuses impossible rows ---------------------------------------------------------


def test_training_and_tuning_refuse_values_outside_the_domain(
    model: LoadedModel, keys: KeyManager, tmp_path: Path
) -> None:
    path = tmp_path / "bad.csv"
    header = ",".join(FEATURES)
    rows = [NORMAL, NORMAL, _row(failed_logins=-2)]
    path.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    windows = read_windows([path])
    with pytest.raises(TrainingError) as info:
        train_model(windows, TrainParams(n_estimators=4), tmp_path / "m", keys)
    assert str(info.value) == (
        f"{path}: training row 3 of 3: failed_logins is -2; failed_logins must be a count >= 0 "
        "(and at most 3.40282e+38)"
    )
    assert not (tmp_path / "m").exists()  # nothing written
    feedback = path.with_name("feedback.csv")
    feedback.write_text(
        header + ",label\n" + "\n".join(",".join(map(str, r)) + ",0" for r in rows) + "\n"
    )
    labelled = read_windows([feedback], features=model.features, require_labels=True)
    stored = save_model(
        tmp_path / "m2",
        model.path.read_bytes(),
        {k: v for k, v in model.card.doc.items() if k not in ("auth", "version")},
        keys,
    )
    with pytest.raises(TrainingError, match=r"feedback row 3 of 3: failed_logins is -2"):
        tune_model(stored, labelled, tmp_path / "m2", keys)


def test_qsc_ml_train_on_impossible_values_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    KeyManager.create(tmp_path / "keys", "ml")
    data = tmp_path / "t.csv"
    data.write_text("cpu_percent,failed_logins\n10,1\n150,2\n")
    args = ["train", "--input", str(data), "--out", str(tmp_path / "m")]
    assert main([*args, "--keyring", str(tmp_path / "keys"), "--quiet"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"qsc-ml: error: {data}: training row 2 of 2: cpu_percent is 150; " in err
    assert "cpu_percent must be a percentage in [0, 100]" in err
