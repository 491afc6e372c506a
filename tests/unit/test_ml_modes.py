"""Models are secrets (they show what scores normal): every file `qsc-ml train`, `tune`,
`promote` and the service write is 0600 in a 0700 directory, whatever the umask, and a directory
or model file an older version left open is tightened. (The same through real processes:
tests/integration/test_ml_trust.py.)"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto.keyring import KeyManager
from ml.__main__ import EXIT_OK, main
from ml.registry import ModelRegistry
from ml.revision import record_path
from ml.store import CARD_SUFFIX, MODEL_SUFFIX


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _modes(directory: Path) -> dict[str, int]:
    return {
        entry.name: stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
        for entry in os.scandir(directory)
    }


def _run(*args: str, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert main(list(args)) == EXIT_OK, capsys.readouterr().err
    out: dict[str, object] = json.loads(capsys.readouterr().out or "{}")
    return out


@pytest.mark.parametrize("existing", [None, 0o755], ids=["new-directory", "open-directory"])
def test_train_tune_promote_and_serve_write_private_files(
    tmp_path: Path, umask: int, existing: int | None, capsys: pytest.CaptureFixture[str]
) -> None:
    keys, models = tmp_path / "keys", tmp_path / "models"
    KeyManager.create(keys, "ml")
    train, feedback = tmp_path / "train.csv", tmp_path / "feedback.csv"
    _run("generate", "--out", str(train), "--hosts", "2", "--days", "1", capsys=capsys)
    _run("generate", "--out", str(feedback), "--hosts", "2", "--days", "1", "--seed", "3",
         "--anomaly-rate", "0.05", capsys=capsys)  # fmt: skip
    if existing is not None:
        models.mkdir()
        os.chmod(models, existing)
    ring = ("--keyring", str(keys))
    versions = []
    for seed in ("1", "2"):
        args = ["train", "--input", str(train), "--out", str(models), *ring, "--quiet"]
        done = _run(*args, "--n-estimators", "8", "--seed", seed, capsys=capsys)
        versions.append(str(done["version"]))
    tuned = _run("tune", "--input", str(feedback), "--models", str(models), *ring, capsys=capsys)
    assert tuned["changed"]
    versions.append(str(tuned["version"]))
    _run("promote", "--models", str(models), *ring, "--version", versions[0], "--reason", "x",
         capsys=capsys)  # fmt: skip
    # The service writes the record when it finds none.
    record_path(models).unlink()
    assert ModelRegistry(models, KeyManager.open(keys, "ml")).load_initial().version == versions[0]
    modes = _modes(models)
    names = {f"{v}{suffix}" for v in versions for suffix in (MODEL_SUFFIX, CARD_SUFFIX)}
    assert set(modes) == names | {"model-revision"}  # no temporary or lock file left
    assert modes == dict.fromkeys(modes, 0o600)
    assert stat.S_IMODE(models.stat().st_mode) == 0o700


def test_the_service_warns_about_an_open_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    keys, models = tmp_path / "keys", tmp_path / "models"
    KeyManager.create(keys, "ml")
    train = tmp_path / "train.csv"
    _run("generate", "--out", str(train), "--hosts", "2", "--days", "1", capsys=capsys)
    _run("train", "--input", str(train), "--out", str(models), "--keyring", str(keys),
         "--quiet", "--n-estimators", "4", capsys=capsys)  # fmt: skip
    os.chmod(models, 0o750)  # opened by hand after training
    ModelRegistry(models, KeyManager.open(keys, "ml")).load_initial()
    warned = [r for r in caplog.records if r.getMessage().startswith("model directory is open")]
    assert [(r.levelname, r.fields["mode"]) for r in warned] == [("WARNING", "0750")]  # type: ignore[attr-defined]
    assert stat.S_IMODE(models.stat().st_mode) == 0o750  # the service only warns
