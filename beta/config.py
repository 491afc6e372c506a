"""Guardian-Beta's configuration: TOML plus `QSC_BETA_*` environment overrides.

    [guardian] [server] [outbox] [stream] [log]   the guardian runtime (mesh.guardian.config)
    [keys]      the Beta keyring (baseline, manifest and vault keys)
    [state]     where Beta keeps what must survive a restart (baseline revision, cursors)
    [fim]       file integrity monitoring         (beta.fim.config.FimConfig)
    [backups]   backup sets and their verification schedule
    [certs]     watched certificates, trust store, thresholds, revocation
    [heal]      the vault and heal validators (the policy is per path: [[fim.paths]] heal)
    [metrics]   the Prometheus endpoint, off unless set (mesh.metrics.MetricsConfig)

`qsc-beta run --config beta.toml`; see deploy/beta.toml for a documented example.
`qsc-beta baseline --config beta.toml` reads only `[fim]` and `[keys]` (`BaselineToolConfig`).
`QSC_BETA_KEY_DIR` is accepted as `QSC_BETA_KEYS__DIRECTORY`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import ClassVar, Final, Literal

from beta.certs import CertPolicy, ExpiryThreshold, RevocationConfig, Severity, WatchedCertificate
from beta.fim.config import FimConfig, compile_glob
from mesh.config import load_config, load_sections
from mesh.errors import ConfigError
from mesh.guardian.config import EmbeddedGuardianSections, GuardianRole, GuardianSection
from mesh.metrics import MetricsConfig

__all__ = [
    "COMPONENT",
    "KEY_DIR_ENV",
    "BackupSetSection",
    "BackupsSection",
    "BaselineToolConfig",
    "BetaConfig",
    "CertsSection",
    "HealSection",
    "KeysSection",
    "StateSection",
    "ValidatorSection",
    "WatchedCertSection",
    "load_baseline_tool_config",
    "load_beta_config",
]

COMPONENT: Final = "beta"
# The variable `qsc-beta baseline` reads for its keyring; an alias of [keys] directory here.
KEY_DIR_ENV: Final = "QSC_BETA_KEY_DIR"
_KEYS_DIR_ENV: Final = "QSC_BETA_KEYS__DIRECTORY"
# A backup set's name names its state files and travels in events: keep it a plain token.
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SEVERITIES: Final = {s.name.lower(): s for s in Severity}


def _absolute(key: str, path: Path) -> None:
    if not path.is_absolute():
        raise ConfigError(key, f"must be an absolute path, got {str(path)!r}")


@dataclass(frozen=True)
class KeysSection:
    """`[keys]`: the keyring `qsc keys init --component beta` made (baseline, manifest, vault)."""

    directory: Path = Path("/var/lib/qsc/beta/keys")
    # Create the keyring at first start when absent. Off by default: a keyring that vanished
    # must be restored from backup, not silently replaced (everything sealed would be orphaned).
    create: bool = False

    def __post_init__(self) -> None:
        _absolute("directory", self.directory)


@dataclass(frozen=True)
class StateSection:
    """`[state]`: the highest baseline revision seen (a replayed old baseline is refused across
    restarts), backup rotation cursors and last-verified times."""

    directory: Path = Path("/var/lib/qsc/beta/state")

    def __post_init__(self) -> None:
        _absolute("directory", self.directory)


@dataclass(frozen=True)
class BackupSetSection:
    """`[[backups.sets]]`: one backup set, verified every `schedule` (0: only on demand)."""

    name: str
    root: Path
    manifest: Path
    schedule: timedelta = timedelta(hours=24)
    depth: Literal["structural", "full"] = "full"
    # FULL depth re-hashes this fraction per run, rotating, so every file is re-read at least
    # once every ceil(1 / fraction) runs.
    subset_fraction: float = 1.0
    # Keyring purpose whose keys open an encrypted set's files (e.g. "vault"); none: by hash.
    decrypt_purpose: str | None = None
    max_failures: int = 100  # failures listed in one result (all are counted)

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise ConfigError("name", "1-64 letters, digits, '.', '_' or '-', starting alnum")
        _absolute("root", self.root)
        _absolute("manifest", self.manifest)
        if timedelta(0) < self.schedule < timedelta(seconds=1):
            raise ConfigError("schedule", "at least 1s (0 verifies only on demand)")
        if not (0 < self.subset_fraction <= 1) or math.isnan(self.subset_fraction):
            raise ConfigError("subset_fraction", "must be in (0, 1]")
        if self.max_failures < 0:
            raise ConfigError("max_failures", "must not be negative")

    @property
    def scheduled(self) -> bool:
        return self.schedule > timedelta(0)


@dataclass(frozen=True)
class BackupsSection:
    """`[backups]`: the backup sets."""

    sets: tuple[BackupSetSection, ...] = ()
    workers: int = 0  # hashing threads per verification; 0 = one per core

    def __post_init__(self) -> None:
        names = [s.name for s in self.sets]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(f"sets[{i}].name", f"{name!r} is configured twice")
        if self.workers < 0:
            raise ConfigError("workers", "must not be negative (0 = one per core)")

    def by_name(self) -> Mapping[str, BackupSetSection]:
        return {s.name: s for s in self.sets}


@dataclass(frozen=True)
class WatchedCertSection:
    """`[[certs.watch]]`: one certificate file (PEM or DER; a chain or bundle)."""

    path: Path
    key: Path | None = None  # the first certificate's private key: checked to match
    hostnames: tuple[str, ...] = ()  # names the first certificate must cover
    trust_store: Path | None = None  # overrides [certs] trust_store
    revocation: bool | None = None  # overrides [certs] revocation
    ocsp_url: str | None = None  # overrides the certificate's AIA OCSP URL
    crl_url: str | None = None  # overrides its CRL distribution points (URL or file)

    def __post_init__(self) -> None:
        _absolute("path", self.path)
        if self.key is not None:
            _absolute("key", self.key)
        if self.trust_store is not None:
            _absolute("trust_store", self.trust_store)
        for name in ("ocsp_url", "crl_url"):
            value = getattr(self, name)
            if value is not None and not value.startswith(("http://", "https://", "/")):
                raise ConfigError(name, "must be an http(s) URL (a CRL may be an absolute path)")


@dataclass(frozen=True)
class CertsSection:
    """`[certs]`: certificates checked every `interval`, with these defaults."""

    watch: tuple[WatchedCertSection, ...] = ()
    interval: timedelta = timedelta(hours=6)
    trust_store: Path | None = None  # file or directory of CA certificates; none: no chain
    # Days before expiry -> severity, e.g. { low = 30, medium = 14, high = 7 }.
    thresholds: dict[str, int] = field(default_factory=lambda: {"low": 30, "medium": 14, "high": 7})
    revocation: bool = False  # OCSP (nonce, signature, freshness checked), CRL fallback
    revocation_timeout: timedelta = timedelta(seconds=5)
    require_nonce: bool = True
    crl_fallback: bool = True
    min_rsa_bits: int = 2048

    def __post_init__(self) -> None:
        if self.interval < timedelta(seconds=1):
            raise ConfigError("interval", "must be at least 1s")
        if self.trust_store is not None:
            _absolute("trust_store", self.trust_store)
        if not self.thresholds:
            raise ConfigError("thresholds", "give at least one, e.g. { high = 7 }")
        for name, days in self.thresholds.items():
            if name not in _SEVERITIES:
                raise ConfigError(f"thresholds.{name}", f"severities: {', '.join(_SEVERITIES)}")
            if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
                raise ConfigError(f"thresholds.{name}", "must be a positive number of days")
        if self.revocation_timeout <= timedelta(0):
            raise ConfigError("revocation_timeout", "must be positive")
        if self.min_rsa_bits < 1024:
            raise ConfigError("min_rsa_bits", "below 1024 bits nothing is strong enough")
        seen: set[Path] = set()
        for i, w in enumerate(self.watch):
            if w.path in seen:
                raise ConfigError(f"watch[{i}].path", f"{w.path} is listed twice")
            seen.add(w.path)

    def policy(self) -> CertPolicy:
        thresholds = tuple(
            sorted(
                (
                    ExpiryThreshold(days, _SEVERITIES[name])
                    for name, days in self.thresholds.items()
                ),
                key=lambda t: -t.days,
            )
        )
        return CertPolicy(thresholds=thresholds, min_rsa_bits=self.min_rsa_bits)

    def watched(self, w: WatchedCertSection | None, path: Path) -> WatchedCertificate:
        """What to check for `path`: its own settings, else the section's defaults."""
        revocation = self.revocation if w is None or w.revocation is None else w.revocation
        rev: RevocationConfig | None = None
        if revocation:
            rev = RevocationConfig(
                ocsp_url=w.ocsp_url if w else None,
                crl_url=w.crl_url if w else None,
                timeout=self.revocation_timeout.total_seconds(),
                require_nonce=self.require_nonce,
                crl_fallback=self.crl_fallback,
            )
        return WatchedCertificate(
            path=path,
            key_path=w.key if w else None,
            hostnames=w.hostnames if w else (),
            trust_store=(w.trust_store if w and w.trust_store else self.trust_store),
            revocation=rev,
        )


@dataclass(frozen=True)
class ValidatorSection:
    """`[[heal.validators]]`: a command that must accept a heal candidate before the swap.
    `{path}` in `command` becomes the candidate file, e.g. ["sshd", "-t", "-f", "{path}"]."""

    path: str  # glob over absolute paths, e.g. "/etc/ssh/sshd_config" or "/etc/nginx/**"
    command: tuple[str, ...]
    timeout: timedelta = timedelta(seconds=10)

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ConfigError("path", "must be an absolute glob, e.g. /etc/ssh/sshd_config")
        try:
            compile_glob(self.path)
        except ValueError as exc:
            raise ConfigError("path", str(exc)) from None
        if not self.command or not self.command[0]:
            raise ConfigError("command", "give the program and its arguments")
        if not any("{path}" in arg for arg in self.command):
            raise ConfigError("command", "must contain {path}: the candidate to validate")
        if not timedelta(0) < self.timeout <= timedelta(minutes=10):
            raise ConfigError("timeout", "between 0 and 10m")


@dataclass(frozen=True)
class HealSection:
    """`[heal]`: the vault of known-good copies, validators, approvals and the loop guard.
    Whether a path heals is its [[fim.paths]] `heal` policy: auto (at once), approve (through
    BetaService.ApproveHeal), never (report only)."""

    vault_directory: Path = Path("/var/lib/qsc/beta/vault")
    vault_versions: int = 5  # known-good copies kept per path
    vault_max_bytes: int = 16 * 1024 * 1024  # per copy: configuration files, not disk images
    # Every copy is opened and re-hashed at start and this often, so corruption is found before
    # a heal needs the copy.
    vault_verify_interval: timedelta = timedelta(hours=6)
    validators: tuple[ValidatorSection, ...] = ()  # the first matching one applies
    approval_ttl: timedelta = timedelta(hours=24)  # an undecided proposal then expires
    # The loop guard, per (path, baseline version): after attempt n the next waits
    # min(backoff_initial * 2^(n-1), backoff_max); after max_attempts it only reports.
    backoff_initial: timedelta = timedelta(minutes=10)
    backoff_max: timedelta = timedelta(hours=6)
    max_attempts: int = 3
    max_proposals: int = 1000  # kept for ListHealProposals; the oldest decided go first

    def __post_init__(self) -> None:
        _absolute("vault_directory", self.vault_directory)
        if self.vault_versions < 1:
            raise ConfigError("vault_versions", "must be at least 1")
        if not 1 <= self.vault_max_bytes <= 1 << 30:
            raise ConfigError("vault_max_bytes", "1 B..1 GiB")
        if not timedelta(seconds=1) <= self.vault_verify_interval <= timedelta(days=30):
            raise ConfigError("vault_verify_interval", "must be between 1s and 30d")
        if self.approval_ttl <= timedelta(0):
            raise ConfigError("approval_ttl", "must be positive")
        if not timedelta(0) < self.backoff_initial <= self.backoff_max:
            raise ConfigError("backoff_initial", "need 0 < backoff_initial <= backoff_max")
        if self.max_attempts < 1:
            raise ConfigError("max_attempts", "must be at least 1")
        if self.max_proposals < 1:
            raise ConfigError("max_proposals", "must be at least 1")


@dataclass(frozen=True)
class BetaConfig(EmbeddedGuardianSections):
    """Everything `qsc-beta run` reads. Frozen; validated section by section on load."""

    ROLE: ClassVar[GuardianRole] = "beta"

    guardian: GuardianSection = field(default_factory=lambda: GuardianSection(role="beta"))
    keys: KeysSection = field(default_factory=KeysSection)
    state: StateSection = field(default_factory=StateSection)
    fim: FimConfig = field(default_factory=FimConfig)
    backups: BackupsSection = field(default_factory=BackupsSection)
    certs: CertsSection = field(default_factory=CertsSection)
    heal: HealSection = field(default_factory=HealSection)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


def _with_key_dir_alias(env: Mapping[str, str]) -> dict[str, str]:
    out = dict(env)
    alias = out.pop(KEY_DIR_ENV, None)
    if alias and _KEYS_DIR_ENV not in out:
        out[_KEYS_DIR_ENV] = alias
    return out


def load_beta_config(path: Path | str | None, env: Mapping[str, str] | None = None) -> BetaConfig:
    """Load `BetaConfig` from `path` and the `QSC_BETA_*` environment."""
    source = os.environ if env is None else env
    return load_config(BetaConfig, component=COMPONENT, path=path, env=_with_key_dir_alias(source))


@dataclass(frozen=True)
class BaselineToolConfig:
    """What `qsc-beta baseline` reads of Beta's file: `[fim]` and `[keys]`, so one file (and one
    set of `QSC_BETA_*` overrides) drives both the guardian and the tool."""

    fim: FimConfig = field(default_factory=FimConfig)
    keys: KeysSection = field(default_factory=KeysSection)


def load_baseline_tool_config(
    path: Path | str | None, env: Mapping[str, str] | None = None
) -> BaselineToolConfig:
    """Load `BaselineToolConfig` from `path` (no file: defaults) and the `QSC_BETA_FIM__*`,
    `QSC_BETA_KEYS__*` and `QSC_BETA_KEY_DIR` environment; Beta's other sections are not read."""
    source = os.environ if env is None else env
    return load_sections(
        BaselineToolConfig, component=COMPONENT, path=path, env=_with_key_dir_alias(source)
    )
