"""Threshold choice from labelled feedback: F1 and target false-positive rate."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from ml.errors import TrainingError
from ml.tune import choose_threshold, evaluate


def _feedback(seed: int = 0) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    rng = np.random.default_rng(seed)
    normal = -0.45 + 0.04 * rng.normal(size=2000)
    anomalous = -0.62 + 0.04 * rng.normal(size=100)
    return np.concatenate([normal, anomalous]), np.r_[np.zeros(2000), np.ones(100)].astype(bool)


def test_f1_on_separable_feedback_splits_it_exactly() -> None:
    scores = np.array([-0.7, -0.68, -0.66, -0.45, -0.44, -0.43, -0.42])
    labels = np.array([1, 1, 1, 0, 0, 0, 0], dtype=bool)
    m = choose_threshold(scores, labels)
    assert -0.66 < m.threshold < -0.45
    assert (m.tp, m.fp, m.fn, m.tn) == (3, 0, 0, 4)
    assert m.f1 == 1.0


def test_f1_is_the_best_over_every_threshold() -> None:
    scores, labels = _feedback()
    best = choose_threshold(scores, labels, objective="f1")
    grid = np.linspace(scores.min() - 0.01, scores.max() + 0.01, 3000)
    assert all(evaluate(scores, labels, t).f1 <= best.f1 + 1e-12 for t in grid)
    assert best.f1 > 0.8
    # The verdict rule is score < threshold.
    assert best.tp + best.fp == int(np.sum(scores < best.threshold))


@pytest.mark.parametrize("target", [0.0, 0.001, 0.01, 0.05])
def test_target_fpr_is_met_with_the_most_recall(target: float) -> None:
    scores, labels = _feedback(1)
    m = choose_threshold(scores, labels, objective="target_fpr", target_fpr=target)
    assert m.fpr <= target
    # Any higher threshold that flags one more distinct score breaks the target (or adds nothing).
    higher = np.sort(np.unique(scores))
    nxt = higher[higher > m.threshold]
    if len(nxt):
        assert evaluate(scores, labels, float(nxt[0]) + 1e-12).fpr > target


def test_ties_and_extremes() -> None:
    scores = np.array([-0.5, -0.5, -0.5, -0.4])
    labels = np.array([1, 0, 1, 0], dtype=bool)
    m = choose_threshold(scores, labels)
    assert m.tp == 2
    assert m.fp == 1
    none = choose_threshold(scores, labels, objective="target_fpr", target_fpr=0.0)
    assert none.tp + none.fp == 0
    assert none.threshold < -0.5


def test_errors() -> None:
    scores, labels = _feedback()
    with pytest.raises(TrainingError, match="at least one row labelled anomalous"):
        choose_threshold(scores, np.zeros_like(labels))
    with pytest.raises(TrainingError, match="labelled normal"):
        choose_threshold(scores, np.ones_like(labels), objective="target_fpr", target_fpr=0.1)
    with pytest.raises(TrainingError, match="target_fpr"):
        choose_threshold(scores, labels, objective="target_fpr")
    with pytest.raises(TrainingError, match="as many labels"):
        choose_threshold(scores[:-1], labels)
