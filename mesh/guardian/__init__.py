"""The guardian runtime shared by Alpha and Beta: config, outbox, sensors, GuardianService.

`python -m mesh.guardian --config PATH [--port-file PATH]` runs a bare guardian (with the
synthetic source when `[synthetic] rate > 0`); Alpha and Beta build a `Guardian` and add their
sensors and services to it.
"""

from __future__ import annotations

from .config import GuardianConfig, load_guardian_config
from .runtime import Guardian, Worker
from .sensors import LossStage, SensorHandle, SensorRegistry, SensorState

__all__ = [
    "Guardian",
    "GuardianConfig",
    "LossStage",
    "SensorHandle",
    "SensorRegistry",
    "SensorState",
    "Worker",
    "load_guardian_config",
]
