"""`qsc doctor --config F` against real components: a Cortex configuration whose peers (a real
`qsc-beta` and a real `qsc-ml`) run on 127.0.0.1, then the mistakes operators make: a key left
readable, a peer entry naming the wrong role or host, a peer that is down, a certificate from
another deployment's CA, a keyring others can read, a file that is not a configuration.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from crypto import pki
from crypto.keyring import KeyManager
from demo.components import BETA_CONFIG, ML_CONFIG
from demo.harness import HOST, Proc, run_tool

CORTEX = """
[server]
listen = "127.0.0.1:0"

[server.tls]
cert = "{cert}"
key = "{key}"
ca = "{ca}"

[store]
directory = "{base}/store"

[keyring]
directory = "{base}/keys"

[ml]
address = "127.0.0.1:{ml_port}"

[[guardians]]
id = "beta-127.0.0.1"
address = "127.0.0.1:{beta_port}"
role = "{role}"
host = "{host}"
"""


@dataclass
class Site:
    work: Path
    beta: Proc
    ml: Proc


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("doctor")
    ca = pki.init_ca(work / "pki", "doctor.test")
    for role in ("beta", "ml", "cortex"):
        pki.write_leaf(pki.issue_leaf(ca, role, HOST), work / "pki", ca.cert)
    b = work / "beta"
    (b / "etc").mkdir(parents=True)
    (b / "etc" / "app.conf").write_text("x = 1\n")
    (b / "beta.toml").write_text(BETA_CONFIG.format(pki=work / "pki", base=b))
    KeyManager.create(b / "keys", "beta")
    run_tool("beta", "baseline", "init", "--config", str(b / "beta.toml"))
    m = work / "ml"
    m.mkdir()
    run_tool("ml", "generate", "--out", str(m / "h.csv"), "--hosts", "2", "--days", "1")
    run_tool("mesh.cli", "keys", "init", "--dir", str(m / "keys"), "--component", "ml")
    run_tool("ml", "train", "--input", str(m / "h.csv"), "--out", str(m / "models"),
             "--keyring", str(m / "keys"), "--n-estimators", "10", "--quiet")  # fmt: skip
    (m / "ml.toml").write_text(ML_CONFIG.format(pki=work / "pki", base=m))
    beta = Proc("qsc-beta", ["beta", "run", "--config", str(b / "beta.toml")], b)
    ml = Proc("qsc-ml", ["ml", "serve", "--config", str(m / "ml.toml")], m)
    beta.start()
    ml.start()
    try:
        yield Site(work, beta, ml)
    finally:
        beta.stop()
        ml.stop()


def cortex_config(site: Site, tmp_path: Path, **changes: object) -> Path:
    base = tmp_path / "cortex"
    base.mkdir(exist_ok=True)
    if not (base / "keys").exists():
        KeyManager.create(base / "keys", "cortex")
    p = site.work / "pki"
    values: dict[str, object] = {
        "cert": p / f"cortex-{HOST}.crt",
        "key": p / f"cortex-{HOST}.key",
        "ca": p / "ca.crt",
        "base": base,
        "ml_port": site.ml.port,
        "beta_port": site.beta.port,
        "role": "beta",
        "host": HOST,
        **changes,
    }
    path = base / "cortex.toml"
    path.write_text(CORTEX.format(**values))
    return path


def doctor(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", "doctor", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_ready_cortex_host(site: Site, tmp_path: Path) -> None:
    done = doctor(cortex_config(site, tmp_path))
    out = done.stdout
    assert done.returncode == 0, out
    assert "ok    certificate" in out
    assert "a valid cortex configuration" in out
    assert f"guardian beta-127.0.0.1 127.0.0.1:{site.beta.port}: spiffe://doctor.test/beta/" in out
    # The mesh handshake's group, as negotiated with each peer.
    assert out.count("key exchange X25519MLKEM768 (hybrid post-quantum)") == 2, out
    assert "ready: 0 failed" in out


def test_a_key_readable_by_others_is_named_with_the_fix(site: Site, tmp_path: Path) -> None:
    key = tmp_path / "cortex.key"
    key.write_bytes((site.work / "pki" / f"cortex-{HOST}.key").read_bytes())
    os.chmod(key, 0o644)
    done = doctor(cortex_config(site, tmp_path, key=key))
    assert done.returncode == 1
    assert f"FAIL  identity: TLS key {key}" in done.stdout
    assert "fix: chmod 600 the key file" in done.stdout


def test_a_peer_entry_of_the_wrong_role_and_host(site: Site, tmp_path: Path) -> None:
    done = doctor(cortex_config(site, tmp_path, role="alpha", host="web-9"))
    assert done.returncode == 1
    assert "role 'beta', expected 'alpha'; host '127.0.0.1', expected 'web-9'" in done.stdout


def test_a_peer_that_is_down(site: Site, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        free = s.getsockname()[1]
    done = doctor(cortex_config(site, tmp_path, beta_port=free))
    assert done.returncode == 1
    assert f"127.0.0.1:{free}: nothing listens there (connection refused)" in done.stdout
    assert "ML service" in done.stdout
    assert "(hybrid post-quantum)" in done.stdout


def test_a_certificate_of_another_deployment(site: Site, tmp_path: Path) -> None:
    other = pki.init_ca(tmp_path / "other", "other.test")
    files = pki.write_leaf(pki.issue_leaf(other, "cortex", HOST), tmp_path / "other", other.cert)
    done = doctor(cortex_config(site, tmp_path, cert=files.cert, key=files.key))
    assert done.returncode == 1
    assert "FAIL  identity:" in done.stdout
    assert "fix:" in done.stdout


def test_a_keyring_others_can_read(site: Site, tmp_path: Path) -> None:
    config = cortex_config(site, tmp_path)
    os.chmod(tmp_path / "cortex" / "keys", 0o755)
    done = doctor(config)
    assert done.returncode == 1
    assert "readable or writable by others" in done.stdout
    assert f"chmod -R go-rwx {tmp_path / 'cortex' / 'keys'}" in done.stdout


def test_not_a_configuration(tmp_path: Path) -> None:
    bad = tmp_path / "x.toml"
    bad.write_text("[server\n")
    done = doctor(bad)
    assert done.returncode == 1
    assert "no [server.tls] cert, key and ca" in done.stdout
    missing = doctor(tmp_path / "nothere.toml")
    assert missing.returncode == 1
    assert "no such file" in missing.stdout
