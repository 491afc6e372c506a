"""`cortex.config`: the documented example loads, overrides apply, bad values name their key."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from cortex.config import CortexConfig, load_cortex_config
from mesh.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "cortex.toml"

MINIMAL = """
[server.tls]
cert = "/pki/cortex.crt"
key = "/pki/cortex.key"
ca = "/pki/ca.crt"
"""

GUARDIAN = """
[[guardians]]
id = "{id}"
address = "{address}"
role = "alpha"
host = "web-01"
"""

ENDPOINT = """
[[playbooks.endpoints]]
name = "soar"
url = "{url}"
secret_files = ["/etc/qsc/soar.whsec"]
{extra}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cortex.toml"
    path.write_text(text)
    return path


def test_the_example_loads_with_every_section() -> None:
    config = load_cortex_config(EXAMPLE, env={})
    assert isinstance(config, CortexConfig)
    assert [g.id for g in config.guardians] == ["alpha-web-01", "beta-web-01"]
    assert [g.role for g in config.guardians] == ["alpha", "beta"]
    assert config.ingest.silence_deadline == timedelta(seconds=30)
    store = config.store.store_config()
    assert store.directory == Path("/var/lib/qsc/cortex/store")
    assert store.checkpoint_interval == 60.0
    assert store.synchronous == "FULL"
    assert config.ml.enabled
    assert config.ml.address == "ml-1.example.net:7446"
    assert config.ml.open_for == timedelta(seconds=30)
    p = config.playbooks
    assert [e.name for e in p.endpoints] == ["soar", "n8n", "hive"]
    assert [e.auth for e in p.endpoints] == ["standard-webhooks", "header", "header"]
    assert p.endpoints[0].origin == "https://soar.example.net:8443"
    assert p.endpoints[1].origin == "http://n8n.example.net:5678"
    assert p.schedule().attempts == 8  # the first and seven retries


def test_the_example_playbooks_load_against_the_example_config() -> None:
    from cortex.playbooks.definitions import endpoint_refs, load_playbooks

    config = load_cortex_config(EXAMPLE, env={})
    refs = endpoint_refs(config.playbooks.endpoints)
    playbooks = load_playbooks(
        [ROOT / "deploy" / "playbooks.yaml"],
        endpoints=refs,
        guardians={g.id: g.role for g in config.guardians},
    )
    assert [p.id for p in playbooks.playbooks] == ["notify-soar", "verify-backups"]


def test_defaults_and_environment_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    config = load_cortex_config(path, env={})
    assert config.guardians == ()
    assert config.ingest.silence_deadline == timedelta(seconds=30)
    env = {
        "QSC_CORTEX_INGEST__SILENCE_DEADLINE": "1m",
        "QSC_CORTEX_STORE__SYNCHRONOUS": "NORMAL",
        "QSC_CORTEX_GUARDIANS": '[{id = "beta-db", address = "db:7444", role = "beta", '
        'host = "db", server_name = "db.example"}]',
    }
    config = load_cortex_config(path, env=env)
    assert config.ingest.silence_deadline == timedelta(minutes=1)
    assert config.store.synchronous == "NORMAL"
    (g,) = config.guardians
    assert (g.id, g.address, g.role, g.host, g.server_name) == (
        "beta-db",
        "db:7444",
        "beta",
        "db",
        "db.example",
    )


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('[store]\ndirectory = "relative"\n', "store.directory"),
        ("[store]\ncheckpoint_every = 0\n", "store.checkpoint_every"),
        ('[store]\nsynchronous = "OFF"\n', "store.synchronous"),
        ('[keyring]\ndirectory = "keys"\n', "keyring.directory"),
        ('[ingest]\nsilence_deadline = "0s"\n', "ingest.silence_deadline"),
        ('[ingest]\nidle_timeout = "1m"\n', "ingest.idle_timeout"),
        ('[ingest]\nheartbeat_interval = "20s"\n', "ingest.idle_timeout"),
        ("[ingest]\nmax_batch_events = -1\n", "ingest.max_batch_events"),
        (GUARDIAN.format(id="bad id", address="h:1"), "guardians[0].id"),
        (GUARDIAN.format(id="a", address="nope"), "guardians[0].address"),
        (GUARDIAN.format(id="a", address="h:99999"), "guardians[0].address"),
        (GUARDIAN.replace('"alpha"', '"cortex"').format(id="a", address="h:1"), "guardians"),
        ("[ingest]\nsilence = 3\n", "ingest.silence"),
        ('[ml]\naddress = "no-port"\n', "ml.address"),
        ('[ml]\naddress = "ml:1"\nfailures_to_open = 0\n', "ml.failures_to_open"),
        ('[ml]\naddress = "ml:1"\nopen_for = "0s"\n', "ml.open_for"),
        ("[ml]\nmax_batch_windows = 20000\n", "ml.max_batch_windows"),
        ("[ml]\nmax_pending_windows = 10\n", "ml.max_pending_windows"),
        (ENDPOINT.format(url="ftp://x/y", extra=""), "playbooks.endpoints[0].url"),
        (ENDPOINT.format(url="https://x/y?q=1", extra=""), "playbooks.endpoints[0].url"),
        (ENDPOINT.format(url="https://x:70000/", extra=""), "playbooks.endpoints[0].url"),
        (
            ENDPOINT.replace('secret_files = ["/etc/qsc/soar.whsec"]', "").format(
                url="https://x/", extra=""
            ),
            "playbooks.endpoints[0].secret_files",
        ),
        (
            ENDPOINT.format(url="https://x/", extra='auth = "header"'),
            "playbooks.endpoints[0].header",
        ),
        (
            ENDPOINT.format(url="https://x/", extra='auth = "header"\nheader = "X-T"'),
            "playbooks.endpoints[0].token_file",
        ),
        (
            ENDPOINT.format(url="http://x/", extra='ca_file = "/ca.crt"'),
            "playbooks.endpoints[0].ca_file",
        ),
        (ENDPOINT.format(url="https://x/", extra="max_in_flight = 0"), "max_in_flight"),
        (ENDPOINT.format(url="https://x/", extra='timeout = "0s"'), "timeout"),
        ("[playbooks]\nretry_delays = []\n", "playbooks.retry_delays"),
        ('[playbooks]\nretry_delays = ["0s"]\n', "playbooks.retry_delays"),
        ("[playbooks]\njitter = 1.5\n", "playbooks.retry_delays"),
        ('[playbooks]\nfiles = ["relative.yaml"]\n', "playbooks.files[0]"),
        (
            ENDPOINT.format(url="https://x/", extra="")
            + ENDPOINT.format(url="https://y/", extra=""),
            "playbooks.endpoints[1].name",
        ),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, extra: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_cortex_config(write(tmp_path, MINIMAL + extra), env={})
    assert key in str(info.value)


def test_a_guardian_listed_twice_is_refused(tmp_path: Path) -> None:
    twice = GUARDIAN.format(id="a", address="h:1") + GUARDIAN.format(id="a", address="h:2")
    with pytest.raises(ConfigError, match=r"guardians\[1\]\.id.*configured twice"):
        load_cortex_config(write(tmp_path, MINIMAL + twice), env={})
    same_address = GUARDIAN.format(id="a", address="h:1") + GUARDIAN.format(id="b", address="h:1")
    with pytest.raises(ConfigError, match=r"guardians\[1\]\.address"):
        load_cortex_config(write(tmp_path, MINIMAL + same_address), env={})


def test_unknown_environment_variables_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="QSC_CORTEX_INGST"):
        load_cortex_config(write(tmp_path, MINIMAL), env={"QSC_CORTEX_INGST__X": "1"})
