"""Fuzzing the sshd log line parser (alpha.auth.sshd): lines anyone on the host can write.

`logger -t sshd ...` puts any text in auth.log under sshd's name, and user names are
attacker-chosen, so `parse_line`/`parse_message` must take any line. They have no error type:
the contract is a Record or None, never an exception.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alpha.auth.sshd import MAX_USER_CHARS, Record, parse_line, parse_message
from tests.fuzz.harness import (
    corpus,
    corpus_ids,
    fuzz_settings,
    guarded,
    mutated_text,
    with_examples,
)

NOW = datetime(2025, 3, 10, 12, 0, 0, tzinfo=UTC)
MESSAGES = [
    "Failed password for root from 203.0.113.9 port 51234 ssh2",
    "Failed password for invalid user admin from 2001:db8::7 port 4022 ssh2",
    "Failed publickey for git from 198.51.100.4 port 2200 ssh2: ED25519 SHA256:abcdEFGH",
    "Accepted publickey for deploy from 192.0.2.10 port 60000 ssh2: RSA SHA256:Zm9vYmFy",
    "Accepted keyboard-interactive/pam for alice from 192.0.2.11 port 1 ssh2",
    "Invalid user oracle from 203.0.113.50 port 40000",
    "Connection closed by authenticating user root 203.0.113.9 port 51234 [preauth]",
    "Disconnected from invalid user test 198.51.100.8 port 22 [preauth]",
    "error: maximum authentication attempts exceeded for root from 203.0.113.9 port 1 ssh2 "
    "[preauth]",
    "User bob from 192.0.2.77 not allowed because not listed in AllowUsers",
    "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= "
    "rhost=203.0.113.9  user=root",
    "PAM 2 more authentication failures; logname= uid=0 euid=0 tty=ssh ruser= rhost=203.0.113.9",
    "message repeated 3 times: [ Failed password for root from 203.0.113.9 port 51234 ssh2]",
    "Failed password for root from 1.2.3.4 port 22 ssh2 from 5.6.7.8 port 9",
]
LINES = [
    *MESSAGES,
    *(f"Mar 10 11:59:58 web-01 sshd[4242]: {m}" for m in MESSAGES[:4]),
    *(f"2025-03-10T11:59:58.123456+00:00 web-01 sshd-session[77]: {m}" for m in MESSAGES[4:8]),
    "Feb 29 00:00:00 web-01 sshd[1]: Invalid user x from 192.0.2.1 port 2",
    "Dec 31 23:59:59 web-01 sshd: Accepted password for root from 192.0.2.1 port 2 ssh2",
    "2025-13-45T99:99:99Z web-01 sshd[1]: Invalid user x from 192.0.2.1 port 2",
    "Mar 10 11:59:58 web-01 cron[1]: Invalid user x from 192.0.2.1 port 2",
]
TOKENS = [
    " from ",
    " port ",
    " for ",
    "invalid user ",
    " ssh2",
    " [preauth]",
    "sshd[",
    "]: ",
    "rhost=",
    " user=",
    "message repeated ",
    " times: [",
    "\r\n",
    "\x00",
]


def _check(line: str) -> None:
    outcome = guarded(lambda: parse_line(line, now=NOW), ())
    if isinstance(outcome, tuple):
        record, _ = outcome
        assert isinstance(record, Record)
        assert len(record.user) <= MAX_USER_CHARS
    guarded(lambda: parse_message(line, 1), ())


@fuzz_settings(400)
@with_examples([b.decode("utf-8", "replace") for b in corpus("sshd")])
@given(mutated_text(LINES, tokens=TOKENS))
def test_sshd_lines_mutated(line: str) -> None:
    _check(line)


@fuzz_settings(150)
@given(st.text(max_size=400))
def test_sshd_any_text(line: str) -> None:
    _check(line)


@pytest.mark.parametrize("name", corpus_ids("sshd"))
def test_sshd_former_crashes(name: str) -> None:
    """Found by fuzzing: a number of over 4300 digits (port, pid, repeat or PAM count) made
    int() raise; sshd writes no such number, so the line is no sshd line."""
    line = (corpus("sshd", "crash")[corpus_ids("sshd").index(name)]).decode()
    assert parse_line(line, now=NOW) is None
    assert parse_message(line) is None
