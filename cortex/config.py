"""The Cortex's configuration: TOML plus `QSC_CORTEX_*` environment overrides.

    [server]       listen, TLS files, limits (mesh.server.ServerConfig); its TLS identity is
                   also the client identity the Cortex dials guardians with, and the key that
                   signs the store's checkpoints
    [store]        the event store's directory and checkpoint cadence (cortex.store.StoreConfig)
    [keyring]      the Cortex keyring (`qsc keys init --component cortex`): store and blind keys
    [[guardians]]  the guardians to follow: id, address, expected role and host
    [ingest]       silence deadline, batch and heartbeat hints, reconnect backoff
    [correlation]  correlation rule files (default: the built-in ones), state bounds
    [ml]           the ML service scoring host telemetry windows
    [playbooks]    playbook files, the endpoints deliveries may go to (nowhere else), retries
    [log]          level, format
    [metrics]      the Prometheus endpoint, off unless set (mesh.metrics.MetricsConfig)

`qsc-cortex run --config cortex.toml`; see deploy/cortex.toml for a documented example.
`QSC_CORTEX_INGEST__SILENCE_DEADLINE=1m` overrides one key; the guardian list is a TOML array
of tables (`QSC_CORTEX_GUARDIANS='[{id = "alpha-web-01", ...}]'`). SIGHUP re-reads the file
for the guardian list, the correlation rule files and the playbook files; every other change
needs a restart.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Final, Literal

from cortex.playbooks.retry import DEFAULT_SCHEDULE, JITTER, RetrySchedule
from cortex.store import StoreConfig
from mesh.config import load_config
from mesh.errors import ConfigError
from mesh.logs import LogConfig
from mesh.metrics import MetricsConfig
from mesh.server import ServerConfig

__all__ = [
    "COMPONENT",
    "CorrelationSection",
    "CortexConfig",
    "EndpointSection",
    "GuardianSection",
    "IngestSection",
    "KeyringSection",
    "MlSection",
    "PlaybooksSection",
    "StoreSection",
    "load_cortex_config",
]

COMPONENT: Final = "cortex"
# A guardian id is its `GuardianRef.id` and the `guardians/{id}` resource id of the API.
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}")
_ADDRESS_RE: Final = re.compile(r"\S+:\d{1,5}")
MAX_BATCH_EVENTS: Final = 65_536


def _absolute(key: str, path: Path) -> None:
    if not path.is_absolute():
        raise ConfigError(key, f"must be an absolute path, got {str(path)!r}")


@dataclass(frozen=True)
class StoreSection:
    """`[store]`: the embedded event store (one SQLite database in WAL mode)."""

    directory: Path = Path("/var/lib/qsc/cortex/store")
    checkpoint_every: int = 10_000  # records between signed checkpoints...
    checkpoint_interval: timedelta = timedelta(seconds=60)  # ...or this long, whichever first
    # FULL: a commit survives power loss; NORMAL: only a process crash (faster).
    synchronous: Literal["FULL", "NORMAL"] = "FULL"

    def __post_init__(self) -> None:
        _absolute("directory", self.directory)
        if self.checkpoint_every < 1:
            raise ConfigError("checkpoint_every", "must be at least 1")
        if self.checkpoint_interval < timedelta(seconds=1):
            raise ConfigError("checkpoint_interval", "must be at least 1s")

    def store_config(self) -> StoreConfig:
        return StoreConfig(
            self.directory,
            checkpoint_every=self.checkpoint_every,
            checkpoint_interval=self.checkpoint_interval.total_seconds(),
            synchronous=self.synchronous,
        )


@dataclass(frozen=True)
class KeyringSection:
    """`[keyring]`: the Cortex keyring. Never created by the Cortex: a keyring that vanished must
    be restored from backup (everything the store sealed would be orphaned)."""

    directory: Path = Path("/var/lib/qsc/cortex/keys")

    def __post_init__(self) -> None:
        _absolute("directory", self.directory)


@dataclass(frozen=True)
class GuardianSection:
    """`[[guardians]]`: one guardian to subscribe to, sealed, verified as `role` on `host`."""

    # Its GuardianRef.id as the guardian's own [guardian] id says (default `<role>-<host>`);
    # events of another id are refused, so a misconfigured entry cannot store under a wrong name.
    id: str
    address: str  # HOST:PORT the Cortex dials
    role: Literal["alpha", "beta"]
    host: str  # the host its certificate must name (`qsc pki issue ROLE HOST`)
    # TLS name to check when `address` is not among the certificate's SANs (an IP vs a DNS name).
    server_name: str | None = None

    def __post_init__(self) -> None:
        if not _ID_RE.fullmatch(self.id):
            raise ConfigError("id", "1-63 letters, digits, '.' or '-', starting alnum")
        if not _ADDRESS_RE.fullmatch(self.address) or int(self.address.rsplit(":", 1)[1]) > 65535:
            raise ConfigError("address", f"{self.address!r} is not HOST:PORT")
        if not self.host.strip():
            raise ConfigError("host", "must not be empty")
        if self.server_name is not None and not self.server_name.strip():
            raise ConfigError("server_name", "must not be empty when set")


@dataclass(frozen=True)
class IngestSection:
    """`[ingest]`: how the Cortex follows its guardians."""

    # No batch and no heartbeat for this long: the Cortex stores `cortex.guardian_lost`.
    silence_deadline: timedelta = timedelta(seconds=30)
    # Hints to the guardians (0 / unset: their defaults).
    max_batch_events: int = 512
    max_batch_delay: timedelta | None = None
    heartbeat_interval: timedelta = timedelta(seconds=5)
    # A stream silent (no heartbeat either) for this long is dead: dial again.
    idle_timeout: timedelta = timedelta(seconds=15)
    reconnect_initial: timedelta = timedelta(milliseconds=200)
    reconnect_max: timedelta = timedelta(seconds=10)
    # How often the Cortex looks at each guardian's state (silence, lag).
    watch_interval: timedelta = timedelta(seconds=1)

    def __post_init__(self) -> None:
        for name in ("silence_deadline", "heartbeat_interval", "idle_timeout", "watch_interval"):
            if getattr(self, name) <= timedelta(0):
                raise ConfigError(name, "must be positive")
        if not 0 <= self.max_batch_events <= MAX_BATCH_EVENTS:
            raise ConfigError("max_batch_events", f"must be 0..{MAX_BATCH_EVENTS}")
        if self.max_batch_delay is not None and self.max_batch_delay <= timedelta(0):
            raise ConfigError("max_batch_delay", "must be positive when set")
        if self.idle_timeout <= self.heartbeat_interval:
            raise ConfigError("idle_timeout", "must be longer than heartbeat_interval")
        # A dead stream must be noticed before silence is declared, or `lost` comes late.
        if self.idle_timeout > self.silence_deadline:
            raise ConfigError("idle_timeout", "must not be longer than silence_deadline")
        if self.reconnect_initial <= timedelta(0):
            raise ConfigError("reconnect_initial", "must be positive")
        if self.reconnect_max < self.reconnect_initial:
            raise ConfigError("reconnect_max", "must be at least reconnect_initial")


@dataclass(frozen=True)
class CorrelationSection:
    """`[correlation]`: the correlation rules and the bounds of their state."""

    enabled: bool = True
    # YAML files of correlation rules, loaded in order (empty: the built-in defaults,
    # cortex/correlate/default/). A later file can switch a rule off or replace it.
    rules: tuple[Path, ...] = ()
    max_keys: int = 10_000  # open correlation keys per rule (least recently active evicted)
    max_assessments: int = 100_000  # assessments kept in memory (oldest closed ones dropped)
    expire_interval: timedelta = timedelta(seconds=5)  # how often closed windows are expired

    def __post_init__(self) -> None:
        for i, path in enumerate(self.rules):
            _absolute(f"rules[{i}]", path)
        if self.max_keys < 1:
            raise ConfigError("max_keys", "must be at least 1")
        if self.max_assessments < 1:
            raise ConfigError("max_assessments", "must be at least 1")
        if self.expire_interval <= timedelta(0):
            raise ConfigError("expire_interval", "must be positive")


@dataclass(frozen=True)
class MlSection:
    """`[ml]`: the ML service that scores host telemetry windows (`AnomalyService/Score`).

    Off without an `address`: windows are stored, not scored, and assessments form without the
    anomaly factor. The Cortex dials it with its own identity (`[server.tls]`)."""

    address: str = ""  # HOST:PORT of `qsc-ml serve`; empty: scoring off
    server_name: str | None = None  # the name its certificate carries, when not the address
    score_timeout: timedelta = timedelta(seconds=2)  # one Score call, retries included
    max_batch_windows: int = 256  # windows per Score call
    batch_delay: timedelta = timedelta(milliseconds=100)  # how long a batch waits to fill
    max_pending_windows: int = 10_000  # queued windows beyond this are stored unscored
    failures_to_open: int = 3  # consecutive failed calls that open the circuit breaker
    open_for: timedelta = timedelta(seconds=30)  # how long it stays open before a trial call

    @property
    def enabled(self) -> bool:
        return bool(self.address.strip())

    def __post_init__(self) -> None:
        if self.enabled and not _ADDRESS_RE.fullmatch(self.address):
            raise ConfigError("address", f"must be HOST:PORT, got {self.address!r}")
        for name in ("score_timeout", "batch_delay", "open_for"):
            if getattr(self, name) <= timedelta(0):
                raise ConfigError(name, "must be positive")
        if not 1 <= self.max_batch_windows <= 10_000:
            raise ConfigError("max_batch_windows", "must be in 1..10000")
        if self.max_pending_windows < self.max_batch_windows:
            raise ConfigError("max_pending_windows", "must be at least max_batch_windows")
        if self.failures_to_open < 1:
            raise ConfigError("failures_to_open", "must be at least 1")


_URL_RE: Final = re.compile(
    r"(https?)://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?(/[^\s?#]*)?"
)
_HEADER_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")


@dataclass(frozen=True)
class EndpointSection:
    """`[[playbooks.endpoints]]`: one receiver deliveries may go to. Egress is exactly this
    list: a playbook step names an endpoint, never a URL, and redirects are not followed.

    auth `standard-webhooks` signs every delivery with each of `secret_files` (`whsec_...`,
    several during a rollover); `header` sends `header: <token_file's content>` instead
    (TheHive's `Authorization: Bearer ...`); `none` sends the ids and timestamp only. With
    `standard-webhooks`, `header` and `token_file` may be given too: both are sent (n8n's header
    auth in front of a workflow that checks the signature)."""

    name: str
    url: str  # http(s)://host[:port]/path, exactly where deliveries are POSTed
    auth: Literal["standard-webhooks", "header", "none"] = "standard-webhooks"
    secret_files: tuple[Path, ...] = ()
    header: str = ""
    token_file: Path | None = None
    ca_file: Path | None = None  # CA bundle the receiver's certificate must chain to (https)
    timeout: timedelta = timedelta(seconds=10)  # one attempt: connect, send, answer
    max_in_flight: int = 4  # concurrent deliveries to this endpoint
    failures_to_open: int = 5  # failed attempts in a row that open its circuit breaker
    open_for: timedelta = timedelta(seconds=60)  # then no attempt for this long

    def __post_init__(self) -> None:
        if not _ID_RE.fullmatch(self.name):
            raise ConfigError("name", "1-63 letters, digits, '.' or '-', starting alnum")
        match = _URL_RE.fullmatch(self.url)
        if match is None:
            raise ConfigError(
                "url", f"{self.url!r} is not http(s)://host[:port]/path (no query, no fragment)"
            )
        if match.group(3) is not None and not 0 < int(match.group(3)) <= 65535:
            raise ConfigError("url", f"port {match.group(3)} is out of range")
        if self.auth == "standard-webhooks" and not self.secret_files:
            raise ConfigError("secret_files", "standard-webhooks auth needs at least one file")
        if self.auth == "header" or self.header or self.token_file is not None:
            if self.auth == "none":
                raise ConfigError("token_file", 'auth "none" sends no token')
            if not _HEADER_RE.fullmatch(self.header):
                raise ConfigError("header", "a header token needs a header name")
            if self.token_file is None:
                raise ConfigError("token_file", "a header token needs a token file")
        for i, path in enumerate(self.secret_files):
            _absolute(f"secret_files[{i}]", path)
        for key in ("token_file", "ca_file"):
            value = getattr(self, key)
            if value is not None:
                _absolute(key, value)
        if self.ca_file is not None and not self.url.startswith("https:"):
            raise ConfigError("ca_file", "only an https endpoint has a certificate to check")
        for key in ("timeout", "open_for"):
            if getattr(self, key) <= timedelta(0):
                raise ConfigError(key, "must be positive")
        if not 1 <= self.max_in_flight <= 256:
            raise ConfigError("max_in_flight", "must be in 1..256")
        if self.failures_to_open < 1:
            raise ConfigError("failures_to_open", "must be at least 1")

    @property
    def origin(self) -> str:
        """scheme://host:port, what the allowlist is made of."""
        match = _URL_RE.fullmatch(self.url)
        assert match is not None
        scheme, host, port = match.group(1), match.group(2).lower(), match.group(3)
        return f"{scheme}://{host}:{port or (443 if scheme == 'https' else 80)}"


@dataclass(frozen=True)
class PlaybooksSection:
    """`[playbooks]`: what the Cortex does when assessments change (cortex/playbooks)."""

    enabled: bool = True
    files: tuple[Path, ...] = ()  # YAML playbook files, loaded in order; SIGHUP reloads them
    endpoints: tuple[EndpointSection, ...] = ()
    # The Standard Webhooks schedule: the wait after each failed attempt, +-jitter.
    retry_delays: tuple[timedelta, ...] = DEFAULT_SCHEDULE
    jitter: float = JITTER
    max_retry_after: timedelta = timedelta(hours=24)  # the longest Retry-After honoured
    max_in_flight: int = 64  # deliveries in flight across all endpoints
    poll_interval: timedelta = timedelta(seconds=1)  # how often due retries are looked for
    guardian_timeout: timedelta = timedelta(minutes=10)  # one guardian action

    def __post_init__(self) -> None:
        for i, path in enumerate(self.files):
            _absolute(f"files[{i}]", path)
        names = [e.name for e in self.endpoints]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(f"endpoints[{i}].name", f"{name!r} is configured twice")
        if not self.retry_delays:
            raise ConfigError("retry_delays", "needs at least one delay")
        try:
            self.schedule()
        except ValueError as exc:
            raise ConfigError("retry_delays", str(exc)) from None
        for key in ("max_retry_after", "poll_interval", "guardian_timeout"):
            if getattr(self, key) <= timedelta(0):
                raise ConfigError(key, "must be positive")
        if not 1 <= self.max_in_flight <= 4096:
            raise ConfigError("max_in_flight", "must be in 1..4096")

    def schedule(self) -> RetrySchedule:
        return RetrySchedule(self.retry_delays, self.jitter, self.max_retry_after)

    def endpoint(self, name: str) -> EndpointSection | None:
        return next((e for e in self.endpoints if e.name == name), None)


@dataclass(frozen=True)
class CortexConfig:
    """Everything `qsc-cortex run` reads. Frozen; validated section by section on load."""

    server: ServerConfig
    store: StoreSection = field(default_factory=StoreSection)
    keyring: KeyringSection = field(default_factory=KeyringSection)
    guardians: tuple[GuardianSection, ...] = ()
    ingest: IngestSection = field(default_factory=IngestSection)
    correlation: CorrelationSection = field(default_factory=CorrelationSection)
    ml: MlSection = field(default_factory=MlSection)
    playbooks: PlaybooksSection = field(default_factory=PlaybooksSection)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        ids = [g.id for g in self.guardians]
        addresses = [g.address for g in self.guardians]
        for i, guardian in enumerate(self.guardians):
            if guardian.id in ids[:i]:
                raise ConfigError(f"guardians[{i}].id", f"{guardian.id!r} is configured twice")
            if guardian.address in addresses[:i]:
                raise ConfigError(
                    f"guardians[{i}].address", f"{guardian.address!r} is configured twice"
                )


def load_cortex_config(
    path: Path | str | None, env: Mapping[str, str] | None = None
) -> CortexConfig:
    """Load `CortexConfig` from `path` and the `QSC_CORTEX_*` environment."""
    return load_config(
        CortexConfig, component=COMPONENT, path=path, env=os.environ if env is None else env
    )
