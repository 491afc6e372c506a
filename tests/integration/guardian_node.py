"""In-process guardians for the tests that stream from them (test_fanin.py, test_cortex_ingest.py).

A `GuardianNode` is one guardian identity with its outbox: a `mesh.guardian.Guardian` served on
127.0.0.1 over mTLS with the PKI certificates `issue_guardian_pki` writes. It runs on the test's
event loop; a stop has no shutdown grace, so its streams are cut as a killed guardian's are, and
start() may run it again on the same port with the same outbox.

A test module subclasses it with its trust domain and its host -> role table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from crypto.pki import init_ca, issue_leaf, write_leaf
from mesh.config import config_from_dict
from mesh.guardian import Guardian, GuardianConfig
from qsc.common.v1 import event_pb2

HOST = "127.0.0.1"


def issue_guardian_pki(
    base: Path, trust_domain: str, roles: Mapping[str, str], *, cortex_ips: Iterable[str] = ()
) -> Path:
    """A CA in `base`, a leaf per guardian host (of its role) and the Cortex's leaf `cortex-c1`."""
    ca = init_ca(base, trust_domain)
    for host, role in roles.items():
        # Dialled at 127.0.0.1: the IP SAN is what TLS checks; the host is the identity.
        write_leaf(issue_leaf(ca, role, host, ips=[HOST]), base, ca.cert)
    write_leaf(issue_leaf(ca, "cortex", "c1", ips=cortex_ips), base, ca.cert)
    return base


@dataclass
class GuardianNode:
    """One guardian identity with its outbox; start() may run it again on the same port."""

    trust_domain: ClassVar[str]
    roles: ClassVar[Mapping[str, str]]

    pki: Path
    host: str
    workdir: Path
    port: int = 0
    guardian: Guardian | None = None
    emitted: int = 0

    @property
    def role(self) -> str:
        return self.roles[self.host]

    @property
    def id(self) -> str:
        return f"{self.role}-{self.host}"

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/{self.role}/{self.host}"

    async def start(self) -> None:
        stem = self.pki / f"{self.role}-{self.host}"
        table = {
            "guardian": {"role": self.role, "host": self.host},
            "server": {
                "listen": f"{HOST}:{self.port}",
                "tls": {
                    "cert": f"{stem}.crt",
                    "key": f"{stem}.key",
                    "ca": str(self.pki / "ca.crt"),
                },
                # No grace: a stop cuts the streams, as a killed guardian does.
                "shutdown_grace": "0s",
            },
            "outbox": {"directory": str(self.workdir / "outbox")},
            "stream": {"heartbeat_interval": "200ms"},
        }
        self.guardian = Guardian(config_from_dict(GuardianConfig, table))
        self.port = await self.guardian.start()

    async def stop(self) -> None:
        if self.guardian is not None:
            await self.guardian.stop()
            self.guardian = None

    def emit(self, n: int) -> None:
        """n events, summarised "<host> <i>" with i counting on across calls."""
        assert self.guardian is not None
        first = self.emitted
        self.guardian.emit_many(
            event_pb2.Event(summary=f"{self.host} {i}") for i in range(first, first + n)
        )
        self.emitted += n

    def emit_one(self, event: event_pb2.Event) -> None:
        assert self.guardian is not None
        self.guardian.emit(event)

    @property
    def last_seq(self) -> int:
        assert self.guardian is not None
        return self.guardian.outbox.last_seq
