"""`make demo` runs end to end on embedded defaults and reports every step as it happened."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_runs_every_step_for_real(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    # A relative --dir, as `make demo` passes it.
    done = subprocess.run(
        [sys.executable, "-m", "demo", "--tour", "--dir", "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Health.Check on 127.0.0.1:" in out
    assert "SERVING" in out
    assert "key exchange X25519MLKEM768" in out
    assert "the old record still opens after rotation: True" in out
    assert "both sides derive the same 32-byte secret: True" in out
    # Alpha caught the intruder actions and the alerts arrived over the sealed stream.
    for rule in ("alpha.sensitive_file_read", "alpha.setuid_bit_set", "alpha.memfd_exec"):
        assert rule in out
    assert "qsc-alpha stopped with exit code 0" in out
    # Beta saw both tampered files over the sealed stream and healed the `auto` one.
    assert "integrity beta/etc/app.conf: content_changed" in out
    assert "integrity beta/etc/sshd_like.conf: metadata_changed, fields mode" in out
    assert "heal      beta/etc/app.conf: VERIFIED" in out
    assert "app.conf has its original content again: True" in out
    assert (workdir / "beta" / "etc" / "app.conf").read_text() == "listen = 443\nadmin = false\n"
    assert "qsc-beta stopped with exit code 0" in out
    # The ML service told the exfiltrating window from the quiet one.
    assert re.search(r"^  normal +score \S+ confidence \S+ normal$", out, re.MULTILINE)
    assert re.search(r"^  exfiltration +score \S+ confidence \S+ ANOMALY$", out, re.MULTILINE)
    assert "qsc-ml stopped with exit code 0" in out
    assert (workdir / "pki" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (workdir / "keys" / "master.key").stat().st_mode & 0o777 == 0o600
    # Secrets stay in their files: the CA key's PEM body never reaches the output.
    ca_key_body = (workdir / "pki" / "ca.key").read_text().splitlines()[1]
    assert ca_key_body not in out
