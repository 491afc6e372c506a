"""The ML service assembled: keyring, model registry, AnomalyService on the mesh server, watcher.

    service = MlService(config)             # keyring opened, newest model authenticated and loaded
    port = await service.start()            # listening; the model directory is watched
    service.registry.wake()                 # look at the model directory now (SIGHUP)
    await service.stop()                    # drain, stop watching

`qsc-ml serve` runs it in mesh.service, which wires SIGTERM/SIGINT to `stop` and SIGHUP to
`registry.wake`. With `[metrics] listen` set it also serves Prometheus metrics (mesh.metrics):
the mesh's families plus Score latency and rows, and the model serving.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any, Final

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from crypto.keyring import KeyManager
from mesh.metrics import MetricsExporter, TransportCollector, callback_collector
from mesh.server import ComponentServer
from ml.config import COMPONENT, MlConfig
from ml.registry import ModelRegistry
from ml.server import AnomalyServicer
from qsc.ml.v1 import anomaly_service_pb2 as pb

# Scoring takes tens of microseconds for a few rows, milliseconds for thousands.
SCORE_SECONDS: Final = Histogram(
    "qsc_ml_score_seconds",
    "Time the servicer spent on one Score call (decode, model, encode), by outcome.",
    ["outcome"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5),
    registry=None,
)
SCORED_ROWS: Final = Counter(
    "qsc_ml_scored_rows", "Rows scored by Score calls that succeeded.", registry=None
)


class _TimedServicer(AnomalyServicer):
    """AnomalyServicer whose Score is timed for `qsc_ml_score_seconds`."""

    async def Score(  # noqa: N802 (gRPC method name)
        self, request: pb.ScoreRequest, context: Any
    ) -> pb.ScoreResponse:
        started = time.perf_counter()
        outcome = "error"
        try:
            response = await super().Score(request, context)
            outcome = "ok"
            SCORED_ROWS.inc(len(request.rows))
            return response
        finally:
            SCORE_SECONDS.labels(outcome).observe(time.perf_counter() - started)


class MlService:
    def __init__(self, config: MlConfig, *, keys: KeyManager | None = None) -> None:
        self.config = config
        model = config.model
        self.keys = keys or KeyManager.open(model.keyring, COMPONENT)
        self.registry = ModelRegistry(model.directory, self.keys, threads=model.inference_threads)
        self.registry.load_initial()
        self.server = ComponentServer(config.server, component=COMPONENT)
        self.server.add_service(
            _TimedServicer(self.registry, max_batch_rows=model.max_batch_rows).binding()
        )
        self.metrics = MetricsExporter(config.metrics, component=COMPONENT)
        self._stop_watch = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self.server.port

    def _model_metrics(self) -> Iterator[Metric]:
        serving = GaugeMetricFamily(
            "qsc_ml_model_serving", "1 for the model version serving now.", labels=["version"]
        )
        current = self.registry.current
        if current is not None:
            serving.add_metric([current.version], 1)
        yield serving
        yield GaugeMetricFamily(
            "qsc_ml_model_refused",
            "1 while a newer model in the directory is refused (rollback or failed check).",
            value=0 if self.registry.refused is None else 1,
        )

    async def start(self) -> int:
        self.metrics.start(
            [
                SCORE_SECONDS,
                SCORED_ROWS,
                TransportCollector(self.server),
                callback_collector(self._model_metrics),
            ]
        )
        port = await self.server.start()
        self._watcher = asyncio.create_task(
            self.registry.watch(self.config.model.poll_interval, self._stop_watch)
        )
        return port

    async def stop(self) -> None:
        self._stop_watch.set()
        try:
            await self.server.stop()
            if self._watcher is not None:
                await self._watcher
        finally:
            self.metrics.stop()
