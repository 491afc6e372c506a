"""AnomalyService for real: the ML service on 127.0.0.1:0 over mTLS with certificates from
`qsc pki`, called through the generated stub; authorization per the mesh table; every invalid
input, values outside their feature's domain among them; rows beyond the training range
flagged; a hot model swap under a stream of calls with zero failures; and `qsc-ml --config` run
as a process (SIGHUP, SIGTERM). Rollback and file modes: test_ml_trust.py.
"""

from __future__ import annotations

import json
import math
import threading
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
    MlProcess,
    Models,
    ServiceThread,
    service_config,
    wait_until,
    write_config,
)

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


@pytest.mark.parametrize(
    ("column", "value", "feature", "reason"),
    [
        (0, -1e9, "cpu_percent", "is -1e+09; cpu_percent must be a percentage in [0, 100]"),
        (0, 1e308, "cpu_percent", "is 1e+308; cpu_percent must be a percentage in [0, 100]"),
        (0, math.nan, "cpu_percent", "is nan; values must be finite numbers"),
        (1, 100.5, "memory_percent", "is 100.5; memory_percent must be a percentage in [0, 100]"),
        (4, -1.0, "failed_logins", "is -1; failed_logins must be a count >= 0"),
        (11, -3.0, "privilege_changes", "is -3; privilege_changes must be a count >= 0"),
        (6, -0.5, "exec_rate", "is -0.5; exec_rate must be a rate per second >= 0"),
        (2, 1e308, "network_bytes_out", "is 1e+308; network_bytes_out must be a count >= 0"),
    ],
)
def test_a_value_outside_its_domain_is_invalid_argument_naming_field_and_feature(
    cortex: pb_grpc.AnomalyServiceStub, column: int, value: float, feature: str, reason: str
) -> None:
    row = list(NORMAL)
    row[column] = value
    with pytest.raises(grpc.RpcError) as info:
        cortex.Score(_request([NORMAL, row]), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert details.startswith(f"rows[1].values[{column}]: {feature} {reason}")
    # The index is the request's own: with the features in another order, it follows them.
    order = list(reversed(FEATURES))
    shuffled = [dict(zip(FEATURES, row, strict=True))[f] for f in order]
    with pytest.raises(grpc.RpcError) as info:
        cortex.Score(_request([shuffled], feature_names=order), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(
        f"rows[0].values[{order.index(feature)}]: {feature} is "
    )


def test_values_beyond_the_training_range_are_flagged_never_normal(
    cortex: pb_grpc.AnomalyServiceStub,
) -> None:
    info = cortex.GetModel(pb.GetModelRequest(), timeout=TIMEOUT)
    ranges = {r.name: (r.min, r.max) for r in info.feature_ranges}
    assert list(ranges) == list(FEATURES)
    column = FEATURES.index("process_count")
    above = list(NORMAL)
    above[column] = ranges["process_count"][1] * 1.01 + 1  # a count: in its domain
    below = list(NORMAL)
    below[0] = 0.0  # cpu_percent 0 is a percentage, but less than training saw
    assert ranges["cpu_percent"][0] > 0.0
    response = cortex.Score(_request([NORMAL, above, below, WEIRD]), timeout=TIMEOUT)
    assert response.range_checked
    normal, high, low, weird = response.scores
    assert normal.verdict == pb.VERDICT_NORMAL
    assert list(normal.out_of_range_features) == []
    assert not normal.is_anomaly
    assert high.verdict == pb.VERDICT_OUT_OF_RANGE
    assert list(high.out_of_range_features) == ["process_count"]
    assert low.verdict == pb.VERDICT_OUT_OF_RANGE
    assert list(low.out_of_range_features) == ["cpu_percent"]
    # The forest alone would call these normal (an Isolation Forest cannot tell a value just
    # past the edge from one at it); the flag is what makes them anomalies.
    # The calibrated confidence of a row scoring exactly the threshold (GetModel's knots).
    knots = info.score_quantiles
    at_threshold = 1.0 - float(
        np.interp(info.threshold, [q.score for q in knots], [q.quantile for q in knots])
    )
    assert at_threshold > 0.9
    for flagged in (high, low):
        assert flagged.decision > 0
        assert flagged.is_anomaly
        assert flagged.confidence >= at_threshold
        assert flagged.confidence > normal.confidence
    assert weird.verdict == pb.VERDICT_OUT_OF_RANGE
    assert weird.is_anomaly
    # Named in the model's feature order, whatever order the request used.
    expected = [
        f for f, v in zip(FEATURES, WEIRD, strict=True) if not ranges[f][0] <= v <= ranges[f][1]
    ]
    assert list(weird.out_of_range_features) == expected
    order = list(reversed(FEATURES))
    shuffled = [dict(zip(FEATURES, WEIRD, strict=True))[f] for f in order]
    again = cortex.Score(_request([shuffled], feature_names=order), timeout=TIMEOUT)
    assert list(again.scores[0].out_of_range_features) == expected


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

    def answered() -> int:
        with lock:
            return calls[0]

    def versions() -> set[str]:
        with lock:
            return set(seen)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    registry = ml_service.service.registry
    try:
        wait_until(lambda: answered() >= 20, what="calls before the swap")
        tuned = tune_model(
            load_model(ml_models.directory, ml_models.version, keys),
            feedback,
            ml_models.directory,
            keys,
        )
        assert tuned.changed
        new = tuned.stored.card.version
        wait_until(lambda: new in versions(), what="calls answered by the new model")
        # A newer card that fails authentication must not interrupt anything either: once the
        # registry has refused it (its 50ms poll), calls keep being answered by `new`.
        bad = card_path(ml_models.directory, "e" * 64)
        doc = json.loads(card_path(ml_models.directory, new).read_text())
        doc.update(version="e" * 64, created="2999-01-01T00:00:00.000000Z")
        bad.write_text(json.dumps(doc))
        refusal = wait_until(lambda: registry.refused, what="the bad card refused")
        assert refusal is not None
        assert refusal.version == "e" * 64
        assert not refusal.rollback
        after = answered()
        wait_until(lambda: answered() >= after + 20, what="calls after the refusal")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert failures == []
    assert set(seen) == {ml_models.version, new}
    assert seen[new] == {tuned.after.threshold}
    assert registry.require().version == new


def test_qsc_ml_process_serves_and_stops_on_sigterm(
    ml_pki: Path, ml_models: Models, tmp_path: Path
) -> None:
    # Polled hourly: only SIGHUP can make it look.
    config = write_config(tmp_path / "ml.toml", service_config(ml_pki, ml_models, poll="1h"))
    service = MlProcess(config, tmp_path / "port")
    try:
        port = service.wait_port()
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
            seen = service.hangup()
            record = service.wait_log("model serving", "info", after=seen)
            assert record["version"] == tuned.stored.card.version
            assert record["previous"] == ml_models.version
            answer = service.wait_log("model directory checked on request", after=seen)
            assert answer["swapped"] is True
            version = stub.GetModel(pb.GetModelRequest(), timeout=TIMEOUT).version
            assert version == tuned.stored.card.version
        assert service.stop() == 0
        assert service.wait_log("signal received, draining")["signal"] == "SIGTERM"
    finally:
        service.close()


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
