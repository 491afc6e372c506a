"""A component without a server in mesh.service's `serve` frame, for tests/unit/test_service.py:

    python tests/unit/service_proc.py --config toy.toml [--port-file P] [--check-config]

The service writes each step of its life (`built`, `started`, `reloaded`, `stopped`) as a line
to the config's `record` file, so a test sees what the frame called and in which order.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mesh.config import load_config
from mesh.errors import UnavailableError
from mesh.logs import LogConfig
from mesh.service import serve

PROG = "qsc-toy"
COMPONENT = "toy"


@dataclass(frozen=True)
class ToyConfig:
    record: Path
    port: int = 4242
    fail_start: bool = False
    log: LogConfig = field(default_factory=LogConfig)


def load_toy_config(path: Path) -> ToyConfig:
    return load_config(ToyConfig, component=COMPONENT, path=path)


class Toy:
    def __init__(self, config: ToyConfig) -> None:
        self.config = config
        self._note("built")

    def _note(self, step: str) -> None:
        with self.config.record.open("a") as f:
            f.write(step + "\n")

    async def start(self) -> int:
        self._note("started")
        if self.config.fail_start:
            raise UnavailableError("the toy refuses to start")
        return self.config.port

    def reload(self) -> None:
        self._note("reloaded")

    async def stop(self) -> None:
        self._note("stopped")


def check(config: ToyConfig) -> str:
    return f"{PROG}: configuration OK: port {config.port}"


def main(argv: Sequence[str] | None = None) -> int:
    return serve(
        PROG,
        argv,
        component=COMPONENT,
        load_config=load_toy_config,
        build=Toy,
        description="A toy component for the frame's tests.",
        check=check,
        reload=Toy.reload,
    )


if __name__ == "__main__":
    sys.exit(main())
