"""Follow a log: a file like `tail -F`, or the systemd journal through `journalctl -f`.

`FileFollower` survives rotation by rename (it reads the old file to its end, then opens the
new one from its start), truncation in place (copytruncate: it starts again at 0) and restarts:
`checkpoint()` persists the device, inode, a digest of the first bytes (inode numbers are
reused) and the offset of the last complete line handed out, and a new follower resumes there,
first finishing a rotated file (`auth.log.1`) when the log rotated while it was down. Lines
are bounded: a longer line is cut, marked truncated, and the rest of it skipped. A last line
without its newline is held until the newline comes (or the file rotates).

Nothing here sleeps: `poll()` reads what is there and returns, so the runtime chooses the
cadence (and the tests need no timing).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, Final, Literal

from crypto.files import write_file_atomic
from mesh.errors import ConfigError, UnavailableError

__all__ = [
    "AuthSourceConfig",
    "FileFollower",
    "FollowError",
    "JournalFollower",
    "LogLine",
    "journal_command",
    "open_follower",
    "parse_journal_entry",
]

DEFAULT_MAX_LINE: Final = 8192
_CHUNK: Final = 65536
_STATE_VERSION: Final = 1
_HEAD_BYTES: Final = 256


class FollowError(UnavailableError):
    """The log cannot be followed right now (journalctl died, a state file is unreadable)."""


@dataclass(frozen=True, slots=True)
class LogLine:
    text: str
    source: Literal["file", "journal"] = "file"
    truncated: bool = False
    # Journal entries carry these apart from the text; file lines carry them in the text.
    time_ns: int | None = None
    pid: int = 0
    program: str = ""


def _decode(raw: bytes | bytearray) -> str:
    return bytes(raw).decode("utf-8", errors="replace").rstrip("\r")


def _head(fd: int, length: int = _HEAD_BYTES) -> tuple[int, str]:
    """(n, digest of the first n <= length bytes) of an open file: its identity beyond the inode."""
    data = os.pread(fd, length, 0)
    return len(data), hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class AuthSourceConfig:
    """Where sshd's records are read (`[auth_log]`; env `QSC_ALPHA_AUTH_LOG__<FIELD>`).

    `source = "file"` follows `path` (Debian: /var/log/auth.log, written by rsyslog);
    `"journal"` runs journalctl for `units` (hosts without rsyslog). State files go in the
    runtime's state directory.
    """

    source: Literal["file", "journal"] = "file"
    path: Path = Path("/var/log/auth.log")
    rotated_suffixes: tuple[str, ...] = (".1",)
    units: tuple[str, ...] = ("ssh", "sshd")
    journalctl: str = "journalctl"
    start_at_end: bool = True
    max_line_bytes: int = DEFAULT_MAX_LINE
    poll_interval: timedelta = timedelta(milliseconds=250)

    def __post_init__(self) -> None:
        if not self.path.is_absolute():
            raise ConfigError("path", "an absolute path")
        if not 256 <= self.max_line_bytes <= 1 << 20:
            raise ConfigError("max_line_bytes", "between 256 and 1048576")
        if self.source == "journal" and not self.units:
            raise ConfigError("units", "name at least one systemd unit")
        if not timedelta(milliseconds=10) <= self.poll_interval <= timedelta(minutes=1):
            raise ConfigError("poll_interval", "between 10ms and 1m")


def open_follower(config: AuthSourceConfig, state_dir: Path) -> FileFollower | JournalFollower:
    """The follower `config` asks for, its state in `state_dir` (a journal one is started)."""
    if config.source == "journal":
        journal = JournalFollower(
            state_dir / "auth.journal.cursor",
            config.units,
            journalctl=config.journalctl,
            max_line_bytes=config.max_line_bytes,
        )
        journal.start()
        return journal
    return FileFollower(
        config.path,
        state_dir / "auth.follow.json",
        max_line_bytes=config.max_line_bytes,
        start_at_end=config.start_at_end,
        rotated_suffixes=config.rotated_suffixes,
    )


# --- files --------------------------------------------------------------------------------------


class FileFollower:
    """Follows one log file across rotation, truncation and restarts; see the module doc.

    `start_at_end` applies when no state says where to resume: a new deployment then reports
    what happens from now on instead of replaying the whole history of the log.
    `rotated_suffixes` name where a rotated file may be found (`auth.log` + `.1`).
    """

    def __init__(
        self,
        path: Path,
        state_path: Path | None = None,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE,
        start_at_end: bool = True,
        rotated_suffixes: Sequence[str] = (".1",),
    ) -> None:
        if max_line_bytes < 16:
            raise ValueError("max_line_bytes: at least 16")
        self.path = path
        self.state_path = state_path
        self.max_line = max_line_bytes
        self.start_at_end = start_at_end
        self.rotated_suffixes = tuple(rotated_suffixes)
        self._fd: int | None = None
        self._ident: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the open file
        self._pos = 0  # bytes of the open file consumed into lines or the buffer
        self._buf = bytearray()  # the start of a line whose newline has not come yet
        self._skipping = False  # inside an over-long line whose head was already returned
        self._draining = False  # the open file is a rotated one read after a restart
        self._fresh = True  # no poll has looked for the file yet
        self.rotations = 0
        self.truncations = 0
        self._resume = self._load_state()

    # --- state

    def _load_state(self) -> dict[str, Any] | None:
        if self.state_path is None:
            return None
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise FollowError(f"{self.state_path}: cannot read follow state: {exc}") from exc
        try:
            state = json.loads(raw)
            if state.get("version") != _STATE_VERSION:
                return None
            return {
                "dev": int(state["dev"]),
                "ino": int(state["ino"]),
                "offset": int(state["offset"]),
                "skipping": bool(state.get("skipping", False)),
                "head": str(state.get("head", "")),
                "head_len": int(state.get("head_len", 0)),
            }
        except (ValueError, KeyError, TypeError, AttributeError):
            # A damaged state file must not stop the follower: start as on a first run.
            return None

    @property
    def offset(self) -> int:
        """Where the next complete line starts in the open file."""
        return self._pos - len(self._buf)

    def checkpoint(self) -> None:
        """Persist the position after the last line returned by `poll` (call once processed)."""
        if self.state_path is None or self._fd is None:
            return
        head_len, head = _head(self._fd)
        state = {
            "version": _STATE_VERSION,
            "path": str(self.path),
            "dev": self._ident[0],
            "ino": self._ident[1],
            "offset": self.offset,
            "skipping": self._skipping,
            "head_len": head_len,
            "head": head,
        }
        write_file_atomic(self.state_path, json.dumps(state).encode(), overwrite=True)

    # --- opening

    def _stat_path(self) -> os.stat_result | None:
        try:
            return os.stat(self.path)
        except FileNotFoundError:
            return None

    def _open(self, path: Path, offset: int, *, skipping: bool = False) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        st = os.fstat(fd)
        if offset > st.st_size:  # truncated since the offset was taken
            offset, skipping = 0, False
        os.lseek(fd, offset, os.SEEK_SET)
        self._fd = fd
        self._ident = (st.st_dev, st.st_ino)
        self._pos = offset
        self._buf.clear()
        self._skipping = skipping
        return True

    def _same_file(self, path: Path, st: os.stat_result | None, resume: dict[str, Any]) -> bool:
        if st is None or (st.st_dev, st.st_ino) != (resume["dev"], resume["ino"]):
            return False
        # Inode numbers are reused once a file is deleted: the first bytes must match too.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            return _head(fd, resume["head_len"]) == (resume["head_len"], resume["head"])
        finally:
            os.close(fd)

    def _open_first(self) -> bool:
        st = self._stat_path()
        resume, self._resume = self._resume, None
        if resume is not None:
            self._fresh = False
            if self._same_file(self.path, st, resume):
                return self._open(self.path, resume["offset"], skipping=resume["skipping"])
            # Rotated while we were down: finish the old file first when it is still there.
            for suffix in self.rotated_suffixes:
                old = self.path.with_name(self.path.name + suffix)
                try:
                    ost = os.stat(old)
                except OSError:
                    continue
                if self._same_file(old, ost, resume) and self._open(
                    old, resume["offset"], skipping=resume["skipping"]
                ):
                    self._draining = True
                    return True
            # The current file was created after our last run: all of it is new to us.
            return self._open(self.path, 0)
        # start_at_end concerns the log as found at the very first poll only: a file that
        # appears later (or again, after a rotation) is new from its first byte.
        at_end, self._fresh = self._fresh and self.start_at_end, False
        if st is None:
            return False
        return self._open(self.path, st.st_size if at_end else 0)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close()

    def __enter__(self) -> FileFollower:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- reading

    def _split(self, data: bytes, out: list[LogLine]) -> None:
        start = 0
        n = len(data)
        while start < n:
            nl = data.find(b"\n", start)
            end = n if nl < 0 else nl
            if self._skipping:
                if nl >= 0:
                    self._skipping = False
            else:
                room = self.max_line - len(self._buf)
                piece = data[start:end]
                if len(piece) > room:
                    self._buf += piece[:room]
                    out.append(LogLine(_decode(self._buf), truncated=True))
                    self._buf.clear()
                    self._skipping = nl < 0  # the rest of this line is still to come
                elif nl >= 0:
                    self._buf += piece
                    out.append(LogLine(_decode(self._buf)))
                    self._buf.clear()
                else:
                    self._buf += piece
            if nl < 0:
                break
            start = nl + 1
        self._pos += n

    def _flush_partial(self, out: list[LogLine]) -> None:
        # The file will not grow any more (rotated away): its unterminated tail is a last line.
        if self._buf:
            out.append(LogLine(_decode(self._buf)))
            self._buf.clear()
        self._skipping = False

    def _rotated(self, out: list[LogLine]) -> bool:
        """At EOF: switch to the file now at `path` when it is another one. True if switched."""
        st = self._stat_path()
        if st is None:  # between the rename and the creation of the new file
            return False
        if not self._draining and (st.st_dev, st.st_ino) == self._ident:
            return False
        self._flush_partial(out)
        self._close()
        self._draining = False
        self.rotations += 1
        return self._open(self.path, 0)

    def _truncated(self) -> bool:
        assert self._fd is not None
        if os.fstat(self._fd).st_size >= self._pos:
            return False
        # copytruncate: what was written between the copy and the truncation is gone anyway,
        # and the held partial line belonged to the old content.
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._pos = 0
        self._buf.clear()
        self._skipping = False
        self.truncations += 1
        return True

    def poll(self, max_bytes: int = 1 << 20) -> list[LogLine]:
        """The complete lines appended since the last call (at most about `max_bytes` read)."""
        out: list[LogLine] = []
        if self._fd is None and not self._open_first():
            return out
        budget = max_bytes
        while budget > 0:
            assert self._fd is not None
            data = os.read(self._fd, min(_CHUNK, budget))
            if data:
                budget -= len(data)
                self._split(data, out)
                continue
            if (self._draining or not self._truncated()) and not self._rotated(out):
                break
            if self._fd is None:  # the new file vanished between stat and open
                break
        return out


# --- the journal ----------------------------------------------------------------------------------


def journal_command(
    units: Sequence[str], cursor_path: Path, *, journalctl: str = "journalctl"
) -> list[str]:
    """The journalctl command line: follow `units` as JSON, from the saved cursor when any.

    With no saved cursor it starts at the end (`-n 0`), as a file follower does on first run.
    """
    cmd = [journalctl, "--follow", "--output=json", "--no-pager", f"--cursor-file={cursor_path}"]
    for unit in units:
        cmd.append(f"--unit={unit}")
    try:
        has_cursor = cursor_path.stat().st_size > 0
    except OSError:
        has_cursor = False
    if not has_cursor:
        cmd.append("--lines=0")
    return cmd


def _field_text(value: Any) -> str:
    # journalctl writes non-UTF-8 or binary fields as arrays of byte values.
    if isinstance(value, list):
        return bytes(v & 0xFF for v in value if isinstance(v, int)).decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def parse_journal_entry(raw: bytes, max_line: int = DEFAULT_MAX_LINE) -> tuple[LogLine, str] | None:
    """(line, cursor) for one `journalctl -o json` line; None when it is not an entry."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    cursor = entry.get("__CURSOR")
    if not isinstance(cursor, str):
        return None
    text = _field_text(entry.get("MESSAGE"))
    truncated = len(text) > max_line
    try:
        time_ns: int | None = int(entry["__REALTIME_TIMESTAMP"]) * 1000
    except (KeyError, TypeError, ValueError):
        time_ns = None
    try:
        pid = int(entry.get("_PID") or entry.get("SYSLOG_PID") or 0)
    except (TypeError, ValueError):
        pid = 0
    program = _field_text(entry.get("SYSLOG_IDENTIFIER")) or _field_text(entry.get("_COMM"))
    line = LogLine(
        text[:max_line],
        source="journal",
        truncated=truncated,
        time_ns=time_ns,
        pid=pid,
        program=program,
    )
    return line, cursor


class JournalFollower:
    """`journalctl --follow --output=json` as a subprocess, read by one thread.

    `--cursor-file` makes journalctl start after the saved cursor. journalctl itself writes the
    file only when it exits, with the last entry it printed, which may be further than what
    was processed; so `checkpoint()` writes the cursor of the last entry `poll()` returned,
    and `stop()` rewrites it after journalctl has exited.
    """

    def __init__(
        self,
        cursor_path: Path,
        units: Sequence[str] = ("ssh", "sshd"),
        *,
        journalctl: str = "journalctl",
        max_line_bytes: int = DEFAULT_MAX_LINE,
        max_queued: int = 65536,
    ) -> None:
        self.cursor_path = cursor_path
        self.units = tuple(units)
        self.journalctl = journalctl
        self.max_line = max_line_bytes
        self._queue: queue.Queue[tuple[LogLine, str]] = queue.Queue(max_queued)
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._cursor: str | None = None  # of the last entry poll() returned
        self._stderr = b""
        self.dropped = 0  # entries not queued because the queue was full (counted, not hidden)

    def start(self) -> None:
        cmd = journal_command(self.units, self.cursor_path, journalctl=self.journalctl)
        try:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as exc:
            raise FollowError(f"cannot run {self.journalctl}: {exc}") from exc
        self._thread = threading.Thread(target=self._read, name="qsc-journal", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        proc = self._proc
        assert proc is not None
        assert proc.stdout is not None
        out: IO[bytes] = proc.stdout
        limit = self.max_line * 8 + 4096  # JSON escaping and the other fields
        while True:
            raw = out.readline(limit)
            if not raw:
                break
            if not raw.endswith(b"\n"):  # an entry beyond the limit: skip the rest of it
                while (more := out.readline(limit)) and not more.endswith(b"\n"):
                    pass
                self.dropped += 1
                continue
            parsed = parse_journal_entry(raw, self.max_line)
            if parsed is None:
                continue
            try:
                self._queue.put(parsed, timeout=1.0)
            except queue.Full:
                self.dropped += 1
        if proc.stderr is not None:
            self._stderr = proc.stderr.read(4096)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def poll(self, max_lines: int = 4096) -> list[LogLine]:
        """Entries received since the last call; FollowError when journalctl has died."""
        lines: list[LogLine] = []
        while len(lines) < max_lines:
            try:
                line, cursor = self._queue.get_nowait()
            except queue.Empty:
                break
            lines.append(line)
            self._cursor = cursor
        if not lines and self._proc is not None and self._proc.poll() is not None:
            if self._thread is not None:
                self._thread.join(timeout=5)
            if self._queue.empty():
                err = self._stderr.decode("utf-8", "replace").strip()[-300:]
                raise FollowError(f"journalctl exited with {self._proc.returncode}: {err}")
        return lines

    def checkpoint(self) -> None:
        if self._cursor is not None:
            write_file_atomic(self.cursor_path, self._cursor.encode(), overwrite=True)

    def stop(self) -> list[LogLine]:
        """Stop journalctl; returns the entries it had already printed (process them too)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)
        rest: list[LogLine] = []
        with contextlib.suppress(FollowError):
            while batch := self.poll():
                rest.extend(batch)
        self.checkpoint()
        return rest
