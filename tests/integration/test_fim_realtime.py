"""Realtime FIM on real files with real inotify: tampering, new directories, suppression, logs,
and a forced inotify queue overflow (as root: the queue is shrunk, then restored)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from beta.fim.baseline import BaselineStore, ChangeKind, Detection
from beta.fim.config import FimConfig, WatchPath
from beta.fim.metadata import MetaField
from beta.fim.realtime import FimMonitor, SensorStatus
from beta.fim.scanner import Scanner
from crypto.keyring import KeyManager
from tests.fim_recorder import Recorder

ROOT = os.geteuid() == 0
MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")


def _baseline(config: FimConfig, keys_dir: Path) -> BaselineStore:
    store = BaselineStore(config.baseline, KeyManager.create(keys_dir, "beta"))
    snap = Scanner(config).snapshot()
    assert snap.entries is not None
    store.create(snap.entries.values())
    return store


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    (etc / "ssh").mkdir(parents=True)
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (etc / "sudoers").write_text("root ALL=(ALL) ALL\n")
    (etc / "ssh" / "sshd_config").write_text("PermitRootLogin no\n")
    (etc / "bin").write_bytes(b"\x7fELF")
    (etc / "localtime").symlink_to("hosts")
    return etc


def _monitor(config: FimConfig, store: BaselineStore, rec: Recorder, **kw: object) -> FimMonitor:
    return FimMonitor(
        config,
        store,
        on_changes=rec.on_changes,
        on_health=rec.on_health,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def running(etc: Path, tmp_path: Path) -> Iterator[tuple[FimMonitor, Recorder]]:
    config = FimConfig(
        paths=(WatchPath(etc), WatchPath(tmp_path / "single" / "shadow")),
        baseline=tmp_path / "state" / "b.qsc",
    )
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "shadow").write_text("root:*:19000::::::\n")
    store = _baseline(config, tmp_path / "keys")
    rec = Recorder(timeout=5.0)
    monitor = _monitor(config, store, rec)
    monitor.start()
    try:
        assert monitor.wait_idle()
        assert rec.changes == []
        yield monitor, rec
    finally:
        monitor.stop()


def test_realtime_content_permission_xattr_symlink(
    running: tuple[FimMonitor, Recorder], etc: Path
) -> None:
    _, rec = running
    start = time.monotonic()
    (etc / "hosts").write_text("6.6.6.6 bank.example\n")
    hosts = rec.wait_for(etc / "hosts", ChangeKind.CONTENT_CHANGED)
    assert hosts.detection is Detection.REALTIME
    assert hosts.new_blake3 != hosts.old_blake3
    assert rec.times[0] - start < 1.0  # write to observation
    os.chmod(etc / "passwd", 0o666)
    assert MetaField.MODE in rec.wait_for(etc / "passwd", ChangeKind.METADATA_CHANGED).fields
    os.setxattr(etc / "ssh" / "sshd_config", "user.tag", b"x")
    sshd = rec.wait_for(etc / "ssh" / "sshd_config", ChangeKind.METADATA_CHANGED)
    assert MetaField.XATTRS in sshd.fields
    (etc / "localtime").unlink()
    (etc / "localtime").symlink_to("passwd")
    link = rec.wait_for(etc / "localtime", ChangeKind.METADATA_CHANGED)
    assert MetaField.SYMLINK_TARGET in link.fields
    (etc / "sudoers").unlink()
    rec.wait_for(etc / "sudoers", ChangeKind.DELETED)


@pytest.mark.skipif(not ROOT, reason="needs root")
def test_realtime_owner_and_capabilities(running: tuple[FimMonitor, Recorder], etc: Path) -> None:
    _, rec = running
    os.chown(etc / "hosts", 4242, 4242)
    owner = rec.wait_for(etc / "hosts", ChangeKind.METADATA_CHANGED)
    assert {MetaField.UID, MetaField.GID} <= set(owner.fields)
    if shutil.which("setcap"):
        subprocess.run(["setcap", "cap_setuid+ep", str(etc / "bin")], check=True)
    else:
        cap = (0x02000001).to_bytes(4, "little") + (1 << 7).to_bytes(4, "little") + bytes(12)
        os.setxattr(etc / "bin", "security.capability", cap)
    caps = rec.wait_for(etc / "bin", ChangeKind.METADATA_CHANGED)
    assert MetaField.CAPABILITIES in caps.fields


def test_new_directories_are_watched_as_they_appear(
    running: tuple[FimMonitor, Recorder], etc: Path
) -> None:
    _, rec = running
    deep = etc / "conf.d" / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "early").write_text("created with the directories")
    rec.wait_for(deep / "early", ChangeKind.CREATED)
    time.sleep(0.1)
    (deep / "late").write_text("created after the watch")
    rec.wait_for(deep / "late", ChangeKind.CREATED)
    shutil.move(str(etc / "conf.d"), str(etc / "moved.d"))
    rec.wait_for(etc / "moved.d" / "a" / "b" / "late", ChangeKind.CREATED)
    # A directory of the baseline moved away: its files are gone from where they belong.
    os.rename(etc / "ssh", etc / "ssh.old")
    rec.wait_for(etc / "ssh" / "sshd_config", ChangeKind.DELETED)
    rec.wait_for(etc / "ssh.old" / "sshd_config", ChangeKind.CREATED)
    (etc / "ssh.old" / "sshd_config").write_text("PermitRootLogin yes\n")  # still watched
    assert rec.wait(lambda: len(rec.of(etc / "ssh.old" / "sshd_config")) == 2)


def test_a_watched_root_removed_and_recreated_is_watched_again(
    running: tuple[FimMonitor, Recorder], etc: Path
) -> None:
    _, rec = running
    shutil.rmtree(etc)
    rec.wait_for(etc / "hosts", ChangeKind.DELETED)
    rec.wait_for(etc / "ssh" / "sshd_config", ChangeKind.DELETED)
    (etc / "ssh").mkdir(parents=True)  # seen by the watch on the root's parent
    time.sleep(0.1)
    (etc / "ssh" / "sshd_config").write_text("PermitRootLogin yes\n")
    rec.wait_for(etc / "ssh" / "sshd_config", ChangeKind.CONTENT_CHANGED)


def test_single_file_rule_replaced_by_rename_then_written_in_place(
    running: tuple[FimMonitor, Recorder], tmp_path: Path
) -> None:
    _, rec = running
    shadow = tmp_path / "single" / "shadow"
    tmp = tmp_path / "single" / "shadow.new"
    tmp.write_text("root:$6$evil:19000::::::\n")
    os.rename(tmp, shadow)
    rec.wait_for(shadow, ChangeKind.CONTENT_CHANGED)
    assert rec.of(tmp) == []  # a sibling outside the rule is not watched
    with shadow.open("a") as f:  # a write to the new inode
        f.write("toor:*:19000::::::\n")
    assert rec.wait(lambda: len(rec.of(shadow)) == 2)


def test_beta_own_restore_is_suppressed(running: tuple[FimMonitor, Recorder], etc: Path) -> None:
    monitor, rec = running
    target = etc / "sudoers"
    good = monitor.baseline.entries[str(target)]
    target.write_text("ALL ALL=(ALL) NOPASSWD: ALL\n")  # the attack
    rec.wait_for(target, ChangeKind.CONTENT_CHANGED)
    # The healer restores the known-good copy: temp file, metadata, atomic rename.
    monitor.suppress(str(target), good.blake3)
    tmp = etc / ".sudoers.qsc-heal"
    tmp.write_text("root ALL=(ALL) ALL\n")
    os.chmod(tmp, good.meta.mode)
    os.rename(tmp, target)
    rec.wait_past(etc / "after-the-restore")
    assert len(rec.of(target)) == 1  # only the attack
    assert rec.of(tmp) == []
    assert monitor.stats.suppressed >= 1
    target.write_text("again\n")  # not Beta: reported
    assert rec.wait(lambda: len(rec.of(target)) == 2)


def test_logs_in_realtime(tmp_path: Path) -> None:
    logs = tmp_path / "log"
    logs.mkdir()
    log = logs / "auth.log"
    log.write_bytes(b"line\n" * 1000)
    config = FimConfig(paths=(WatchPath(logs, log=True),), baseline=tmp_path / "b.qsc")
    store = _baseline(config, tmp_path / "keys")
    rec = Recorder(timeout=5.0)
    with _monitor(config, store, rec) as monitor:
        assert monitor.wait_idle()
        with log.open("ab") as f:
            for _ in range(50):  # a daemon appending
                f.write(b"more\n")
                f.flush()
        rec.wait_past(logs / "marker-1")
        assert [c.path for c in rec.changes] == [str(logs / "marker-1")]  # growth is no change
        os.rename(log, logs / "auth.log.1")  # logrotate
        log.write_bytes(b"")
        rotated = rec.wait_for(log, ChangeKind.LOG_ROTATED)
        assert "auth.log.1" in rotated.detail
        rec.wait_past(logs / "marker-2")
        not_markers = [(c.path, c.kind) for c in rec.changes if "marker-" not in c.path]
        assert not_markers == [(str(log), ChangeKind.LOG_ROTATED)]  # no delete/create
        log.write_bytes(b"x" * 400)
        rec.wait_past(logs / "marker-3")  # the monitor has seen the log at 400 bytes
        with log.open("r+b") as f:
            f.truncate(10)  # someone wipes the tail
        rec.wait_for(log, ChangeKind.LOG_TRUNCATED)


@pytest.mark.skipif(not ROOT, reason="shrinking the inotify queue needs root")
def test_queue_overflow_forces_a_rescan_and_a_degraded_observation(
    etc: Path, tmp_path: Path
) -> None:
    config = FimConfig(
        paths=(WatchPath(etc),),
        baseline=tmp_path / "b.qsc",
        full_scan_interval=timedelta(hours=1),
    )
    store = _baseline(config, tmp_path / "keys")
    rec = Recorder(timeout=5.0)
    monitor = _monitor(config, store, rec, initial_scan=False)
    saved = MAX_QUEUED.read_text()
    try:
        MAX_QUEUED.write_text("16\n")
        monitor.prepare()  # the queue size is fixed when the inotify instance is created
    finally:
        MAX_QUEUED.write_text(saved)
    assert MAX_QUEUED.read_text() == saved
    try:
        # A burst in a watched directory while nobody reads: far more than 16 events.
        for i in range(200):
            (etc / f"burst{i}").write_text(str(i))
        burst = etc / "burst"
        burst.mkdir()  # a new directory whose creation event is lost in the overflow
        (etc / "hosts").write_text("changed during the burst\n")
        monitor.start()
        assert rec.wait(lambda: any(h.state is SensorStatus.DEGRADED for h in rec.health))
        degraded = next(h for h in rec.health if h.state is SensorStatus.DEGRADED)
        assert degraded.kernel_queue_overflows >= 1
        assert degraded.overflows_delta >= 1
        assert "overflowed" in degraded.reasons[0]
        assert "rescan" in degraded.reasons[0]
        # The rescan (not an event, which was lost) finds what changed, then health returns.
        assert rec.wait(lambda: rec.health[-1].state is SensorStatus.HEALTHY, timeout=15)
        assert monitor.stats.full_scans >= 1
        hosts = rec.wait_for(etc / "hosts", ChangeKind.CONTENT_CHANGED)
        assert hosts.path == str(etc / "hosts")
        created = {c.path for c in rec.changes if c.kind is ChangeKind.CREATED}
        assert {str(etc / f"burst{i}") for i in range(200)} <= created
        # Watches were resynchronised: the new directory is watched in real time again.
        (burst / "after").write_text("x")
        rec.wait_for(burst / "after", ChangeKind.CREATED)
    finally:
        monitor.stop()
