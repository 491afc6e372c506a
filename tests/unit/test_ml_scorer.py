"""Scoring in process: request validation names the field, features may come in any order,
verdicts and confidence follow the card; the protobuf conversion; the configuration loads."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from crypto.keyring import KeyManager
from mesh.config import ConfigLoadError
from ml import _convert
from ml.api import ScoreBatch
from ml.config import MlConfig, load_ml_config
from ml.errors import InvalidInputError, ModelVersionMismatchError
from ml.forest import TrainParams
from ml.schema import FEATURES, SCHEMA_VERSION
from ml.scorer import LoadedModel
from ml.synthetic import SyntheticConfig, generate
from ml.training import train_model
from qsc.ml.v1 import anomaly_service_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    base = tmp_path_factory.mktemp("ml")
    keys = KeyManager.create(base / "keys", "ml")
    train = generate(SyntheticConfig(hosts=3, days=3, seed=4, anomaly_rate=0.01))
    stored, _, _ = train_model(
        train, TrainParams(n_estimators=30, contamination=0.02), base / "models", keys
    )
    return LoadedModel(stored)


def _batch(rows: list[list[float]], **kw: object) -> ScoreBatch:
    args: dict[str, object] = {
        "schema_version": SCHEMA_VERSION,
        "feature_names": FEATURES,
        "keys": [f"r{i}" for i in range(len(rows))],
    }
    args.update(kw)
    args.setdefault("rows", rows)
    return ScoreBatch(**args)  # type: ignore[arg-type]


NORMAL = [20.0, 45.0, 2e7, 6e7, 1.0, 250.0, 1.5, 20.0, 10.0, 1.0, 0.0, 2.0]
WEIRD = [99.0, 95.0, 9e9, 6e7, 400.0, 5000.0, 300.0, 400.0, 900.0, 30.0, 5.0, 60.0]


def test_scores_verdicts_and_confidence(model: LoadedModel) -> None:
    out = model.score(_batch([NORMAL, WEIRD]), max_rows=10)
    assert out.model_version == model.version
    assert list(out.keys) == ["r0", "r1"]
    assert out.score[1] < out.score[0]
    assert out.is_anomaly.tolist() == [False, True]
    assert np.allclose(out.decision, out.score - model.threshold)
    assert 0 <= out.confidence[0] < out.confidence[1] <= 1
    assert out.confidence[1] == 1.0
    # The threshold from contamination 0.02 sits at the 2% training quantile: confidence ~0.98.
    at = model.card.calibration.confidence(np.array([model.threshold]))[0]
    assert abs(at - 0.98) < 0.01


def test_feature_order_does_not_matter(model: LoadedModel) -> None:
    order = list(reversed(FEATURES))
    rows = [[dict(zip(FEATURES, r, strict=True))[f] for f in order] for r in (NORMAL, WEIRD)]
    shuffled = model.score(_batch(rows, feature_names=tuple(order)), max_rows=10)
    plain = model.score(_batch([NORMAL, WEIRD]), max_rows=10)
    assert np.array_equal(shuffled.score, plain.score)


@pytest.mark.parametrize(
    ("change", "field", "needle"),
    [
        ({"schema_version": 0}, "feature_schema_version", "not set; the model takes schema"),
        (
            {"schema_version": 2},
            "feature_schema_version",
            "2 does not match the model's schema version 1",
        ),
        ({"feature_names": ()}, "feature_names", "empty; the model takes 12"),
        ({"feature_names": FEATURES[:-1]}, "feature_names", "missing privilege_changes"),
        (
            {"feature_names": (*FEATURES[:-1], "bogus")},
            "feature_names",
            "not model features: bogus",
        ),
        (
            {"feature_names": (*FEATURES[:-1], "cpu_percent")},
            "feature_names",
            "'cpu_percent' is named twice",
        ),
        ({"rows": [], "keys": []}, "rows", "empty batch"),
        ({"rows": [NORMAL] * 11, "keys": ["k"] * 11}, "rows", "11 rows exceed the limit of 10"),
        ({"rows": [NORMAL, NORMAL[:-1]]}, "rows[1].values", "11 values for 12 feature_names"),
        ({"rows": [NORMAL, [*NORMAL, 1.0]]}, "rows[1].values", "13 values for 12"),
        (
            {"rows": [NORMAL, [*NORMAL[:2], math.nan, *NORMAL[3:]]]},
            "rows[1].values[2]",
            "network_bytes_out is nan",
        ),
        ({"rows": [[math.inf, *NORMAL[1:]]]}, "rows[0].values[0]", "cpu_percent is inf"),
        ({"rows": [[*NORMAL[:-1], -math.inf]]}, "rows[0].values[11]", "privilege_changes is -inf"),
    ],
)
def test_invalid_input_names_the_field(
    model: LoadedModel, change: dict[str, object], field: str, needle: str
) -> None:
    rows = change.pop("rows", [NORMAL])
    batch = _batch(rows, **change)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError) as info:
        model.score(batch, max_rows=10)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert needle in str(info.value)


def test_pinned_version(model: LoadedModel) -> None:
    assert model.score(_batch([NORMAL], model_version=model.version), max_rows=1).score.shape == (
        1,
    )
    with pytest.raises(ModelVersionMismatchError, match="is serving"):
        model.score(_batch([NORMAL], model_version="0" * 64), max_rows=1)


def test_protobuf_round_trip(model: LoadedModel) -> None:
    request = pb.ScoreRequest(
        feature_schema_version=1,
        feature_names=list(FEATURES),
        rows=[pb.FeatureRow(key="a", values=NORMAL), pb.FeatureRow(key="b", values=WEIRD)],
    )
    batch = _convert.score_batch(request)
    response = _convert.score_response(model.score(batch, max_rows=10))
    assert [s.key for s in response.scores] == ["a", "b"]
    assert response.model_version == model.version
    assert response.threshold == model.threshold
    assert [s.is_anomaly for s in response.scores] == [False, True]
    info = _convert.model_response(model, max_batch_rows=10)
    card = model.card
    assert info.version == card.version
    assert list(info.feature_names) == list(FEATURES)
    assert info.n_estimators == 30
    assert info.max_samples == 256
    assert info.contamination == 0.02
    assert not info.contamination_auto
    assert info.offset == card.offset == info.threshold
    assert info.threshold_source == "offset"
    assert info.onnx_sha3_256 == card.model_sha3_256
    assert len(info.training_data_blake3) == 32
    assert info.training_rows == card.training_rows
    assert info.max_batch_rows == 10
    assert info.training_start_time.ToDatetime().year == 2025
    assert len(info.score_quantiles) == len(card.calibration.quantiles)
    assert "empirical CDF" in info.calibration
    assert info.parent_version == ""


def test_deploy_example_loads_with_env_overrides(tmp_path: Path) -> None:
    config = load_ml_config(
        ROOT / "deploy" / "ml.toml",
        env={"QSC_ML_MODEL__DIRECTORY": str(tmp_path), "QSC_ML_MODEL__MAX_BATCH_ROWS": "100"},
    )
    assert isinstance(config, MlConfig)
    assert config.model.directory == tmp_path
    assert config.model.max_batch_rows == 100
    assert config.server.listen == "0.0.0.0:7446"
    with pytest.raises(ConfigLoadError, match=r"model\.poll_interval"):
        load_ml_config(ROOT / "deploy" / "ml.toml", env={"QSC_ML_MODEL__POLL_INTERVAL": "1ms"})
    with pytest.raises(ConfigLoadError, match=r"model\.max_batch_rows"):
        load_ml_config(
            ROOT / "deploy" / "ml.toml",
            env={
                "QSC_ML_MODEL__MAX_BATCH_ROWS": "900000",
                "QSC_ML_SERVER__MAX_MESSAGE_BYTES": "65536",
            },
        )
