"""The Cortex's client of `qsc.ml.v1.AnomalyService/Score`: host windows in, scores out.

    async with AnomalyScoreClient(channel_config, timeout) as ml:
        scores = await ml.score(1, feature_names, [("web-1#0", [..12 values..])])

The frame is `mesh.calls.MeshClient` (one reused mTLS channel, one deadline per call that its
retries spend). Any failure is `AnomalyServiceError` with the status name: the scorer's circuit
breaker treats every failed call alike (the service is down, overloaded, refuses the Cortex, or
serves a model of another schema: in each case windows wait unscored), and says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import grpc

from cortex.errors import AnomalyServiceError
from mesh.calls import MeshClient
from mesh.channel import ChannelConfig
from qsc.ml.v1 import anomaly_service_pb2 as pb
from qsc.ml.v1 import anomaly_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from qsc.ml.v1.anomaly_service_pb2_grpc import AnomalyServiceAsyncStub

__all__ = ["AnomalyScoreClient", "RowResult", "ScoreResult"]


@dataclass(frozen=True)
class RowResult:
    key: str
    score: float
    confidence: float
    is_anomaly: bool
    out_of_range: tuple[str, ...]


@dataclass(frozen=True)
class ScoreResult:
    model_version: str
    threshold: float
    rows: tuple[RowResult, ...]


class AnomalyScoreClient(MeshClient["AnomalyServiceAsyncStub"]):
    def __init__(self, channel: ChannelConfig, timeout: timedelta) -> None:
        super().__init__(channel, _error)
        self._timeout = timeout

    def _bind(self, channel: grpc.aio.Channel) -> AnomalyServiceAsyncStub:
        return pb_grpc.AnomalyServiceStub(channel)

    async def score(
        self,
        schema_version: int,
        feature_names: Sequence[str],
        rows: Sequence[tuple[str, Sequence[float]]],
    ) -> ScoreResult:
        request = pb.ScoreRequest(
            feature_schema_version=schema_version,
            feature_names=list(feature_names),
            rows=[pb.FeatureRow(key=key, values=list(values)) for key, values in rows],
        )
        response = await self._unary(self.stubs.Score, request, self._timeout)
        if len(response.scores) != len(rows):
            raise AnomalyServiceError(
                "INTERNAL", f"{len(response.scores)} scores for {len(rows)} rows"
            )
        return ScoreResult(
            response.model_version,
            response.threshold,
            tuple(
                RowResult(
                    r.key, r.score, r.confidence, r.is_anomaly, tuple(r.out_of_range_features)
                )
                for r in response.scores
            ),
        )


def _error(code: grpc.StatusCode, details: str) -> AnomalyServiceError:
    return AnomalyServiceError(code.name, details)
