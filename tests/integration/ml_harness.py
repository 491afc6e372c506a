"""The ML service for integration tests: a PKI from `qsc pki`, a trained model directory, and a
started `MlService` on its own event loop thread. Fixtures over these are in conftest.py
(`ml_pki`, `ml_models`, `ml_service`)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Coroutine
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
