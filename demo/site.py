"""One host's whole mesh on loopback, as `make demo` runs it and the end-to-end tests reuse it:
the guardians' and the Cortex's configurations, and reading the Cortex back as a `soar` client
(the processes are demo.harness's `Proc`).

Every process listens on 127.0.0.1 port 0 and reports the port it got (`--port-file`); each one
lives in a directory of its own below the workspace, with its log next to its state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from demo.components import ALPHA_CONFIG, BETA_CONFIG
from demo.harness import HOST, DemoError, channel_to
from mesh.channel import open_channel
from qsc.common.v1 import event_pb2
from qsc.cortex.v1 import cortex_service_pb2 as pb
from qsc.cortex.v1 import cortex_service_pb2_grpc as pb_grpc
from qsc.cortex.v1 import guardian_pb2

T = TypeVar("T")
ALPHA_ID: Final = f"alpha-{HOST}"
BETA_ID: Final = f"beta-{HOST}"


# --- configurations -----------------------------------------------------------------------------

# The demo's Alpha with its socket poller and sshd log follower on, pointed at `auth_log`.
_OFF = "[network]\nenabled = false\n\n[auth]\nenabled = false\n"
_ON = """[network]
poll_interval = "200ms"
# Loopback is all the demo has: count it as leaving the host (the default ignores 127.0.0.0/8).
transfer_ignore_networks = []

[auth]
source = "file"
log_path = "{auth_log}"
state_directory = "{base}/state"
poll_interval = "100ms"
"""
if _OFF not in ALPHA_CONFIG:
    raise DemoError("demo.components.ALPHA_CONFIG changed: update demo.site")
ALPHA_AUTH_CONFIG: Final = ALPHA_CONFIG.replace(_OFF, _ON)

# The demo's Beta with one backup set, verified on demand only.
BETA_BACKUP_CONFIG: Final = (
    BETA_CONFIG
    + """
[backups]
workers = 1

[[backups.sets]]
name = "{name}"
root = "{root}"
manifest = "{manifest}"
schedule = "0s"
"""
)

CORTEX_CONFIG: Final = """
[server]
listen = "127.0.0.1:0"
shutdown_grace = "1s"

[server.tls]
cert = "{pki}/cortex-127.0.0.1.crt"
key = "{pki}/cortex-127.0.0.1.key"
ca = "{pki}/ca.crt"

[store]
directory = "{base}/store"
checkpoint_interval = "1s"

[keyring]
directory = "{base}/keys"

[ingest]
silence_deadline = "{silence}s"
heartbeat_interval = "500ms"
idle_timeout = "2s"
reconnect_initial = "100ms"
reconnect_max = "1s"
watch_interval = "200ms"

[[guardians]]
id = "{alpha_id}"
address = "127.0.0.1:{alpha_port}"
role = "alpha"
host = "127.0.0.1"

[[guardians]]
id = "{beta_id}"
address = "127.0.0.1:{beta_port}"
role = "beta"
host = "127.0.0.1"

[log]
format = "text"
"""


# --- the Cortex as a SOAR client reads it --------------------------------------------------------


@dataclass(frozen=True)
class CortexView:
    """CortexService calls as `soar` from the workspace's PKI."""

    workdir: Path
    port: int

    def call(self, method: str, request: Any) -> Any:
        async def body() -> Any:
            async with open_channel(channel_to(self.workdir, self.port, "soar")) as channel:
                return await getattr(pb_grpc.CortexServiceStub(channel), method)(request)

        return asyncio.run(body())

    def events(
        self, filter_text: str = "", page_size: int = 1000, order_by: str = ""
    ) -> list[event_pb2.Event]:
        request = pb.ListEventsRequest(filter=filter_text, page_size=page_size, order_by=order_by)
        return list(self.call("ListEvents", request).events)

    def guardian(self, guardian_id: str) -> guardian_pb2.Guardian:
        request = pb.GetGuardianRequest(name=f"guardians/{guardian_id}")
        g: guardian_pb2.Guardian = self.call("GetGuardian", request).guardian
        return g

    def connected(self, guardian_id: str) -> guardian_pb2.Guardian | None:
        g = self.guardian(guardian_id)
        return g if g.state == guardian_pb2.CONNECTION_STATE_CONNECTED else None


def eventually(what: str, probe: Callable[[], T | None], wait: float = 45.0) -> T:
    """`probe()` until it returns something true; DemoError after `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {wait:.0f}s waiting for {what}")
        time.sleep(0.25)
