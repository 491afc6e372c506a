"""`qsc-cortex store verify|checkpoint|retain` as real processes on a real store.

The store is made by the Cortex's own `open_store` from a configuration file, holds 300 events,
and is tampered with through sqlite3 as an intruder with file access would (the edits of
tests/unit/test_cortex_store.py's TAMPERING). Each case checks the exit code and what the
command prints: 0 and OK when intact, 3 naming the first bad record when not, 1 or 2 with a
message naming the file (never a traceback) when the command cannot run.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cortex.app import open_store
from cortex.config import load_cortex_config
from cortex.store import CheckpointSigner
from crypto.keyring import KeyManager
from crypto.pki import init_ca, issue_leaf, write_leaf
from mesh.identity import load_tls
from mesh.stream.cursor import StoredCursor
from tests.unit.test_cortex_store import GUARDIAN, SPIFFE, TAMPERING, event

CONFIG = """
[server]
listen = "127.0.0.1:0"
[server.tls]
cert = "{pki}/cortex-c1.crt"
key = "{pki}/cortex-c1.key"
ca = "{pki}/ca.crt"
[store]
directory = "{base}/store"
[keyring]
directory = "{base}/keys"
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("pki")
    ca = init_ca(base, "cli.test")
    write_leaf(issue_leaf(ca, "cortex", "c1"), base, ca.cert)
    return base


@pytest.fixture
def config_file(pki: Path, tmp_path: Path) -> Path:
    path = tmp_path / "cortex.toml"
    path.write_text(CONFIG.format(pki=pki, base=tmp_path))
    KeyManager.create(tmp_path / "keys", "cortex")
    config = load_cortex_config(path)
    store = open_store(config, CheckpointSigner.from_tls(load_tls(config.server.tls)))
    try:
        for first in range(1, 301, 50):
            events = [event(s, GUARDIAN) for s in range(first, first + 50)]
            store.append_batch(GUARDIAN, events, StoredCursor(SPIFFE, first + 49))
    finally:
        store.close()
    return path


def store_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortex", "store", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def tamper(config_file: Path, sql: str) -> None:
    conn = sqlite3.connect(config_file.parent / "store" / "events.db")
    try:
        conn.execute(sql)
        conn.commit()
    finally:
        conn.close()


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr


def test_an_intact_store_verifies(config_file: Path) -> None:
    result = store_cli("verify", "--config", str(config_file))
    assert result.returncode == 0, result.stderr
    assert "300 records checked" in result.stdout
    assert "OK" in result.stdout
    as_json = store_cli("verify", "--config", str(config_file), "--json")
    report = json.loads(as_json.stdout)
    assert (report["ok"], report["records"], report["problem"]) == (True, 300, None)


# The unit test's edits, the index one made here as deleting a row's terms (it hides the event
# from every blind-index filter).
EDITS = [t for t in TAMPERING if t[0] != "index term"] + [
    ("index terms deleted", "DELETE FROM event_terms WHERE event_rowid = 14", 14, "")
]


@pytest.mark.parametrize(("what", "sql", "rowid", "reason"), EDITS, ids=[t[0] for t in EDITS])
def test_tampering_exits_3_naming_the_record(
    config_file: Path, what: str, sql: str, rowid: int, reason: str
) -> None:
    tamper(config_file, sql)
    result = store_cli("verify", "--config", str(config_file), "--json")
    no_traceback(result)
    assert result.returncode == 3, (what, result.stdout, result.stderr)
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["problem"]["record"] == rowid
    text = store_cli("verify", "--config", str(config_file))
    assert text.returncode == 3
    assert f"TAMPERED: record {rowid}" in text.stdout


def test_a_truncated_tail_is_found_against_an_exported_checkpoint(
    config_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "kept-off-host.json"
    made = store_cli("checkpoint", "--config", str(config_file), "--out", str(out))
    assert made.returncode == 0, made.stderr
    assert "checkpoint of 300 records" in made.stdout
    assert out.stat().st_mode & 0o777 == 0o600
    again = store_cli("checkpoint", "--config", str(config_file), "--out", str(out))
    assert again.returncode == 1
    assert "already exists" in again.stderr
    no_traceback(again)
    # Cut the last 40 records (and the checkpoints that would betray it): the chain that is
    # left is consistent, only the exported checkpoint knows there was more.
    tamper(config_file, "DELETE FROM events WHERE rowid > 260")
    tamper(config_file, "DELETE FROM event_terms WHERE event_rowid > 260")
    tamper(config_file, "DELETE FROM checkpoints WHERE count > 260")
    result = store_cli("verify", "--config", str(config_file), "--checkpoint", str(out))
    no_traceback(result)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "TAMPERED" in result.stdout


def test_retention_keeps_the_chain_verifiable(config_file: Path) -> None:
    result = store_cli("retain", "--config", str(config_file), "--older-than", "0s")
    assert result.returncode == 0, result.stderr
    assert "deleted 300 records" in result.stdout
    verified = store_cli("verify", "--config", str(config_file))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    bad_age = store_cli("retain", "--config", str(config_file), "--older-than", "soon")
    assert bad_age.returncode == 2
    no_traceback(bad_age)


def test_commands_that_cannot_run_say_why(config_file: Path, tmp_path: Path) -> None:
    missing = store_cli("verify", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2
    assert "nope.toml" in missing.stderr
    no_traceback(missing)
    # Another Cortex's keyring: the store refuses to open, naming the database.
    other = tmp_path / "other"
    other.mkdir()
    KeyManager.create(other / "keys", "cortex")
    text = config_file.read_text().replace(f"{tmp_path}/keys", f"{other}/keys")
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(text)
    refused = store_cli("verify", "--config", str(wrong))
    assert refused.returncode == 1
    assert "events.db" in refused.stderr
    no_traceback(refused)
    bare = store_cli()
    assert bare.returncode == 2
