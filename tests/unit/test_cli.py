"""`qsc pki` and `qsc keys` run as a user runs them: the real entry point, in a subprocess."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from crypto import pki
from crypto.kdf import PURPOSES
from crypto.keyring import KeyManager

_SCRIPT = Path(sys.executable).with_name("qsc")
QSC = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "mesh.cli"]


def qsc(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*QSC, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def ok(*args: str | Path) -> str:
    out = qsc(*args)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    return out.stdout


def failed(code: int, *args: str | Path) -> str:
    out = qsc(*args)
    assert out.returncode == code, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    assert "qsc: error: " in out.stderr
    return out.stderr


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    ok("pki", "init", "--dir", tmp_path / "pki", "--trust-domain", "example.org")
    return tmp_path / "pki"


# --- general --------------------------------------------------------------------------------


def test_help_and_bare_invocation() -> None:
    assert "pki" in ok("--help")
    assert "ROLE" in ok("pki", "issue", "--help")
    assert "--force" in ok("keys", "rotate", "--help")
    bare = qsc()
    assert bare.returncode == 2
    assert "usage: qsc" in bare.stderr
    assert qsc("pki").returncode == 2


def test_module_entry_point_runs_too() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "keys", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0
    assert "rotate" in out.stdout


# --- pki ------------------------------------------------------------------------------------


def test_pki_init_issue_show(ca_dir: Path, tmp_path: Path) -> None:
    assert (ca_dir / "ca.key").stat().st_mode & 0o777 == 0o600
    out = ok(
        "pki", "issue", "alpha", "Web1.example.org", "--dir", ca_dir,
        "--ip", "10.0.0.5", "--dns", "web1", "--out-dir", tmp_path / "alpha",
    )  # fmt: skip
    assert "issued spiffe://example.org/alpha/web1.example.org" in out
    crt, key = (
        tmp_path / "alpha" / "alpha-web1.example.org.crt",
        tmp_path / "alpha" / "alpha-web1.example.org.key",
    )
    assert key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "alpha" / "ca.crt").read_bytes() == (ca_dir / "ca.crt").read_bytes()
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    assert pki.verify_leaf(cert, ca_cert) == pki.Identity(
        "example.org", "alpha", "web1.example.org"
    )

    text = ok("pki", "show", crt)
    for expected in (
        "role           alpha",
        "host           web1.example.org",
        "trust domain   example.org",
        "spiffe://example.org/alpha/web1.example.org",
        "DNS SANs       web1.example.org, web1",
        "IP SANs        10.0.0.5",
        "ECDSA P-256",
        "serverAuth, clientAuth",
        pki.fingerprint_sha256(cert),
    ):
        assert expected in text
    doc = json.loads(ok("pki", "show", crt, "--json"))
    assert doc["role"] == "alpha"
    assert doc["host"] == "web1.example.org"
    assert doc["trust_domain"] == "example.org"
    assert doc["uris"] == ["spiffe://example.org/alpha/web1.example.org"]
    assert doc["ip_addresses"] == ["10.0.0.5"]
    assert 88 <= doc["days_left"] <= 90
    ca_doc = json.loads(ok("pki", "show", ca_dir / "ca.crt", "--json"))
    assert ca_doc["is_ca"]
    assert ca_doc["trust_domain"] == "example.org"


def test_pki_issue_for_an_ip_host(ca_dir: Path) -> None:
    ok("pki", "issue", "cortex", "10.0.0.2", "--dir", ca_dir, "--days", "30")
    doc = json.loads(ok("pki", "show", ca_dir / "cortex-10.0.0.2.crt", "--json"))
    assert doc["ip_addresses"] == ["10.0.0.2"]
    assert doc["dns_names"] == []
    assert 28 <= doc["days_left"] <= 30


def test_pki_init_refuses_to_overwrite_a_ca(ca_dir: Path) -> None:
    before = (ca_dir / "ca.key").read_bytes()
    err = failed(1, "pki", "init", "--dir", ca_dir, "--trust-domain", "example.org")
    assert "already exists; refusing to overwrite a CA" in err
    assert (ca_dir / "ca.key").read_bytes() == before


def test_pki_unknown_role_lists_valid_roles(ca_dir: Path) -> None:
    err = failed(2, "pki", "issue", "wizard", "h1", "--dir", ca_dir)
    assert "unknown role 'wizard'; valid roles: alpha, beta, cortex, ml, soar, operator" in err


@pytest.mark.parametrize("host", ["bad_host", "x-", "fd00::1", "10.0.0"])
def test_pki_bad_host_is_a_usage_error(ca_dir: Path, host: str) -> None:
    err = failed(2, "pki", "issue", "beta", host, "--dir", ca_dir)
    assert "argument HOST" in err


def test_pki_bad_trust_domain_is_a_usage_error(tmp_path: Path) -> None:
    err = failed(2, "pki", "init", "--dir", tmp_path, "--trust-domain", "Bad_Domain")
    assert "trust domain" in err
    assert not (tmp_path / "ca.key").exists()


def test_pki_missing_ca_dir(tmp_path: Path) -> None:
    err = failed(1, "pki", "issue", "beta", "h1", "--dir", tmp_path / "nope")
    assert "does not exist" in err
    assert "qsc pki init" in err


def test_pki_unsafe_ca_key_is_refused(ca_dir: Path) -> None:
    (ca_dir / "ca.key").chmod(0o644)
    err = failed(1, "pki", "issue", "beta", "h1", "--dir", ca_dir)
    assert f"chmod 600 {ca_dir / 'ca.key'}" in err


def test_pki_issue_refuses_to_overwrite_without_force(ca_dir: Path) -> None:
    ok("pki", "issue", "ml", "h1", "--dir", ca_dir)
    key = (ca_dir / "ml-h1.key").read_bytes()
    assert "--force" in failed(1, "pki", "issue", "ml", "h1", "--dir", ca_dir)
    assert (ca_dir / "ml-h1.key").read_bytes() == key
    ok("pki", "issue", "ml", "h1", "--dir", ca_dir, "--force")
    assert (ca_dir / "ml-h1.key").read_bytes() != key


def test_pki_show_bad_files(ca_dir: Path, tmp_path: Path) -> None:
    assert "no such file" in failed(1, "pki", "show", tmp_path / "missing.crt")
    err = failed(1, "pki", "show", ca_dir / "ca.key")
    assert "no readable certificate" in err
    assert "PRIVATE KEY" not in err


# --- keys -----------------------------------------------------------------------------------


def test_keys_init_status_rotate(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    out = ok("keys", "init", "--dir", keys, "--component", "beta")
    assert "created keyring for component 'beta'" in out
    assert (keys / "master.key").stat().st_mode & 0o777 == 0o600

    status = ok("keys", "status", "--dir", keys)
    assert "active epoch  1" in status
    assert "mode 0600" in status
    assert "next due" in status

    out = ok("keys", "rotate", "--dir", keys)
    assert out.startswith("not rotated")
    assert "--force" in out
    out = ok("keys", "rotate", "--dir", keys, "--force")
    assert out.startswith("rotated: epoch 2 is active; epoch 1 kept for decryption only")

    doc = json.loads(ok("keys", "status", "--dir", keys, "--json"))
    assert doc["component"] == "beta"
    assert doc["active_epoch"] == 2
    assert [(e["epoch"], e["state"]) for e in doc["epochs"]] == [(2, "active"), (1, "decrypt-only")]
    assert doc["master_key"]["mode"] == "0600"
    assert doc["rotation_due"] is False
    km = KeyManager.open(keys, "beta")
    assert doc["epochs"][0]["key_ids"]["vault"] == km.active_key("vault").key_id


def test_keys_status_never_prints_key_material(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    ok("keys", "init", "--dir", keys, "--component", "cortex")
    ok("keys", "rotate", "--dir", keys, "--force")
    km = KeyManager.open(keys, "cortex")
    secrets = [(keys / "master.key").read_bytes()]
    for purpose in PURPOSES:
        secrets += [k.secret for k in km.decryption_keys(purpose).values()]
    output = ok("keys", "status", "--dir", keys) + ok("keys", "status", "--dir", keys, "--json")
    for secret in secrets:
        for encoded in (
            secret.hex(),
            secret.hex().upper(),
            base64.b64encode(secret).decode(),
            base64.urlsafe_b64encode(secret).decode(),
        ):
            assert encoded not in output


def test_keys_rotation_days_option(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    ok("keys", "init", "--dir", keys, "--component", "ml", "--rotation-days", "30")
    doc = json.loads(ok("keys", "status", "--dir", keys, "--json", "--rotation-days", "30"))
    assert doc["rotation_period_days"] == 30
    assert "out of range" in failed(2, "keys", "status", "--dir", keys, "--rotation-days", "0")


def test_keys_errors(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert "does not exist" in failed(1, "keys", "status", "--dir", keys)
    assert "component" in failed(2, "keys", "init", "--dir", keys, "--component", "Bad/Name")
    ok("keys", "init", "--dir", keys, "--component", "beta")
    assert "already exists" in failed(1, "keys", "init", "--dir", keys, "--component", "beta")

    (keys / "master.key").chmod(0o644)
    err = failed(1, "keys", "status", "--dir", keys)
    assert f"chmod 600 {keys / 'master.key'}" in err
    (keys / "master.key").chmod(0o600)

    ring = keys / "keyring.json"
    ring.write_bytes(ring.read_bytes()[:-20])
    err = failed(1, "keys", "rotate", "--dir", keys, "--force")
    assert "not valid JSON" in err
    assert "restore it from backup" in err


def test_keys_wrong_length_master_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    ok("keys", "init", "--dir", keys, "--component", "beta")
    fd = os.open(keys / "master.key", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"short")
    os.close(fd)
    assert "5 bytes, a master key is exactly 32" in failed(1, "keys", "status", "--dir", keys)
