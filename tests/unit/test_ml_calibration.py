"""Confidence from the training score distribution: in [0, 1], non-increasing in the score, the
empirical CDF's complement at the stored quantiles, clamped outside them."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ml.calibration import METHOD, Calibration, quantile_grid


def test_grid_is_dense_in_the_anomalous_tail() -> None:
    grid = quantile_grid()
    assert grid[0] == 0.0
    assert grid[-1] == 1.0
    assert all(b > a for a, b in itertools.pairwise(grid))
    assert sum(q <= 0.01 for q in grid) == 21


@pytest.mark.parametrize("kind", ["smooth", "ties", "constant", "tiny"])
def test_monotone_and_bounded(kind: str) -> None:
    rng = np.random.default_rng(1)
    scores = {
        "smooth": -0.5 + 0.05 * rng.normal(size=5000),
        "ties": np.round(-0.5 + 0.05 * rng.normal(size=5000), 2),  # many repeated knots
        "constant": np.full(100, -0.42),
        "tiny": np.array([-0.6, -0.4]),
    }[kind]
    cal = Calibration.from_scores(scores)
    probe = np.sort(np.concatenate([np.linspace(-1.2, 0.2, 4001), scores, cal.scores]))
    conf = cal.confidence(probe)
    assert np.all((conf >= 0) & (conf <= 1))
    assert np.all(np.diff(conf) <= 1e-12)  # non-increasing: lower scores, more confidence
    assert cal.confidence(np.array([scores.min() - 1]))[0] == 1.0
    assert cal.confidence(np.array([scores.max() + 1]))[0] == 0.0


def test_matches_the_empirical_cdf() -> None:
    scores = -0.5 + 0.05 * np.random.default_rng(2).normal(size=20000)
    cal = Calibration.from_scores(scores)
    probe = np.quantile(scores, [0.002, 0.01, 0.05, 0.25, 0.5, 0.9])
    empirical = np.array([(scores < p).mean() for p in probe])
    assert np.max(np.abs(cal.cdf(probe) - empirical)) < 2e-3
    # A contamination-style threshold at the 5% quantile has confidence about 0.95.
    assert abs(cal.confidence(np.array([np.quantile(scores, 0.05)]))[0] - 0.95) < 1e-3


def test_json_round_trip_and_validation() -> None:
    cal = Calibration.from_scores(np.linspace(-0.7, -0.3, 1000))
    doc = cal.to_json()
    assert doc["method"] == METHOD
    assert "1 - F(score)" in str(doc["description"])
    assert Calibration.from_json(doc) == cal
    with pytest.raises(ValueError, match="method"):
        Calibration.from_json({**doc, "method": "logistic"})
    with pytest.raises(ValueError, match="non-decreasing"):
        Calibration((0.0, 0.5, 1.0), (-0.5, -0.6, -0.4))
    with pytest.raises(ValueError, match="0 to 1"):
        Calibration((0.1, 1.0), (-0.5, -0.4))
    with pytest.raises(ValueError, match="finite"):
        Calibration.from_scores([float("nan"), 1.0])
