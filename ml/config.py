"""The ML service's configuration: TOML plus `QSC_ML_*` environment overrides.

    [server]   listen, TLS files, limits          (mesh.server.ServerConfig)
    [model]    model directory, keyring, reload, batch cap, onnxruntime threads
    [log]      level, format
    [metrics]  the Prometheus endpoint, off unless set (mesh.metrics.MetricsConfig)

`qsc-ml serve --config ml.toml`; `QSC_ML_MODEL__DIRECTORY=/srv/models` overrides one key. See
deploy/ml.toml for a documented example.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Final

from mesh.config import load_config
from mesh.errors import ConfigError
from mesh.logs import LogConfig
from mesh.metrics import MetricsConfig
from mesh.server import ServerConfig

COMPONENT: Final = "ml"
MAX_BATCH_ROWS: Final = 1_000_000
# A row on the wire: key, 12 doubles and framing; used to check the batch cap fits a message.
_MIN_ROW_BYTES: Final = 16


@dataclass(frozen=True)
class ModelSection:
    """`[model]`: where models come from and how they are served.

    `directory` holds `<version>.onnx` and `<version>.card.json` files (`qsc-ml train --out`);
    the newest card serves. `keyring` is the ML component's key directory (`qsc keys init --dir
    DIR --component ml`), whose `model` key authenticates every card. The directory is polled
    every `poll_interval` (SIGHUP polls at once)."""

    directory: Path
    keyring: Path
    poll_interval: timedelta = timedelta(seconds=2)
    max_batch_rows: int = 4096
    inference_threads: int = 1  # 1: lowest single-row latency; more helps only large batches

    def __post_init__(self) -> None:
        if not timedelta(milliseconds=10) <= self.poll_interval <= timedelta(hours=1):
            raise ConfigError("poll_interval", "must be between 10ms and 1h")
        if not 1 <= self.max_batch_rows <= MAX_BATCH_ROWS:
            raise ConfigError("max_batch_rows", f"must be 1..{MAX_BATCH_ROWS}")
        if not 1 <= self.inference_threads <= 64:
            raise ConfigError("inference_threads", "must be 1..64")


@dataclass(frozen=True)
class MlConfig:
    """Everything `qsc-ml serve` reads. Frozen; validated on load."""

    server: ServerConfig
    model: ModelSection
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        if self.model.max_batch_rows * _MIN_ROW_BYTES > self.server.max_message_bytes:
            raise ConfigError(
                "model.max_batch_rows",
                f"{self.model.max_batch_rows} rows cannot fit in server.max_message_bytes "
                f"({self.server.max_message_bytes})",
            )


def load_ml_config(path: Path | str | None, env: Mapping[str, str] | None = None) -> MlConfig:
    """Load `MlConfig` from `path` and the `QSC_ML_*` environment."""
    if env is None:
        return load_config(MlConfig, component=COMPONENT, path=path)
    return load_config(MlConfig, component=COMPONENT, path=path, env=env)
