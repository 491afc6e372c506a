"""What the demo's component steps share: section titles, running a QSC command line, starting a
component process and stopping it, the identity files of a role, and subscribing to a guardian
as `cortex`."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
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


def start_process(name: str, argv: list[str], base: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`python -m <argv> --port-file`, logging to base/<name>.log, once it listens."""
    port_file, log = base / "port", base / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *argv, "--port-file", str(port_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 90
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"{name} did not start; its log:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return proc, int(port_file.read_text())


def stop_process(name: str, proc: subprocess.Popen[bytes], base: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    print(f"  {name} stopped with exit code {code}; its log: {base / f'{name}.log'}")


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
