"""Secrets never reach logs, errors or core files.

The scan (tests/campaign/secrets_scan.py) finds every secret file below a root (master keys,
private keys, webhook secrets, tokens) and looks for each one, raw, hex and base64, in every
other file; here it is proven on planted leaks. A component that crashes on a host with core
dumps on leaves no core file (mesh.coredump).
"""

from __future__ import annotations

import base64
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto.pki import init_ca, issue_leaf, write_leaf
from tests.campaign.secrets_scan import find_secrets, leaks

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")


def test_the_scan_finds_each_form_of_a_planted_secret() -> None:
    # Outside the session's root, so the final scan does not see these planted leaks.
    with tempfile.TemporaryDirectory(prefix="qsc-secrets-selftest-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        master = secrets.token_bytes(32)
        (root / "keys").mkdir()
        (root / "keys" / "master.key").write_bytes(master)
        ca = init_ca(root / "pki", "scan.test")
        leaf = write_leaf(issue_leaf(ca, "alpha", "web-01", ips=[HOST]), root / "pki", ca.cert)
        whsec = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        (root / "soar.whsec").write_text(whsec + "\n")
        pem_line = next(line for line in leaf.key.read_text().splitlines() if len(line) >= 40)
        (root / "clean.log").write_text("started\nserving port=1234\n")
        (root / "hex.log").write_text(f"key={master.hex()}\n")
        (root / "b64.json").write_text('{"k": "' + base64.b64encode(master).decode() + '"}')
        (root / "pem.err").write_text(f"could not parse {pem_line}\n")
        (root / "run.db").write_bytes(b"\0\1" + master + b"\0")
        (root / "webhook.log").write_text(f"POST with secret {whsec}\n")
        found = find_secrets(root)
        assert {s.kind for s in found} >= {"master key", "private key", "webhook secret"}
        hits = leaks(root, found, Path(tmp))
        assert sorted(p.name for p in hits) == [
            "b64.json",
            "hex.log",
            "pem.err",
            "run.db",
            "webhook.log",
        ]
        assert hits[root / "pem.err"] == [f"private key of {leaf.key}"]


@pytest.fixture
def core_dir(tmp_path: Path) -> Iterator[Path]:
    """Core files go to a directory of the test's; the host's core_pattern is put back after."""
    if os.geteuid() != 0:
        pytest.skip("setting kernel.core_pattern needs root")
    old = CORE_PATTERN.read_text()
    cores = tmp_path / "cores"
    cores.mkdir()
    CORE_PATTERN.write_text(f"{cores}/core.%p\n")
    try:
        yield cores
    finally:
        CORE_PATTERN.write_text(old)


def _cores_on() -> None:
    """A host where `ulimit -c unlimited` was set before the component started."""
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def _abort(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGABRT)  # the default action dumps core
    assert proc.wait(timeout=30) == -signal.SIGABRT


def _wait_for(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None, f"exited with {proc.returncode} before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_a_component_that_crashes_leaves_no_core_file(core_dir: Path, tmp_path: Path) -> None:
    # The control: a plain Python process under the same settings does leave one.
    control = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=_cores_on
    )
    time.sleep(0.3)
    _abort(control)
    assert (core_dir / f"core.{control.pid}").exists(), "the host does not write core files"

    ca = init_ca(tmp_path / "pki", "cores.test")
    leaf = write_leaf(issue_leaf(ca, "alpha", HOST, ips=[HOST]), tmp_path / "pki", ca.cert)
    config = tmp_path / "guardian.toml"
    config.write_text(
        f"""[guardian]
role = "alpha"
host = "{HOST}"
[server]
listen = "{HOST}:0"
[server.tls]
cert = "{leaf.cert}"
key = "{leaf.key}"
ca = "{leaf.ca_cert}"
[outbox]
directory = "{tmp_path / "outbox"}"
[synthetic]
rate = 100
"""
    )
    port_file = tmp_path / "port"
    port = str(port_file)
    guardian = subprocess.Popen(
        [sys.executable, "-m", "mesh.guardian", "--config", str(config), "--port-file", port],
        cwd=ROOT,
        preexec_fn=_cores_on,
    )
    try:
        _wait_for(port_file, guardian)  # serving: its TLS key is in memory
        _abort(guardian)
    finally:
        if guardian.poll() is None:
            guardian.kill()
            guardian.wait()
    time.sleep(0.3)  # a core file is written before the parent sees the exit; be generous
    assert sorted(p.name for p in core_dir.iterdir()) == [f"core.{control.pid}"]
