"""Guardian-Alpha's configuration: TOML plus `QSC_ALPHA_*` environment overrides.

    [guardian] [server] [outbox] [stream] [log]   the guardian runtime (mesh.guardian.config)
    [sensor]    the eBPF sensor and its fallback   (alpha.sensors.model.SensorConfig)
    [rules]     extra rule files, emit_unmatched
    [memscan]   periodic / on-exec memory scans    (alpha.memscan.MemScanConfig)
    [network]   socket poller and detectors        (alpha.network.NetworkDetectConfig + enabled)
    [auth]      sshd log follower and detectors    (alpha.auth.AuthDetectConfig + the follower)
    [telemetry] host telemetry windows             (alpha.telemetry.TelemetryConfig)
    [metrics]   the Prometheus endpoint, off unless set (mesh.metrics.MetricsConfig)

`qsc-alpha --config alpha.toml`; `QSC_ALPHA_SENSOR__DISABLE_EBPF=1` forces the fallback sensor.
See deploy/alpha.toml for a documented example.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import ClassVar, Final, Literal

from alpha.auth.detect import AuthDetectConfig
from alpha.memscan import MemScanConfig
from alpha.network.detect import NetworkDetectConfig
from alpha.sensors.model import SensorConfig
from alpha.telemetry import TelemetryConfig
from mesh.config import load_config
from mesh.errors import ConfigError
from mesh.guardian.config import EmbeddedGuardianSections, GuardianRole, GuardianSection
from mesh.metrics import MetricsConfig

COMPONENT: Final = "alpha"


@dataclass(frozen=True)
class RulesSection:
    """`[rules]`: the default ruleset, then `files` in order (a directory stands for its
    *.yaml files). Raw sensor events no rule matched are dropped and counted unless
    `emit_unmatched`; findings of the memory, socket and auth detectors are always emitted."""

    files: tuple[Path, ...] = ()
    emit_unmatched: bool = False

    def __post_init__(self) -> None:
        for path in self.files:
            if path == Path(".") or not str(path):
                raise ConfigError("files", f"{str(path)!r}: expected a file or directory path")


@dataclass(frozen=True)
class NetworkSection(NetworkDetectConfig):
    """`[network]`: every NetworkDetectConfig field, plus whether the poller runs at all.
    `ebpf_connections` is decided at run time: true when the eBPF sensor reports connects."""

    enabled: bool = True
    backend: Literal["netlink", "pyroute2"] = "netlink"


@dataclass(frozen=True)
class AuthSection(AuthDetectConfig):
    """`[auth]`: every AuthDetectConfig field, plus where the sshd log comes from.

    `state_directory` keeps the follower's position and the per-user login history across
    restarts (without it every restart would forget which addresses are known)."""

    enabled: bool = True
    # auto: the file when it exists (rsyslog), else the journal (Debian 12's default).
    source: Literal["auto", "file", "journal"] = "auto"
    log_path: Path = Path("/var/log/auth.log")
    journal_units: tuple[str, ...] = ("ssh", "sshd")
    state_directory: Path = Path("/var/lib/qsc/alpha")
    poll_interval: timedelta = timedelta(milliseconds=250)
    start_at_end: bool = True  # no saved position: report from now on, not the whole history

    def __post_init__(self) -> None:
        super().__post_init__()
        if not timedelta(milliseconds=10) <= self.poll_interval <= timedelta(minutes=1):
            raise ConfigError("poll_interval", "between 10ms and 1m")
        if self.source == "journal" and not self.journal_units:
            raise ConfigError("journal_units", "name at least one unit")


@dataclass(frozen=True)
class AlphaConfig(EmbeddedGuardianSections):
    """Everything `qsc-alpha` reads. Frozen; validated section by section on load."""

    ROLE: ClassVar[GuardianRole] = "alpha"

    guardian: GuardianSection = field(default_factory=lambda: GuardianSection(role="alpha"))
    sensor: SensorConfig = field(default_factory=SensorConfig)
    rules: RulesSection = field(default_factory=RulesSection)
    memscan: MemScanConfig = field(default_factory=MemScanConfig)
    network: NetworkSection = field(default_factory=NetworkSection)
    auth: AuthSection = field(default_factory=AuthSection)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def network_detect(self, *, ebpf_connections: bool) -> NetworkDetectConfig:
        """The detector's settings, with connects taken from the eBPF sensor when it runs."""
        return dataclasses.replace(self.network, ebpf_connections=ebpf_connections)


def load_alpha_config(path: Path | str | None, env: dict[str, str] | None = None) -> AlphaConfig:
    """Load `AlphaConfig` from `path` and the `QSC_ALPHA_*` environment."""
    if env is None:
        return load_config(AlphaConfig, component=COMPONENT, path=path)
    return load_config(AlphaConfig, component=COMPONENT, path=path, env=env)
