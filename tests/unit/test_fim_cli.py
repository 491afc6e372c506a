"""`qsc-beta baseline init|scan|show`, its exit codes, and its configuration through
beta.config's loader (the `QSC_BETA_*` overrides `qsc-beta run` applies)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from beta.fim.cli import EXIT_CHANGES, EXIT_TAMPERED, main
from crypto.keyring import KeyManager
from mesh.command import EXIT_OK, EXIT_USAGE


@pytest.fixture(autouse=True)
def _no_beta_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("QSC_BETA_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Path]:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    (etc / "motd").write_text("hello\n")
    (etc / "x.swp").write_text("editor junk")
    KeyManager.create(tmp_path / "keys", "beta")
    config = tmp_path / "beta.toml"
    config.write_text(
        f"""
[fim]
baseline = "{tmp_path / "state" / "fim.qsc"}"
exclude = ["*.swp"]

[[fim.paths]]
path = "{etc}"
heal = "approve"
"""
    )
    return {"etc": etc, "keys": tmp_path / "keys", "config": config, "tmp": tmp_path}


def _args(env: dict[str, Path], *rest: str) -> list[str]:
    return [
        "baseline",
        rest[0],
        "--config",
        str(env["config"]),
        "--keys",
        str(env["keys"]),
        *list(rest[1:]),
    ]


def test_init_scan_show(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(env, "init", "--no-progress")) == 0
    out = capsys.readouterr().out
    assert "version 1, 3 entries" in out
    assert "baseline/e1/" in out
    assert main(_args(env, "scan", "--no-progress")) == 0
    (env["etc"] / "hosts").write_text("6.6.6.6 bank\n")
    os.chmod(env["etc"] / "motd", 0o600)
    assert main(_args(env, "scan", "--no-progress")) == EXIT_CHANGES
    out = capsys.readouterr().out
    assert f"CONTENT_CHANGED   {env['etc'] / 'hosts'}" in out
    assert f"METADATA_CHANGED  {env['etc'] / 'motd'}  [mode, ctime]" in out
    assert main(_args(env, "scan", "--no-progress", "--json")) == EXIT_CHANGES
    doc = json.loads(capsys.readouterr().out)
    assert {c["change"] for c in doc["changes"]} == {"content_changed", "metadata_changed"}
    assert all(c["heal"] == "approve" for c in doc["changes"])
    assert main(_args(env, "show", "--json")) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 1
    assert shown["entries_count"] == 3
    assert {e["path"] for e in shown["entries"]} == {
        str(env["etc"]),
        str(env["etc"] / "hosts"),
        str(env["etc"] / "motd"),
    }
    assert main(_args(env, "show", "--path", str(env["etc"] / "motd"))) == 0
    text = capsys.readouterr().out
    assert "motd" in text
    assert "hosts" not in text


def test_progress_line_shows_rate_and_eta(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_args(env, "init", "--progress")) == 0
    err = capsys.readouterr().err
    assert "files/s" in err
    assert "ETA" in err
    assert "/s" in err


def test_init_refuses_to_overwrite_without_force(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_args(env, "init", "--no-progress")) == 0
    assert main(_args(env, "init", "--no-progress")) == 2
    assert "--force" in capsys.readouterr().err
    assert main(_args(env, "init", "--no-progress", "--force")) == 0
    assert "version 2" in capsys.readouterr().out


def test_tampered_baseline_exits_3(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_args(env, "init", "--no-progress")) == 0
    baseline = env["tmp"] / "state" / "fim.qsc"
    data = bytearray(baseline.read_bytes())
    data[-10] ^= 0x01
    baseline.write_bytes(bytes(data))
    assert main(_args(env, "scan", "--no-progress")) == EXIT_TAMPERED
    assert "qsc-beta: BASELINE TAMPERED: " in capsys.readouterr().err
    assert main(_args(env, "show")) == EXIT_TAMPERED


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--path", "relative"], "must be absolute"),
        (["--exclude", "[oops"], "bad glob"),
        (["--path", "/definitely/not/here"], "do not exist"),
    ],
)
def test_bad_input_is_a_clear_usage_error(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(_args(env, "init", "--no-progress", *extra)) == 2
    assert message in capsys.readouterr().err


def test_bad_rate_is_refused_by_the_parser(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(_args(env, "init", "--io-budget", "fast"))
    assert "is not a rate" in capsys.readouterr().err


def test_missing_keys_and_baseline(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(_args(env, "scan", "--no-progress")) == 2
    assert "baseline init" in capsys.readouterr().err
    monkeypatch.setenv("QSC_BETA_KEYS__DIRECTORY", str(env["tmp"] / "nokeys"))
    assert main(["baseline", "scan", "--config", str(env["config"])]) == 2
    assert "--keys" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["baseline"]) == 2
    assert "init" in capsys.readouterr().err  # the group's help


def test_env_overrides_apply_as_they_do_to_run(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """QSC_BETA_FIM__* and the keyring variables reach `baseline` through the config loader."""
    moved = env["tmp"] / "elsewhere" / "fim.qsc"
    monkeypatch.setenv("QSC_BETA_FIM__BASELINE", str(moved))
    monkeypatch.setenv("QSC_BETA_FIM__EXCLUDE", '["*.swp", "motd"]')
    monkeypatch.setenv("QSC_BETA_KEY_DIR", str(env["keys"]))  # no --keys below
    base = ["baseline", "init", "--config", str(env["config"]), "--no-progress"]
    assert main(base) == EXIT_OK
    assert f"baseline {moved}: version 1, 2 entries" in capsys.readouterr().out
    assert not (env["tmp"] / "state" / "fim.qsc").exists()
    monkeypatch.setenv("QSC_BETA_FIM__IO_BUDGT", "1")
    assert main(base) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "qsc-beta: error: QSC_BETA_FIM__IO_BUDGT: fim.io_budgt: unknown key" in err


def test_reads_fim_and_keys_of_a_whole_beta_file(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guardian's sections (and their variables) are left to `qsc-beta run`."""
    config = env["tmp"] / "whole.toml"
    whole = env["config"].read_text() + f'\n[keys]\ndirectory = "{env["keys"]}"\n'
    config.write_text(whole + '\n[server]\nlisten = "127.0.0.1:0"\n')
    monkeypatch.setenv("QSC_BETA_CONFIG", str(config))
    monkeypatch.setenv("QSC_BETA_OUTBOX__DIRECTORY", str(env["tmp"] / "outbox"))
    assert main(["baseline", "init", "--no-progress"]) == EXIT_OK
    assert "version 1, 3 entries" in capsys.readouterr().out
