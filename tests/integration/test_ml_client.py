"""`ml.client` against a real ML service on 127.0.0.1:0 over mTLS (the fixtures of
test_ml_server, in conftest.py): one and many rows scored as the core scores them, errors in
ml's tree (a bad value names its field, a wrong role is an access error, a passed deadline and an
absent server are unavailable), out-of-range rows and a refused rollback in its typed results,
and every call of a client on one connection."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mesh.channel import ChannelConfig, RetryPolicy
from mesh.config import TlsFiles
from mesh.interceptors import ACCESS_LOGGER
from ml.api import ScoreBatch, Verdict
from ml.client import AnomalyClient, AnomalyClientConfig
from ml.errors import (
    AccessDeniedError,
    InvalidInputError,
    ModelVersionMismatchError,
    ServiceUnavailableError,
)
from ml.schema import FEATURES, SCHEMA_VERSION
from ml.store import card_path, model_path
from tests.integration.ml_harness import (
    HOST,
    MAX_ROWS,
    NORMAL,
    WEIRD,
    LogWatch,
    Models,
    ServiceThread,
    look_now,
    train_another,
)


def _config(
    pki: Path, port: int, role: str = "cortex", host: str = "c1", **kw: Any
) -> AnomalyClientConfig:
    stem = pki / f"{role}-{host}"
    tls = TlsFiles(cert=Path(f"{stem}.crt"), key=Path(f"{stem}.key"), ca=pki / "ca.crt")
    retry = kw.pop("retry", RetryPolicy())
    return AnomalyClientConfig(ChannelConfig(target=f"{HOST}:{port}", tls=tls, retry=retry), **kw)


def _batch(rows: list[list[float]], **kw: Any) -> ScoreBatch:
    keys = [f"host-{i}" for i in range(len(rows))]
    return ScoreBatch(SCHEMA_VERSION, FEATURES, keys, rows, **kw)


class _AccessLog(logging.Handler):
    """The mesh server's access log lines (the service runs in this process)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.calls: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.calls.append(dict(getattr(record, "fields", {})))


@pytest.fixture
def access_log() -> Iterator[_AccessLog]:
    logger = logging.getLogger(ACCESS_LOGGER)
    handler, level = _AccessLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_scores_one_and_many_rows_as_the_core_does(
    ml_pki: Path, ml_service: ServiceThread, ml_models: Models
) -> None:
    async def calls() -> None:
        async with AnomalyClient(_config(ml_pki, ml_service.port)) as ml:
            one = await ml.score(_batch([NORMAL]))
            many = await ml.score(_batch([NORMAL, WEIRD, NORMAL]))
            model = await ml.model()
        assert one.keys == ["host-0"]
        assert one.verdicts == [Verdict.NORMAL]
        assert one.model_version == many.model_version == model.version == ml_models.version
        assert many.keys == ["host-0", "host-1", "host-2"]
        assert many.verdicts[0] == many.verdicts[2] == Verdict.NORMAL
        assert many.verdicts[1] in (Verdict.ANOMALOUS, Verdict.OUT_OF_RANGE)
        assert many.is_anomaly.tolist() == [False, True, False]
        assert many.range_checked
        core = ml_service.service.registry.require()
        score, confidence, _ = core.score_matrix(np.array([NORMAL, WEIRD, NORMAL]))
        assert np.array_equal(many.score, score)
        assert np.array_equal(many.decision, score - core.threshold)
        assert many.threshold == core.threshold
        assert many.confidence[0] == confidence[0]
        assert model.features == FEATURES
        assert model.schema_version == SCHEMA_VERSION
        assert model.max_batch_rows == MAX_ROWS
        assert model.threshold == core.threshold
        assert model.feature_ranges is not None
        assert len(model.feature_ranges) == len(FEATURES)
        assert model.loaded_at is not None
        assert model.refused_version is None

    asyncio.run(calls())


@pytest.mark.parametrize(
    ("row", "field", "feature"),
    [
        ([*NORMAL[:4], float("nan"), *NORMAL[5:]], "rows[0].values[4]", "failed_logins"),
        ([-1.0, *NORMAL[1:]], "rows[0].values[0]", "cpu_percent"),
        ([-1e9, *NORMAL[1:]], "rows[0].values[0]", "cpu_percent"),
        ([1e308, *NORMAL[1:]], "rows[0].values[0]", "cpu_percent"),
        ([NORMAL[0], 100.5, *NORMAL[2:]], "rows[0].values[1]", "memory_percent"),
        ([*NORMAL[:-1], -3.0], "rows[0].values[11]", "privilege_changes"),
    ],
)
def test_a_bad_feature_value_names_the_field(
    ml_pki: Path, ml_service: ServiceThread, row: list[float], field: str, feature: str
) -> None:
    async def call() -> None:
        async with AnomalyClient(_config(ml_pki, ml_service.port)) as ml:
            await ml.score(_batch([row]))

    with pytest.raises(InvalidInputError) as info:
        asyncio.run(call())
    assert info.value.field == field
    assert info.value.reason.startswith(f"{feature} is ")


def test_a_pinned_version_not_serving_is_a_mismatch(
    ml_pki: Path, ml_service: ServiceThread
) -> None:
    async def call() -> None:
        async with AnomalyClient(_config(ml_pki, ml_service.port)) as ml:
            await ml.score(_batch([NORMAL], model_version="0" * 64))

    with pytest.raises(ModelVersionMismatchError, match="model_version"):
        asyncio.run(call())


def test_a_wrong_role_gets_the_access_error(ml_pki: Path, ml_service: ServiceThread) -> None:
    async def soar() -> None:
        async with AnomalyClient(_config(ml_pki, ml_service.port, "soar", "s1")) as ml:
            await ml.model()

    with pytest.raises(AccessDeniedError) as info:
        asyncio.run(soar())
    assert info.value.code == "PERMISSION_DENIED"

    async def operator() -> str:
        # An operator may describe the model, not score.
        async with AnomalyClient(_config(ml_pki, ml_service.port, "operator", "ops-1")) as ml:
            version = (await ml.model()).version
            with pytest.raises(AccessDeniedError):
                await ml.score(_batch([NORMAL]))
            return version

    assert asyncio.run(operator())


def test_a_deadline_that_passes_is_unavailable_and_the_client_goes_on(
    ml_pki: Path, ml_service: ServiceThread
) -> None:
    gate = threading.Event()
    config = _config(ml_pki, ml_service.port, score_timeout=timedelta(milliseconds=300))

    async def calls() -> float:
        async with AnomalyClient(config) as ml:
            await ml.score(_batch([NORMAL]))  # connected
            # The service's event loop stalls: no answer before the configured deadline.
            ml_service.loop.call_soon_threadsafe(gate.wait, 10)
            started = time.monotonic()
            try:
                with pytest.raises(ServiceUnavailableError) as info:
                    await ml.score(_batch([NORMAL]))
            finally:
                gate.set()
            waited = time.monotonic() - started
            assert info.value.code == "DEADLINE_EXCEEDED"
            # The same client answers once the service does.
            assert (await ml.score(_batch([NORMAL]), timeout=timedelta(seconds=10))).keys
            return waited

    waited = asyncio.run(calls())
    assert 0.25 <= waited < 5


def test_no_server_is_unavailable_after_the_retries(ml_pki: Path) -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]  # closed again: nobody listens there
    retry = RetryPolicy(max_attempts=3, initial_backoff=timedelta(milliseconds=20))
    config = _config(ml_pki, port, retry=retry, score_timeout=timedelta(seconds=5))

    async def call() -> None:
        async with AnomalyClient(config) as ml:
            await ml.score(_batch([NORMAL]))

    with pytest.raises(ServiceUnavailableError) as info:
        asyncio.run(call())
    assert info.value.code == "UNAVAILABLE"


def test_many_calls_share_one_channel(
    ml_pki: Path, ml_service: ServiceThread, access_log: _AccessLog
) -> None:
    async def calls() -> int:
        async with AnomalyClient(_config(ml_pki, ml_service.port)) as ml:
            for i in range(20):
                assert (await ml.score(_batch([NORMAL] * (i % 5 + 1)))).keys
            together = await asyncio.gather(*(ml.score(_batch([WEIRD])) for _ in range(20)))
            await ml.model()
        return len(together)

    assert asyncio.run(calls()) == 20
    scored = [c for c in access_log.calls if str(c.get("rpc", "")).endswith("/Score")]
    assert len(scored) == 40
    assert {c["code"] for c in scored} == {"OK"}
    # One client, one connection: every call came from the same peer address.
    assert len({c["peer_address"] for c in access_log.calls}) == 1


def test_calls_need_an_open_client(ml_pki: Path) -> None:
    client = AnomalyClient(_config(ml_pki, 1))
    with pytest.raises(RuntimeError, match="not open"):
        asyncio.run(client.score(_batch([NORMAL])))


def test_out_of_range_rows_and_refused_models_reach_the_client_typed(
    ml_pki: Path, ml_service: ServiceThread, ml_models: Models
) -> None:
    with LogWatch() as logs:
        newer = train_another(ml_models, seed=5)
        _, answer = look_now(ml_service, logs)
        assert answer["serving"] == newer
        card_path(ml_models.directory, newer).unlink()
        model_path(ml_models.directory, newer).unlink()
        _, answer = look_now(ml_service, logs)
        assert answer["refused"] == ml_models.version

    async def calls() -> None:
        async with AnomalyClient(_config(ml_pki, ml_service.port)) as ml:
            model = await ml.model()
            assert model.version == newer
            assert model.refused_version == ml_models.version
            assert model.rollback_refused
            assert "refused as a rollback" in model.refused_reason
            assert model.promoted_from is None
            assert model.feature_ranges is not None
            top = dict(zip(model.features, model.feature_ranges, strict=True))["process_count"][1]
            row = list(NORMAL)
            row[FEATURES.index("process_count")] = top + 1
            scores = await ml.score(_batch([NORMAL, row]))
        assert scores.model_version == newer
        assert scores.range_checked
        assert scores.verdicts == [Verdict.NORMAL, Verdict.OUT_OF_RANGE]
        assert list(scores.out_of_range) == [(), ("process_count",)]
        assert scores.is_anomaly.tolist() == [False, True]

    asyncio.run(calls())
