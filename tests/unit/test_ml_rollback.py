"""Rollback protection of the model directory, in process: the sealed `model-revision` floor
only moves forward and is reported (never reset) when it does not verify; the registry refuses
an older model while running and at start, logging it and reporting it for GetModel; a record
deleted or put back older while the service runs is rewritten; `promote` is the deliberate way
back, loud; the trainer refuses to write a model the service would refuse."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import threading
from pathlib import Path

import pytest

from crypto.keyring import KeyManager
from ml import _convert
from ml.__main__ import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main
from ml.card import format_time
from ml.data import Windows
from ml.errors import (
    ModelNotFoundError,
    ModelRollbackError,
    PromotionError,
    RevisionRecordError,
)
from ml.forest import TrainParams
from ml.promote import promote_model
from ml.registry import ModelRegistry
from ml.revision import Revision, advance_revision, read_revision, record_path
from ml.store import PURPOSE, card_path, load_card, model_path, save_model
from ml.synthetic import SyntheticConfig, generate
from ml.training import train_model, tune_model

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
REGISTRY_LOG = "qsc.ml.registry"


@pytest.fixture(scope="module")
def windows() -> Windows:
    return generate(SyntheticConfig(hosts=2, days=1, seed=1, anomaly_rate=0.01))


@pytest.fixture
def keys(tmp_path: Path) -> KeyManager:
    return KeyManager.create(tmp_path / "keys", "ml")


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return tmp_path / "models"


def _train(windows: Windows, models: Path, keys: KeyManager, seed: int, at: dt.datetime) -> str:
    params = TrainParams(n_estimators=8, seed=seed)
    return train_model(windows, params, models, keys, now=at)[0].card.version


@pytest.fixture
def two(windows: Windows, models: Path, keys: KeyManager) -> tuple[str, str]:
    """Two models: `old` written at T0, `new` an hour later."""
    old = _train(windows, models, keys, 1, T0)
    new = _train(windows, models, keys, 2, T0 + HOUR)
    assert old != new
    return old, new


def _floor(models: Path, keys: KeyManager) -> Revision | None:
    return read_revision(models, keys.decryption_keys(PURPOSE))


def _revision(models: Path, keys: KeyManager, version: str) -> Revision:
    return Revision.of(load_card(card_path(models, version), keys))


def _delete(models: Path, version: str) -> None:
    card_path(models, version).unlink()
    model_path(models, version).unlink()


def _messages(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == REGISTRY_LOG]


# --- the record -------------------------------------------------------------------------------


def test_revisions_order_as_the_serving_order(keys: KeyManager) -> None:
    a, b = "a" * 64, "b" * 64
    assert Revision(T0, b) < Revision(T0 + HOUR, a)  # time first
    assert Revision(T0, a) < Revision(T0, b)  # then version, as ml.store.newest sorts
    assert Revision(T0, a).describe() == f"{a} (created 2026-03-01T12:00:00.000000Z)"


def test_the_floor_only_moves_forward(tmp_path: Path, keys: KeyManager) -> None:
    seal, opened = keys.active_key(PURPOSE), keys.decryption_keys(PURPOSE)
    assert read_revision(tmp_path, opened) is None
    high = Revision(T0 + HOUR, "b" * 64)
    assert advance_revision(tmp_path, high, seal_key=seal, keys=opened)
    written = record_path(tmp_path).read_bytes()
    for lower in (Revision(T0, "f" * 64), Revision(T0 + HOUR, "a" * 64), high):
        assert not advance_revision(tmp_path, lower, seal_key=seal, keys=opened)
        assert read_revision(tmp_path, opened) == high
    assert record_path(tmp_path).read_bytes() == written  # not even rewritten
    higher = Revision(T0 + 2 * HOUR, "0" * 64)
    assert advance_revision(tmp_path, higher, seal_key=seal, keys=opened)
    assert read_revision(tmp_path, opened) == higher
    # After a key rotation, a record sealed under the old key still opens.
    assert keys.rotate(force=True)
    assert read_revision(tmp_path, keys.decryption_keys(PURPOSE)) == higher


def test_writers_at_once_never_move_the_floor_back(tmp_path: Path, keys: KeyManager) -> None:
    seal, opened = keys.active_key(PURPOSE), keys.decryption_keys(PURPOSE)
    revisions = [Revision(T0 + dt.timedelta(seconds=i), f"{i:064x}") for i in range(40)]
    start = threading.Barrier(4)

    def writer(mine: list[Revision]) -> None:
        start.wait()
        for revision in mine:
            advance_revision(tmp_path, revision, seal_key=seal, keys=opened)

    threads = [threading.Thread(target=writer, args=(revisions[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert read_revision(tmp_path, opened) == revisions[-1]


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # a flipped bit
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b"",  # emptied
        lambda b: b"{}",  # replaced with other text
    ],
    ids=["flipped", "truncated", "empty", "replaced"],
)
def test_a_record_that_does_not_verify_is_reported_never_reset(
    two: tuple[str, str], models: Path, keys: KeyManager, windows: Windows, damage: object
) -> None:
    path = record_path(models)
    bad = damage(path.read_bytes())  # type: ignore[operator]
    path.write_bytes(bad)
    files = set(os.listdir(models))
    with pytest.raises(RevisionRecordError, match="does not verify") as info:
        _floor(models, keys)
    assert str(path) in str(info.value)
    assert "rollback would go unnoticed" in str(info.value)
    with pytest.raises(RevisionRecordError):
        ModelRegistry(models, keys).load_initial()  # the service does not start on it
    with pytest.raises(RevisionRecordError):
        _train(windows, models, keys, 3, T0 + 2 * HOUR)  # nor does the trainer write
    with pytest.raises(RevisionRecordError):
        promote_model(models, two[0], keys, reason="test")
    assert set(os.listdir(models)) == files
    assert path.read_bytes() == bad


def test_a_record_of_another_keyring_or_not_a_file_is_refused(
    two: tuple[str, str], models: Path, keys: KeyManager, tmp_path: Path
) -> None:
    stranger = KeyManager.create(tmp_path / "other", "ml")
    with pytest.raises(RevisionRecordError, match="sealed by another keyring"):
        read_revision(models, stranger.decryption_keys(PURPOSE))
    path = record_path(models)
    path.rename(tmp_path / "elsewhere")
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RevisionRecordError, match="cannot be read"):
        _floor(models, keys)
    path.unlink()
    path.mkdir()
    with pytest.raises(RevisionRecordError, match="is not a model revision record"):
        _floor(models, keys)


def test_writing_a_model_moves_the_floor_and_an_older_one_is_refused(
    two: tuple[str, str], models: Path, keys: KeyManager, windows: Windows
) -> None:
    _, new = two
    assert _floor(models, keys) == _revision(models, keys, new)
    files = set(os.listdir(models))
    # A model created before the floor (a clock behind, or `now` in the past) would be refused
    # by the service: the trainer refuses to write it.
    with pytest.raises(ModelRollbackError, match="clock behind") as info:
        _train(windows, models, keys, 3, T0 + HOUR / 2)
    assert "the service would refuse it as a rollback" in str(info.value)
    assert set(os.listdir(models)) == files
    # Training the same model again re-seals its card later: the floor follows.
    assert _train(windows, models, keys, 1, T0 + 2 * HOUR) == two[0]
    assert _floor(models, keys) == Revision(T0 + 2 * HOUR, two[0])


# --- the registry -----------------------------------------------------------------------------


def test_deleting_the_newest_is_refused_running_and_at_start(
    two: tuple[str, str], models: Path, keys: KeyManager, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = two
    registry = ModelRegistry(models, keys)
    assert registry.load_initial().version == new
    _delete(models, new)
    caplog.set_level(logging.INFO, REGISTRY_LOG)
    assert not registry.refresh()
    assert registry.require().version == new  # the newest, still in memory
    assert _messages(caplog) == [
        ("ERROR", "model rollback refused; still serving the newest model")
    ]
    refused = registry.refused
    assert refused is not None
    assert (refused.version, refused.rollback) == (old, True)
    assert "refused as a rollback" in refused.reason
    assert f"qsc-ml promote --models {models}" in refused.reason
    info = _convert.model_response(registry.require(), max_batch_rows=1, refused=refused)
    assert (info.version, info.refused_version, info.rollback_refused) == (new, old, True)
    # Reported once: the next looks stay quiet and keep the report.
    caplog.clear()
    assert not registry.refresh()
    assert not registry.refresh()
    assert _messages(caplog) == []
    assert registry.refused == refused
    # A fresh start refuses too: the record remembers the deleted model.
    with pytest.raises(ModelRollbackError, match="refused as a rollback") as start:
        ModelRegistry(models, keys).load_initial()
    assert str(card_path(models, old)) in str(start.value)
    assert _floor(models, keys) == Revision(T0 + HOUR, new)


def test_a_newest_model_that_comes_back_clears_the_refusal(
    two: tuple[str, str], models: Path, keys: KeyManager, caplog: pytest.LogCaptureFixture
) -> None:
    _, new = two
    kept = {p: p.read_bytes() for p in (card_path(models, new), model_path(models, new))}
    registry = ModelRegistry(models, keys)
    registry.load_initial()
    _delete(models, new)
    assert not registry.refresh()
    assert registry.refused is not None
    for path, data in kept.items():
        path.write_bytes(data)
    caplog.set_level(logging.INFO, REGISTRY_LOG)
    caplog.clear()
    assert not registry.refresh()
    assert registry.refused is None
    assert _messages(caplog) == [
        ("WARNING", "model refusal cleared: the serving model is the newest again")
    ]


def test_an_old_card_put_back_is_refused(
    two: tuple[str, str], models: Path, keys: KeyManager
) -> None:
    old, new = two
    before = card_path(models, old).read_bytes()
    promote_model(models, old, keys, reason="test", now=T0 + 2 * HOUR)
    registry = ModelRegistry(models, keys)
    assert registry.load_initial().version == old
    card_path(models, old).write_bytes(before)  # validly sealed, but from before the promotion
    assert not registry.refresh()
    refused = registry.refused
    assert refused is not None
    assert (refused.version, refused.rollback) == (new, True)
    with pytest.raises(ModelRollbackError, match=new):
        ModelRegistry(models, keys).load_initial()


def test_a_newer_model_deleted_before_it_served_is_reported(
    windows: Windows, models: Path, keys: KeyManager, caplog: pytest.LogCaptureFixture
) -> None:
    old = _train(windows, models, keys, 1, T0)
    registry = ModelRegistry(models, keys)
    registry.load_initial()
    new = _train(windows, models, keys, 2, T0 + HOUR)
    _delete(models, new)  # before the service looked
    caplog.set_level(logging.INFO, REGISTRY_LOG)
    assert not registry.refresh()
    assert registry.require().version == old  # what serves keeps serving
    refused = registry.refused
    assert refused is not None
    assert (refused.version, refused.rollback) == (new, True)
    assert "it is gone" in refused.reason
    assert _messages(caplog) == [
        ("ERROR", "newest model missing: rollback refused; still serving the model loaded")
    ]
    caplog.clear()
    assert not registry.refresh()
    assert _messages(caplog) == []  # once
    with pytest.raises(ModelRollbackError):
        ModelRegistry(models, keys).load_initial()  # as a restart would see it
    # The deliberate way out.
    promote_model(models, old, keys, reason="the newer one was bad")
    assert registry.refresh()
    assert registry.refused is None
    assert registry.require().card.promoted_from == new


def test_a_record_deleted_or_put_back_older_while_running_is_rewritten(
    windows: Windows, models: Path, keys: KeyManager, caplog: pytest.LogCaptureFixture
) -> None:
    old = _train(windows, models, keys, 1, T0)
    path = record_path(models)
    old_record = path.read_bytes()
    new = _train(windows, models, keys, 2, T0 + HOUR)
    floor = Revision(T0 + HOUR, new)
    registry = ModelRegistry(models, keys)
    registry.load_initial()
    caplog.set_level(logging.INFO, REGISTRY_LOG)
    for change in (path.unlink, lambda: path.write_bytes(old_record)):
        caplog.clear()
        change()
        assert not registry.refresh()
        assert _floor(models, keys) == floor
        ((level, message),) = _messages(caplog)
        assert level == "WARNING"
        assert message.startswith("model revision record missing or older")
        assert message.endswith("; rewritten")
    # The in-memory floor refuses the older model even with the older record back.
    path.write_bytes(old_record)
    _delete(models, new)
    assert not registry.refresh()
    refused = registry.refused
    assert refused is not None
    assert refused.version == old
    assert _floor(models, keys) == floor


def test_the_documented_limits_hold_only_while_no_service_runs(
    windows: Windows, models: Path, keys: KeyManager, caplog: pytest.LogCaptureFixture
) -> None:
    """Changes made while the service is down that a fresh start cannot tell from an honest
    history: an older record put back (validly sealed), or the record deleted (WARNING)."""
    old = _train(windows, models, keys, 1, T0)
    path = record_path(models)
    old_record = path.read_bytes()
    new = _train(windows, models, keys, 2, T0 + HOUR)
    _delete(models, new)
    path.write_bytes(old_record)
    assert ModelRegistry(models, keys).load_initial().version == old  # the older record: quiet
    path.unlink()
    caplog.set_level(logging.INFO, REGISTRY_LOG)
    assert ModelRegistry(models, keys).load_initial().version == old
    assert (
        "WARNING",
        "no model revision record: rollback protection starts from the newest model on disk",
    ) in _messages(caplog)
    assert _floor(models, keys) == Revision(T0, old)  # protection starts again from here


def test_a_record_that_stops_verifying_while_running_is_logged_once(
    two: tuple[str, str], models: Path, keys: KeyManager, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = two
    registry = ModelRegistry(models, keys)
    registry.load_initial()
    path = record_path(models)
    path.write_bytes(b"garbage")
    caplog.set_level(logging.INFO, REGISTRY_LOG)
    assert not registry.refresh()
    assert not registry.refresh()
    ((level, message),) = _messages(caplog)
    assert (level, message.split(";")[0]) == ("ERROR", "model revision record does not verify")
    assert path.read_bytes() == b"garbage"  # never overwritten
    _delete(models, new)
    assert not registry.refresh()
    refused = registry.refused
    assert refused is not None
    assert (refused.version, refused.rollback) == (old, True)  # the in-memory floor holds


# --- promote ----------------------------------------------------------------------------------


def test_promote_makes_an_older_version_the_newest_loudly(
    two: tuple[str, str], models: Path, keys: KeyManager, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = two
    registry = ModelRegistry(models, keys)
    registry.load_initial()
    stored = promote_model(models, old, keys, reason="  too many pages  ", now=T0 + 2 * HOUR)
    card = stored.card
    assert card.version == old  # the same model file
    assert stored.model_bytes == model_path(models, old).read_bytes()
    assert card.promoted_from == new
    assert card.doc["promoted"] == {
        "time": "2026-03-01T14:00:00.000000Z",
        "previous_version": new,
        "reason": "too many pages",
    }
    assert card.created == T0 + 2 * HOUR
    assert _floor(models, keys) == Revision(T0 + 2 * HOUR, old)
    caplog.set_level(logging.INFO, REGISTRY_LOG)
    assert registry.refresh()
    assert registry.require().version == old
    (record,) = [r for r in caplog.records if r.name == REGISTRY_LOG]
    assert (record.levelname, record.getMessage()) == (
        "WARNING",
        "model serving after a deliberate rollback",
    )
    fields = record.fields  # type: ignore[attr-defined]
    assert fields == {
        "version": old,
        "promoted_from": new,
        "reason": "too many pages",
        "previous": new,
    }
    info = _convert.model_response(registry.require(), max_batch_rows=1)
    assert info.promoted_from_version == new
    assert _convert.model_info(info).promoted_from == new


def test_promote_refuses_what_is_not_a_rollback(
    two: tuple[str, str], models: Path, keys: KeyManager, tmp_path: Path
) -> None:
    old, new = two
    with pytest.raises(PromotionError, match="already the newest"):
        promote_model(models, new, keys, reason="x")
    with pytest.raises(PromotionError, match="--reason"):
        promote_model(models, old, keys, reason="  ")
    with pytest.raises(ModelNotFoundError, match="no model"):
        promote_model(models, "0" * 64, keys, reason="x")
    stranger = KeyManager.create(tmp_path / "other", "ml")
    with pytest.raises(Exception, match="which this keyring does not have"):
        promote_model(models, old, stranger, reason="x")
    # Without a record, the newest card on disk is what it replaces.
    record_path(models).unlink()
    with pytest.raises(PromotionError, match="already the newest"):
        promote_model(models, new, keys, reason="x")
    assert promote_model(models, old, keys, reason="x").card.promoted_from == new


def test_promote_is_newest_even_with_a_clock_behind(
    two: tuple[str, str], models: Path, keys: KeyManager
) -> None:
    old, _ = two
    card = promote_model(models, old, keys, reason="x", now=T0 - HOUR).card
    assert card.created == T0 + HOUR + dt.timedelta(microseconds=1)
    assert _floor(models, keys) == Revision.of(card)
    assert ModelRegistry(models, keys).load_initial().version == old


def test_a_model_tuned_from_a_promoted_one_is_not_a_rollback(
    two: tuple[str, str], models: Path, keys: KeyManager
) -> None:
    old, _ = two
    promoted = promote_model(models, old, keys, reason="x", now=T0 + 2 * HOUR)
    feedback = generate(SyntheticConfig(hosts=2, days=1, seed=5, anomaly_rate=0.05))
    tuned = tune_model(promoted, feedback, models, keys, now=T0 + 3 * HOUR)
    assert tuned.changed
    assert tuned.stored.card.parent_version == old
    assert tuned.stored.card.promoted_from is None
    assert "promoted" not in tuned.stored.card.doc


def test_save_model_keeps_an_existing_model_file_and_tightens_it(
    two: tuple[str, str], models: Path, keys: KeyManager
) -> None:
    old, _ = two
    path = model_path(models, old)
    os.chmod(path, 0o644)  # as an older version wrote it
    stored = load_card(card_path(models, old), keys)
    doc = {k: v for k, v in stored.doc.items() if k not in ("auth", "version")}
    doc["created"] = format_time(T0 + 3 * HOUR)
    save_model(models, path.read_bytes(), doc, keys)
    assert os.stat(path).st_mode & 0o777 == 0o600


# --- the command line -------------------------------------------------------------------------


def test_qsc_ml_promote_and_its_errors(
    two: tuple[str, str],
    models: Path,
    keys: KeyManager,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old, new = two
    base = ["promote", "--models", str(models), "--keyring", str(tmp_path / "keys")]
    assert main([*base, "--version", new, "--reason", "x"]) == EXIT_USAGE
    assert "already the newest" in capsys.readouterr().err
    assert main([*base, "--version", "0" * 64, "--reason", "x"]) == EXIT_FAILURE
    assert "no model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([*base, "--version", old])  # --reason is required
    assert info.value.code == EXIT_USAGE
    capsys.readouterr()
    assert main([*base, "--version", old, "--reason", "bad night"]) == EXIT_OK
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert (doc["version"], doc["promoted_from"], doc["reason"]) == (old, new, "bad night")
    assert f"{old} is the newest model again (it replaces {new})" in err
    # Tampered record: the command fails and writes nothing.
    shutil.copy(card_path(models, old), tmp_path / "card")
    record_path(models).write_bytes(b"x")
    assert main([*base, "--version", new, "--reason", "x"]) == EXIT_FAILURE
    assert "model-revision: does not verify" in capsys.readouterr().err
    assert card_path(models, old).read_bytes() == (tmp_path / "card").read_bytes()
