"""Confidence: raw Isolation Forest scores mapped to [0, 1] through the training score distribution.

The mapping is the training set's empirical CDF, taken the anomalous way round::

    confidence(s) = 1 - F_train(s),   F_train(s) = share of training windows scoring below s

interpolated linearly between stored quantiles of the training scores (knots denser in the low,
anomalous tail: every 0.05% up to 1%, every 0.5% up to 10%, then every 1%), and clamped: a score
below every training score gets 1, one above every training score gets 0. So a confidence of 0.99
says "more anomalous than 99% of the windows the model was trained on"; a row exactly at a
contamination-derived threshold (contamination c) gets about 1 - c. The map is non-increasing in
the score, needs no assumption about the score's shape, and is cheap (one `np.interp` per batch).
This replaces the seed's `1 / (1 + exp(score))`, which squeezed every score in [-1, 0] into
[0.5, 0.73] whatever the training data looked like.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

METHOD: Final = "empirical-cdf"
DESCRIPTION: Final = (
    "confidence = 1 - F(score), F the empirical CDF of the training scores, interpolated "
    "linearly between the stored quantiles and clamped to [0, 1]"
)


def quantile_grid() -> tuple[float, ...]:
    """The quantiles stored: dense in the anomalous (low-score) tail."""
    grid = np.concatenate(
        [
            np.linspace(0.0, 0.01, 21),
            np.linspace(0.01, 0.10, 19),
            np.linspace(0.10, 1.0, 91),
        ]
    )
    return tuple(float(q) for q in np.unique(np.round(grid, 6)))


@dataclass(frozen=True)
class Calibration:
    """Knots of the training score distribution: `scores[i]` is the `quantiles[i]` quantile."""

    quantiles: tuple[float, ...]
    scores: tuple[float, ...]

    def __post_init__(self) -> None:
        q, s = np.asarray(self.quantiles), np.asarray(self.scores)
        if len(q) < 2 or len(q) != len(s):
            raise ValueError("calibration needs at least two (quantile, score) knots")
        if q[0] != 0.0 or q[-1] != 1.0 or np.any(np.diff(q) <= 0):
            raise ValueError("calibration quantiles must rise strictly from 0 to 1")
        if not np.all(np.isfinite(s)) or np.any(np.diff(s) < 0):
            raise ValueError("calibration scores must be finite and non-decreasing")

    @classmethod
    def from_scores(cls, scores: Sequence[float] | FloatArray) -> Calibration:
        arr = np.asarray(scores, dtype=np.float64)
        if arr.size == 0 or not np.all(np.isfinite(arr)):
            raise ValueError("calibration needs finite training scores")
        grid = quantile_grid()
        knots = np.quantile(arr, grid)
        # Guard against float rounding making the sequence dip by an ulp.
        knots = np.maximum.accumulate(knots)
        return cls(grid, tuple(float(k) for k in knots))

    def cdf(self, scores: FloatArray) -> FloatArray:
        """F_train(score), interpolated and clamped to [0, 1]."""
        xs, qs = np.asarray(self.scores), np.asarray(self.quantiles)
        # np.interp clamps to qs[0] = 0 and qs[-1] = 1 outside the knots.
        return np.asarray(np.interp(scores, xs, qs), dtype=np.float64)

    def confidence(self, scores: FloatArray) -> FloatArray:
        """1 - F_train(score): in [0, 1], non-increasing in the score."""
        return 1.0 - self.cdf(scores)

    def knots(self) -> list[list[float]]:
        """[[quantile, score], ...]."""
        return [[q, s] for q, s in zip(self.quantiles, self.scores, strict=True)]

    def to_json(self) -> dict[str, object]:
        return {"method": METHOD, "description": DESCRIPTION, "knots": self.knots()}

    @classmethod
    def from_json(cls, doc: object) -> Calibration:
        if not isinstance(doc, dict) or doc.get("method") != METHOD:
            raise ValueError(f"calibration method must be {METHOD!r}")
        knots = doc.get("knots")
        if not isinstance(knots, list) or not all(
            isinstance(k, list) and len(k) == 2 and all(_is_number(v) for v in k) for k in knots
        ):
            raise ValueError("calibration knots must be [quantile, score] pairs")
        return cls(tuple(float(k[0]) for k in knots), tuple(float(k[1]) for k in knots))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
