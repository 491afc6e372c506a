"""ML domain types <-> `qsc.ml.v1` protobuf messages."""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2

from ml.calibration import DESCRIPTION
from ml.scorer import BatchScores, LoadedModel, ScoreBatch
from qsc.ml.v1 import anomaly_service_pb2 as pb


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


def score_response(scores: BatchScores) -> pb.ScoreResponse:
    rows = [
        pb.RowScore(key=key, score=s, decision=d, confidence=c, is_anomaly=a)
        for key, s, d, c, a in zip(
            scores.keys,
            scores.score.tolist(),
            scores.decision.tolist(),
            scores.confidence.tolist(),
            scores.is_anomaly.tolist(),
            strict=True,
        )
    ]
    return pb.ScoreResponse(
        scores=rows, model_version=scores.model_version, threshold=scores.threshold
    )


def _timestamp(t: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if t is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(t)
    return ts


def model_response(model: LoadedModel, *, max_batch_rows: int) -> pb.GetModelResponse:
    card = model.card
    calibration = card.calibration
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
    )
