"""The client's halves in process: each status code lands in ml's error tree, the conversion back
from the wire gives what the service encoded, the config refuses a zero deadline."""

from __future__ import annotations

import datetime as dt
from datetime import timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest

from mesh.channel import ChannelConfig
from mesh.config import TlsFiles
from mesh.errors import ConfigError, PermissionDeniedError, UnavailableError
from ml import _convert
from ml.api import BatchScores, ScoreBatch, Verdict
from ml.client import AnomalyClientConfig, call_error
from ml.errors import (
    AccessDeniedError,
    InvalidInputError,
    ModelVersionMismatchError,
    ServiceCallError,
    ServiceUnavailableError,
)
from qsc.ml.v1 import anomaly_service_pb2 as pb


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.UNAVAILABLE, ServiceUnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, ServiceUnavailableError),
        (grpc.StatusCode.UNAUTHENTICATED, AccessDeniedError),
        (grpc.StatusCode.PERMISSION_DENIED, AccessDeniedError),
        (grpc.StatusCode.INTERNAL, ServiceCallError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ServiceCallError),
    ],
)
def test_status_codes_map_to_ml_errors(code: grpc.StatusCode, kind: type[Exception]) -> None:
    error = call_error(code, "what the service said")
    assert type(error) is kind
    assert isinstance(error, ServiceCallError)
    assert error.code == code.name
    assert error.details == "what the service said"
    assert str(error) == f"what the service said ({code.name})"


def test_mapped_errors_are_mesh_kinds() -> None:
    assert isinstance(call_error(grpc.StatusCode.UNAVAILABLE, ""), UnavailableError)
    assert isinstance(call_error(grpc.StatusCode.PERMISSION_DENIED, ""), PermissionDeniedError)


def test_invalid_argument_names_the_field() -> None:
    error = call_error(grpc.StatusCode.INVALID_ARGUMENT, "rows[2].values[0]: cpu_percent is -1")
    assert isinstance(error, InvalidInputError)
    assert (error.field, error.reason) == ("rows[2].values[0]", "cpu_percent is -1")
    vague = call_error(grpc.StatusCode.INVALID_ARGUMENT, "bad KEM ciphertext: 3 bytes")
    assert isinstance(vague, InvalidInputError)
    assert vague.field == "request"


def test_failed_precondition_is_a_version_mismatch() -> None:
    error = call_error(grpc.StatusCode.FAILED_PRECONDITION, "model_version: a asked for")
    assert isinstance(error, ModelVersionMismatchError)


def test_scores_survive_the_wire_both_ways() -> None:
    batch = ScoreBatch(1, ("cpu_percent", "exec_rate"), ["a", "b"], [[1.0, 2.0], [3.0, 4.0]], "v")
    assert _convert.score_batch(_convert.score_request(batch)) == ScoreBatch(
        1, ("cpu_percent", "exec_rate"), ["a", "b"], [[1.0, 2.0], [3.0, 4.0]], "v"
    )
    scores = BatchScores(
        model_version="v",
        threshold=-0.5,
        keys=["a", "b", "c"],
        score=np.array([-0.4, -0.6, -0.45]),
        decision=np.array([0.1, -0.1, 0.05]),
        confidence=np.array([0.2, 0.99, 0.9]),
        is_anomaly=np.array([False, True, True]),
        out_of_range=[(), (), ("exec_rate",)],
        range_checked=True,
    )
    back = _convert.batch_scores(_convert.score_response(scores))
    assert back.verdicts == [Verdict.NORMAL, Verdict.ANOMALOUS, Verdict.OUT_OF_RANGE]
    assert list(back.out_of_range) == [(), (), ("exec_rate",)]
    for name in ("score", "decision", "confidence", "is_anomaly"):
        assert np.array_equal(getattr(back, name), getattr(scores, name))
    assert (back.model_version, back.threshold, back.keys) == ("v", -0.5, ["a", "b", "c"])
    unchecked = _convert.batch_scores(pb.ScoreResponse(scores=[pb.RowScore(key="a")]))
    assert (unchecked.out_of_range, unchecked.range_checked) == ((), False)


def test_model_info_reads_what_get_model_says() -> None:
    loaded = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
    response = pb.GetModelResponse(
        version="v2",
        feature_schema_version=1,
        feature_names=["cpu_percent", "exec_rate"],
        threshold=-0.5,
        threshold_source="f1",
        max_batch_rows=100,
        parent_version="v1",
        feature_ranges=[pb.FeatureRange(name="cpu_percent", min=0, max=90)],
        refused_version="v3",
        refused_reason="older than v4",
        rollback_refused=True,
    )
    response.load_time.FromDatetime(loaded)
    info = _convert.model_info(response)
    assert info.features == ("cpu_percent", "exec_rate")
    assert info.feature_ranges == ((0.0, 90.0),)
    assert (info.loaded_at, info.created) == (loaded, None)
    assert (info.parent_version, info.promoted_from) == ("v1", None)
    assert (info.refused_version, info.rollback_refused) == ("v3", True)
    assert _convert.model_info(pb.GetModelResponse()).feature_ranges is None


def test_config_refuses_a_zero_deadline() -> None:
    tls = TlsFiles(cert=Path("c.crt"), key=Path("c.key"), ca=Path("ca.crt"))
    channel = ChannelConfig(target="ml:7446", tls=tls)
    with pytest.raises(ConfigError, match="score_timeout"):
        AnomalyClientConfig(channel, score_timeout=timedelta(0))
    assert AnomalyClientConfig(channel).model_timeout > timedelta(0)
