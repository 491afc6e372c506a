"""`qsc.ml.v1.AnomalyService`: decode, call the core, encode. Domain errors become status codes in
the mesh interceptor (mesh.status): invalid input INVALID_ARGUMENT naming the field, a pinned
model version that is not serving FAILED_PRECONDITION, no model yet UNAVAILABLE. GetModel also
reports a refused newer model (a rollback, or one failing authentication: ml.registry).

Each call reads the registry's current model once and uses it to the end (see ml.registry).
Small batches are scored on the event loop (tens of microseconds: a thread hop would cost more);
large ones in a thread, so other calls keep flowing while onnxruntime works without the GIL.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from mesh.server import ServiceBinding
from ml import _convert
from ml.registry import ModelRegistry
from qsc.ml.v1 import anomaly_service_pb2 as pb
from qsc.ml.v1 import anomaly_service_pb2_grpc as pb_grpc

SERVICE: Final = pb.DESCRIPTOR.services_by_name["AnomalyService"].full_name
INLINE_ROWS: Final = 256


class AnomalyServicer(pb_grpc.AnomalyServiceServicer):
    def __init__(self, registry: ModelRegistry, *, max_batch_rows: int) -> None:
        self._registry = registry
        self._max_rows = max_batch_rows

    def binding(self) -> ServiceBinding:
        return ServiceBinding(SERVICE, pb_grpc.add_AnomalyServiceServicer_to_server, self)

    async def Score(  # noqa: N802 (gRPC method name)
        self, request: pb.ScoreRequest, context: Any
    ) -> pb.ScoreResponse:
        model = self._registry.require()  # one read: one model for the whole batch
        batch = _convert.score_batch(request)
        if len(batch.rows) <= INLINE_ROWS:
            scores = model.score(batch, max_rows=self._max_rows)
        else:
            scores = await asyncio.to_thread(model.score, batch, max_rows=self._max_rows)
        return _convert.score_response(scores)

    async def GetModel(  # noqa: N802 (gRPC method name)
        self, request: pb.GetModelRequest, context: Any
    ) -> pb.GetModelResponse:
        return _convert.model_response(
            self._registry.require(),
            max_batch_rows=self._max_rows,
            refused=self._registry.refused,
        )
