"""ML domain types <-> `qsc.ml.v1` protobuf messages, both ways: the service decodes requests and
encodes replies, the client (ml.client) the reverse.

The service-side types (`LoadedModel`, `Refusal`) are imported for annotations only, so the client
loads neither onnxruntime nor the model registry.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Final

import numpy as np
from google.protobuf import timestamp_pb2

from ml.api import BatchScores, ModelInfo, ScoreBatch, Verdict
from ml.calibration import DESCRIPTION
from qsc.ml.v1 import anomaly_service_pb2 as pb

if TYPE_CHECKING:
    from ml.registry import Refusal
    from ml.scorer import LoadedModel


def score_batch(request: pb.ScoreRequest) -> ScoreBatch:
    """The request in plain types (values stay as the protobuf's repeated fields: the scorer
    reads them once into a matrix)."""
    rows = request.rows
    return ScoreBatch(
        schema_version=request.feature_schema_version,
        feature_names=tuple(request.feature_names),
        keys=[row.key for row in rows],
        rows=[row.values for row in rows],
        model_version=request.model_version,
    )


def score_request(batch: ScoreBatch) -> pb.ScoreRequest:
    """The inverse of `score_batch`."""
    return pb.ScoreRequest(
        feature_schema_version=batch.schema_version,
        feature_names=batch.feature_names,
        rows=[
            pb.FeatureRow(key=key, values=values)
            for key, values in zip(batch.keys, batch.rows, strict=True)
        ],
        model_version=batch.model_version,
    )


_VERDICTS: Final = {
    Verdict.NORMAL: pb.VERDICT_NORMAL,
    Verdict.ANOMALOUS: pb.VERDICT_ANOMALOUS,
    Verdict.OUT_OF_RANGE: pb.VERDICT_OUT_OF_RANGE,
}


def score_response(scores: BatchScores) -> pb.ScoreResponse:
    outside = scores.out_of_range or [()] * len(scores.keys)
    rows = [
        pb.RowScore(
            key=key,
            score=s,
            decision=d,
            confidence=c,
            is_anomaly=a,
            verdict=_VERDICTS[v],
            out_of_range_features=names,
        )
        for key, s, d, c, a, v, names in zip(
            scores.keys,
            scores.score.tolist(),
            scores.decision.tolist(),
            scores.confidence.tolist(),
            scores.is_anomaly.tolist(),
            scores.verdicts,
            outside,
            strict=True,
        )
    ]
    return pb.ScoreResponse(
        scores=rows,
        model_version=scores.model_version,
        threshold=scores.threshold,
        range_checked=scores.range_checked,
    )


def batch_scores(response: pb.ScoreResponse) -> BatchScores:
    """The inverse of `score_response`. Verdicts are not copied: `BatchScores` derives them from
    `is_anomaly` and the out-of-range features, as the service did."""
    rows = response.scores
    return BatchScores(
        model_version=response.model_version,
        threshold=response.threshold,
        keys=[row.key for row in rows],
        score=np.array([row.score for row in rows], dtype=np.float64),
        decision=np.array([row.decision for row in rows], dtype=np.float64),
        confidence=np.array([row.confidence for row in rows], dtype=np.float64),
        is_anomaly=np.array([row.is_anomaly for row in rows], dtype=np.bool_),
        out_of_range=[tuple(row.out_of_range_features) for row in rows]
        if response.range_checked
        else (),
        range_checked=response.range_checked,
    )


def _timestamp(t: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if t is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(t)
    return ts


def model_response(
    model: LoadedModel, *, max_batch_rows: int, refused: Refusal | None = None
) -> pb.GetModelResponse:
    card = model.card
    calibration = card.calibration
    ranges = [
        pb.FeatureRange(name=name, min=low, max=high)
        for name, (low, high) in zip(card.features, card.feature_ranges or (), strict=False)
    ]
    return pb.GetModelResponse(
        version=card.version,
        feature_schema_version=card.schema_version,
        feature_names=list(card.features),
        n_estimators=card.n_estimators,
        max_samples=card.max_samples,
        contamination=card.contamination or 0.0,
        contamination_auto=card.contamination is None,
        offset=card.offset,
        threshold=card.threshold,
        train_time=_timestamp(card.trained),
        training_rows=card.training_rows,
        training_start_time=_timestamp(card.training_start),
        training_end_time=_timestamp(card.training_end),
        training_data_blake3=card.training_data_blake3,
        onnx_sha3_256=card.model_sha3_256,
        calibration=DESCRIPTION,
        score_quantiles=[
            pb.ScoreQuantile(quantile=q, score=s)
            for q, s in zip(calibration.quantiles, calibration.scores, strict=True)
        ],
        load_time=_timestamp(model.loaded_at),
        threshold_source=card.threshold_source,
        parent_version=card.parent_version or "",
        max_features=card.max_features,
        max_batch_rows=max_batch_rows,
        created_time=_timestamp(card.created),
        feature_ranges=ranges,
        refused_version="" if refused is None else refused.version,
        refused_reason="" if refused is None else refused.reason,
        rollback_refused=refused is not None and refused.rollback,
        promoted_from_version=card.promoted_from or "",
    )


def _datetime(stamp: timestamp_pb2.Timestamp, present: bool) -> dt.datetime | None:
    return stamp.ToDatetime(tzinfo=dt.UTC) if present else None


def model_info(response: pb.GetModelResponse) -> ModelInfo:
    """What a client keeps of `model_response`."""
    ranges = tuple((r.min, r.max) for r in response.feature_ranges)
    return ModelInfo(
        version=response.version,
        schema_version=response.feature_schema_version,
        features=tuple(response.feature_names),
        threshold=response.threshold,
        threshold_source=response.threshold_source,
        max_batch_rows=response.max_batch_rows,
        feature_ranges=ranges or None,
        created=_datetime(response.created_time, response.HasField("created_time")),
        loaded_at=_datetime(response.load_time, response.HasField("load_time")),
        parent_version=response.parent_version or None,
        promoted_from=response.promoted_from_version or None,
        refused_version=response.refused_version or None,
        refused_reason=response.refused_reason,
        rollback_refused=response.rollback_refused,
    )
