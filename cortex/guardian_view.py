"""What the Cortex knows of one guardian it follows: the value ingest keeps and the API reads.

`GuardianView` is the pure-core twin of `qsc.cortex.v1.Guardian` (`cortex._convert` turns one
into the other). Ingest (`cortex.guardians.GuardianTracker`) produces them; the read API asks a
`GuardianDirectory` for them and never sees the subscribers behind.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["ConnectionState", "GuardianDirectory", "GuardianView"]


class ConnectionState(enum.Enum):
    """`qsc.cortex.v1.ConnectionState` without the UNSPECIFIED value."""

    CONNECTING = 1
    CONNECTED = 2
    DISCONNECTED = 3
    REFUSED = 4  # identity or policy refusal: not retried until the configuration changes


@dataclass(frozen=True)
class GuardianView:
    guardian_id: str  # GuardianRef.id, also the resource name's id: `guardians/{guardian_id}`
    role: str  # "alpha" or "beta"
    host: str
    spiffe_id: str  # as certified; "" before the first connection
    address: str  # host:port the Cortex dials
    state: ConnectionState
    sealed: bool
    committed_seq: int  # stored and committed; ingest resumes after it
    latest_seq: int  # the latest seq the guardian reported
    lag_ns: int  # age of the oldest event not yet committed; 0 when caught up
    events_lost: int  # sum of the ranges the guardian's gap events reported lost
    degraded_sensors: tuple[str, ...]
    version: str
    connect_time_ns: int | None
    last_contact_ns: int | None
    last_error: str

    @property
    def name(self) -> str:
        return f"guardians/{self.guardian_id}"

    @property
    def lag_events(self) -> int:
        return max(0, self.latest_seq - self.committed_seq)


class GuardianDirectory(Protocol):
    """The guardians the Cortex follows, as of now (configuration order)."""

    def guardians(self) -> Sequence[GuardianView]: ...
