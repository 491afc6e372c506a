"""A real OpenSSH server on 127.0.0.1 that the demo's intruder (and the tests that log in:
tests/integration/test_sshd_live.py, tests/bpf/test_cortex_assessment_e2e.py) logs in to: a
temporary local user with a random password, an sshd with its own host key, config and log file
(-E), and real password logins.

Both are context managers that put everything back (the user removed, sshd stopped, /run/sshd
removed when they made it), even on failure. They need root and the Debian packages
openssh-server and sshpass: without them they raise SshdError saying what to install (a test
fails, never skips).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = "openssh-server openssh-client sshpass"


class SshdError(RuntimeError):
    """sshd cannot run here: what is missing, or why it did not start."""


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is None:
        raise SshdError(
            f"{name} not found: this needs the Debian packages {PACKAGES}"
            f" (apt-get install -y {PACKAGES})"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Sshd:
    port: int
    log: Path
    user: str
    password: str
    ssh: str
    sshpass: str


@contextlib.contextmanager
def temporary_user() -> Iterator[tuple[str, str]]:
    """A new local user with a random password: (name, password); removed afterwards."""
    if os.geteuid() != 0:
        raise SshdError("needs root: it creates a local user and runs sshd")
    user = f"qsct{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(18)
    subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/sh", user], check=True, capture_output=True
    )
    try:
        subprocess.run(
            ["chpasswd"], input=f"{user}:{password}\n", text=True, check=True, capture_output=True
        )
        yield user, password
    finally:
        # -f: even if a session process of the user were still there.
        subprocess.run(["userdel", "--remove", "--force", user], capture_output=True)
        if subprocess.run(["id", user], capture_output=True).returncode == 0:
            raise SshdError(f"user {user} could not be removed")


@contextlib.contextmanager
def running_sshd(directory: Path, user: str, password: str) -> Iterator[Sshd]:
    """sshd -D on 127.0.0.1 (a free port), its files in `directory`, logging to sshd.log there."""
    sshd_bin, keygen = tool("sshd"), tool("ssh-keygen")
    ssh, sshpass = tool("ssh"), tool("sshpass")
    key = directory / "host_ed25519"
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    port = free_port()
    log = directory / "sshd.log"
    config = directory / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "ListenAddress 127.0.0.1",
                f"Port {port}",
                f"HostKey {key}",
                f"PidFile {directory / 'sshd.pid'}",
                "PasswordAuthentication yes",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication no",
                "AuthorizedKeysFile none",
                # Without PAM, sshd checks the password itself: no pam_faildelay, fast failures.
                "UsePAM no",
                "PermitRootLogin no",
                "UseDNS no",
                "LogLevel VERBOSE",
                "MaxStartups 100",
                "MaxAuthTries 6",
                "",
            ]
        )
    )
    run_dir = Path("/run/sshd")  # privilege separation directory sshd insists on
    made_run_dir = not run_dir.exists()
    if made_run_dir:
        run_dir.mkdir(mode=0o755, parents=True)
    proc = subprocess.Popen(
        [sshd_bin, "-D", "-f", str(config), "-E", str(log)],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while "Server listening" not in (log.read_text() if log.exists() else ""):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                text = log.read_text() if log.exists() else ""
                raise SshdError(f"sshd did not start ({proc.returncode}): {err} {text}")
            time.sleep(0.02)
        yield Sshd(port, log, user, password, ssh, sshpass)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
        if made_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)


def login(s: Sshd, user: str, password: str, *, source: str | None = None) -> int:
    """One real password login running `true`; the password goes through SSHPASS, not argv.
    `source`: the local address to connect from (ssh -b), e.g. another loopback address."""
    cmd = [
        s.sshpass,
        "-e",
        s.ssh,
        "-F",
        "/dev/null",
        "-p",
        str(s.port),
        *(["-b", source] if source else []),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "PreferredAuthentications=password",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "NumberOfPasswordPrompts=1",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "LogLevel=ERROR",
        f"{user}@127.0.0.1",
        "true",
    ]
    env = {**os.environ, "SSHPASS": password}
    return subprocess.run(cmd, env=env, capture_output=True, timeout=30).returncode
