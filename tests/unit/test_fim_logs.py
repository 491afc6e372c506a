"""Log semantics: growth is not a change, rotation is recognised once, truncation is reported."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from beta.fim.baseline import Baseline, ChangeKind, Detection
from beta.fim.config import FimConfig, WatchPath
from beta.fim.metadata import MetaField
from beta.fim.scanner import Scanner, ScanReport

LINES = b"".join(b"Jan  1 00:00:%02d host sshd[1]: line %d\n" % (i % 60, i) for i in range(200))


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    d = tmp_path / "log"
    d.mkdir()
    (d / "auth.log").write_bytes(LINES)
    (d / "auth.log.1").write_bytes(b"older\n")  # an archive: never tracked
    return d


def _config(logdir: Path) -> FimConfig:
    return FimConfig(paths=(WatchPath(logdir, log=True),), baseline=logdir.parent / "b.qsc")


def _setup(logdir: Path) -> tuple[Scanner, Baseline]:
    scanner = Scanner(_config(logdir))
    snap = scanner.snapshot()
    assert snap.entries is not None
    assert str(logdir / "auth.log.1") not in snap.entries
    return scanner, Baseline(entries=snap.entries)


def _only(report: ScanReport) -> tuple[ChangeKind, str]:
    (change,) = report.changes
    return change.kind, change.detail


def test_appends_are_not_a_change(logdir: Path) -> None:
    scanner, baseline = _setup(logdir)
    with (logdir / "auth.log").open("ab") as f:
        f.write(b"Jan  1 00:01:00 host sshd[2]: more\n" * 1000)
    report = scanner.scan(baseline)
    assert report.changes == ()
    # The verified growth becomes the new reference: cutting back below it is then caught.
    (grown,) = report.refreshed
    assert grown.meta.size == (logdir / "auth.log").stat().st_size
    baseline = baseline.evolve(report.refreshed)
    with (logdir / "auth.log").open("r+b") as f:
        f.truncate(len(LINES) + 10)  # still longer than the first baseline
    kind, detail = _only(scanner.scan(baseline))
    assert kind is ChangeKind.LOG_TRUNCATED
    assert f"shrank from {grown.meta.size} to {len(LINES) + 10}" in detail


def test_metadata_of_a_growing_log_is_still_compared(logdir: Path) -> None:
    scanner, baseline = _setup(logdir)
    with (logdir / "auth.log").open("ab") as f:
        f.write(b"more\n")
    os.chmod(logdir / "auth.log", 0o666)
    (change,) = scanner.scan(baseline).changes
    assert change.kind is ChangeKind.METADATA_CHANGED
    assert change.fields == (MetaField.MODE,)  # size and times of growth are not noise


def test_an_edit_of_the_old_prefix_is_a_content_change(logdir: Path) -> None:
    scanner, baseline = _setup(logdir)
    log = logdir / "auth.log"
    with log.open("r+b") as f:  # erase one line in place, then keep appending
        f.seek(100)
        f.write(b"X" * 30)
        f.seek(0, os.SEEK_END)
        f.write(b"appended\n")
    kind, detail = _only(scanner.scan(baseline))
    assert kind is ChangeKind.CONTENT_CHANGED
    assert "rewritten in place" in detail


def test_rename_rotation_is_one_event_and_moves_the_baseline(logdir: Path) -> None:
    scanner, baseline = _setup(logdir)
    os.rename(logdir / "auth.log.1", logdir / "auth.log.2")
    os.rename(logdir / "auth.log", logdir / "auth.log.1")
    (logdir / "auth.log").write_bytes(b"fresh\n")
    report = scanner.scan(baseline)
    kind, detail = _only(report)
    assert kind is ChangeKind.LOG_ROTATED
    assert detail == f"rotated to {logdir / 'auth.log.1'}"
    (refreshed,) = report.refreshed
    assert refreshed.path == str(logdir / "auth.log")
    assert refreshed.meta.size == 6
    # After taking the refresh, the next rotation compares against the new file.
    baseline = baseline.evolve(report.refreshed)
    assert scanner.scan(baseline).changes == ()


def test_rotation_into_a_compressed_archive_is_recognised(logdir: Path) -> None:
    scanner, baseline = _setup(logdir)
    with gzip.open(logdir / "auth.log-20240101.gz", "wb") as f:
        f.write(LINES + b"last line before rotation\n")
    os.unlink(logdir / "auth.log")
    (logdir / "auth.log").write_bytes(b"")
    kind, detail = _only(scanner.scan(baseline))
    assert kind is ChangeKind.LOG_ROTATED
    # ext4 may hand the new file the old inode number: "copied to" or "rotated to" then.
    assert str(logdir / "auth.log-20240101.gz") in detail


def test_copytruncate_with_a_copy_is_rotation(logdir: Path) -> None:
    scanner, baseline = _setup(logdir)
    (logdir / "auth.log.1").write_bytes(LINES + b"tail\n")
    with (logdir / "auth.log").open("r+b") as f:
        f.truncate(0)
    kind, detail = _only(scanner.scan(baseline))
    assert kind is ChangeKind.LOG_ROTATED
    assert detail.startswith("copied to")


def test_truncation_without_a_copy_is_reported(logdir: Path) -> None:
    scanner, baseline = _setup(logdir)
    with (logdir / "auth.log").open("r+b") as f:
        f.truncate(1000)  # the last lines (evidence) cut away
    report = scanner.scan(baseline)
    kind, detail = _only(report)
    assert kind is ChangeKind.LOG_TRUNCATED
    assert "shrank from" in detail
    assert report.refreshed == ()  # never accepted


def test_replacing_the_log_without_keeping_it_is_truncation(logdir: Path) -> None:
    scanner, baseline = _setup(logdir)
    os.unlink(logdir / "auth.log")
    (logdir / "auth.log").write_bytes(b"nothing to see\n")
    kind, detail = _only(scanner.scan(baseline))
    assert kind is ChangeKind.LOG_TRUNCATED
    assert f"{len(LINES)}" in detail  # how much was lost


def test_rotated_away_and_not_recreated_yet(logdir: Path) -> None:
    scanner, baseline = _setup(logdir)
    os.rename(logdir / "auth.log", logdir / "auth.log.1")
    kind, detail = _only(scanner.scan(baseline))
    assert kind is ChangeKind.LOG_ROTATED
    assert "not recreated yet" in detail
    os.unlink(logdir / "auth.log.1")  # deleted outright: a deletion
    assert _only(scanner.scan(baseline))[0] is ChangeKind.DELETED


def test_realtime_growth_check_does_not_reread_the_log(logdir: Path) -> None:
    scanner, baseline = _setup(logdir)
    with (logdir / "auth.log").open("ab") as f:
        f.write(b"x" * 100_000)
    report = scanner.check(baseline, [str(logdir / "auth.log")], detection=Detection.REALTIME)
    assert report.changes == ()
    assert report.bytes == 0
    with (logdir / "auth.log").open("r+b") as f:
        f.truncate(10)
    report = scanner.check(baseline, [str(logdir / "auth.log")], detection=Detection.REALTIME)
    assert _only(report)[0] is ChangeKind.LOG_TRUNCATED


def test_realtime_catches_a_cut_back_below_the_last_seen_size(logdir: Path) -> None:
    scanner, baseline = _setup(logdir)
    log = str(logdir / "auth.log")
    with (logdir / "auth.log").open("ab") as f:
        f.write(b"y" * 5000)
    grown = scanner.check(baseline, [log], detection=Detection.REALTIME)
    assert grown.changes == ()
    seen = dict(grown.log_sizes)
    assert seen[log][1] == len(LINES) + 5000
    with (logdir / "auth.log").open("r+b") as f:
        f.truncate(len(LINES) + 100)  # above the baseline size, below what was seen
    report = scanner.check(baseline, [log], detection=Detection.REALTIME, log_seen=seen)
    kind, detail = _only(report)
    assert kind is ChangeKind.LOG_TRUNCATED
    assert f"shrank from {len(LINES) + 5000}" in detail
