"""The transport policy: TLS 1.3 only, and post-quantum key exchange per peer role.

`require` refuses a call whose handshake negotiated a classical group; `prefer` lets it through
and counts it. Components (guardians, ml, cortex) require; soar and operator prefer, because their
tools (grpcurl before Go 1.24, Node.js 20, Java without netty-tcnative 4.2) only speak X25519.
The policy is judged per call from the auth context, so it holds for every RPC on a connection,
health and reflection included: a guardian-role certificate is refused there too, which keeps one
rule ("this role never rides a classical exchange") rather than per-RPC exceptions.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from crypto.pki import ROLES
from mesh.errors import ConfigError, PolicyViolationError
from qsc.common.v1 import transport_status_pb2

AUTH_GROUP: Final = "ssl_negotiated_key_exchange_group"
AUTH_TLS_VERSION: Final = "ssl_tls_version"
TLS_1_3: Final = "TLSv1.3"
UNKNOWN: Final = "unknown"


class PqMode(StrEnum):
    REQUIRE = "require"
    PREFER = "prefer"


DEFAULT_MODES: Final[Mapping[str, PqMode]] = MappingProxyType(
    {
        "alpha": PqMode.REQUIRE,
        "beta": PqMode.REQUIRE,
        "cortex": PqMode.REQUIRE,
        "ml": PqMode.REQUIRE,
        "soar": PqMode.PREFER,
        "operator": PqMode.PREFER,
    }
)
DEFAULT_HYBRID_GROUPS: Final = frozenset({"X25519MLKEM768"})


@dataclass(frozen=True)
class PqPolicy:
    """Per-role mode plus the groups that count as hybrid post-quantum.

    Any group whose name contains "MLKEM" also counts (e.g. SecP256r1MLKEM768,
    X25519MLKEM1024), so a TLS stack that adds one does not get refused.
    """

    modes: Mapping[str, PqMode] = field(default_factory=lambda: DEFAULT_MODES)
    hybrid_groups: frozenset[str] = DEFAULT_HYBRID_GROUPS

    def __post_init__(self) -> None:
        modes = dict(DEFAULT_MODES)
        for role, mode in self.modes.items():
            if role not in ROLES:
                raise ConfigError(f"modes.{role}", f"unknown role; roles: {', '.join(ROLES)}")
            try:
                modes[role] = PqMode(mode)
            except ValueError:
                raise ConfigError(f"modes.{role}", "must be 'require' or 'prefer'") from None
        object.__setattr__(self, "modes", MappingProxyType(modes))

    def mode(self, role: str) -> PqMode:
        return self.modes.get(role, PqMode.REQUIRE)  # a role we do not know gets the strict mode

    def is_hybrid(self, group: str) -> bool:
        return group in self.hybrid_groups or "MLKEM" in group.upper()


@dataclass(frozen=True)
class Transport:
    """What a call's handshake negotiated."""

    tls_version: str
    group: str
    hybrid: bool


def _first(auth: Mapping[str, Iterable[bytes]], key: str) -> str:
    for value in auth.get(key, ()):
        return value.decode("ascii", "replace")
    return UNKNOWN


def transport_of(auth: Mapping[str, Iterable[bytes]], policy: PqPolicy) -> Transport:
    """Read what a call's handshake negotiated from its auth context."""
    group = _first(auth, AUTH_GROUP)
    return Transport(_first(auth, AUTH_TLS_VERSION), group, policy.is_hybrid(group))


def enforce(transport: Transport, role: str, policy: PqPolicy) -> None:
    """Judge one call's transport for a peer of `role`; PolicyViolationError names what was seen."""
    if transport.tls_version != TLS_1_3:
        raise PolicyViolationError(f"TLS version {transport.tls_version} refused: TLS 1.3 required")
    if not transport.hybrid and policy.mode(role) is PqMode.REQUIRE:
        raise PolicyViolationError(
            f"classical key exchange {transport.group} refused: role {role} requires a hybrid "
            f"post-quantum group ({', '.join(sorted(policy.hybrid_groups))})"
        )


@dataclass(frozen=True)
class PolicyStats:
    """A snapshot of the counters; mappings are role -> group -> count unless said otherwise."""

    calls: Mapping[str, Mapping[str, int]]
    refused: Mapping[str, Mapping[str, int]]
    classical_connections: Mapping[str, int]  # role -> distinct classical connections seen

    def calls_with(self, group: str) -> int:
        return sum(by_group.get(group, 0) for by_group in self.calls.values())


class PolicyCounters:
    """Counts calls by role and group, and classical handshakes (connections) by role.

    grpc shows calls, not handshakes: a connection is recognised by its peer address, remembered
    in a bounded LRU so a long-lived server does not grow without limit. Thread-safe, because
    tests and admin endpoints read it from outside the event loop.
    """

    MAX_REMEMBERED_CONNECTIONS: Final = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, dict[str, int]] = {}
        self._refused: dict[str, dict[str, int]] = {}
        self._classical: dict[str, int] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()

    def record(self, role: str, transport: Transport, peer_address: str, *, refused: bool) -> None:
        with self._lock:
            table = self._refused if refused else self._calls
            by_group = table.setdefault(role, {})
            by_group[transport.group] = by_group.get(transport.group, 0) + 1
            if transport.hybrid:
                return
            if peer_address in self._seen:
                self._seen.move_to_end(peer_address)
                return
            self._seen[peer_address] = None
            if len(self._seen) > self.MAX_REMEMBERED_CONNECTIONS:
                self._seen.popitem(last=False)
            self._classical[role] = self._classical.get(role, 0) + 1

    def snapshot(self) -> PolicyStats:
        with self._lock:
            return PolicyStats(
                calls={role: dict(groups) for role, groups in self._calls.items()},
                refused={role: dict(groups) for role, groups in self._refused.items()},
                classical_connections=dict(self._classical),
            )


def transport_status(
    stats: PolicyStats, policy: PqPolicy | None = None
) -> transport_status_pb2.TransportStatus:
    """GetStatus's `transport`: one row per (role, group), sorted, with its classical handshakes."""
    policy = policy or PqPolicy()
    rows = sorted(
        {
            (role, group)
            for table in (stats.calls, stats.refused)
            for role in table
            for group in table[role]
        }
    )
    return transport_status_pb2.TransportStatus(
        counts=[
            transport_status_pb2.TransportCount(
                role=role,
                kex_group=group,
                hybrid=policy.is_hybrid(group),
                calls=stats.calls.get(role, {}).get(group, 0),
                refused=stats.refused.get(role, {}).get(group, 0),
                classical_connections=(
                    0 if policy.is_hybrid(group) else stats.classical_connections.get(role, 0)
                ),
            )
            for role, group in rows
        ]
    )
