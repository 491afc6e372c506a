"""`qsc-ml` end to end in process: generate, train (with progress), show, tune; clear errors and
exit codes for bad input files and tampered models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crypto.keyring import KeyManager
from ml.__main__ import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main
from ml.store import card_path, model_path


@pytest.fixture
def env(tmp_path: Path) -> Path:
    KeyManager.create(tmp_path / "keys", "ml")
    return tmp_path


def test_generate_train_show_tune(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train, feedback, models, keys = env / "t.csv", env / "f.jsonl", env / "models", env / "keys"
    assert (
        main(["generate", "--out", str(train), "--hosts", "3", "--days", "3", "--seed", "1"]) == 0
    )
    assert main(["generate", "--out", str(feedback), "--hosts", "3", "--days", "2", "--seed", "2",
                 "--anomaly-rate", "0.05", "--kinds", "exfiltration,fork_bomb"]) == 0  # fmt: skip
    capsys.readouterr()
    args = ["train", "--input", str(train), "--out", str(models), "--keyring", str(keys)]
    args += ["--n-estimators", "25", "--max-samples", "128", "--contamination", "0.01"]
    assert main(args) == EXIT_OK
    out, err = capsys.readouterr()
    result = json.loads(out)
    version = result["version"]
    assert result["graph_nodes"] == 4
    assert result["trees"] == 25
    assert result["max_abs_diff_vs_sklearn"] < 1e-5
    assert "fitting trees 25/25" in err
    assert "2592 rows, 12 features" in err
    assert model_path(models, version).exists()
    assert card_path(models, version).exists()

    assert main(["show", "--models", str(models), "--keyring", str(keys)]) == EXIT_OK
    out, err = capsys.readouterr()
    card = json.loads(out)
    assert card["version"] == version
    assert card["parameters"]["contamination"] == 0.01
    assert "auth" not in card
    assert "authenticated" in err

    tune = ["tune", "--input", str(feedback), "--models", str(models), "--keyring", str(keys)]
    assert main(tune) == EXIT_OK
    out, err = capsys.readouterr()
    tuned = json.loads(out)
    assert tuned["changed"]
    assert tuned["parent_version"] == version
    assert tuned["after"]["f1"] >= tuned["before"]["f1"]
    assert "before: threshold" in err
    assert "after : threshold" in err
    assert main([*tune, "--target-fpr", "0.01"]) == EXIT_OK
    fpr = json.loads(capsys.readouterr().out)
    assert fpr["parent_version"] == tuned["version"]
    assert fpr["after"]["fpr"] <= 0.01


def test_bad_inputs_exit_2_with_file_and_line(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = env / "bad.csv"
    bad.write_text("cpu_percent,memory_percent\n1,2\n3,lots\n")
    code = main(
        ["train", "--input", str(bad), "--out", str(env / "m"), "--keyring", str(env / "keys")]
    )
    assert code == EXIT_USAGE
    assert f"qsc-ml: error: {bad}:3: column memory_percent: 'lots' is not a number" in (
        capsys.readouterr().err
    )
    good = env / "good.csv"
    good.write_text("cpu_percent\n1\n2\n3\n")
    base = ["train", "--input", str(good), "--out", str(env / "m"), "--keyring", str(env / "keys")]
    assert main([*base, "--contamination", "0.9"]) == EXIT_USAGE
    assert "contamination must be" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([*base, "--max-samples", "lots"])
    assert info.value.code == EXIT_USAGE
    assert main([*base, "--keyring", str(env / "nokeys")]) == EXIT_FAILURE


def test_tampered_model_exits_1(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, models, keys = env / "t.csv", env / "models", env / "keys"
    assert main(["generate", "--out", str(data), "--hosts", "2", "--days", "1"]) == 0
    train = ["train", "--input", str(data), "--out", str(models), "--keyring", str(keys)]
    assert main([*train, "--n-estimators", "5", "--quiet"]) == 0
    version = json.loads(capsys.readouterr().out)["version"]
    path = model_path(models, version)
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    assert main(["show", "--models", str(models), "--keyring", str(keys)]) == EXIT_FAILURE
    assert "tampered or replaced" in capsys.readouterr().err
    assert main(["show", "--models", str(models), "--keyring", str(keys), "--card-only"]) == 0


def test_serve_needs_a_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QSC_ML_CONFIG", raising=False)
    assert main(["serve"]) == EXIT_USAGE
    assert "qsc-ml: error: --config is required (or set QSC_ML_CONFIG)" in capsys.readouterr().err
    assert main([]) == EXIT_USAGE
