"""The log followers on real files in a temp dir (no sleeps: `poll()` reads what is there), and
the journal follower against a stand-in journalctl."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from alpha.auth.follow import (
    AuthSourceConfig,
    FileFollower,
    FollowError,
    JournalFollower,
    journal_command,
    open_follower,
    parse_journal_entry,
)
from mesh.errors import ConfigError


def texts(lines: list) -> list[str]:  # type: ignore[type-arg]
    return [line.text for line in lines]


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "auth.log"
    path.write_text("old 1\nold 2\n")
    return path


def test_starts_at_end_then_reads_appends(log: Path, tmp_path: Path) -> None:
    with FileFollower(log, tmp_path / "state.json") as f:
        assert f.poll() == []
        append(log, "a\nb\n")
        assert texts(f.poll()) == ["a", "b"]
        assert f.poll() == []


def test_start_at_beginning_and_late_file(tmp_path: Path) -> None:
    path = tmp_path / "later.log"
    with FileFollower(path, start_at_end=True) as f:
        assert f.poll() == []  # not there yet
        path.write_text("first\n")  # a file that appears later is new from its first byte
        assert texts(f.poll()) == ["first"]
    path.write_text("x\ny\n")
    with FileFollower(path, start_at_end=False) as f:
        assert texts(f.poll()) == ["x", "y"]


def test_partial_last_line_waits_for_its_newline(log: Path) -> None:
    with FileFollower(log) as f:
        f.poll()
        append(log, "Failed pass")
        assert f.poll() == []
        append(log, "word for root\nnext")
        assert texts(f.poll()) == ["Failed password for root"]
        append(log, "\r\n")
        assert texts(f.poll()) == ["next"]


def test_rotation_by_rename_reads_old_file_to_its_end(log: Path) -> None:
    with FileFollower(log) as f:
        f.poll()
        append(log, "before\n")
        # logrotate: rename, the writer appends a last line to the old file, a new file appears.
        log.rename(log.with_name("auth.log.1"))
        append(log.with_name("auth.log.1"), "late in old\ntail without newline")
        assert texts(f.poll()) == ["before", "late in old"]  # new file not created yet
        log.write_text("new 1\n")
        assert texts(f.poll()) == ["tail without newline", "new 1"]
        assert f.rotations == 1
        append(log, "new 2\n")
        assert texts(f.poll()) == ["new 2"]


def test_copytruncate(log: Path) -> None:
    with FileFollower(log) as f:
        f.poll()
        append(log, "one\npartial")
        assert texts(f.poll()) == ["one"]
        # logrotate copytruncate: copy, then truncate in place; the writer goes on at 0.
        with log.open("r+") as w:
            w.truncate(0)
        append(log, "after\n")
        assert texts(f.poll()) == ["after"]
        assert f.truncations == 1


def test_restart_resumes_at_saved_offset(log: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    f = FileFollower(log, state)
    f.poll()
    append(log, "a\nb\npart")
    assert texts(f.poll()) == ["a", "b"]
    f.checkpoint()
    append(log, "ial\nc\n")
    f.close()  # "crash" after a checkpoint: lines after it are read again, none before it
    saved = json.loads(state.read_text())
    assert saved["offset"] == len("old 1\nold 2\na\nb\n")
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    with FileFollower(log, state) as g:
        assert texts(g.poll()) == ["partial", "c"]
        g.checkpoint()
    with FileFollower(log, state) as h:
        assert h.poll() == []  # nothing is ever read twice after a checkpoint


def test_restart_after_rotation_finishes_the_rotated_file(log: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with FileFollower(log, state) as f:
        f.poll()
        append(log, "seen\n")
        assert texts(f.poll()) == ["seen"]
        f.checkpoint()
    append(log, "unseen in old\n")
    log.rename(log.with_name("auth.log.1"))
    log.write_text("in new\n")
    with FileFollower(log, state) as g:
        assert texts(g.poll()) == ["unseen in old", "in new"]


def test_restart_after_truncation_or_replacement(log: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with FileFollower(log, state) as f:
        f.poll()
        f.checkpoint()
    log.write_text("short\n")  # same inode, shorter than the saved offset
    with FileFollower(log, state) as g:
        assert texts(g.poll()) == ["short"]
        g.checkpoint()
    log.unlink()
    log.write_text("replaced\n")  # another inode, no rotated file to finish
    with FileFollower(log, state) as h:
        assert texts(h.poll()) == ["replaced"]


def test_damaged_state_starts_fresh(log: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("{not json")
    with FileFollower(log, state) as f:
        assert f.poll() == []  # as a first run: at the end
        append(log, "x\n")
        assert texts(f.poll()) == ["x"]


def test_long_lines_are_cut(log: Path, tmp_path: Path) -> None:
    with FileFollower(log, tmp_path / "s.json", max_line_bytes=32) as f:
        f.poll()
        append(log, "A" * 100 + "\nshort\n")
        out = f.poll()
        assert [(len(x.text), x.truncated) for x in out] == [(32, True), (5, False)]
        # A long line split across reads: the rest is skipped up to its newline.
        append(log, "B" * 40)
        (cut,) = f.poll()
        assert cut.truncated
        f.checkpoint()
        append(log, "B" * 10 + "\nok\n")
        assert texts(f.poll()) == ["ok"]
    # Restarting in the middle of the skipped line still skips it.
    with FileFollower(log, tmp_path / "s2.json", max_line_bytes=32) as g:
        g.poll()
        append(log, "C" * 50)
        g.poll()
        g.checkpoint()
    with FileFollower(log, tmp_path / "s2.json", max_line_bytes=32) as h:
        append(log, "C\nafter\n")
        assert texts(h.poll()) == ["after"]


def test_invalid_utf8_is_replaced(log: Path) -> None:
    with FileFollower(log) as f:
        f.poll()
        with log.open("ab") as w:
            w.write(b"user \xff\xfe\n")
        assert texts(f.poll()) == ["user \ufffd\ufffd"]


# --- journal -----------------------------------------------------------------------------------


def entry(cursor: str, message: object, **extra: object) -> bytes:
    return json.dumps(
        {
            "__CURSOR": cursor,
            "__REALTIME_TIMESTAMP": "1700000000000001",
            "_PID": "321",
            "SYSLOG_IDENTIFIER": "sshd",
            "MESSAGE": message,
            **extra,
        }
    ).encode()


def test_parse_journal_entry() -> None:
    parsed = parse_journal_entry(entry("c1", "Failed password for root from 1.2.3.4 port 1 ssh2"))
    assert parsed is not None
    line, cursor = parsed
    assert cursor == "c1"
    assert (line.source, line.pid, line.program, line.time_ns) == (
        "journal",
        321,
        "sshd",
        1700000000000001000,
    )
    binary = parse_journal_entry(entry("c2", list(b"bad \xff")))
    assert binary is not None
    assert binary[0].text == "bad \ufffd"
    assert parse_journal_entry(b"not json") is None
    assert parse_journal_entry(b'{"MESSAGE": "no cursor"}') is None
    long = parse_journal_entry(entry("c3", "x" * 100), max_line=10)
    assert long is not None
    assert long[0].truncated
    assert len(long[0].text) == 10


def test_journal_command(tmp_path: Path) -> None:
    cursor = tmp_path / "cursor"
    cmd = journal_command(("ssh", "sshd"), cursor)
    assert cmd[:3] == ["journalctl", "--follow", "--output=json"]
    assert f"--cursor-file={cursor}" in cmd
    assert "--unit=ssh" in cmd
    assert "--unit=sshd" in cmd
    assert "--lines=0" in cmd  # no cursor yet: from now on
    cursor.write_text("s=abc")
    assert "--lines=0" not in journal_command(("ssh",), cursor)


FAKE_JOURNALCTL = """#!{python}
import json, sys, time
args = sys.argv[1:]
with open({argv_file!r}, "w") as f:
    json.dump(args, f)
for i in range(3):
    msg = f"Invalid user u{{i}} from 192.0.2.1 port {{i}}"
    fields = {{"__CURSOR": f"cur{{i}}", "MESSAGE": msg, "_PID": "5", "SYSLOG_IDENTIFIER": "sshd"}}
    print(json.dumps(fields), flush=True)
if "--exit" in " ".join(args):
    print("boom", file=sys.stderr)
    sys.exit(3)
time.sleep(30)
"""


def fake_journalctl(tmp_path: Path) -> tuple[Path, Path]:
    script = tmp_path / "journalctl"
    argv_file = tmp_path / "argv.json"
    script.write_text(FAKE_JOURNALCTL.format(python=sys.executable, argv_file=str(argv_file)))
    script.chmod(0o755)
    return script, argv_file


def drain(j: JournalFollower, n: int, timeout: float = 10.0) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got.extend(texts(j.poll()))
        time.sleep(0.01)
    return got


def test_journal_follower_runs_journalctl_and_saves_cursor(tmp_path: Path) -> None:
    script, argv_file = fake_journalctl(tmp_path)
    cursor = tmp_path / "cursor"
    j = JournalFollower(cursor, ("ssh",), journalctl=str(script))
    j.start()
    try:
        got = drain(j, 3)
        assert got == [f"Invalid user u{i} from 192.0.2.1 port {i}" for i in range(3)]
        j.checkpoint()
        assert cursor.read_text() == "cur2"
    finally:
        j.stop()
    assert not j.running
    assert "--unit=ssh" in json.loads(argv_file.read_text())
    assert cursor.read_text() == "cur2"  # stop() rewrites what journalctl may have written


def test_journal_follower_reports_a_dead_journalctl(tmp_path: Path) -> None:
    script, _ = fake_journalctl(tmp_path)
    j = JournalFollower(tmp_path / "cursor", ("--exit",), journalctl=str(script))
    j.start()
    try:
        assert len(drain(j, 3)) == 3
        deadline = time.monotonic() + 10
        with pytest.raises(FollowError, match="exited with 3: boom"):  # noqa: PT012
            while time.monotonic() < deadline:
                j.poll()
                time.sleep(0.01)
    finally:
        j.stop()
    with pytest.raises(FollowError, match="cannot run"):
        JournalFollower(tmp_path / "c", journalctl=str(tmp_path / "missing")).start()


def test_state_file_is_written_atomically(log: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with FileFollower(log, state) as f:
        f.poll()
        f.checkpoint()
        assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
        assert json.loads(state.read_text())["ino"] == os.stat(log).st_ino


def test_source_config_and_open_follower(log: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="absolute"):
        AuthSourceConfig(path=Path("auth.log"))
    with pytest.raises(ConfigError, match="units"):
        AuthSourceConfig(source="journal", units=())
    follower = open_follower(AuthSourceConfig(path=log), tmp_path)
    assert isinstance(follower, FileFollower)
    with follower:
        follower.poll()
        follower.checkpoint()
    assert (tmp_path / "auth.follow.json").exists()
