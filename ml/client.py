"""A typed AnomalyService client: ml's plain types in and out, one channel for many calls.

    config = AnomalyClientConfig(ChannelConfig(target="ml-1:7446", tls=tls))
    async with AnomalyClient(config) as ml:
        model = await ml.model()                     # ModelInfo: features, max_batch_rows, ...
        scores = await ml.score(ScoreBatch(SCHEMA_VERSION, FEATURES, keys, rows))
        scores.verdicts, scores.confidence           # BatchScores, in row order

- The frame is `mesh.calls.MeshClient`: one `mesh.channel` channel (mTLS from the caller's
  identity files, retries of UNAVAILABLE with backoff per the channel's `RetryPolicy`), opened on
  entering the context and reused by every call until the context closes it.
- Each call has a deadline: `score_timeout` or `model_timeout` from the config, or `timeout=` for
  one call; the retries spend that one deadline, never more.
- A failed call raises from ml.errors (see there for the table): `InvalidInputError` naming the
  request field, `ModelVersionMismatchError`, `ServiceUnavailableError`, `AccessDeniedError`,
  else `ServiceCallError`; never a raw `grpc.RpcError`.
- Batches go as given: one larger than the service's `max_batch_rows` (see `model()`) is refused
  with `InvalidInputError` on `rows`, so a caller with more rows splits them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Final

import grpc

from mesh.calls import DENIED_CODES, UNAVAILABLE_CODES, MeshClient, require_positive
from mesh.channel import ChannelConfig
from ml import _convert
from ml.api import BatchScores, ModelInfo, ScoreBatch
from ml.errors import (
    AccessDeniedError,
    InvalidInputError,
    MlError,
    ModelVersionMismatchError,
    ServiceCallError,
    ServiceUnavailableError,
)
from qsc.ml.v1 import anomaly_service_pb2 as pb
from qsc.ml.v1 import anomaly_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from qsc.ml.v1.anomaly_service_pb2_grpc import AnomalyServiceAsyncStub

# What InvalidInputError names when the service's message does not start with a field.
_WHOLE_REQUEST: Final = "request"


@dataclass(frozen=True)
class AnomalyClientConfig:
    """Where the ML service is and how long each call may take (retries included)."""

    channel: ChannelConfig
    score_timeout: timedelta = timedelta(seconds=5)
    model_timeout: timedelta = timedelta(seconds=5)

    def __post_init__(self) -> None:
        require_positive(self, "score_timeout", "model_timeout")


class AnomalyClient(MeshClient["AnomalyServiceAsyncStub"]):
    """AnomalyService calls over one channel; use it as an async context manager (or call
    `open()` inside the event loop and `close()` when done)."""

    def __init__(self, config: AnomalyClientConfig) -> None:
        super().__init__(config.channel, call_error)
        self.config = config

    def _bind(self, channel: grpc.aio.Channel) -> AnomalyServiceAsyncStub:
        return pb_grpc.AnomalyServiceStub(channel)

    async def score(self, batch: ScoreBatch, *, timeout: timedelta | None = None) -> BatchScores:
        """Score `batch` with the serving model (or fail if `batch.model_version` is set and
        another one serves)."""
        response = await self._unary(
            self.stubs.Score,
            _convert.score_request(batch),
            self.config.score_timeout if timeout is None else timeout,
        )
        return _convert.batch_scores(response)

    async def model(self, *, timeout: timedelta | None = None) -> ModelInfo:
        """The serving model, as GetModel describes it."""
        response = await self._unary(
            self.stubs.GetModel,
            pb.GetModelRequest(),
            self.config.model_timeout if timeout is None else timeout,
        )
        return _convert.model_info(response)


def call_error(code: grpc.StatusCode, details: str) -> MlError:
    """The ml.errors exception for a failed call's status (the table in ml.errors)."""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        # The service says `FIELD: reason` (ml.errors.InvalidInputError travels as its str).
        field, sep, reason = details.partition(": ")
        if sep and field and " " not in field:
            return InvalidInputError(field, reason)
        return InvalidInputError(_WHOLE_REQUEST, details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return ModelVersionMismatchError(details)
    if code in UNAVAILABLE_CODES:
        return ServiceUnavailableError(code.name, details)
    if code in DENIED_CODES:
        return AccessDeniedError(code.name, details)
    return ServiceCallError(code.name, details)
