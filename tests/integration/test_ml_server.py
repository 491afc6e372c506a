"""AnomalyService for real: the ML service on 127.0.0.1:0 over mTLS with certificates from
`qsc pki`, called through the generated stub; authorization per the mesh table; every invalid
input; a hot model swap under a stream of calls with zero failures; and `qsc-ml --config` run as
a process (SIGHUP, SIGTERM).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest

from crypto.keyring import KeyManager
from mesh.config import config_from_dict
from ml.app import MlService
from ml.config import MlConfig
from ml.forest import TrainParams
from ml.schema import FEATURES, SCHEMA_VERSION
from ml.store import card_path, load_model
from ml.synthetic import SyntheticConfig, generate
from ml.training import train_model, tune_model
from qsc.ml.v1 import anomaly_service_pb2 as pb
from qsc.ml.v1 import anomaly_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
TD = "ml.test"
HOST = "127.0.0.1"
MAX_ROWS = 64
TIMEOUT = 10.0
T = TypeVar("T")

NORMAL = [20.0, 45.0, 2e7, 6e7, 1.0, 250.0, 1.5, 20.0, 10.0, 1.0, 0.0, 2.0]
WEIRD = [99.0, 95.0, 9e9, 6e7, 400.0, 5000.0, 300.0, 400.0, 900.0, 30.0, 5.0, 60.0]


def _qsc(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mesh.cli", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("pki")
    _qsc("pki", "init", "--dir", str(base), "--trust-domain", TD)
    for role, host in [("ml", HOST), ("cortex", "c1"), ("soar", "s1"), ("operator", "ops-1")]:
        _qsc("pki", "issue", role, host, "--dir", str(base))
    return base


@dataclass(frozen=True)
class Models:
    directory: Path
    keyring: Path
    version: str


@pytest.fixture
def models(tmp_path: Path) -> Models:
    keys = KeyManager.create(tmp_path / "keys", "ml")
    train = generate(SyntheticConfig(hosts=3, days=3, seed=1, anomaly_rate=0.01))
    stored, _, _ = train_model(
        train, TrainParams(n_estimators=50, contamination=0.02), tmp_path / "models", keys
    )
    return Models(tmp_path / "models", tmp_path / "keys", stored.card.version)


def _config(pki: Path, models: Models, poll: str = "50ms") -> dict[str, Any]:
    stem = pki / f"ml-{HOST}"
    return {
        "server": {
            "listen": f"{HOST}:0",
            "tls": {"cert": f"{stem}.crt", "key": f"{stem}.key", "ca": str(pki / "ca.crt")},
            "shutdown_grace": "2s",
        },
        "model": {
            "directory": str(models.directory),
            "keyring": str(models.keyring),
            "poll_interval": poll,
            "max_batch_rows": MAX_ROWS,
        },
    }


class ServiceThread:
    """A started MlService on its own event loop thread (the test thread blocks on grpcio)."""

    def __init__(self, config: MlConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.service = self.run(self._build(config))
        self.port = self.run(self.service.start())

    @staticmethod
    async def _build(config: MlConfig) -> MlService:
        return MlService(config)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.service.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def service(pki: Path, models: Models) -> Iterator[ServiceThread]:
    svc = ServiceThread(config_from_dict(MlConfig, _config(pki, models)))
    try:
        yield svc
    finally:
        svc.close()


def _channel(pki: Path, port: int, role: str, host: str) -> grpc.Channel:
    stem = pki / f"{role}-{host}"
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=Path(f"{stem}.key").read_bytes(),
        certificate_chain=Path(f"{stem}.crt").read_bytes(),
    )
    return grpc.secure_channel(f"{HOST}:{port}", creds)


@pytest.fixture
def cortex(pki: Path, service: ServiceThread) -> Iterator[pb_grpc.AnomalyServiceStub]:
    with _channel(pki, service.port, "cortex", "c1") as channel:
        yield pb_grpc.AnomalyServiceStub(channel)


def _request(values: list[list[float]], **kw: Any) -> pb.ScoreRequest:
    fields: dict[str, Any] = {
        "feature_schema_version": SCHEMA_VERSION,
        "feature_names": list(FEATURES),
        "rows": [pb.FeatureRow(key=f"host-{i}", values=r) for i, r in enumerate(values)],
    }
    fields.update(kw)
    return pb.ScoreRequest(**fields)


def test_score_happy_path(cortex: pb_grpc.AnomalyServiceStub, models: Models) -> None:
    response = cortex.Score(_request([NORMAL, WEIRD, NORMAL]), timeout=TIMEOUT)
    assert response.model_version == models.version
    assert [s.key for s in response.scores] == ["host-0", "host-1", "host-2"]
    normal, weird, again = response.scores
    assert not normal.is_anomaly
    assert weird.is_anomaly
    assert weird.score < normal.score
    assert normal.score == again.score
    for s in response.scores:
        assert 0.0 <= s.confidence <= 1.0
        assert math.isclose(s.decision, s.score - response.threshold, abs_tol=1e-12)
    assert weird.confidence == 1.0
    # Any feature order, and pinned to the serving version.
    order = list(reversed(FEATURES))
    row = [dict(zip(FEATURES, WEIRD, strict=True))[f] for f in order]
    pinned = cortex.Score(
        _request([row], feature_names=order, model_version=models.version), timeout=TIMEOUT
    )
    assert pinned.scores[0].score == weird.score


def test_get_model(cortex: pb_grpc.AnomalyServiceStub, models: Models) -> None:
    info = cortex.GetModel(pb.GetModelRequest(), timeout=TIMEOUT)
    assert info.version == models.version
    assert info.feature_schema_version == SCHEMA_VERSION
    assert list(info.feature_names) == list(FEATURES)
    assert info.n_estimators == 50
    assert info.max_samples == 256
    assert info.contamination == 0.02
    assert not info.contamination_auto
    assert info.threshold == info.offset
    assert info.threshold_source == "offset"
    assert info.max_batch_rows == MAX_ROWS
    assert info.training_rows == 3 * 3 * 288
    assert len(info.onnx_sha3_256) == 32
    assert len(info.score_quantiles) > 100
    assert "empirical CDF" in info.calibration
    assert info.load_time.seconds > 0
    assert info.training_start_time.ToJsonString() == "2025-01-06T00:00:00Z"


def test_authorization_per_role(pki: Path, service: ServiceThread) -> None:
    with _channel(pki, service.port, "soar", "s1") as channel:
        stub = pb_grpc.AnomalyServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(_request([NORMAL]), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as info:
            stub.GetModel(pb.GetModelRequest(), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with _channel(pki, service.port, "operator", "ops-1") as channel:
        stub = pb_grpc.AnomalyServiceStub(channel)
        assert stub.GetModel(pb.GetModelRequest(), timeout=TIMEOUT).version
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(_request([NORMAL]), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


NAN_ROW = [*NORMAL[:4], math.nan, *NORMAL[5:]]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"feature_schema_version": 0}, "feature_schema_version"),
        ({"feature_schema_version": 2}, "feature_schema_version"),
        ({"feature_names": []}, "feature_names"),
        ({"feature_names": list(FEATURES[:-1])}, "feature_names"),
        ({"feature_names": [*FEATURES[:-1], "cpu_pct"]}, "feature_names"),
        ({"feature_names": [*FEATURES[:-1], FEATURES[0]]}, "feature_names"),
        ({"rows": []}, "rows"),
        ({"rows": [pb.FeatureRow(key="k", values=NORMAL)] * (MAX_ROWS + 1)}, "rows"),
        (
            {"rows": [pb.FeatureRow(values=NORMAL), pb.FeatureRow(values=NORMAL[:5])]},
            "rows[1].values",
        ),
        ({"rows": [pb.FeatureRow(values=NAN_ROW)]}, "rows[0].values[4]"),
        ({"rows": [pb.FeatureRow(values=[math.inf, *NORMAL[1:]])]}, "rows[0].values[0]"),
        ({"rows": [pb.FeatureRow(values=[*NORMAL[:-1], -math.inf])]}, "rows[0].values[11]"),
    ],
)
def test_invalid_input_is_invalid_argument_naming_the_field(
    cortex: pb_grpc.AnomalyServiceStub, request_fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        cortex.Score(_request([NORMAL], **request_fields), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(f"{field}: ")


def test_pinned_to_another_version(cortex: pb_grpc.AnomalyServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        cortex.Score(_request([NORMAL], model_version="0" * 64), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "model_version" in (info.value.details() or "")


def test_hot_swap_under_load_drops_nothing(
    pki: Path, service: ServiceThread, models: Models
) -> None:
    keys = KeyManager.open(models.keyring, "ml")
    feedback = generate(SyntheticConfig(hosts=3, days=2, seed=2, anomaly_rate=0.05))
    stop = threading.Event()
    failures: list[str] = []
    seen: dict[str, set[float]] = {}
    calls = [0]
    lock = threading.Lock()

    def client() -> None:
        with _channel(pki, service.port, "cortex", "c1") as channel:
            stub = pb_grpc.AnomalyServiceStub(channel)
            rows = [NORMAL, WEIRD] * 4
            while not stop.is_set():
                try:
                    r = stub.Score(_request(rows), timeout=TIMEOUT)
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code()}: {exc.details()}")
                    continue
                with lock:
                    calls[0] += 1
                    # One model per batch: every row of a response agrees with its threshold.
                    seen.setdefault(r.model_version, set()).add(r.threshold)
                    for s in r.scores:
                        if s.is_anomaly != (s.score < r.threshold):
                            failures.append(f"inconsistent verdict under {r.model_version}")

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        tuned = tune_model(
            load_model(models.directory, models.version, keys), feedback, models.directory, keys
        )
        assert tuned.changed
        new = tuned.stored.card.version
        deadline = time.monotonic() + 10
        while new not in seen and time.monotonic() < deadline:
            time.sleep(0.02)
        # A newer card that fails authentication must not interrupt anything either.
        bad = card_path(models.directory, "e" * 64)
        doc = json.loads(card_path(models.directory, new).read_text())
        doc.update(version="e" * 64, created="2999-01-01T00:00:00.000000Z")
        bad.write_text(json.dumps(doc))
        time.sleep(0.4)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert failures == []
    assert calls[0] > 50
    assert set(seen) == {models.version, new}
    assert seen[new] == {tuned.after.threshold}
    assert service.service.registry.require().version == new


def test_qsc_ml_process_serves_and_stops_on_sigterm(
    pki: Path, models: Models, tmp_path: Path
) -> None:
    config = tmp_path / "ml.toml"
    cfg = _config(pki, models, poll="1h")  # only SIGHUP can make it look
    lines = []
    for section, table in (
        ("server", {k: v for k, v in cfg["server"].items() if k != "tls"}),
        ("server.tls", cfg["server"]["tls"]),
        ("model", cfg["model"]),
    ):
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    config.write_text("\n".join(lines) + "\n")
    port_file = tmp_path / "port"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'proto'}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ml", "--config", str(config), "--port-file", str(port_file)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert port_file.exists(), proc.stderr.read().decode() if proc.stderr else ""
        port = int(port_file.read_text())
        with _channel(pki, port, "cortex", "c1") as channel:
            stub = pb_grpc.AnomalyServiceStub(channel)
            first = stub.Score(_request([WEIRD]), timeout=TIMEOUT)
            assert first.model_version == models.version
            keys = KeyManager.open(models.keyring, "ml")
            feedback = generate(SyntheticConfig(hosts=3, days=2, seed=3, anomaly_rate=0.05))
            tuned = tune_model(
                load_model(models.directory, models.version, keys),
                feedback,
                models.directory,
                keys,
                objective="target_fpr",
                target_fpr=0.001,
            )
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            version = first.model_version
            while version == first.model_version and time.monotonic() < deadline:
                time.sleep(0.05)
                version = stub.GetModel(pb.GetModelRequest(), timeout=TIMEOUT).version
            assert version == tuned.stored.card.version
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


def test_scores_match_in_process_scoring(
    cortex: pb_grpc.AnomalyServiceStub, service: ServiceThread
) -> None:
    """What travels over the wire is what the core computes (doubles, no rounding on the way)."""
    rows = generate(SyntheticConfig(hosts=2, days=1, seed=9)).values[:MAX_ROWS]
    response = cortex.Score(_request(rows.tolist()), timeout=TIMEOUT)
    score, confidence, anomaly = service.service.registry.require().score_matrix(rows)
    assert np.array_equal([s.score for s in response.scores], score)
    assert np.array_equal([s.confidence for s in response.scores], confidence)
    assert [s.is_anomaly for s in response.scores] == anomaly.tolist()
