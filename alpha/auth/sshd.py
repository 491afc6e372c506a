"""A pure parser of OpenSSH sshd log lines.

Three shapes of line reach it: syslog files (`Jan  5 10:00:00 host sshd[123]: MSG`, or with an
RFC 3339 timestamp as rsyslog writes by default on Debian 12), sshd's own `-E logfile` output
(the bare message: no time, no pid) and journal entries (the message, with pid and time given
separately). `parse_line` splits the syslog header off and `parse_message` reads the message.

Only what a detector needs is kept: the kind of record, user, source address and port, method,
key fingerprint and the sshd pid. The user name is attacker-chosen text: it is kept verbatim
(bounded) and never interpreted.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = [
    "MAX_USER_CHARS",
    "Method",
    "Record",
    "RecordKind",
    "SyslogHeader",
    "parse_line",
    "parse_message",
    "split_syslog",
]

MAX_USER_CHARS: Final = 256


class RecordKind(enum.StrEnum):
    FAILED = "failed"  # Failed <method> for [invalid user] U from A port P
    ACCEPTED = "accepted"  # Accepted <method> for U from A port P
    INVALID_USER = "invalid_user"  # Invalid user U from A port P
    # Connection closed / Disconnected from authenticating or invalid user U A port P [preauth]:
    # the client gave up during authentication (possibly without a single Failed line).
    CLOSED_PREAUTH = "closed_preauth"
    MAX_ATTEMPTS = "max_attempts"  # maximum authentication attempts exceeded for U from A ...
    NOT_ALLOWED = "not_allowed"  # User U from A not allowed because ... (AllowUsers, DenyUsers)
    PAM_FAILURE = "pam_failure"  # pam_unix(sshd:auth): authentication failure; ... rhost=A user=U
    PAM_MORE_FAILURES = "pam_more_failures"  # PAM N more authentication failures; ...


class Method(enum.StrEnum):
    UNKNOWN = "unknown"
    PASSWORD = "password"  # noqa: S105 - the method's name
    PUBLICKEY = "publickey"
    KEYBOARD_INTERACTIVE = "keyboard_interactive"
    GSSAPI = "gssapi"
    HOSTBASED = "hostbased"
    NONE = "none"


_METHODS: Final = {
    "password": Method.PASSWORD,
    "publickey": Method.PUBLICKEY,
    "keyboard-interactive": Method.KEYBOARD_INTERACTIVE,
    "keyboard-interactive/pam": Method.KEYBOARD_INTERACTIVE,
    "gssapi-with-mic": Method.GSSAPI,
    "gssapi-keyex": Method.GSSAPI,
    "hostbased": Method.HOSTBASED,
    "none": Method.NONE,
}


@dataclass(frozen=True, slots=True)
class Record:
    kind: RecordKind
    user: str
    address: str  # "" when the line names none (PAM lines without rhost)
    port: int  # 0 when not logged
    method: Method = Method.UNKNOWN
    invalid_user: bool = False
    key_fingerprint: str = ""  # SHA256:... for publickey
    pid: int = 0  # the sshd process; 0 when the line does not say (sshd -E output)
    count: int = 1  # >1 for PAM_MORE_FAILURES and for rsyslog's "message repeated N times"


@dataclass(frozen=True, slots=True)
class SyslogHeader:
    time: datetime | None  # None for a header without time (or one we could not read)
    host: str
    program: str
    pid: int
    message: str


# User names are attacker-chosen and may contain spaces and a fake " from ADDR port N": the
# patterns take the user greedily and anchor the fixed tail sshd writes at the end of the
# line, so the address is always the last one, the one sshd wrote. Numbers are bounded to what
# sshd writes: a line with a longer one is no sshd line (int() refuses over 4300 digits).
_ADDR: Final = r"(?P<addr>[0-9A-Za-z.:%_-]+)"
_TAIL: Final = rf"{_ADDR} port (?P<port>\d{{1,5}})"
_KEY: Final = r"(?: ssh2)?(?:: (?P<keytype>\S+) (?P<fp>\S+))?\s*$"
_FAILED: Final = re.compile(
    rf"^Failed (?P<method>\S+) for (?P<invalid>invalid user )?(?P<user>.*) from {_TAIL}{_KEY}"
)
_ACCEPTED: Final = re.compile(rf"^Accepted (?P<method>\S+) for (?P<user>.*) from {_TAIL}{_KEY}")
_INVALID: Final = re.compile(rf"^Invalid user (?P<user>.*) from {_TAIL}\s*$")
_CLOSED: Final = re.compile(
    r"^(?:Connection closed by|Disconnected from|Connection reset by) "
    rf"(?P<which>authenticating|invalid) user (?P<user>.*) {_TAIL} \[preauth\]\s*$"
)
_MAX: Final = re.compile(
    r"^(?:error: )?maximum authentication attempts exceeded for "
    rf"(?P<invalid>invalid user )?(?P<user>.*) from {_TAIL}(?: ssh2)?(?: \[preauth\])?\s*$"
)
_NOT_ALLOWED: Final = re.compile(
    rf"^User (?P<user>.*) from {_ADDR} not allowed because (?P<why>[^:]*)$"
)
_PAM_FAIL: Final = re.compile(
    r"^pam_unix\(sshd:auth\): authentication failure;.*?\brhost=(?P<addr>\S*)"
    r"(?:\s+user=(?P<user>.*))?$"
)
_PAM_MORE: Final = re.compile(
    r"^PAM (?P<count>\d{1,9}) more authentication failures?;.*?\brhost=(?P<addr>\S*)"
    r"(?:\s+user=(?P<user>.*))?$"
)
_REPEATED: Final = re.compile(r"^message repeated (?P<n>\d{1,9}) times: \[ ?(?P<msg>.*?) ?\]$")

_RFC3164: Final = re.compile(
    r"^(?P<mon>[A-Z][a-z]{2}) {1,2}(?P<day>\d{1,2}) (?P<hms>\d\d:\d\d:\d\d) (?P<rest>.*)$"
)
_RFC3339: Final = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)) (?P<rest>.*)$"
)
_PROGRAM: Final = re.compile(
    r"^(?P<host>\S+) (?P<prog>[^\s\[:]+)(?:\[(?P<pid>\d{1,10})\])?: (?P<msg>.*)$"
)
_MONTHS: Final = {
    name: i + 1
    for i, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    )
}


def _user(text: str | None) -> str:
    return (text or "")[:MAX_USER_CHARS]


def _method(text: str) -> Method:
    return _METHODS.get(text, Method.UNKNOWN)


def _bare_address(addr: str) -> str:
    # sshd never brackets addresses in these lines, but PAM's rhost may be empty or a name.
    return addr.strip("[]")


def parse_message(message: str, pid: int = 0) -> Record | None:
    """The record for one sshd message, or None for messages that are not about authentication.

    `message` is what follows `sshd[PID]: ` in syslog (or the whole line of `sshd -E`).
    """
    msg = message.rstrip("\r\n")
    count = 1
    rep = _REPEATED.match(msg)
    if rep is not None:
        msg, count = rep.group("msg"), int(rep.group("n"))
    first = msg[:1]
    m: re.Match[str] | None
    if first == "F" and (m := _FAILED.match(msg)) is not None:
        return Record(
            RecordKind.FAILED,
            _user(m.group("user")),
            _bare_address(m.group("addr")),
            int(m.group("port")),
            _method(m.group("method")),
            invalid_user=m.group("invalid") is not None,
            key_fingerprint=m.group("fp") or "",
            pid=pid,
            count=count,
        )
    if first == "A" and (m := _ACCEPTED.match(msg)) is not None:
        return Record(
            RecordKind.ACCEPTED,
            _user(m.group("user")),
            _bare_address(m.group("addr")),
            int(m.group("port")),
            _method(m.group("method")),
            key_fingerprint=m.group("fp") or "",
            pid=pid,
        )
    if first == "I" and (m := _INVALID.match(msg)) is not None:
        return Record(
            RecordKind.INVALID_USER,
            _user(m.group("user")),
            _bare_address(m.group("addr")),
            int(m.group("port")),
            invalid_user=True,
            pid=pid,
            count=count,
        )
    if first in "CDc" and (m := _CLOSED.match(msg)) is not None:
        return Record(
            RecordKind.CLOSED_PREAUTH,
            _user(m.group("user")),
            _bare_address(m.group("addr")),
            int(m.group("port")),
            invalid_user=m.group("which") == "invalid",
            pid=pid,
        )
    if first in "em" and (m := _MAX.match(msg)) is not None:
        return Record(
            RecordKind.MAX_ATTEMPTS,
            _user(m.group("user")),
            _bare_address(m.group("addr")),
            int(m.group("port")),
            invalid_user=m.group("invalid") is not None,
            pid=pid,
        )
    if first == "U" and (m := _NOT_ALLOWED.match(msg)) is not None:
        return Record(
            RecordKind.NOT_ALLOWED,
            _user(m.group("user")),
            _bare_address(m.group("addr")),
            0,
            pid=pid,
            count=count,
        )
    if first == "p" and (m := _PAM_FAIL.match(msg)) is not None:
        return Record(
            RecordKind.PAM_FAILURE,
            _user(m.group("user")),
            _bare_address(m.group("addr")),
            0,
            Method.PASSWORD,
            pid=pid,
            count=count,
        )
    if first == "P" and (m := _PAM_MORE.match(msg)) is not None:
        return Record(
            RecordKind.PAM_MORE_FAILURES,
            _user(m.group("user")),
            _bare_address(m.group("addr")),
            0,
            Method.PASSWORD,
            pid=pid,
            count=int(m.group("count")),
        )
    return None


def _rfc3164_time(mon: str, day: str, hms: str, now: datetime) -> datetime | None:
    # The classic header has no year and no zone: take the local zone and the year that puts
    # the stamp closest before `now` (a December line read in January is last year's).
    month = _MONTHS.get(mon)
    if month is None:
        return None
    try:
        h, mi, s = (int(x) for x in hms.split(":"))
        local = now.astimezone()
        stamp = local.replace(
            year=local.year, month=month, day=int(day), hour=h, minute=mi, second=s, microsecond=0
        )
    except ValueError:
        return None
    if stamp - local > timedelta(days=1):
        try:
            stamp = stamp.replace(year=local.year - 1)
        except ValueError:  # 29 February
            return None
    return stamp


def split_syslog(line: str, now: datetime | None = None) -> SyslogHeader | None:
    """Split a syslog file line into its header and message; None when it has no such header."""
    text = line.rstrip("\r\n")
    when: datetime | None = None
    rest: str
    if (m := _RFC3339.match(text)) is not None:
        try:
            when = datetime.fromisoformat(m.group("ts").replace("Z", "+00:00"))
        except ValueError:
            when = None
        rest = m.group("rest")
    elif (m := _RFC3164.match(text)) is not None:
        when = _rfc3164_time(
            m.group("mon"), m.group("day"), m.group("hms"), now or datetime.now(UTC)
        )
        rest = m.group("rest")
    else:
        return None
    p = _PROGRAM.match(rest)
    if p is None:
        return None
    return SyslogHeader(
        when, p.group("host"), p.group("prog"), int(p.group("pid") or 0), p.group("msg")
    )


def parse_line(
    line: str, programs: tuple[str, ...] = ("sshd",), now: datetime | None = None
) -> tuple[Record, datetime | None] | None:
    """A syslog line of one of `programs`, or a bare `sshd -E` line: (record, logged time).

    Lines of other programs (in a shared auth.log) give None. A line that has no syslog header
    is read as a bare sshd message, with no time and no pid.
    """
    header = split_syslog(line, now)
    if header is None:
        record = parse_message(line)
        return None if record is None else (record, None)
    # sshd-session is OpenSSH 9.8+'s per-connection binary; "sshd" matches it too.
    if not any(header.program == p or header.program == f"{p}-session" for p in programs):
        return None
    record = parse_message(header.message, header.pid)
    return None if record is None else (record, header.time)
