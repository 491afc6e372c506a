"""Choosing the anomaly threshold from labelled feedback.

A row is an anomaly when its score is below the threshold. Candidate thresholds are the midpoints
between consecutive distinct scores of the feedback rows (plus one below and one above them all),
so every distinct way of splitting the rows is considered once. Two objectives:

- `f1`: the threshold maximising F1 of the anomaly class; ties go to the lowest threshold (fewest
  alerts);
- `target_fpr`: the highest threshold (most recall) whose false-positive rate on the labelled
  normal rows is at most the target.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from ml.errors import TrainingError

Objective = Literal["f1", "target_fpr"]
OBJECTIVES: Final = ("f1", "target_fpr")


@dataclass(frozen=True)
class Metrics:
    """Confusion counts and rates of one threshold on labelled rows."""

    threshold: float
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def fpr(self) -> float:
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else 0.0

    def to_json(self) -> dict[str, float | int]:
        return {
            **asdict(self),
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "fpr": self.fpr,
        }


def evaluate(scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float) -> Metrics:
    s, y = _checked(scores, labels)
    flagged = s < threshold
    return Metrics(
        threshold=float(threshold),
        tp=int(np.sum(flagged & y)),
        fp=int(np.sum(flagged & ~y)),
        fn=int(np.sum(~flagged & y)),
        tn=int(np.sum(~flagged & ~y)),
    )


def _checked(
    scores: npt.ArrayLike, labels: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if s.shape != y.shape or s.size == 0:
        raise TrainingError("feedback needs as many labels as scores, at least one")
    if not np.all(np.isfinite(s)):
        raise TrainingError("feedback scores must be finite")
    return s, y


def choose_threshold(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    objective: Objective = "f1",
    target_fpr: float | None = None,
) -> Metrics:
    """The threshold for `objective` on the labelled rows, with its metrics."""
    s, y = _checked(scores, labels)
    positives, negatives = int(y.sum()), int((~y).sum())
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    distinct, first = np.unique(s_sorted, return_index=True)
    # Flagging the k lowest distinct scores (k = 0..m): counts of labelled rows flagged.
    cum_pos = np.concatenate([[0], np.cumsum(y_sorted)])
    cum_all = np.arange(len(s_sorted) + 1)
    ends = np.concatenate([first[1:], [len(s_sorted)]])  # rows flagged for k = 1..m
    tp = np.concatenate([[0], cum_pos[ends]])
    flagged = np.concatenate([[0], cum_all[ends]])
    fp = flagged - tp
    # Threshold for k: below every score, between distinct scores, above them all.
    mids = (distinct[:-1] + distinct[1:]) / 2
    spread = max(1e-6, float(distinct[-1] - distinct[0]) * 1e-3)
    thresholds = np.concatenate([[distinct[0] - spread], mids, [distinct[-1] + spread]])
    if objective == "f1":
        if positives == 0:
            raise TrainingError("F1 needs at least one row labelled anomalous in the feedback")
        denom = flagged + positives  # 2TP / (2TP + FP + FN) = 2TP / (flagged + positives)
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
        k = int(np.argmax(f1))  # the first maximum: the lowest threshold
    elif objective == "target_fpr":
        if target_fpr is None or not 0.0 <= target_fpr < 1.0:
            raise TrainingError("target_fpr must be in [0, 1)")
        if negatives == 0:
            raise TrainingError("a false-positive rate needs rows labelled normal in the feedback")
        ok = np.nonzero(fp / negatives <= target_fpr + 1e-12)[0]
        k = int(ok[-1])  # k = 0 (flag nothing) always qualifies
    else:
        raise TrainingError(f"objective must be one of {', '.join(OBJECTIVES)}")
    threshold = float(thresholds[k])
    return evaluate(s, y, threshold)
