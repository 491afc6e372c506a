"""Beta's configuration: the TOML sections, environment overrides, validation, the example."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from beta.certs import Severity
from beta.config import BetaConfig, load_beta_config
from mesh.config import ConfigLoadError

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
[server.tls]
cert = "/etc/qsc/pki/beta-h.crt"
key = "/etc/qsc/pki/beta-h.key"
ca = "/etc/qsc/pki/ca.crt"

[outbox]
directory = "/var/lib/qsc/beta/outbox"
"""


def _load(tmp_path: Path, extra: str = "", env: dict[str, str] | None = None) -> BetaConfig:
    path = tmp_path / "beta.toml"
    path.write_text(MINIMAL + extra)
    return load_beta_config(path, env or {})


def test_minimal_config_takes_the_defaults(tmp_path: Path) -> None:
    c = _load(tmp_path)
    assert c.guardian.role == "beta"
    assert c.keys.directory == Path("/var/lib/qsc/beta/keys")
    assert not c.keys.create
    assert c.state.directory == Path("/var/lib/qsc/beta/state")
    assert c.fim.paths == ()
    assert c.backups.sets == ()
    assert c.certs.thresholds == {"low": 30, "medium": 14, "high": 7}
    assert c.heal.vault_directory == Path("/var/lib/qsc/beta/vault")
    guardian = c.guardian_config()
    assert guardian.outbox.directory == Path("/var/lib/qsc/beta/outbox")
    assert not guardian.synthetic.enabled


def test_full_sections(tmp_path: Path) -> None:
    c = _load(
        tmp_path,
        """
[keys]
directory = "/k"
[fim]
baseline = "/s/b.qsc"
[[fim.paths]]
path = "/etc/ssh"
heal = "approve"
[[backups.sets]]
name = "db"
root = "/srv/db"
manifest = "/srv/db.manifest"
schedule = "6h"
depth = "structural"
subset_fraction = 0.5
[certs]
interval = "1h"
thresholds = { high = 10, critical = 2 }
revocation = true
[[certs.watch]]
path = "/etc/tls/a.pem"
hostnames = ["a.example"]
revocation = false
[[heal.validators]]
path = "/etc/ssh/sshd_config"
command = ["sshd", "-t", "-f", "{path}"]
""",
    )
    assert c.keys.directory == Path("/k")
    assert c.fim.paths[0].heal == "approve"
    (db,) = c.backups.sets
    assert (db.name, db.depth, db.schedule, db.subset_fraction) == (
        "db",
        "structural",
        timedelta(hours=6),
        0.5,
    )
    assert c.backups.by_name()["db"] is db
    policy = c.certs.policy()
    assert [(t.days, t.severity) for t in policy.thresholds] == [
        (10, Severity.HIGH),
        (2, Severity.CRITICAL),
    ]
    watched = c.certs.watched(c.certs.watch[0], Path("/etc/tls/a.pem"))
    assert watched.revocation is None  # the per-file override wins
    assert watched.hostnames == ("a.example",)
    other = c.certs.watched(None, Path("/etc/tls/b.pem"))
    assert other.revocation is not None  # the section default
    assert other.revocation.timeout == 5.0
    assert c.heal.validators[0].command == ("sshd", "-t", "-f", "{path}")


def test_environment_overrides_and_the_key_dir_alias(tmp_path: Path) -> None:
    c = _load(
        tmp_path,
        env={
            "QSC_BETA_FIM__IO_BUDGET": "1048576",
            "QSC_BETA_CERTS__REVOCATION": "yes",
            "QSC_BETA_KEY_DIR": "/from/the/cli/variable",
        },
    )
    assert c.fim.io_budget == 1048576
    assert c.certs.revocation
    assert c.keys.directory == Path("/from/the/cli/variable")
    # The explicit variable wins over the alias.
    c = _load(
        tmp_path,
        env={"QSC_BETA_KEY_DIR": "/alias", "QSC_BETA_KEYS__DIRECTORY": "/explicit"},
    )
    assert c.keys.directory == Path("/explicit")
    with pytest.raises(ConfigLoadError, match="QSC_BETA_KEYS__DIRECTRY"):
        _load(tmp_path, env={"QSC_BETA_KEYS__DIRECTRY": "/typo"})


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        ('[guardian]\nrole = "alpha"', "guardian.role", "Beta runs as 'beta'"),
        ('[keys]\ndirectory = "relative"', "keys.directory", "absolute"),
        (
            '[[backups.sets]]\nname = "a"\nroot = "/r"\nmanifest = "/m"\n'
            '[[backups.sets]]\nname = "a"\nroot = "/r2"\nmanifest = "/m2"',
            "backups.sets[1].name",
            "configured twice",
        ),
        (
            '[[backups.sets]]\nname = "../x"\nroot = "/r"\nmanifest = "/m"',
            "backups.sets[0].name",
            "letters",
        ),
        (
            '[[backups.sets]]\nname = "a"\nroot = "/r"\nmanifest = "/m"\nsubset_fraction = 0',
            "backups.sets[0].subset_fraction",
            "(0, 1]",
        ),
        (
            '[[backups.sets]]\nname = "a"\nroot = "/r"\nmanifest = "/m"\ndepth = "deep"',
            "backups.sets[0].depth",
            "expected one of",
        ),
        ("[certs]\nthresholds = { urgent = 3 }", "certs.thresholds.urgent", "severities"),
        ("[certs]\nthresholds = { high = 0 }", "certs.thresholds.high", "positive"),
        (
            '[[certs.watch]]\npath = "/a.pem"\nocsp_url = "ftp://x"',
            "certs.watch[0].ocsp_url",
            "URL",
        ),
        (
            '[[certs.watch]]\npath = "/a.pem"\n[[certs.watch]]\npath = "/a.pem"',
            "certs.watch[1].path",
            "twice",
        ),
        (
            '[[heal.validators]]\npath = "/etc/x"\ncommand = ["check", "/etc/x"]',
            "heal.validators[0].command",
            "{path}",
        ),
        (
            '[[heal.validators]]\npath = "etc/x"\ncommand = ["check", "{path}"]',
            "heal.validators[0].path",
            "absolute",
        ),
        (
            '[[fim.paths]]\npath = "/var/log/x"\nlog = true\nheal = "auto"',
            "fim.paths[0].heal",
            "log",
        ),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, extra: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigLoadError) as caught:
        _load(tmp_path, extra)
    message = str(caught.value)
    assert f": {key}: " in message, message
    assert reason in message, message


def test_the_documented_example_loads() -> None:
    config = load_beta_config(ROOT / "deploy" / "beta.toml", {})
    assert config.server.listen == "0.0.0.0:7444"
    assert {r.root: r.heal for r in config.fim.paths}["/etc/sudoers"] == "auto"
    assert config.backups.sets[0].subset_fraction == 0.25
    assert config.certs.watch[0].key == Path("/etc/nginx/tls/site.key")
    assert config.heal.validators[0].path == "/etc/ssh/sshd_config"
