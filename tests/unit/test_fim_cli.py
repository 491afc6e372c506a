"""`qsc-beta baseline init|scan|show`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from beta.fim.cli import main
from crypto.keyring import KeyManager


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
    assert main(_args(env, "scan", "--no-progress")) == 1
    out = capsys.readouterr().out
    assert f"CONTENT_CHANGED   {env['etc'] / 'hosts'}" in out
    assert f"METADATA_CHANGED  {env['etc'] / 'motd'}  [mode, ctime]" in out
    assert main(_args(env, "scan", "--no-progress", "--json")) == 1
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
    assert main(_args(env, "scan", "--no-progress")) == 3
    assert "BASELINE TAMPERED" in capsys.readouterr().err
    assert main(_args(env, "show")) == 3


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
    monkeypatch.delenv("QSC_BETA_KEY_DIR", raising=False)
    assert main(["baseline", "scan", "--config", str(env["config"])]) == 2
    assert "--keys" in capsys.readouterr().err
    assert main([]) == 2
