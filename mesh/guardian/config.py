"""A guardian's configuration: TOML plus `QSC_GUARDIAN_*` overrides (see `mesh.config`).

    [guardian]   role = "alpha" | "beta", host, id (default "<role>-<host>")
    [server]     mesh.server.ServerConfig
    [outbox]     directory, plus the fields of mesh.stream.outbox.OutboxConfig
    [stream]     unsealed_roles, max_batch_events, max_batch_delay, heartbeat_interval,
                 sealed_handshakes_per_second, sealed_handshake_burst
    [synthetic]  rate (events/s, 0 = off), total (0 = unlimited), batch
    [log]        level, format

Alpha and Beta embed these sections in their own configs (`EmbeddedGuardianSections`), or use
`GuardianConfig` as is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import ClassVar, Final, Literal

from crypto.errors import PkiError
from crypto.pki import normalize_host
from mesh.config import load_config
from mesh.errors import ConfigError
from mesh.logs import LogConfig
from mesh.server import ServerConfig
from mesh.stream.batching import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_MAX_BATCH_DELAY,
    DEFAULT_MAX_BATCH_EVENTS,
    StreamSettings,
)
from mesh.stream.outbox import OutboxConfig

COMPONENT: Final = "guardian"
GuardianRole = Literal["alpha", "beta"]
# GuardianRef.id doubles as a resource id (`guardians/{id}` in the Cortex API).
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,127}")
MAX_SYNTHETIC_BATCH: Final = 10_000


@dataclass(frozen=True)
class GuardianSection:
    """Who this guardian is. `host` must be the host its certificate names (empty: take it
    from the certificate); `id` defaults to `<role>-<host>`."""

    role: GuardianRole
    host: str = ""
    id: str = ""
    # How often sensors with new losses report them as sensor-health events.
    loss_report_interval: timedelta = timedelta(seconds=10)

    def __post_init__(self) -> None:
        if self.host:
            try:
                normalize_host(self.host)
            except PkiError as exc:
                raise ConfigError("host", str(exc)) from None
        if self.id and not _ID_RE.fullmatch(self.id):
            raise ConfigError(
                "id", "only letters, digits, '-' and '.', starting with a letter or digit"
            )
        if self.loss_report_interval < timedelta(milliseconds=100):
            raise ConfigError("loss_report_interval", "must be at least 100ms")


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxSection(OutboxConfig):
    """Where the outbox lives, and how it stores (every OutboxConfig field)."""

    directory: Path

    def __post_init__(self) -> None:
        # OutboxConfig names its keys "outbox.<field>"; the loader strips the repeated section.
        super(OutboxSection, self).__post_init__()
        if self.directory == Path("."):
            raise ConfigError("directory", "expected a directory path")


@dataclass(frozen=True)
class StreamSection:
    """Subscribe stream policy; subscriber hints may only lower these."""

    # Roles allowed an UNSEALED Subscribe; every other role must offer a sealed session.
    unsealed_roles: tuple[str, ...] = ("operator",)
    max_batch_events: int = DEFAULT_MAX_BATCH_EVENTS
    max_batch_delay: timedelta = DEFAULT_MAX_BATCH_DELAY
    heartbeat_interval: timedelta = DEFAULT_HEARTBEAT_INTERVAL
    sealed_handshakes_per_second: float = StreamSettings.sealed_handshakes_per_second
    sealed_handshake_burst: int = StreamSettings.sealed_handshake_burst

    def __post_init__(self) -> None:
        self.settings(StreamSettings().max_message_bytes)  # validates every field

    def settings(self, max_message_bytes: int) -> StreamSettings:
        return StreamSettings(
            max_batch_events=self.max_batch_events,
            max_batch_delay=self.max_batch_delay,
            heartbeat_interval=self.heartbeat_interval,
            max_message_bytes=max_message_bytes,
            unsealed_roles=frozenset(self.unsealed_roles),
            sealed_handshakes_per_second=self.sealed_handshakes_per_second,
            sealed_handshake_burst=self.sealed_handshake_burst,
        )


@dataclass(frozen=True)
class SyntheticSection:
    """A synthetic event source for demos, tests and benchmarks (off unless rate > 0)."""

    rate: float = 0.0  # events per second; 0 = off
    total: int = 0  # stop after this many; 0 = unlimited
    batch: int = 64  # events per append_many

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise ConfigError("rate", "must not be negative (0 turns the source off)")
        if self.total < 0:
            raise ConfigError("total", "must not be negative (0 means unlimited)")
        if not 1 <= self.batch <= MAX_SYNTHETIC_BATCH:
            raise ConfigError("batch", f"must be 1..{MAX_SYNTHETIC_BATCH}")

    @property
    def enabled(self) -> bool:
        return self.rate > 0


@dataclass(frozen=True)
class GuardianConfig:
    guardian: GuardianSection
    server: ServerConfig
    outbox: OutboxSection
    stream: StreamSection = field(default_factory=StreamSection)
    synthetic: SyntheticSection = field(default_factory=SyntheticSection)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        try:
            self.stream_settings()
        except ConfigError as exc:
            # Only the message limit can fail here: the stream section validated the rest.
            raise ConfigError(f"server.{exc.key}", exc.reason) from None

    def stream_settings(self) -> StreamSettings:
        return self.stream.settings(self.server.max_message_bytes)


@dataclass(frozen=True)
class EmbeddedGuardianSections:
    """`[guardian] [server] [outbox] [stream] [log]` as a guardian's own config embeds them.

    A subclass names its `ROLE` and redeclares `guardian` with `GuardianSection(role=ROLE)` as
    its default; its own sections follow. Loading checks the role and the runtime's
    cross-section limits; `guardian_config()` is what the runtime reads."""

    ROLE: ClassVar[GuardianRole]

    server: ServerConfig
    outbox: OutboxSection
    guardian: GuardianSection
    stream: StreamSection = field(default_factory=StreamSection)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        role = self.ROLE
        if self.guardian.role != role:
            raise ConfigError(
                "guardian.role",
                f"is {self.guardian.role!r}; {role.capitalize()} runs as {role!r}",
            )
        self.guardian_config()  # the runtime's own cross-section checks (message limits)

    def guardian_config(self) -> GuardianConfig:
        """The sections the guardian runtime reads, as its own config (no synthetic source)."""
        return GuardianConfig(
            guardian=self.guardian,
            server=self.server,
            outbox=self.outbox,
            stream=self.stream,
            synthetic=SyntheticSection(),
            log=self.log,
        )


def load_guardian_config(
    path: Path | str | None, env: dict[str, str] | None = None
) -> GuardianConfig:
    """Load `GuardianConfig` from `path` and the `QSC_GUARDIAN_*` environment."""
    if env is None:
        return load_config(GuardianConfig, component=COMPONENT, path=path)
    return load_config(GuardianConfig, component=COMPONENT, path=path, env=env)
