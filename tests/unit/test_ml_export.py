"""The fused ONNX export equals scikit-learn's IsolationForest on held-out rows, within 1e-5, over a
grid of hyperparameters; it is one tree ensemble plus the score transform."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.ensemble._iforest import _average_path_length

from ml.export import (
    DECISION_OUTPUT,
    SCORE_OUTPUT,
    average_path_length,
    float32_below,
    fused_onnx,
    run_onnx,
    skl2onnx_onnx,
)
from ml.forest import TrainParams, fit_forest

TOLERANCE = 1e-5
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Case:
    name: str
    rows: int
    features: int
    params: dict[str, Any]
    kind: str = "gauss"  # gauss | counts | bytes


CASES = [
    Case("few trees, few features", 600, 3, {"n_estimators": 5, "max_samples": 64}),
    Case("many trees, contamination", 2000, 12, {"n_estimators": 300, "contamination": 0.05}),
    Case(
        "many features, subsets, float max_samples",
        1500,
        40,
        {"n_estimators": 50, "max_samples": 0.3, "contamination": 0.1, "max_features": 0.5},
    ),
    Case("one feature, max_samples above n", 300, 1, {"n_estimators": 20, "max_samples": 1000}),
    Case(
        "two of eight features per tree",
        1000,
        8,
        {"n_estimators": 100, "max_samples": 100, "max_features": 0.25, "contamination": 0.02},
    ),
    Case("integer counts with ties", 3000, 6, {"n_estimators": 80}, kind="counts"),
    Case("byte volumes (float32 rounding)", 2500, 4, {"n_estimators": 60}, kind="bytes"),
]


def _data(kind: str, rows: int, features: int, seed: int) -> FloatArray:
    rng = np.random.default_rng(seed)
    if kind == "counts":
        return rng.poisson(rng.uniform(0.5, 20, features), size=(rows, features)).astype(float)
    if kind == "bytes":
        return np.round(rng.lognormal(np.log(3e7), 1.0, size=(rows, features)))
    scale = rng.uniform(0.1, 1000, features)
    return rng.normal(size=(rows, features)) * scale


def _held_out(kind: str, train: FloatArray, seed: int) -> FloatArray:
    """Fresh rows from the same distribution plus outliers spread beyond the training range."""
    fresh = _data(kind, 1500, train.shape[1], seed + 100)
    lo, hi = train.min(axis=0), train.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    rng = np.random.default_rng(seed + 200)
    wide = rng.uniform(lo - span, hi + span, size=(500, train.shape[1]))
    if kind != "gauss":
        wide = np.round(np.abs(wide)).astype(np.float64)
    return np.concatenate([fresh, wide])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fused_equals_sklearn(case: Case) -> None:
    x = _data(case.kind, case.rows, case.features, seed=len(case.name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # max_samples above n: clipped, as intended
        forest = IsolationForest(random_state=7, **case.params).fit(x)
    proto, info = fused_onnx(forest)
    held = _held_out(case.kind, x, seed=len(case.name))
    score, decision = run_onnx(proto.SerializeToString(), held)
    assert np.max(np.abs(score - forest.score_samples(held))) < TOLERANCE
    assert np.max(np.abs(decision - forest.decision_function(held))) < TOLERANCE
    # And the verdicts agree wherever the score is not within the tolerance of the offset.
    clear = np.abs(forest.decision_function(held)) > TOLERANCE
    assert np.array_equal((decision < 0)[clear], (forest.predict(held) == -1)[clear])
    assert info.trees == len(forest.estimators_)
    assert info.graph_nodes == 4


def test_graph_is_one_ensemble_and_the_transform() -> None:
    x = _data("gauss", 500, 5, seed=1)
    forest = IsolationForest(n_estimators=200, random_state=0).fit(x)
    proto, info = fused_onnx(forest, metadata={"qsc.example": "1"})
    ops = [node.op_type for node in proto.graph.node]
    assert ops == ["TreeEnsembleRegressor", "Pow", "Neg", "Sub"]
    assert [o.name for o in proto.graph.output] == [SCORE_OUTPUT, DECISION_OUTPUT]
    assert info.graph_nodes == len(ops) == 4
    assert info.leaves == sum(int((e.tree_.children_left == -1).sum()) for e in forest.estimators_)
    assert {p.key: p.value for p in proto.metadata_props} == {"qsc.example": "1"}
    onnx.checker.check_model(proto)


def test_fit_in_steps_is_one_fit() -> None:
    x = _data("gauss", 800, 5, seed=3)
    params = TrainParams(
        n_estimators=37, max_samples=100, contamination=0.05, max_features=0.6, seed=3
    )
    seen: list[tuple[int, int]] = []
    stepped = fit_forest(x, params, lambda done, total: seen.append((done, total)))
    single = IsolationForest(
        n_estimators=37, max_samples=100, contamination=0.05, max_features=0.6, random_state=3
    ).fit(x)
    assert np.array_equal(stepped.score_samples(x), single.score_samples(x))
    assert stepped.offset_ == single.offset_
    assert seen[-1] == (37, 37)
    assert len(seen) == 10


def test_average_path_length_matches_sklearn() -> None:
    n = np.array([0, 1, 2, 3, 4, 10, 256, 1000, 123456])
    assert np.allclose(average_path_length(n), _average_path_length(n), rtol=0, atol=1e-12)


def test_float32_below_keeps_every_comparison() -> None:
    rng = np.random.default_rng(5)
    thresholds = np.concatenate([rng.normal(size=2000) * 1e6, rng.uniform(0, 5, 2000)])
    below = float32_below(thresholds)
    assert np.all(below.astype(np.float64) <= thresholds)
    # The next float32 up is above the threshold: nothing in between was skipped.
    assert np.all(np.nextafter(below, np.float32(np.inf)).astype(np.float64) > thresholds)
    x = np.concatenate([below, np.nextafter(below, np.float32(np.inf))])
    for t, b in zip(thresholds[:200], below[:200], strict=True):
        assert np.array_equal(x.astype(np.float64) <= t, x <= b)


def test_skl2onnx_comparison_path_agrees() -> None:
    """The benchmark's skl2onnx baseline scores like sklearn too (small forest: fast to convert)."""
    x = _data("gauss", 400, 4, seed=9)
    forest = IsolationForest(n_estimators=5, random_state=0, contamination=0.1).fit(x)
    proto = skl2onnx_onnx(forest)
    assert len(proto.graph.node) > 4 * len(forest.estimators_)
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = {o.name: i for i, o in enumerate(session.get_outputs())}
    result = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})
    scores = np.asarray(result[outputs["scores"]]).ravel()
    assert np.max(np.abs(scores - forest.decision_function(x))) < 1e-4
