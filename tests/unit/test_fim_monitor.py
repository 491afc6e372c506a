"""The monitor's logic without kernel events: watch limit, dedupe, suppression, baseline checks."""

from __future__ import annotations

import errno
import os
import struct
from datetime import timedelta
from pathlib import Path

import pytest

from beta.fim.baseline import BaselineStore, BaselineTamperedError, ChangeKind
from beta.fim.config import FimConfig, WatchPath
from beta.fim.inotify import InotifyEvent, parse_events
from beta.fim.realtime import FimMonitor, SensorStatus
from beta.fim.scanner import Scanner
from crypto.keyring import KeyManager
from tests.fim_recorder import Recorder


class FakeInotify:
    """Accepts `capacity` watches, then fails like the kernel at its watch limit."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.watched: dict[str, int] = {}
        self._r, self._w = os.pipe()

    def fileno(self) -> int:
        return self._r

    def add_watch(self, path: str, mask: int) -> int:
        if path not in self.watched:
            if len(self.watched) >= self.capacity:
                raise OSError(errno.ENOSPC, "No space left on device", path)
            self.watched[path] = len(self.watched) + 1
        return self.watched[path]

    def rm_watch(self, wd: int) -> None:
        self.watched = {p: w for p, w in self.watched.items() if w != wd}

    def read_events(self) -> list[InotifyEvent]:
        return []

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[FimConfig, BaselineStore, Path]:
    etc = tmp_path / "etc"
    for sub in ("a", "b", "c"):
        (etc / sub).mkdir(parents=True)
        (etc / sub / "f").write_text(sub)
    config = FimConfig(
        paths=(WatchPath(etc),),
        baseline=tmp_path / "state" / "b.qsc",
        degraded_scan_interval=timedelta(seconds=1),
    )
    store = BaselineStore(config.baseline, KeyManager.create(tmp_path / "keys", "beta"))
    snap = Scanner(config).snapshot()
    assert snap.entries is not None
    store.create(snap.entries.values())
    return config, store, etc


def test_parse_events() -> None:
    raw = (
        struct.pack("iIII", 1, 0x100, 0, 8)
        + b"abc\0\0\0\0\0"
        + struct.pack("iIII", -1, 0x4000, 0, 0)
    )
    assert parse_events(raw) == [
        InotifyEvent(1, 0x100, 0, b"abc"),
        InotifyEvent(-1, 0x4000, 0, b""),
    ]


def test_watch_limit_degrades_rescans_and_recovers(
    setup: tuple[FimConfig, BaselineStore, Path],
) -> None:
    config, store, etc = setup
    fake = FakeInotify(capacity=2)  # 4 directories to watch
    rec = Recorder()
    monitor = FimMonitor(
        config,
        store,
        on_changes=rec.on_changes,
        on_health=rec.on_health,
        inotify_factory=lambda: fake,
    )
    monitor.start()
    try:
        assert rec.wait(lambda: any(h.state is SensorStatus.DEGRADED for h in rec.health))
        degraded = next(h for h in rec.health if h.state is SensorStatus.DEGRADED)
        assert "watch limit" in degraded.reasons[0]
        assert "max_user_watches" in degraded.reasons[0]
        assert degraded.unwatched_directories >= 1
        assert degraded.mode == "inotify"
        assert monitor.wait_idle()
        assert monitor.stats.full_scans >= 1  # the limit forced a rescan
        (etc / "c" / "f").write_text("tampered")  # in a directory nobody watches
        assert rec.wait(lambda: len(rec.changes) == 1)  # the degraded-interval scan finds it
        fake.capacity = 100  # the administrator raised the limit
        assert rec.wait(lambda: rec.health[-1].state is SensorStatus.HEALTHY)
        assert rec.health[-1].unwatched_directories == 0
    finally:
        monitor.stop()


def test_inotify_unavailable_means_scans_only(setup: tuple[FimConfig, BaselineStore, Path]) -> None:
    config, store, _ = setup
    rec = Recorder()

    def unavailable() -> FakeInotify:
        raise OSError(errno.EMFILE, "Too many open files")

    monitor = FimMonitor(
        config,
        store,
        on_changes=rec.on_changes,
        on_health=rec.on_health,
        inotify_factory=unavailable,
    )
    monitor.prepare()
    (health,) = rec.health
    assert health.state is SensorStatus.DEGRADED
    assert health.mode == "scan"
    assert "inotify unavailable" in health.reasons[0]
    monitor.stop()


def _scans_only(config: FimConfig) -> FimConfig:
    return FimConfig(paths=config.paths, baseline=config.baseline, realtime=False)


def test_a_state_is_reported_once_and_again_when_it_changes(
    setup: tuple[FimConfig, BaselineStore, Path],
) -> None:
    config, store, etc = setup
    rec = Recorder()
    monitor = FimMonitor(_scans_only(config), store, on_changes=rec.on_changes)
    monitor.start()
    try:
        assert monitor.wait_idle()
        (etc / "a" / "f").write_text("evil")
        for _ in range(3):
            monitor.request_scan("test")
            assert monitor.wait_idle()
        assert [c.kind for c in rec.changes] == [ChangeKind.CONTENT_CHANGED]
        (etc / "a" / "f").write_text("evil, again")
        monitor.request_scan("test")
        assert monitor.wait_idle()
        assert len(rec.changes) == 2
        (etc / "a" / "f").write_text("a")  # back to the baseline content
        monitor.request_scan("test")
        assert monitor.wait_idle()
        assert len(rec.changes) == 3  # still differs: inode/times (metadata)
        assert rec.changes[-1].kind is ChangeKind.METADATA_CHANGED
    finally:
        monitor.stop()


def test_suppressed_restore_raises_nothing_and_refreshes_the_baseline(
    setup: tuple[FimConfig, BaselineStore, Path],
) -> None:
    config, store, etc = setup
    rec = Recorder()
    absorbed: list[str] = []
    monitor = FimMonitor(
        _scans_only(config),
        store,
        on_changes=rec.on_changes,
        on_suppressed=lambda path, entry: absorbed.append(path),
    )
    monitor.start()
    try:
        assert monitor.wait_idle()
        target = etc / "b" / "f"
        good = monitor.baseline.entries[str(target)]
        revision = monitor.baseline.revision
        # What a healer does: write a temp file with the right metadata, rename it in place.
        monitor.suppress(str(target), good.blake3)
        tmp = etc / "b" / ".f.heal"
        tmp.write_text("b")
        os.chmod(tmp, good.meta.mode)
        os.rename(tmp, target)
        monitor.request_scan("test")
        assert monitor.wait_idle()
        assert rec.changes == []
        assert absorbed == [str(target)]
        assert monitor.baseline.revision == revision + 1
        assert store.load().entries[str(target)].meta.inode == os.stat(target).st_ino
    finally:
        monitor.stop()


def test_suppression_does_not_hide_other_content_or_metadata(
    setup: tuple[FimConfig, BaselineStore, Path],
) -> None:
    config, store, etc = setup
    rec = Recorder()
    monitor = FimMonitor(_scans_only(config), store, on_changes=rec.on_changes)
    monitor.start()
    try:
        assert monitor.wait_idle()
        a, c = etc / "a" / "f", etc / "c" / "f"
        monitor.suppress(str(a), monitor.baseline.entries[str(a)].blake3)
        monitor.suppress(str(c), monitor.baseline.entries[str(c)].blake3)
        a.write_text("not what the healer wrote")
        os.chmod(c, 0o777)  # right content, wrong mode
        monitor.request_scan("test")
        assert monitor.wait_idle()
        assert sorted((ch.path, ch.kind) for ch in rec.changes) == [
            (str(a), ChangeKind.CONTENT_CHANGED),
            (str(c), ChangeKind.METADATA_CHANGED),
        ]
    finally:
        monitor.stop()


def test_tampered_baseline_at_start_is_reported_and_refused(
    setup: tuple[FimConfig, BaselineStore, Path],
) -> None:
    config, store, _ = setup
    data = bytearray(store.path.read_bytes())
    data[-1] ^= 1
    store.path.write_bytes(bytes(data))
    rec = Recorder()
    monitor = FimMonitor(config, store, on_changes=rec.on_changes, on_health=rec.on_health)
    with pytest.raises(BaselineTamperedError):
        monitor.start()
    (change,) = rec.changes
    assert change.kind is ChangeKind.BASELINE_TAMPERED
    assert change.path == str(store.path)
    assert rec.health[-1].state is SensorStatus.FAILED
    monitor.stop()


def test_baseline_tampered_while_running_is_reported_once(
    setup: tuple[FimConfig, BaselineStore, Path],
) -> None:
    config, store, etc = setup
    rec = Recorder()
    monitor = FimMonitor(_scans_only(config), store, on_changes=rec.on_changes)
    monitor.start()
    try:
        assert monitor.wait_idle()
        data = bytearray(store.path.read_bytes())
        data[-1] ^= 1
        store.path.write_bytes(bytes(data))
        (etc / "a" / "f").write_text("evil")
        for _ in range(2):
            monitor.request_scan("test")
            assert monitor.wait_idle()
        kinds = sorted(c.kind.value for c in rec.changes)
        # The trusted in-memory copy keeps working; the tampering is reported once.
        assert kinds == ["baseline_tampered", "content_changed"]
    finally:
        monitor.stop()
