"""The sshd line parser on the messages OpenSSH 9.x (Debian 12) writes, in each line shape."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from alpha.auth.sshd import (
    MAX_USER_CHARS,
    Method,
    RecordKind,
    parse_line,
    parse_message,
    split_syslog,
)

NOW = datetime(2025, 3, 10, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("message", "kind", "user", "addr", "port", "method", "invalid"),
    [
        (
            "Failed password for root from 203.0.113.9 port 51234 ssh2",
            RecordKind.FAILED,
            "root",
            "203.0.113.9",
            51234,
            Method.PASSWORD,
            False,
        ),
        (
            "Failed password for invalid user admin from 2001:db8::7 port 4022 ssh2",
            RecordKind.FAILED,
            "admin",
            "2001:db8::7",
            4022,
            Method.PASSWORD,
            True,
        ),
        (
            "Failed none for invalid user oracle from 198.51.100.4 port 33000 ssh2",
            RecordKind.FAILED,
            "oracle",
            "198.51.100.4",
            33000,
            Method.NONE,
            True,
        ),
        (
            "Failed keyboard-interactive/pam for alice from 10.0.0.5 port 2200 ssh2",
            RecordKind.FAILED,
            "alice",
            "10.0.0.5",
            2200,
            Method.KEYBOARD_INTERACTIVE,
            False,
        ),
        (
            "Accepted password for alice from 10.0.0.5 port 50000 ssh2",
            RecordKind.ACCEPTED,
            "alice",
            "10.0.0.5",
            50000,
            Method.PASSWORD,
            False,
        ),
        (
            "Invalid user test from 192.0.2.1 port 41000",
            RecordKind.INVALID_USER,
            "test",
            "192.0.2.1",
            41000,
            Method.UNKNOWN,
            True,
        ),
        (
            "Connection closed by authenticating user root 192.0.2.1 port 41000 [preauth]",
            RecordKind.CLOSED_PREAUTH,
            "root",
            "192.0.2.1",
            41000,
            Method.UNKNOWN,
            False,
        ),
        (
            "Connection closed by invalid user admin 192.0.2.1 port 41001 [preauth]",
            RecordKind.CLOSED_PREAUTH,
            "admin",
            "192.0.2.1",
            41001,
            Method.UNKNOWN,
            True,
        ),
        (
            "Disconnected from authenticating user root 192.0.2.1 port 41002 [preauth]",
            RecordKind.CLOSED_PREAUTH,
            "root",
            "192.0.2.1",
            41002,
            Method.UNKNOWN,
            False,
        ),
        (
            "error: maximum authentication attempts exceeded for root from 192.0.2.1"
            " port 41003 ssh2 [preauth]",
            RecordKind.MAX_ATTEMPTS,
            "root",
            "192.0.2.1",
            41003,
            Method.UNKNOWN,
            False,
        ),
        (
            "error: maximum authentication attempts exceeded for invalid user x from"
            " 192.0.2.1 port 41004 ssh2 [preauth]",
            RecordKind.MAX_ATTEMPTS,
            "x",
            "192.0.2.1",
            41004,
            Method.UNKNOWN,
            True,
        ),
        (
            "User bob from 192.0.2.8 not allowed because not listed in AllowUsers",
            RecordKind.NOT_ALLOWED,
            "bob",
            "192.0.2.8",
            0,
            Method.UNKNOWN,
            False,
        ),
        (
            "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh"
            " ruser= rhost=192.0.2.9  user=root",
            RecordKind.PAM_FAILURE,
            "root",
            "192.0.2.9",
            0,
            Method.PASSWORD,
            False,
        ),
    ],
)
def test_messages(
    message: str,
    kind: RecordKind,
    user: str,
    addr: str,
    port: int,
    method: Method,
    invalid: bool,
) -> None:
    rec = parse_message(message, pid=77)
    assert rec is not None
    assert (rec.kind, rec.user, rec.address, rec.port, rec.method, rec.invalid_user) == (
        kind,
        user,
        addr,
        port,
        method,
        invalid,
    )
    assert rec.pid == 77


def test_publickey_fingerprint() -> None:
    rec = parse_message(
        "Accepted publickey for deploy from 10.1.2.3 port 60000 ssh2: ED25519"
        " SHA256:AbCdEfGhIjKlMnOpQrStUvWxYz0123456789+/abcde"
    )
    assert rec is not None
    assert rec.method is Method.PUBLICKEY
    assert rec.key_fingerprint == "SHA256:AbCdEfGhIjKlMnOpQrStUvWxYz0123456789+/abcde"
    failed = parse_message(
        "Failed publickey for deploy from 10.1.2.3 port 60001 ssh2: RSA SHA256:xyz"
    )
    assert failed is not None
    assert failed.kind is RecordKind.FAILED
    assert failed.key_fingerprint == "SHA256:xyz"


def test_user_names_are_verbatim_and_bounded() -> None:
    # Attacker-chosen names with spaces and "from" inside still end at the last " from A port".
    rec = parse_message("Invalid user a from b from 192.0.2.1 port 22")
    assert rec is not None
    assert (rec.user, rec.address) == ("a from b", "192.0.2.1")
    rec = parse_message(
        "Failed password for invalid user x from 1.1.1.1 port 1 from 192.0.2.2 port 5 ssh2"
    )
    assert rec is not None
    assert rec.address == "192.0.2.2"
    assert rec.port == 5
    closed = parse_message(
        "Connection closed by invalid user x 1.1.1.1 port 1 [preauth] 192.0.2.3 port 6 [preauth]"
    )
    assert closed is not None
    assert (closed.address, closed.port) == ("192.0.2.3", 6)
    long = "u" * 5000
    rec = parse_message(f"Invalid user {long} from 192.0.2.1 port 22")
    assert rec is not None
    assert len(rec.user) == MAX_USER_CHARS
    empty = parse_message("Invalid user  from 192.0.2.1 port 22")
    assert empty is not None
    assert empty.user == ""


def test_pam_more_and_repeated_counts() -> None:
    more = parse_message(
        "PAM 2 more authentication failures; logname= uid=0 euid=0 tty=ssh ruser="
        " rhost=192.0.2.9  user=root"
    )
    assert more is not None
    assert more.kind is RecordKind.PAM_MORE_FAILURES
    assert more.count == 2
    rep = parse_message(
        "message repeated 3 times: [ Failed password for root from 192.0.2.9 port 22 ssh2]"
    )
    assert rep is not None
    assert rep.kind is RecordKind.FAILED
    assert rep.count == 3


@pytest.mark.parametrize(
    "message",
    [
        "Server listening on 0.0.0.0 port 22.",
        'Connection from 127.0.0.1 port 46564 on 127.0.0.1 port 22 rdomain ""',
        "Received disconnect from 192.0.2.1 port 41000:11: Bye Bye [preauth]",
        "pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)",
        "Unable to negotiate with 192.0.2.1 port 1: no matching key exchange method found.",
        "Disconnected from user alice 10.0.0.5 port 50000",
        "",
    ],
)
def test_other_messages_are_not_records(message: str) -> None:
    assert parse_message(message) is None


def test_rfc3339_syslog_line() -> None:
    line = (
        "2025-03-10T11:59:58.123456+01:00 web-1 sshd[4242]: Failed password for root"
        " from 203.0.113.9 port 51234 ssh2\n"
    )
    parsed = parse_line(line, now=NOW)
    assert parsed is not None
    rec, when = parsed
    assert rec.pid == 4242
    assert rec.kind is RecordKind.FAILED
    assert when == datetime(2025, 3, 10, 10, 59, 58, 123456, tzinfo=UTC)


def test_rfc3164_syslog_line_and_year_rollover() -> None:
    parsed = parse_line(
        "Mar  9 08:00:01 web-1 sshd[99]: Accepted password for alice from 10.0.0.5 port 1 ssh2",
        now=NOW,
    )
    assert parsed is not None
    rec, when = parsed
    assert rec.kind is RecordKind.ACCEPTED
    assert rec.pid == 99
    assert when is not None
    assert (when.year, when.month, when.day, when.hour) == (2025, 3, 9, 8)
    # A December line read on 2 January belongs to the previous year.
    jan = datetime(2026, 1, 2, 0, 0, tzinfo=UTC)
    header = split_syslog("Dec 31 23:59:59 h sshd[1]: x", now=jan)
    assert header is not None
    assert header.time is not None
    assert header.time.year == 2025


def test_syslog_lines_of_other_programs_are_skipped() -> None:
    line = "2025-03-10T11:59:58+00:00 web-1 sudo[5]: Failed password for root from 1.2.3.4 port 1"
    assert parse_line(line, now=NOW) is None
    session = (
        "2025-03-10T11:59:58+00:00 web-1 sshd-session[5]: Failed password for root"
        " from 192.0.2.1 port 1 ssh2"
    )
    parsed = parse_line(session, now=NOW)
    assert parsed is not None
    assert parsed[0].pid == 5


def test_bare_sshd_e_option_line() -> None:
    parsed = parse_line("Failed password for qsc from 127.0.0.1 port 46564 ssh2\n")
    assert parsed is not None
    rec, when = parsed
    assert when is None
    assert rec.pid == 0
    assert (rec.user, rec.address, rec.port) == ("qsc", "127.0.0.1", 46564)
