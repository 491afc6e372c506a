"""Scoring with a loaded model: request validation, the ONNX session, verdicts and confidence.

`LoadedModel` wraps one authenticated model and its onnxruntime session; it is immutable, so a
request that picked it up finishes with it even if a newer model replaces it meanwhile.
Per row: `score` is sklearn's `score_samples` (lower is more anomalous); `decision` is
`score - threshold` (negative: anomaly); `confidence` comes from `ml.calibration`. Rows are cast
to float32 before scoring, as scikit-learn does.

Two checks keep a forest from calling the impossible or the unseen normal (an Isolation Forest
isolates a value far outside its training data no faster than one just past the edge, so
`cpu_percent = -1e9` used to score like an ordinary window):

* Domain (ml.schema.DOMAINS): a value no host can produce (a negative count, a percentage over
  100, NaN, beyond float32) is refused: `InvalidInputError` naming `rows[i].values[j]` and the
  feature.
* Training range (the card's `training.feature_ranges`): a row with a feature beyond what
  training saw is `out_of_range`, with the features named; its verdict is OUT_OF_RANGE, it is an
  anomaly whatever its score, and its confidence is at least that of a row at the threshold.
  Cards written before ranges were recorded have none: no range check (`range_checked` False).

`is_anomaly` is `score < threshold` or out of range.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from ml.api import BatchScores, BoolArray, FloatArray, ScoreBatch
from ml.card import ModelCard
from ml.errors import InvalidInputError, ModelIntegrityError, ModelVersionMismatchError
from ml.export import DECISION_OUTPUT, INPUT_NAME, SCORE_OUTPUT
from ml.schema import DOMAINS, column_order
from ml.store import StoredModel

META_PREFIX = "qsc."


def onnx_metadata(card: ModelCard | Mapping[str, object]) -> dict[str, str]:
    """What a model file records about itself (so its hash, the version, changes with any of it):
    schema version, features, offset, threshold and its source, calibration knots."""
    if isinstance(card, ModelCard):
        fields: Mapping[str, object] = {
            "schema_version": card.schema_version,
            "features": list(card.features),
            "offset": card.offset,
            "threshold": card.threshold,
            "threshold_source": card.threshold_source,
            "calibration": card.calibration.knots(),
        }
    else:
        fields = card
    return {
        META_PREFIX + key: json.dumps(value, separators=(",", ":"), allow_nan=False)
        for key, value in sorted(fields.items())
    }


class LoadedModel:
    """An authenticated model, ready to score. Thread-safe (onnxruntime sessions are)."""

    def __init__(
        self, stored: StoredModel, *, threads: int = 1, loaded_at: dt.datetime | None = None
    ) -> None:
        self.card = stored.card
        self.path = stored.model_path
        self.loaded_at = loaded_at or dt.datetime.now(dt.UTC)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings from the graph optimizer are noise here
        try:
            self._session = ort.InferenceSession(
                stored.model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelIntegrityError(self.path, f"onnxruntime cannot load it ({exc})") from None
        meta = dict(self._session.get_modelmeta().custom_metadata_map)
        expected = onnx_metadata(self.card)
        if {k: v for k, v in meta.items() if k.startswith(META_PREFIX)} != expected:
            raise ModelIntegrityError(self.path, "records other settings than its card")
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise ModelIntegrityError(self.path, f"does not take one input named {INPUT_NAME}")
        if inputs[0].shape[1] != len(self.card.features):
            raise ModelIntegrityError(self.path, "takes another feature count than its card")
        self._outputs = [SCORE_OUTPUT, DECISION_OUTPUT]
        self._calibration = self.card.calibration
        self.threshold = self.card.threshold
        ranges = self.card.feature_ranges
        self._low: FloatArray | None = None
        self._high: FloatArray | None = None
        if ranges is not None:
            self._low = np.array([r[0] for r in ranges], dtype=np.float64)
            self._high = np.array([r[1] for r in ranges], dtype=np.float64)
        # An out-of-range row is an anomaly: it gets at least the confidence of a row exactly at
        # the threshold, so a consumer weighing confidence never reads it as normal.
        self._floor_confidence = float(
            self._calibration.confidence(np.array([self.threshold], dtype=np.float64))[0]
        )

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def features(self) -> tuple[str, ...]:
        return self.card.features

    def raw(self, x: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """(score_samples, decision_function) exactly as the exported graph computes them, for
        rows in model feature order."""
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        score, decision = self._session.run(self._outputs, {INPUT_NAME: x32})
        return (
            np.asarray(score, dtype=np.float64).reshape(-1),
            np.asarray(decision, dtype=np.float64).reshape(-1),
        )

    def score_matrix(self, x: npt.ArrayLike) -> tuple[FloatArray, FloatArray, BoolArray]:
        """(score, confidence, is_anomaly) for rows in model feature order."""
        score, _ = self.raw(x)
        return score, self._calibration.confidence(score), score < self.threshold

    def score(self, batch: ScoreBatch, *, max_rows: int) -> BatchScores:
        """Validate `batch` against this model and score it."""
        x = self.validate(batch, max_rows=max_rows)
        if batch.model_version and batch.model_version != self.version:
            raise ModelVersionMismatchError(
                f"model_version: {batch.model_version} asked for, {self.version} is serving"
            )
        score, confidence, anomaly = self.score_matrix(x)
        outside = self.out_of_range(x)
        names: list[tuple[str, ...]] = []
        if outside is not None:
            flagged: BoolArray = np.asarray(outside.any(axis=1), dtype=np.bool_)
            anomaly = anomaly | flagged
            confidence = np.where(
                flagged, np.maximum(confidence, self._floor_confidence), confidence
            )
            names = [
                tuple(self.features[j] for j in np.flatnonzero(row)) if hit else ()
                for row, hit in zip(outside, list(flagged), strict=True)
            ]
        return BatchScores(
            model_version=self.version,
            threshold=self.threshold,
            keys=batch.keys,
            score=score,
            decision=score - self.threshold,
            confidence=confidence,
            is_anomaly=anomaly,
            out_of_range=names,
            range_checked=outside is not None,
        )

    def out_of_range(self, x: FloatArray) -> BoolArray | None:
        """Per cell of `x` (model feature order), whether it lies beyond the training range;
        None when the card records no ranges."""
        if self._low is None or self._high is None:
            return None
        return np.asarray((x < self._low) | (x > self._high), dtype=np.bool_)

    def validate(self, batch: ScoreBatch, *, max_rows: int) -> FloatArray:
        """The rows as a float64 matrix in model feature order; InvalidInputError names the
        request field at fault."""
        want = self.card.schema_version
        if batch.schema_version == 0:
            raise InvalidInputError(
                "feature_schema_version", f"not set; the model takes schema version {want}"
            )
        if batch.schema_version != want:
            raise InvalidInputError(
                "feature_schema_version",
                f"{batch.schema_version} does not match the model's schema version {want}",
            )
        if not batch.feature_names:
            raise InvalidInputError(
                "feature_names",
                f"empty; the model takes {len(self.features)}: {', '.join(self.features)}",
            )
        try:
            order = column_order(self.features, batch.feature_names)
        except ValueError as exc:
            raise InvalidInputError("feature_names", str(exc)) from None
        n = len(batch.rows)
        if n == 0:
            raise InvalidInputError("rows", "empty batch; send at least one row")
        if n > max_rows:
            raise InvalidInputError(
                "rows", f"{n} rows exceed the limit of {max_rows} per call; split the batch"
            )
        width = len(batch.feature_names)
        for i, row in enumerate(batch.rows):
            if len(row) != width:
                raise InvalidInputError(
                    f"rows[{i}].values", f"{len(row)} values for {width} feature_names"
                )
        x = np.array(batch.rows, dtype=np.float64).reshape(n, width)
        domains = [DOMAINS[name] for name in batch.feature_names]
        low = np.array([d.minimum for d in domains], dtype=np.float64)
        high = np.array([d.maximum for d in domains], dtype=np.float64)
        allowed = (x >= low) & (x <= high)  # False for NaN as well
        if not allowed.all():
            i, j = (int(v) for v in np.argwhere(~allowed)[0])
            name, value = batch.feature_names[j], x[i, j]
            if not np.isfinite(value):
                reason = f"{name} is {value}; values must be finite numbers"
            else:
                reason = f"{name} is {value:g}; {name} must be {domains[j].describe()}"
            raise InvalidInputError(f"rows[{i}].values[{j}]", reason)
        return x[:, order] if order != list(range(width)) else x
