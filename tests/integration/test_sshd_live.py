"""A real OpenSSH server on 127.0.0.1 with real failed and accepted password logins, followed,
parsed and detected end to end, then through the default rules.

The test starts its own sshd (own host key, config, log file via -E, pid in the foreground),
creates a temporary local user with a random password and removes both afterwards, even on
failure (demo/sshd.py). It needs root and the Debian packages openssh-server and
sshpass: without them it fails (never skips) and says what to install.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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
from demo.sshd import Sshd, login, running_sshd, temporary_user

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def test_user() -> Iterator[tuple[str, str]]:
    with temporary_user() as user:
        yield user


@pytest.fixture
def sshd(tmp_path: Path, test_user: tuple[str, str]) -> Iterator[Sshd]:
    with running_sshd(tmp_path, *test_user) as server:
        yield server


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
