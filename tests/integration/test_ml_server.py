"""AnomalyService for real: the ML service on 127.0.0.1:0 over mTLS with certificates from
`qsc pki`, called through the generated stub; authorization per the mesh table; every invalid
input; a hot model swap under a stream of calls with zero failures; and `qsc-ml --config` run as
a process (SIGHUP, SIGTERM).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from crypto.keyring import KeyManager
from ml.schema import FEATURES, SCHEMA_VERSION
from ml.store import card_path, load_model
from ml.synthetic import SyntheticConfig, generate
from ml.training import tune_model
from qsc.ml.v1 import anomaly_service_pb2 as pb
from qsc.ml.v1 import anomaly_service_pb2_grpc as pb_grpc
from tests.integration.ml_harness import (
    HOST,
    MAX_ROWS,
    NORMAL,
    WEIRD,
    Models,
    ServiceThread,
    service_config,
)

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0


def _channel(pki: Path, port: int, role: str, host: str) -> grpc.Channel:
    stem = pki / f"{role}-{host}"
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=Path(f"{stem}.key").read_bytes(),
        certificate_chain=Path(f"{stem}.crt").read_bytes(),
    )
    return grpc.secure_channel(f"{HOST}:{port}", creds)


@pytest.fixture
def cortex(ml_pki: Path, ml_service: ServiceThread) -> Iterator[pb_grpc.AnomalyServiceStub]:
    with _channel(ml_pki, ml_service.port, "cortex", "c1") as channel:
        yield pb_grpc.AnomalyServiceStub(channel)


def _request(values: list[list[float]], **kw: Any) -> pb.ScoreRequest:
    fields: dict[str, Any] = {
        "feature_schema_version": SCHEMA_VERSION,
        "feature_names": list(FEATURES),
        "rows": [pb.FeatureRow(key=f"host-{i}", values=r) for i, r in enumerate(values)],
    }
    fields.update(kw)
    return pb.ScoreRequest(**fields)


def test_score_happy_path(cortex: pb_grpc.AnomalyServiceStub, ml_models: Models) -> None:
    response = cortex.Score(_request([NORMAL, WEIRD, NORMAL]), timeout=TIMEOUT)
    assert response.model_version == ml_models.version
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
        _request([row], feature_names=order, model_version=ml_models.version), timeout=TIMEOUT
    )
    assert pinned.scores[0].score == weird.score


def test_get_model(cortex: pb_grpc.AnomalyServiceStub, ml_models: Models) -> None:
    info = cortex.GetModel(pb.GetModelRequest(), timeout=TIMEOUT)
    assert info.version == ml_models.version
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


def test_authorization_per_role(ml_pki: Path, ml_service: ServiceThread) -> None:
    with _channel(ml_pki, ml_service.port, "soar", "s1") as channel:
        stub = pb_grpc.AnomalyServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(_request([NORMAL]), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as info:
            stub.GetModel(pb.GetModelRequest(), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with _channel(ml_pki, ml_service.port, "operator", "ops-1") as channel:
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
    ml_pki: Path, ml_service: ServiceThread, ml_models: Models
) -> None:
    keys = KeyManager.open(ml_models.keyring, "ml")
    feedback = generate(SyntheticConfig(hosts=3, days=2, seed=2, anomaly_rate=0.05))
    stop = threading.Event()
    failures: list[str] = []
    seen: dict[str, set[float]] = {}
    calls = [0]
    lock = threading.Lock()

    def client() -> None:
        with _channel(ml_pki, ml_service.port, "cortex", "c1") as channel:
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
            load_model(ml_models.directory, ml_models.version, keys),
            feedback,
            ml_models.directory,
            keys,
        )
        assert tuned.changed
        new = tuned.stored.card.version
        deadline = time.monotonic() + 10
        while new not in seen and time.monotonic() < deadline:
            time.sleep(0.02)
        # A newer card that fails authentication must not interrupt anything either.
        bad = card_path(ml_models.directory, "e" * 64)
        doc = json.loads(card_path(ml_models.directory, new).read_text())
        doc.update(version="e" * 64, created="2999-01-01T00:00:00.000000Z")
        bad.write_text(json.dumps(doc))
        time.sleep(0.4)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert failures == []
    assert calls[0] > 50
    assert set(seen) == {ml_models.version, new}
    assert seen[new] == {tuned.after.threshold}
    assert ml_service.service.registry.require().version == new


def test_qsc_ml_process_serves_and_stops_on_sigterm(
    ml_pki: Path, ml_models: Models, tmp_path: Path
) -> None:
    config = tmp_path / "ml.toml"
    cfg = service_config(ml_pki, ml_models, poll="1h")  # only SIGHUP can make it look
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
        with _channel(ml_pki, port, "cortex", "c1") as channel:
            stub = pb_grpc.AnomalyServiceStub(channel)
            first = stub.Score(_request([WEIRD]), timeout=TIMEOUT)
            assert first.model_version == ml_models.version
            keys = KeyManager.open(ml_models.keyring, "ml")
            feedback = generate(SyntheticConfig(hosts=3, days=2, seed=3, anomaly_rate=0.05))
            tuned = tune_model(
                load_model(ml_models.directory, ml_models.version, keys),
                feedback,
                ml_models.directory,
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
    cortex: pb_grpc.AnomalyServiceStub, ml_service: ServiceThread
) -> None:
    """What travels over the wire is what the core computes (doubles, no rounding on the way)."""
    rows = generate(SyntheticConfig(hosts=2, days=1, seed=9)).values[:MAX_ROWS]
    response = cortex.Score(_request(rows.tolist()), timeout=TIMEOUT)
    score, confidence, anomaly = ml_service.service.registry.require().score_matrix(rows)
    assert np.array_equal([s.score for s in response.scores], score)
    assert np.array_equal([s.confidence for s in response.scores], confidence)
    assert [s.is_anomaly for s in response.scores] == anomaly.tolist()
