"""kill -9 the Cortex at random points while three guardians stream under load.

The Cortex is a real `python -m cortex run` process (SIGKILL: no drain, no last checkpoint, a
batch possibly half-stored); the three guardians are `mesh.guardian.Guardian` servers in this
test's event loop, emitting events the whole time. After several kills and a last restart the
store must hold every (guardian, seq) of every outbox exactly once, with each cursor at the
outbox's end, and `qsc-cortex store verify` must pass.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crypto.keyring import KeyManager
from crypto.pki import init_ca, issue_leaf, write_leaf
from tests.integration.test_cortex_ingest import (
    HOST,
    TD,
    Node,
    assert_exactly_once,
    caught_up,
    until,
)

pytestmark = pytest.mark.slow

ROLES = {"web-01": "alpha", "db-01": "beta", "app-01": "alpha"}
KILLS = 4

CONFIG = """
[server]
listen = "127.0.0.1:0"
shutdown_grace = "0s"
[server.tls]
cert = "{pki}/cortex-c1.crt"
key = "{pki}/cortex-c1.key"
ca = "{pki}/ca.crt"
[store]
directory = "{base}/store"
synchronous = "NORMAL"
[keyring]
directory = "{base}/keys"
[ingest]
max_batch_events = 200
heartbeat_interval = "200ms"
idle_timeout = "1s"
reconnect_initial = "50ms"
reconnect_max = "300ms"
"""
GUARDIAN = """
[[guardians]]
id = "{id}"
address = "127.0.0.1:{port}"
role = "{role}"
host = "{host}"
"""


class LoadNode(Node):
    @property
    def role(self) -> str:
        return ROLES[self.host]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("pki")
    ca = init_ca(base, TD)
    for host, role in ROLES.items():
        write_leaf(issue_leaf(ca, role, host, ips=[HOST]), base, ca.cert)
    write_leaf(issue_leaf(ca, "cortex", "c1", ips=[HOST]), base, ca.cert)
    return base


async def start_cortex(config: Path, base: Path, n: int) -> asyncio.subprocess.Process:
    port_file = base / "port"
    port_file.unlink(missing_ok=True)
    log = (base / f"cortex-{n}.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "cortex", "run", "--config", str(config)),
        *("--port-file", str(port_file)),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.returncode is not None or time.monotonic() > deadline:
            raise AssertionError(
                f"the Cortex did not start: {(base / f'cortex-{n}.log').read_text()}"
            )
        await asyncio.sleep(0.05)
    return proc


def test_kill_9_under_load_stores_every_event_exactly_once(pki: Path, tmp_path: Path) -> None:
    rng = random.Random(20261207)

    async def body() -> None:
        nodes = [LoadNode(pki, h, tmp_path / h) for h in ROLES]
        KeyManager.create(tmp_path / "keys", "cortex")
        for node in nodes:
            await node.start()
        config = tmp_path / "cortex.toml"
        text = CONFIG.format(pki=pki, base=tmp_path) + "".join(
            GUARDIAN.format(id=n.id, port=n.port, role=n.role, host=n.host) for n in nodes
        )
        config.write_text(text)
        loading = True

        async def load() -> None:
            while loading:
                for node in nodes:
                    node.emit(150)
                await asyncio.sleep(0.02)

        loader = asyncio.create_task(load())
        try:
            for n in range(KILLS):
                proc = await start_cortex(config, tmp_path, n)
                await asyncio.sleep(rng.uniform(0.3, 2.0))
                proc.send_signal(signal.SIGKILL)
                assert await proc.wait() == -signal.SIGKILL
            proc = await start_cortex(config, tmp_path, KILLS)
            await asyncio.sleep(1.0)
            loading = False
            await loader
            await until(caught_up(tmp_path, *nodes), "every event stored after the kills")
            for node in nodes:
                assert node.last_seq > 1000  # streamed under load, not a trickle
                assert_exactly_once(tmp_path, node)
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
            verify = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "cortex", "store", "verify", "--config", str(config)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            out, err = await verify.communicate()
            assert verify.returncode == 0, (out + err).decode()
        finally:
            loading = False
            if not loader.done():
                await loader
            for node in nodes:
                await node.stop()

    asyncio.run(body())
