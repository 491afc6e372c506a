"""A real OpenSSH server on 127.0.0.1 with real failed and accepted password logins, followed,
parsed and detected end to end, then through the default rules.

The test starts its own sshd (own host key, config, log file via -E, pid in the foreground),
creates a temporary local user with a random password and removes both afterwards, even on
failure. It needs root and the Debian packages openssh-server and sshpass: without them it
fails (never skips) and says what to install.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from alpha.auth import (
    AuthDetector,
    AuthFinding,
    FileFollower,
    LogLine,
    Outcome,
    finding_to_event,
)
from alpha.rules import RuleEngine

pytestmark = [pytest.mark.root, pytest.mark.slow]

PACKAGES = "openssh-server openssh-client sshpass"


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is None:
        pytest.fail(
            f"{name} not found: this test needs the Debian packages {PACKAGES}"
            f" (apt-get install -y {PACKAGES})",
            pytrace=False,
        )
    return found


def _free_port() -> int:
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


@pytest.fixture
def test_user() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0:
        pytest.fail("needs root: it creates a local user and runs sshd", pytrace=False)
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
        assert subprocess.run(["id", user], capture_output=True).returncode != 0


@pytest.fixture
def sshd(tmp_path: Path, test_user: tuple[str, str]) -> Iterator[Sshd]:
    sshd_bin, keygen = _tool("sshd"), _tool("ssh-keygen")
    ssh, sshpass = _tool("ssh"), _tool("sshpass")
    user, password = test_user
    key = tmp_path / "host_ed25519"
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    port = _free_port()
    log = tmp_path / "sshd.log"
    config = tmp_path / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "ListenAddress 127.0.0.1",
                f"Port {port}",
                f"HostKey {key}",
                f"PidFile {tmp_path / 'sshd.pid'}",
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
                pytest.fail(f"sshd did not start ({proc.returncode}): {err} {text}")
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


def login(s: Sshd, user: str, password: str) -> int:
    """One real password login running `true`; the password goes through SSHPASS, not argv."""
    cmd = [
        s.sshpass,
        "-e",
        s.ssh,
        "-F",
        "/dev/null",
        "-p",
        str(s.port),
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


def follow_until(
    follower: FileFollower,
    det: AuthDetector,
    done: Callable[[list[AuthFinding]], bool],
    timeout: float = 20,
) -> list[AuthFinding]:
    found: list[AuthFinding] = []
    lines: list[LogLine] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = follower.poll()
        lines += batch
        found += det.observe_lines(batch)
        if done(found):
            return found
        time.sleep(0.05)
    raise AssertionError(f"not seen in {timeout} s; findings {found}; lines {lines}")


def test_real_sshd_failed_and_accepted_logins(sshd: Sshd, tmp_path: Path) -> None:
    state = tmp_path / "follow.json"
    follower = FileFollower(sshd.log, state, start_at_end=True)
    assert follower.poll() == []  # the log so far ("Server listening") is history
    det = AuthDetector()
    engine = RuleEngine.default()

    # 10 failures from 127.0.0.1: 6 wrong passwords for the real user, 4 made-up users.
    attempts = [(sshd.user, "wrong-" + secrets.token_hex(4)) for _ in range(6)]
    attempts += [(f"nosuch{i}", "guess") for i in range(4)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        codes = list(pool.map(lambda a: login(sshd, *a), attempts))
    assert all(code != 0 for code in codes), codes
    failed = follow_until(follower, det, lambda f: len(f) >= 10)
    assert all(f.outcome is Outcome.FAILED for f in failed)
    assert sorted(f.source_failures for f in failed) == list(range(1, 11))
    assert max(f.source_users for f in failed) == 5
    assert {f.address for f in failed} == {"127.0.0.1"}
    assert sum(f.invalid_user for f in failed) == 4
    assert failed[-1].burst
    rules = [{m.rule_id for m in engine.evaluate(finding_to_event(f))} for f in failed]
    stuffing = [f for f, r in zip(failed, rules, strict=True) if "alpha.credential_stuffing" in r]
    # At the 5th distinct user and at the 10th failure (one event may carry both).
    assert stuffing
    assert any(f.source_failures == 10 for f in stuffing)

    # The right password: accepted, right after a burst, and a new address for this user.
    assert login(sshd, sshd.user, sshd.password) == 0
    (ok,) = follow_until(follower, det, lambda f: len(f) >= 1)
    assert ok.outcome is Outcome.ACCEPTED
    assert ok.user == sshd.user
    assert ok.address == "127.0.0.1"
    assert ok.port > 0
    assert ok.source_failures == 10
    assert ok.new_source
    ev = finding_to_event(ok)
    assert ev.auth_event.new_source_address
    assert ev.auth_event.failures_in_window == 10
    fired = {m.rule_id for m in engine.evaluate(ev)}
    assert {"alpha.brute_force_success", "alpha.login_new_source"} <= fired

    # Again: the address is known now.
    assert login(sshd, sshd.user, sshd.password) == 0
    (again,) = follow_until(follower, det, lambda f: len(f) >= 1)
    assert not again.new_source
    assert again.previous_login_ns == ok.time_ns

    # A restart of the follower resumes after the last checkpoint: nothing is read twice.
    follower.checkpoint()
    follower.close()
    with FileFollower(sshd.log, state) as resumed:
        assert [x for x in resumed.poll() if det.observe_line(x)] == []
