"""Fitting the Isolation Forest, with progress."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import IsolationForest

from ml.errors import TrainingError

# Called with (trees fitted so far, trees in all).
Progress = Callable[[int, int], None]
MAX_TREES: Final = 10_000
PROGRESS_STEPS: Final = 10


@dataclass(frozen=True)
class TrainParams:
    """Isolation Forest hyperparameters (scikit-learn's names and meanings)."""

    n_estimators: int = 200
    max_samples: int | float | Literal["auto"] = "auto"  # auto: min(256, rows)
    contamination: float | Literal["auto"] = "auto"  # auto: sklearn's fixed offset -0.5
    max_features: float = 1.0  # share of the features each tree sees
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.n_estimators, bool) or not 1 <= self.n_estimators <= MAX_TREES:
            raise TrainingError(f"n_estimators must be 1..{MAX_TREES}")
        ms = self.max_samples
        if isinstance(ms, bool) or not (
            ms == "auto"
            or (isinstance(ms, int) and ms >= 2)
            or (isinstance(ms, float) and 0.0 < ms <= 1.0)
        ):
            raise TrainingError(
                "max_samples must be 'auto', an integer >= 2 or a fraction in (0, 1]"
            )
        c = self.contamination
        if c != "auto" and (isinstance(c, bool) or not isinstance(c, float) or not 0.0 < c <= 0.5):
            raise TrainingError("contamination must be 'auto' or a fraction in (0, 0.5]")
        if not (isinstance(self.max_features, float) and 0.0 < self.max_features <= 1.0):
            raise TrainingError("max_features must be a fraction in (0, 1]")
        if isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise TrainingError("seed must be in 0..2^32-1")

    def effective_max_samples(self, rows: int) -> int:
        """What sklearn will use for `rows` training rows."""
        if self.max_samples == "auto":
            return min(256, rows)
        if isinstance(self.max_samples, int):
            return min(self.max_samples, rows)
        return int(self.max_samples * rows)

    def to_json(self) -> dict[str, object]:
        return {
            "n_estimators": self.n_estimators,
            "max_samples": self.max_samples,
            "contamination": self.contamination,
            "max_features": self.max_features,
            "seed": self.seed,
        }


def parse_fraction_or_auto(text: str, *, integer: bool = False) -> int | float | str:
    """CLI helper: 'auto', an integer (when allowed) or a float."""
    value = text.strip().lower()
    if value == "auto":
        return "auto"
    if integer and value.isdigit():
        return int(value)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{text!r} is not finite")
    return number


def fit_forest(
    x: npt.NDArray[np.float64], params: TrainParams, progress: Progress | None = None
) -> IsolationForest:
    """Fit on `x` (rows, features). Trees are grown in up to ten warm-started steps so progress
    can be shown; scikit-learn draws each tree's seed in order, so the forest is the one a single
    fit with the same seed would give."""
    rows = int(x.shape[0])
    if params.effective_max_samples(rows) < 2:
        raise TrainingError(
            f"{rows} training rows give max_samples {params.effective_max_samples(rows)}; "
            "each tree needs at least 2"
        )
    final = params.contamination
    model = IsolationForest(
        n_estimators=0,
        max_samples=params.max_samples,
        contamination="auto",  # the offset is computed once, on the last step
        max_features=params.max_features,
        random_state=params.seed,
        warm_start=True,
    )
    step = max(1, math.ceil(params.n_estimators / PROGRESS_STEPS))
    done = 0
    with warnings.catch_warnings():
        # "max_samples is greater than the number of samples": effective_max_samples says so.
        warnings.simplefilter("ignore", UserWarning)
        while done < params.n_estimators:
            done = min(params.n_estimators, done + step)
            last = done == params.n_estimators
            model.set_params(n_estimators=done, contamination=final if last else "auto")
            model.fit(x)
            if progress is not None:
                progress(done, params.n_estimators)
    return model
