"""The AnomalyService in plain Python types, shared by the server core and the client.

`ScoreBatch` is what a Score call asks, `BatchScores` (with a `Verdict` per row) what it answers,
`ModelInfo` what GetModel says about the serving model. The scorer (ml.scorer) takes and gives
them in the service, the client (ml.client) at the caller's end, and ml._convert maps them to and
from `qsc.ml.v1`. Only numpy here: a client never loads onnxruntime or scikit-learn.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class ScoreBatch:
    """A Score request in plain types: `rows[i]` holds the values of `feature_names` for the
    caller's row `keys[i]`. An empty `model_version` scores with whatever model is serving."""

    schema_version: int
    feature_names: tuple[str, ...]
    keys: Sequence[str]
    rows: Sequence[Sequence[float]]
    model_version: str = ""


class Verdict(enum.Enum):
    """A row's verdict (`qsc.ml.v1.Verdict`)."""

    NORMAL = "normal"
    ANOMALOUS = "anomalous"
    OUT_OF_RANGE = "out_of_range"


@dataclass(frozen=True)
class BatchScores:
    """Scores of one batch, in row order, and the model that made them."""

    model_version: str
    threshold: float
    keys: Sequence[str]
    score: FloatArray
    decision: FloatArray
    confidence: FloatArray
    is_anomaly: BoolArray
    # Per row, the features (model order) beyond their training range; all empty when the
    # model's card records no ranges (`range_checked` False).
    out_of_range: Sequence[tuple[str, ...]] = ()
    range_checked: bool = False

    @property
    def verdicts(self) -> list[Verdict]:
        out = self.out_of_range or [()] * len(self.keys)
        return [
            Verdict.OUT_OF_RANGE if names else Verdict.ANOMALOUS if anomaly else Verdict.NORMAL
            for names, anomaly in zip(out, self.is_anomaly.tolist(), strict=True)
        ]


@dataclass(frozen=True)
class ModelInfo:
    """The serving model as GetModel describes it: what a client needs to build and read its
    batches (the full card stays with the service and `qsc-ml show`)."""

    version: str
    schema_version: int
    features: tuple[str, ...]  # the order the model takes them
    threshold: float
    threshold_source: str
    max_batch_rows: int  # the most rows the service takes in one Score call
    # Per feature, in `features` order, (min, max) seen in training; None: rows not range-checked.
    feature_ranges: tuple[tuple[float, float], ...] | None
    created: dt.datetime | None
    loaded_at: dt.datetime | None
    parent_version: str | None  # the version it was tuned from
    promoted_from: str | None  # the newest version when `qsc-ml promote` made this one serve
    # The newest model in the directory, refused while this one serves; why; whether as rollback.
    refused_version: str | None
    refused_reason: str
    rollback_refused: bool
