"""mesh.service's `serve` frame as a real process (tests/unit/service_proc.py, a toy component):
--check-config, the port file, SIGHUP reaching the component's reload, SIGTERM draining to exit 0,
configuration through mesh.config (env overrides included), and startup errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

PROC = Path(__file__).with_name("service_proc.py")
TIMEOUT = 30.0


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QSC_")}
    return {**env, **extra}


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "toy.toml"
    path.write_text(f'record = "{tmp_path / "record"}"\n{extra}')
    return path


def _steps(tmp_path: Path) -> list[str]:
    record = tmp_path / "record"
    return record.read_text().split() if record.exists() else []


def _wait_for(what: str, done: Callable[[], bool], proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not done():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _run(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PROC), *map(str, args)],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    port_file = tmp_path / "run" / "port"
    port_file.parent.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(PROC), "--config", str(_config(tmp_path)), "--port-file", port_file],
        env=_env(QSC_TOY_PORT="5151"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for("the port file", port_file.exists, proc)
        yield proc, port_file
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_serves_reloads_on_sighup_and_drains_on_sigterm(
    serving: tuple[subprocess.Popen[str], Path], tmp_path: Path
) -> None:
    proc, port_file = serving
    assert port_file.read_text() == "5151\n"  # QSC_TOY_PORT, through mesh.config
    assert _steps(tmp_path) == ["built", "started"]
    proc.send_signal(signal.SIGHUP)
    _wait_for("the reload", lambda: "reloaded" in _steps(tmp_path), proc)
    proc.send_signal(signal.SIGHUP)
    _wait_for("the second reload", lambda: _steps(tmp_path).count("reloaded") == 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert _steps(tmp_path) == ["built", "started", "reloaded", "reloaded", "stopped"]
    assert "signal received, draining" in err
    assert "SIGTERM" in err
    assert "Traceback" not in err


def test_sigint_drains_too(serving: tuple[subprocess.Popen[str], Path], tmp_path: Path) -> None:
    proc, _ = serving
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert _steps(tmp_path)[-1] == "stopped"


def test_check_config_prints_and_exits_without_building(tmp_path: Path) -> None:
    done = _run("--config", _config(tmp_path, "port = 7\n"), "--check-config")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "qsc-toy: configuration OK: port 7\n"
    assert _steps(tmp_path) == []


def test_config_path_from_the_environment(tmp_path: Path) -> None:
    done = _run("--check-config", QSC_TOY_CONFIG=str(_config(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert "port 4242" in done.stdout


@pytest.mark.parametrize(
    ("case", "code", "needle"),
    [
        ("no config", 2, "qsc-toy: error: --config is required (or set QSC_TOY_CONFIG)"),
        ("bad value", 2, "port: expected an integer, got 'many'"),
        ("bad variable", 2, "qsc-toy: error: QSC_TOY_PROT: prot: unknown key"),
        ("refused start", 1, "qsc-toy: error: the toy refuses to start"),
    ],
)
def test_startup_errors(tmp_path: Path, case: str, code: int, needle: str) -> None:
    env: dict[str, str] = {}
    args: list[str | Path] = ["--config", _config(tmp_path)]
    if case == "no config":
        args = []
    elif case == "bad value":
        args = ["--config", _config(tmp_path, 'port = "many"\n')]
    elif case == "bad variable":
        env = {"QSC_TOY_PROT": "1"}
    elif case == "refused start":
        args = ["--config", _config(tmp_path, "fail_start = true\n")]
    done = _run(*args, **env)
    assert done.returncode == code, done.stderr
    assert needle in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr
    if case == "refused start":
        assert _steps(tmp_path) == ["built", "started", "stopped"]  # a failed start still drains


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    done = _run("--config", _config(tmp_path), "--bogus")
    assert done.returncode == 2
    assert "usage: " in done.stderr
    assert "qsc-toy: error: unrecognized arguments: --bogus" in done.stderr
