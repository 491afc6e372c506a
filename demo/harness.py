"""What the demo's steps share: section titles, running a QSC command line, a component process
(`Proc`: started, waited for, stopped), the identity files of a role, and subscribing to a
guardian as `cortex`."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Final

from crypto import pki
from mesh.channel import ChannelConfig
from mesh.config import TlsFiles
from mesh.stream.subscriber import GuardianSubscriber, SubscriberConfig
from qsc.common.v1 import event_pb2

HOST: Final = "127.0.0.1"


def step(title: str) -> None:
    print(f"\n== {title}")


def run_tool(*args: str) -> str:
    """A QSC command line (`python -m <module> ...`); its stdout, or exit with its stderr."""
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{done.stderr[-3000:]}")
    return done.stdout


START_WAIT: Final = 90.0  # seconds: bcc compiles Alpha's program at start


class DemoError(RuntimeError):
    """A step of the demo could not be carried out: what and why."""


@dataclass
class Proc:
    """A QSC component as a child process (`python -m <argv> --port-file`), logging to
    base/<name>.log. `spawn` returns at once, `wait_ready` once it listens."""

    name: str
    argv: list[str]
    base: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    _started: float = field(default=0.0, repr=False)

    @property
    def log(self) -> Path:
        return self.base / f"{self.name}.log"

    def spawn(self) -> None:
        port_file = self.base / "port"
        port_file.unlink(missing_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *self.argv, "--port-file", str(port_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the demo only: it stops them in order
            )
        self._started = time.monotonic()

    def wait_ready(self, wait: float = START_WAIT) -> int:
        port_file = self.base / "port"
        assert self.proc is not None, "spawn() first"
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() - self._started > wait:
                self.kill()
                raise DemoError(f"{self.name} did not start; its log:\n{self.tail()}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        return self.port

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 30 s; the exit code (None: never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


def tls(workdir: Path, role: str) -> TlsFiles:
    """The identity files `foundations.issue_all` wrote for `role` on HOST."""
    pki_dir = workdir / "pki"
    return TlsFiles(
        cert=pki_dir / f"{role}-{HOST}.crt",
        key=pki_dir / f"{role}-{HOST}.key",
        ca=pki_dir / pki.CA_CERT_FILE,
    )


def channel_to(workdir: Path, port: int, role: str = "cortex") -> ChannelConfig:
    """How `role` dials a component listening on HOST:port."""
    return ChannelConfig(target=f"{HOST}:{port}", tls=tls(workdir, role))


async def watch(
    workdir: Path, port: int, role: str, take: Callable[[event_pb2.Event], bool], wait: float
) -> None:
    """Subscribe to a guardian sealed, as cortex; hand each event to `take` until it says done
    (True) or `wait` seconds pass."""
    config = SubscriberConfig(
        channel=channel_to(workdir, port),
        expected_role=role,
        expected_host=HOST,
        max_batch_delay=timedelta(milliseconds=10),
    )
    subscriber = GuardianSubscriber(config)

    async def collect() -> None:
        async for event in subscriber.events():
            if take(event):
                return

    try:
        await asyncio.wait_for(collect(), timeout=wait)
    except TimeoutError:
        print(f"  (stopped waiting after {wait:.0f}s)")
    finally:
        await subscriber.close()
