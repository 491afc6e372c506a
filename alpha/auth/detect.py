"""Authentication detections over parsed sshd records. Pure: the clock is injected, and the only
I/O (the login history file) is in `load_history`/`save_history`, outside the detector.

For every failed attempt the detector counts, over a sliding window, the failures and distinct
user names from the same source address (credential stuffing tries many users from one place)
and the failures and distinct sources against the same user (brute force on one account, also
distributed), and puts the counts on the finding: the rules threshold them. An accepted login
carries the failures its source had in the window (a success after a burst) and whether the
user ever logged in from that address before (a persisted, bounded history per user).

What counts as one failure: each `Failed <method>` line; and a connection that ended during
authentication (`Connection closed by authenticating user`) without any `Failed` line, which is
how a client that gives up, or a scanner that only probes user names, shows. `Invalid user`,
`maximum authentication attempts` and PAM lines describe attempts already counted, so they only
annotate (counting them too would double every failure).
"""

from __future__ import annotations

import enum
import json
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from alpha.auth.follow import LogLine
from alpha.auth.sshd import Method, Record, RecordKind, parse_line, parse_message
from crypto.files import write_file_atomic
from mesh.errors import ConfigError

__all__ = [
    "AuthDetectConfig",
    "AuthDetector",
    "AuthFinding",
    "LoginHistory",
    "Outcome",
    "load_history",
    "save_history",
]

_NS: Final = 1_000_000_000
_HISTORY_VERSION: Final = 1


@dataclass(frozen=True)
class AuthDetectConfig:
    """The `[auth]` detection settings (env: `QSC_ALPHA_AUTH__<FIELD>`).

    The thresholds only set `AuthFinding.burst` and the summary; the counts themselves are on
    every finding, and the rules (50_auth.yaml) decide what fires.
    """

    window: timedelta = timedelta(minutes=10)
    burst_failures: int = 10  # failures from one source in the window: a burst
    spray_users: int = 5  # distinct users tried from one source in the window: stuffing
    user_burst_failures: int = 10  # failures against one user in the window: brute force
    max_sources: int = 65536  # sources (and users) with live windows; the stalest go first
    max_keys_per_window: int = 10000  # distinct users per source (sources per user) kept exact
    max_open_sessions: int = 65536  # connections in authentication, for the preauth rule
    history_max_users: int = 10000
    history_addresses_per_user: int = 64  # the least recently used address is forgotten first
    programs: tuple[str, ...] = ("sshd",)  # syslog program names read in a shared auth.log

    def __post_init__(self) -> None:
        if not timedelta(seconds=1) <= self.window <= timedelta(days=1):
            raise ConfigError("window", "between 1s and 1d")
        for name in (
            "burst_failures",
            "spray_users",
            "user_burst_failures",
            "max_sources",
            "max_keys_per_window",
            "max_open_sessions",
            "history_max_users",
            "history_addresses_per_user",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1")
        if not self.programs:
            raise ConfigError("programs", "name at least one program")


class Outcome(enum.StrEnum):
    ACCEPTED = "accepted"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class AuthFinding:
    time_ns: int
    outcome: Outcome
    method: Method
    user: str
    invalid_user: bool
    address: str
    port: int
    key_fingerprint: str
    service_pid: int
    window: timedelta
    source_failures: int  # failures from `address` in the window (this one included)
    source_users: int  # distinct users tried from `address` in the window
    user_failures: int  # failures against `user` in the window, from any source
    user_sources: int  # distinct sources that failed against `user` in the window
    burst: bool  # a configured threshold is reached (failed: now; accepted: before it)
    new_source: bool = False  # accepted: `user` never logged in from `address` before
    previous_login_ns: int | None = None  # accepted: the last login of `user` from `address`
    service: str = "sshd"
    log_source: str = "file"  # "file" or "journal"
    synthesized: bool = False  # a preauth disconnect counted as a failure (no Failed line)

    @property
    def reason(self) -> str:
        """A short label for summaries: what makes this finding interesting."""
        if self.outcome is Outcome.ACCEPTED:
            if self.burst:
                return "accepted_after_burst"
            return "accepted_new_source" if self.new_source else "accepted"
        return "failure_burst" if self.burst else "failure"


# --- sliding windows ------------------------------------------------------------------------------


class _Window:
    """Events and distinct keys over a sliding window, in one-second buckets.

    Buckets bound the memory per window by the window's length in seconds, whatever the rate;
    distinct keys are exact up to `max_keys` (then they saturate, the count does not).
    """

    __slots__ = ("buckets", "count", "keys", "last_s")

    def __init__(self) -> None:
        self.buckets: deque[tuple[int, int, Counter[str]]] = deque()
        self.count = 0
        self.keys: Counter[str] = Counter()
        self.last_s = 0

    def expire(self, now_s: int, window_s: int) -> None:
        horizon = now_s - window_s
        while self.buckets and self.buckets[0][0] <= horizon:
            _, n, keys = self.buckets.popleft()
            self.count -= n
            self.keys.subtract(keys)
            for key in keys:
                if self.keys[key] <= 0:
                    del self.keys[key]

    def add(self, now_s: int, key: str, max_keys: int) -> None:
        if not self.buckets or self.buckets[-1][0] != now_s:
            self.buckets.append((now_s, 0, Counter()))
        second, n, keys = self.buckets[-1]
        if key in self.keys or len(self.keys) < max_keys:
            keys[key] += 1
            self.keys[key] += 1
        self.buckets[-1] = (second, n + 1, keys)
        self.count += 1
        self.last_s = now_s


class _Windows:
    """Windows by key (source address or user), the least recently updated evicted first."""

    def __init__(self, window_s: int, max_windows: int, max_keys: int) -> None:
        self.window_s = window_s
        self.max_windows = max_windows
        self.max_keys = max_keys
        self._by: OrderedDict[str, _Window] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by)

    def _sweep(self, now_s: int) -> None:
        # Windows are kept in update order: the front ones are the stalest.
        while self._by:
            key, win = next(iter(self._by.items()))
            if win.last_s > now_s - self.window_s and len(self._by) <= self.max_windows:
                break
            del self._by[key]

    def add(self, now_s: int, key: str, member: str) -> tuple[int, int]:
        win = self._by.pop(key, None) or _Window()
        win.expire(now_s, self.window_s)
        win.add(now_s, member, self.max_keys)
        self._by[key] = win
        self._sweep(now_s)
        return win.count, len(win.keys)

    def peek(self, now_s: int, key: str) -> tuple[int, int]:
        win = self._by.get(key)
        if win is None:
            return 0, 0
        win.expire(now_s, self.window_s)
        return win.count, len(win.keys)


# --- login history --------------------------------------------------------------------------------


class LoginHistory:
    """user -> the addresses it logged in from, with the last time, both bounded (LRU).

    A forgotten address reads as new again: with the defaults that takes 64 other addresses
    for one user, or 10,000 other users logging in since.
    """

    def __init__(self, max_users: int = 10000, addresses_per_user: int = 64) -> None:
        self.max_users = max_users
        self.addresses_per_user = addresses_per_user
        self._users: OrderedDict[str, OrderedDict[str, int]] = OrderedDict()
        self.changed = False

    def __len__(self) -> int:
        return len(self._users)

    def last_login(self, user: str, address: str) -> int | None:
        seen = self._users.get(user)
        return None if seen is None else seen.get(address)

    def addresses(self, user: str) -> tuple[str, ...]:
        return tuple(self._users.get(user, ()))

    def record(self, user: str, address: str, time_ns: int) -> None:
        seen = self._users.pop(user, None)
        if seen is None:
            seen = OrderedDict()
        seen.pop(address, None)
        seen[address] = time_ns
        while len(seen) > self.addresses_per_user:
            seen.popitem(last=False)
        self._users[user] = seen
        while len(self._users) > self.max_users:
            self._users.popitem(last=False)
        self.changed = True

    def to_json(self) -> dict[str, Any]:
        return {
            "version": _HISTORY_VERSION,
            "users": {user: list(seen.items()) for user, seen in self._users.items()},
        }

    @classmethod
    def from_json(
        cls, data: Any, max_users: int = 10000, addresses_per_user: int = 64
    ) -> LoginHistory:
        history = cls(max_users, addresses_per_user)
        if not isinstance(data, dict) or data.get("version") != _HISTORY_VERSION:
            raise ValueError("not a login history of a known version")
        users = data.get("users")
        if not isinstance(users, dict):
            raise ValueError("login history: 'users' must be an object")
        for user, pairs in users.items():
            for address, time_ns in pairs:
                history.record(str(user), str(address), int(time_ns))
        history.changed = False
        return history


def load_history(path: Path, max_users: int = 10000, addresses_per_user: int = 64) -> LoginHistory:
    """The history saved at `path`; an empty one when there is none yet.

    A damaged file raises ValueError: starting empty would report every next login as "new".
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return LoginHistory(max_users, addresses_per_user)
    return LoginHistory.from_json(json.loads(raw), max_users, addresses_per_user)


def save_history(path: Path, history: LoginHistory) -> None:
    data = json.dumps(history.to_json(), separators=(",", ":")).encode()
    write_file_atomic(path, data, overwrite=True)
    history.changed = False


# --- the detector ---------------------------------------------------------------------------------


class AuthDetector:
    """Records in, findings out. Not thread-safe: one follower thread feeds it.

    `clock` gives wall-clock ns; it times records whose line carries no time (sshd -E output)
    and keeps windows moving forward when log times step back.
    """

    def __init__(
        self,
        config: AuthDetectConfig | None = None,
        *,
        clock: Callable[[], int] = time.time_ns,
        history: LoginHistory | None = None,
    ) -> None:
        self.config = cfg = config or AuthDetectConfig()
        self._clock = clock
        window_s = max(1, int(cfg.window.total_seconds()))
        self._by_source = _Windows(window_s, cfg.max_sources, cfg.max_keys_per_window)
        self._by_user = _Windows(window_s, cfg.max_sources, cfg.max_keys_per_window)
        self.history = history or LoginHistory(
            cfg.history_max_users, cfg.history_addresses_per_user
        )
        # Connections in authentication, by (address, port): True once a failure was counted.
        self._sessions: OrderedDict[tuple[str, int], bool] = OrderedDict()
        self._last_s = 0
        self.records = 0
        self.unparsed = 0  # lines that were not sshd authentication records

    def _now_s(self, time_ns: int) -> int:
        # Windows only move forward: a log line stamped earlier counts at the latest second.
        self._last_s = max(self._last_s, time_ns // _NS)
        return self._last_s

    def _session(self, record: Record) -> tuple[str, int]:
        return (record.address, record.port)

    def _touch_session(self, key: tuple[str, int], failed: bool) -> None:
        prior = self._sessions.pop(key, False)
        self._sessions[key] = prior or failed
        while len(self._sessions) > self.config.max_open_sessions:
            self._sessions.popitem(last=False)

    def observe(
        self, record: Record, time_ns: int | None = None, *, log_source: str = "file"
    ) -> list[AuthFinding]:
        """The findings one record makes (none for records that only annotate)."""
        self.records += 1
        t_ns = time_ns if time_ns is not None else self._clock()
        kind = record.kind
        if kind is RecordKind.FAILED:
            self._touch_session(self._session(record), failed=True)
            return [self._failure(record, t_ns, log_source) for _ in range(max(1, record.count))]
        if kind is RecordKind.ACCEPTED:
            self._sessions.pop(self._session(record), None)
            return [self._accepted(record, t_ns, log_source)]
        if kind is RecordKind.INVALID_USER:
            self._touch_session(self._session(record), failed=False)
            return []
        if kind is RecordKind.CLOSED_PREAUTH:
            counted = self._sessions.pop(self._session(record), False)
            if counted or not record.address:
                return []
            return [self._failure(record, t_ns, log_source, synthesized=True)]
        return []  # MAX_ATTEMPTS, NOT_ALLOWED, PAM_*: attempts already counted by Failed lines

    def observe_line(self, line: LogLine) -> list[AuthFinding]:
        """Parse one followed line (file or journal) and observe its record, if any."""
        if line.source == "journal":
            if line.program and not any(
                line.program in (p, f"{p}-session") for p in self.config.programs
            ):
                self.unparsed += 1
                return []
            record = parse_message(line.text, line.pid)
            logged_ns = line.time_ns
        else:
            parsed = parse_line(
                line.text,
                self.config.programs,
                datetime.fromtimestamp(self._clock() / _NS, tz=UTC),
            )
            record, logged = (None, None) if parsed is None else parsed
            logged_ns = None if logged is None else int(logged.timestamp() * _NS)
        if record is None:
            self.unparsed += 1
            return []
        return self.observe(record, logged_ns, log_source=line.source)

    def observe_lines(self, lines: list[LogLine]) -> Iterator[AuthFinding]:
        for line in lines:
            yield from self.observe_line(line)

    def _failure(
        self, record: Record, t_ns: int, log_source: str, *, synthesized: bool = False
    ) -> AuthFinding:
        cfg = self.config
        now_s = self._now_s(t_ns)
        src_n, src_users = self._by_source.add(now_s, record.address, record.user)
        usr_n, usr_sources = self._by_user.add(now_s, record.user, record.address)
        burst = (
            src_n >= cfg.burst_failures
            or src_users >= cfg.spray_users
            or usr_n >= cfg.user_burst_failures
        )
        return AuthFinding(
            time_ns=t_ns,
            outcome=Outcome.FAILED,
            method=record.method,
            user=record.user,
            invalid_user=record.invalid_user,
            address=record.address,
            port=record.port,
            key_fingerprint=record.key_fingerprint,
            service_pid=record.pid,
            window=cfg.window,
            source_failures=src_n,
            source_users=src_users,
            user_failures=usr_n,
            user_sources=usr_sources,
            burst=burst,
            log_source=log_source,
            synthesized=synthesized,
        )

    def _accepted(self, record: Record, t_ns: int, log_source: str) -> AuthFinding:
        cfg = self.config
        now_s = self._now_s(t_ns)
        src_n, src_users = self._by_source.peek(now_s, record.address)
        usr_n, usr_sources = self._by_user.peek(now_s, record.user)
        previous = self.history.last_login(record.user, record.address)
        self.history.record(record.user, record.address, t_ns)
        return AuthFinding(
            time_ns=t_ns,
            outcome=Outcome.ACCEPTED,
            method=record.method,
            user=record.user,
            invalid_user=False,
            address=record.address,
            port=record.port,
            key_fingerprint=record.key_fingerprint,
            service_pid=record.pid,
            window=cfg.window,
            source_failures=src_n,
            source_users=src_users,
            user_failures=usr_n,
            user_sources=usr_sources,
            burst=src_n >= cfg.burst_failures or usr_n >= cfg.user_burst_failures,
            new_source=previous is None,
            previous_login_ns=previous,
            log_source=log_source,
        )
