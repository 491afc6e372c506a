"""A real guardian process for the benchmarks: `python -m mesh.guardian` with a synthetic source,
mTLS on 127.0.0.1, in a directory of its own.

    g = GuardianProcess(pki, work, host="bench-01", rate=1e6, total=50_000, batch=512)
    port = await g.port()          # listening
    await g.produced()             # the synthetic source wrote all `total` events
    g.cpu()                        # its user+system CPU seconds so far
    g.stop()                       # SIGTERM, then SIGKILL after 20 s
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mesh.config import TlsFiles

ROOT = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")


class GuardianProcess:
    """One guardian of role alpha on `host`; its certificate is `alpha-<host>` in `pki`."""

    def __init__(
        self,
        pki: Path,
        work: Path,
        *,
        host: str = "bench-01",
        rate: float,
        total: int,
        batch: int,
        log_level: str = "warning",
    ) -> None:
        work.mkdir(parents=True)
        self.id = f"alpha-{host}"
        self.host = host
        files = TlsFiles.in_dir(pki, self.id)
        config = work / "guardian.toml"
        config.write_text(
            f"""
[guardian]
role = "alpha"
host = "{host}"
[server]
listen = "127.0.0.1:0"
tls = {{ cert = "{files.cert}", key = "{files.key}", ca = "{files.ca}" }}
[outbox]
directory = "{work / "outbox"}"
[synthetic]
rate = {rate}
total = {total}
batch = {batch}
[log]
level = "{log_level}"
"""
        )
        self.port_file = work / "port"
        self.log_path = work / "guardian.log"
        argv = [sys.executable, "-m", "mesh.guardian", "--config", str(config)]
        argv += ["--port-file", str(self.port_file)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )

    async def port(self) -> int:
        deadline = time.monotonic() + 60
        while not self.port_file.exists() or not self.port_file.read_text().endswith("\n"):
            self._alive(deadline)
            await asyncio.sleep(0.005)
        return int(self.port_file.read_text())

    async def produced(self) -> None:
        """Until the synthetic source has stopped (needs log_level "info")."""
        deadline = time.monotonic() + 300
        while "synthetic source stopped" not in self.log_path.read_text(errors="replace"):
            self._alive(deadline)
            await asyncio.sleep(0.05)

    def _alive(self, deadline: float) -> None:
        if self.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"guardian {self.id} failed; see {self.log_path}")

    def cpu(self) -> float:
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(stat[11]) + int(stat[12])) / CLK_TCK  # utime + stime

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
