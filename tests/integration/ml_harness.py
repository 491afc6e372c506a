"""The ML service for integration tests: a PKI from `qsc pki`, a trained model directory, a
started `MlService` on its own event loop thread, and `qsc-ml` run as processes (`MlProcess`
for the service, `qsc_ml` for the other commands). Fixtures over these are in conftest.py
(`ml_pki`, `ml_models`, `ml_service`)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from crypto.keyring import KeyManager
from ml.app import MlService
from ml.config import MlConfig
from ml.forest import TrainParams
from ml.synthetic import SyntheticConfig, generate
from ml.training import train_model

TD = "ml.test"
HOST = "127.0.0.1"
MAX_ROWS = 64
T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
# What a `python -m ml` child needs to import the project and the generated code.
CHILD_ENV = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'proto'}"}

NORMAL = [20.0, 45.0, 2e7, 6e7, 1.0, 250.0, 1.5, 20.0, 10.0, 1.0, 0.0, 2.0]
WEIRD = [99.0, 95.0, 9e9, 6e7, 400.0, 5000.0, 300.0, 400.0, 900.0, 30.0, 5.0, 60.0]
# Role and host of each leaf `issue_pki` writes (as `{role}-{host}.crt` and `.key`).
LEAVES = (("ml", HOST), ("cortex", "c1"), ("soar", "s1"), ("operator", "ops-1"))


def _qsc(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mesh.cli", *args], check=True, capture_output=True)


def issue_pki(base: Path) -> Path:
    """A CA in `base` and one leaf per entry of LEAVES."""
    _qsc("pki", "init", "--dir", str(base), "--trust-domain", TD)
    for role, host in LEAVES:
        _qsc("pki", "issue", role, host, "--dir", str(base))
    return base


@dataclass(frozen=True)
class Models:
    directory: Path
    keyring: Path
    version: str


def train_models(base: Path) -> Models:
    """A keyring and a model directory in `base` holding one model of 50 trees."""
    keys = KeyManager.create(base / "keys", "ml")
    train = generate(SyntheticConfig(hosts=3, days=3, seed=1, anomaly_rate=0.01))
    stored, _, _ = train_model(
        train, TrainParams(n_estimators=50, contamination=0.02), base / "models", keys
    )
    return Models(base / "models", base / "keys", stored.card.version)


def train_another(models: Models, seed: int) -> str:
    """Train a second model (other trees: another version) into `models`, newer than any there;
    its version."""
    keys = KeyManager.open(models.keyring, "ml")
    train = generate(SyntheticConfig(hosts=3, days=3, seed=1, anomaly_rate=0.01))
    params = TrainParams(n_estimators=50, contamination=0.02, seed=seed)
    stored, _, _ = train_model(train, params, models.directory, keys)
    return stored.card.version


def service_config(pki: Path, models: Models, poll: str = "50ms") -> dict[str, Any]:
    """An MlConfig document serving `models` on HOST:0 as `ml-HOST`."""
    stem = pki / f"ml-{HOST}"
    return {
        "server": {
            "listen": f"{HOST}:0",
            "tls": {"cert": f"{stem}.crt", "key": f"{stem}.key", "ca": str(pki / "ca.crt")},
            "shutdown_grace": "2s",
        },
        "model": {
            "directory": str(models.directory),
            "keyring": str(models.keyring),
            "poll_interval": poll,
            "max_batch_rows": MAX_ROWS,
        },
    }


class ServiceThread:
    """A started MlService on its own event loop thread (the test thread blocks on grpcio, or
    runs its own loop for an asyncio client)."""

    def __init__(self, config: MlConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.service = self.run(self._build(config))
        self.port = self.run(self.service.start())

    @staticmethod
    async def _build(config: MlConfig) -> MlService:
        return MlService(config)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.service.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def wait_until(condition: Callable[[], T], timeout: float = 20.0, what: str = "") -> T:
    """Poll `condition` until it returns a true value (returned), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    """`config` (a service_config document) as the TOML file `qsc-ml --config` reads, logging
    JSON lines at INFO so a test can read what the service says."""
    lines = []
    tables = (
        ("server", {k: v for k, v in config["server"].items() if k != "tls"}),
        ("server.tls", config["server"]["tls"]),
        ("model", config["model"]),
        ("log", {"level": "info", "format": "json"}),
    )
    for section, table in tables:
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def qsc_ml(*args: str, umask: int = -1) -> subprocess.CompletedProcess[str]:
    """`qsc-ml ARGS` as a process (not checked: the caller asserts the exit code)."""
    return subprocess.run(
        [sys.executable, "-m", "ml", *args],
        env=CHILD_ENV,
        capture_output=True,
        text=True,
        timeout=120,
        umask=umask,
    )


class MlProcess:
    """`qsc-ml --config PATH --port-file P` as a process; its stderr log lines (JSON) collected
    by a thread, so a test waits for a line instead of sleeping."""

    def __init__(self, config: Path, port_file: Path, *, umask: int = -1) -> None:
        self.port_file = port_file
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ml", "--config", str(config), "--port-file", str(port_file)],
            env=CHILD_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            umask=umask,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()  # end of output: the process is gone

    @property
    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (anything else, such as `qsc-ml: error:`, is left out)."""
        out = []
        with self._changed:
            lines = list(self.lines)
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def wait_log(
        self, message: str, level: str | None = None, timeout: float = 20.0, after: int = 0
    ) -> dict[str, Any]:
        """The first log record from the `after`-th on whose message starts with `message` (and
        of `level`), waiting for it; AssertionError naming what came instead after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for record in self.records[after:]:
                    if str(record.get("message", "")).startswith(message) and (
                        level is None or record.get("level") == level
                    ):
                        return record
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no log {message!r} ({level}); the process said:\n" + "\n".join(self.lines)
                    )
                self._changed.wait(min(left, 0.5))

    def wait_port(self, timeout: float = 30.0) -> int:
        wait_until(
            lambda: self.port_file.exists() or self.proc.poll() is not None,
            timeout,
            "the service to listen",
        )
        assert self.port_file.exists(), "\n".join(self.lines)
        return int(self.port_file.read_text())

    def wait_exit(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def hangup(self) -> int:
        """SIGHUP (look at the model directory now); how many log records there were before,
        for `wait_log(after=...)`."""
        seen = len(self.records)
        self.proc.send_signal(signal.SIGHUP)
        return seen

    def stop(self) -> int:
        """SIGTERM and the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait_exit(20)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


class LogWatch(logging.Handler):
    """The records of `logger` and its children in this process (an in-process service), as
    (level name in lower case, message, fields), with a wait for one."""

    def __init__(self, logger: str = "qsc.ml") -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, str, dict[str, Any]]] = []
        self._changed = threading.Condition()
        self._logger = logging.getLogger(logger)

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            fields = dict(getattr(record, "fields", {}))
            self.records.append((record.levelname.lower(), record.getMessage(), fields))
            self._changed.notify_all()

    def __enter__(self) -> LogWatch:
        self._level = self._logger.level
        self._logger.addHandler(self)
        self._logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *_: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def mark(self) -> int:
        with self._changed:
            return len(self.records)

    def wait(
        self, message: str, *, after: int = 0, timeout: float = 20.0
    ) -> tuple[str, dict[str, Any]]:
        """(level, fields) of the first record from the `after`-th on whose message starts with
        `message`, waiting for it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for level, text, fields in self.records[after:]:
                    if text.startswith(message):
                        return level, fields
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no log {message!r}; got {self.records[after:]}")
                self._changed.wait(left)

    def since(self, mark: int) -> list[tuple[str, str, dict[str, Any]]]:
        with self._changed:
            return list(self.records[mark:])


def look_now(svc: ServiceThread, logs: LogWatch) -> tuple[int, dict[str, Any]]:
    """What SIGHUP does to a running service (registry.wake on its loop), waited for: the mark
    of the records before, and the fields of its "checked on request" answer."""
    mark = logs.mark()
    svc.loop.call_soon_threadsafe(svc.service.registry.wake)
    _, fields = logs.wait("model directory checked on request", after=mark)
    return mark, fields
