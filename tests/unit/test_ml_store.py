"""Model files: content addressed, authenticated with the ML keyring, refused when tampered;
the registry serves the newest and keeps serving when a newer one is bad; tuning writes a new
version whose card names its parent."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from crypto.hashing import blake3_256
from crypto.keyring import KeyManager
from ml.card import FORMAT
from ml.data import Windows
from ml.errors import ModelIntegrityError, ModelNotFoundError
from ml.forest import TrainParams
from ml.registry import ModelRegistry
from ml.scorer import LoadedModel
from ml.store import candidates, card_path, load_model, model_path, newest, save_model
from ml.synthetic import SyntheticConfig, generate
from ml.training import train_model, tune_model

T0 = dt.datetime(2025, 2, 1, 12, 0, tzinfo=dt.UTC)
PARAMS = TrainParams(n_estimators=40, seed=1)


@pytest.fixture(scope="module")
def data() -> tuple[Windows, Windows]:
    train = generate(SyntheticConfig(hosts=4, days=4, seed=1, anomaly_rate=0.01))
    feedback = generate(SyntheticConfig(hosts=4, days=3, seed=2, anomaly_rate=0.03))
    return train, feedback


@pytest.fixture
def keys(tmp_path: Path) -> KeyManager:
    return KeyManager.create(tmp_path / "keys", "ml")


def _train(directory: Path, keys: KeyManager, train: Windows, **kw: object) -> LoadedModel:
    stored, _, _ = train_model(train, PARAMS, directory, keys, **kw)  # type: ignore[arg-type]
    return LoadedModel(stored)


def test_train_writes_an_authenticated_content_addressed_pair(
    tmp_path: Path, keys: KeyManager, data: tuple[Windows, Windows]
) -> None:
    train, _ = data
    models = tmp_path / "models"
    stored, info, check = train_model(train, PARAMS, models, keys, now=T0)
    version = stored.card.version
    assert stored.model_path == model_path(models, version)
    assert blake3_256(stored.model_path.read_bytes()).hex() == version
    doc = json.loads(card_path(models, version).read_text())
    assert doc["format"] == FORMAT
    assert doc["version"] == version
    assert doc["features"] == {"schema_version": 1, "names": list(train.features)}
    assert doc["training"]["rows"] == train.rows
    assert doc["training"]["data_blake3"] == train.data_blake3().hex()
    assert doc["training"]["time_start"] == "2025-01-06T00:00:00.000000Z"
    assert doc["parameters"]["max_samples_effective"] == 256
    assert doc["threshold"] == {"value": -0.5, "source": "offset", "metrics": None}
    assert doc["offset"] == -0.5
    assert doc["created"] == "2025-02-01T12:00:00.000000Z"
    assert doc["model"]["graph"]["nodes"] == info.graph_nodes == 4
    assert doc["model"]["export_check"]["max_abs_diff_score_samples"] < 1e-5
    assert check.max_abs_diff_decision_function < 1e-5
    assert "empirical CDF" in doc["calibration"]["description"]
    assert set(doc["score_distribution"]) == {"min", "max", "mean", "std", "quantiles"}
    assert set(doc["auth"]) == {"seal"}
    loaded = load_model(models, version, keys)
    assert loaded.card.version == version
    assert loaded.model_bytes == stored.model_bytes
    # Same data, same seed: the same model, the same version.
    again, _, _ = train_model(train, PARAMS, models, keys, now=T0 + dt.timedelta(hours=1))
    assert again.card.version == version


def _copy(models: Path, tmp_path: Path) -> Path:
    other = tmp_path / "copy"
    shutil.copytree(models, other)
    return other


@pytest.fixture
def trained(tmp_path: Path, keys: KeyManager, data: tuple[Windows, Windows]) -> tuple[Path, str]:
    models = tmp_path / "models"
    stored, _, _ = train_model(data[0], PARAMS, models, keys, now=T0)
    return models, stored.card.version


def test_a_flipped_model_byte_is_refused(trained: tuple[Path, str], keys: KeyManager) -> None:
    models, version = trained
    path = model_path(models, version)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelIntegrityError, match="does not match the BLAKE3") as info:
        load_model(models, version, keys)
    assert str(path) in str(info.value)


def test_a_replaced_model_is_refused(
    trained: tuple[Path, str], keys: KeyManager, data: tuple[Windows, Windows]
) -> None:
    models, version = trained
    other = LoadedModel(
        train_model(data[0], TrainParams(n_estimators=10, seed=9), models.parent / "o", keys)[0]
    )
    shutil.copy(other.path, model_path(models, version))
    with pytest.raises(ModelIntegrityError, match="tampered or replaced"):
        load_model(models, version, keys)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d.update(threshold={**d["threshold"], "value": -0.9}), "edited after"),
        (lambda d: d["features"].update(names=d["features"]["names"][:-1]), "edited after"),
        (lambda d: d.update(created="2999-01-01T00:00:00Z"), "edited after"),
        (lambda d: d.pop("auth"), "no valid auth seal"),
        (lambda d: d.update(auth={"seal": "AAAA"}), "no valid auth seal"),
    ],
)
def test_an_edited_card_is_refused(
    trained: tuple[Path, str], keys: KeyManager, edit: object, needle: str
) -> None:
    models, version = trained
    path = card_path(models, version)
    doc = json.loads(path.read_text())
    edit(doc)  # type: ignore[operator]
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelIntegrityError, match=needle) as info:
        load_model(models, version, keys)
    assert str(path) in str(info.value)


def test_truncated_card_and_missing_model(trained: tuple[Path, str], keys: KeyManager) -> None:
    models, version = trained
    cpath = card_path(models, version)
    text = cpath.read_text()
    cpath.write_text(text[: len(text) // 2])
    with pytest.raises(ModelIntegrityError, match="not JSON"):
        load_model(models, version, keys)
    cpath.write_text(text)
    model_path(models, version).unlink()
    with pytest.raises(ModelIntegrityError, match="is missing"):
        load_model(models, version, keys)
    with pytest.raises(ModelNotFoundError, match="no model"):
        load_model(models, "0" * 64, keys)


def test_a_card_under_another_name_is_refused(trained: tuple[Path, str], keys: KeyManager) -> None:
    models, version = trained
    fake = "f" * 64
    shutil.copy(card_path(models, version), card_path(models, fake))
    shutil.copy(model_path(models, version), model_path(models, fake))
    with pytest.raises(ModelIntegrityError, match="not its name's"):
        load_model(models, fake, keys)


def test_another_keyring_is_refused_and_rotation_keeps_old_models(
    trained: tuple[Path, str], keys: KeyManager, tmp_path: Path
) -> None:
    models, version = trained
    stranger = KeyManager.create(tmp_path / "other-keys", "ml")
    with pytest.raises(ModelIntegrityError, match="which this keyring does not have"):
        load_model(models, version, stranger)
    assert keys.rotate(force=True)
    assert load_model(models, version, keys).card.version == version


def test_registry_serves_the_newest_and_survives_a_bad_one(
    trained: tuple[Path, str], keys: KeyManager, data: tuple[Windows, Windows]
) -> None:
    models, first = trained
    registry = ModelRegistry(models, keys)
    assert registry.load_initial().version == first
    assert not registry.refresh()  # nothing new
    tuned = tune_model(load_model(models, first, keys), data[1], models, keys, now=T0)
    assert tuned.changed
    assert newest(models).version == tuned.stored.card.version
    held = registry.require()  # a call in flight keeps its model across the swap
    assert registry.refresh()
    assert registry.require().version == tuned.stored.card.version
    assert held.version == first
    assert held.raw(data[1].values[:3])[0].shape == (3,)
    # A newer card that fails authentication: logged, and the current model stays.
    bad = save_model(
        models,
        tuned.stored.model_bytes + b"\x00",
        {k: v for k, v in tuned.stored.card.doc.items() if k not in ("auth", "version", "model")}
        | {"created": "2026-01-01T00:00:00.000000Z"},
        keys,
    )
    cpath = bad.card_path
    doc = json.loads(cpath.read_text())
    doc["offset"] = 0.0
    cpath.write_text(json.dumps(doc))
    assert candidates(models)[0].version == bad.card.version
    assert not registry.refresh()
    assert registry.require().version == tuned.stored.card.version
    assert not registry.refresh()  # reported once, not retried until the card changes
    with pytest.raises(ModelIntegrityError):
        ModelRegistry(models, keys).load_initial()  # at start-up, a bad newest model stops


def test_empty_directory(tmp_path: Path, keys: KeyManager) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="qsc-ml train"):
        ModelRegistry(tmp_path / "empty", keys).load_initial()
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        ModelRegistry(tmp_path / "nope", keys).load_initial()


def test_tune_picks_a_sensible_threshold_and_writes_a_child(
    trained: tuple[Path, str], keys: KeyManager, data: tuple[Windows, Windows]
) -> None:
    models, version = trained
    parent = load_model(models, version, keys)
    feedback = data[1]
    result = tune_model(parent, feedback, models, keys, now=T0 + dt.timedelta(minutes=1))
    card = result.stored.card
    assert result.changed
    assert card.parent_version == version
    assert card.version != version
    assert card.threshold_source == "f1"
    assert card.threshold == result.after.threshold
    assert result.after.f1 >= result.before.f1
    assert result.after.f1 > 0.3
    assert result.after.fpr < 0.05
    # Feedback scored by the tuned model with its threshold gives the metrics it recorded.
    model = LoadedModel(result.stored)
    _, _, flagged = model.score_matrix(feedback.values)
    assert feedback.labels is not None
    assert int((flagged & feedback.labels).sum()) == result.after.tp
    doc = card.doc
    assert doc["threshold"]["feedback"]["rows"] == feedback.rows
    assert doc["trained"] == parent.card.doc["trained"]
    # Everything else is the parent's: same trees, same scores.
    assert np.array_equal(
        model.raw(feedback.values)[0], LoadedModel(parent).raw(feedback.values)[0]
    )
    fpr = tune_model(
        result.stored, feedback, models, keys, objective="target_fpr", target_fpr=0.002
    )
    assert fpr.changed
    assert fpr.after.fpr <= 0.002
    assert fpr.stored.card.threshold_source == "target_fpr"
    same = tune_model(fpr.stored, feedback, models, keys, objective="target_fpr", target_fpr=0.002)
    assert not same.changed
    assert same.stored.card.version == fpr.stored.card.version
