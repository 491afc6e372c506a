"""Full scans against a baseline: every kind of tampering, budgets, progress, unreadable paths."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from beta.fim import metadata
from beta.fim.baseline import Baseline, Change, ChangeKind, Detection
from beta.fim.config import FimConfig, WatchPath
from beta.fim.metadata import MetaField
from beta.fim.scanner import IoBudget, Scanner, ScanProgress

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    (etc / "ssh").mkdir(parents=True)
    (etc / "cache").mkdir()
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (etc / "ssh" / "sshd_config").write_text("PermitRootLogin no\n")
    (etc / "cache" / "junk").write_text("j")
    (etc / "bin").write_bytes(b"\x7fELF")
    (etc / "localtime").symlink_to("hosts")
    return etc


def _config(tree: Path, **kw: object) -> FimConfig:
    rule = WatchPath(tree, exclude=("cache/",), heal="approve")
    return FimConfig(paths=(rule,), baseline=tree.parent / "state" / "b.qsc", **kw)  # type: ignore[arg-type]


def _baseline(config: FimConfig) -> Baseline:
    snap = Scanner(config).snapshot()
    assert snap.entries is not None
    assert not snap.issues
    return Baseline(entries=snap.entries, version=3)


def _by_path(changes: tuple[Change, ...]) -> dict[str, Change]:
    out = {c.path: c for c in changes}
    assert len(out) == len(changes), changes
    return out


def test_clean_tree_has_no_changes(tree: Path) -> None:
    config = _config(tree)
    baseline = _baseline(config)
    assert str(tree / "cache" / "junk") not in baseline.entries  # excluded subtree
    assert str(tree / "cache") not in baseline.entries
    report = Scanner(config).scan(baseline)
    assert report.changes == ()
    assert report.issues == ()
    assert report.files == len(baseline)


def test_every_kind_of_tampering(tree: Path) -> None:
    config = _config(tree)
    baseline = _baseline(config)
    (tree / "hosts").write_text("6.6.6.6 bank.example\n")  # content
    os.chmod(tree / "passwd", 0o666)  # permission
    (tree / "localtime").unlink()
    (tree / "localtime").symlink_to("passwd")  # symlink retarget
    (tree / "ssh" / "sshd_config").unlink()  # deleted
    (tree / "ssh" / "authorized_keys").write_text("ssh-ed25519 AAAA evil\n")  # created
    (tree / "bin").unlink()
    (tree / "bin").symlink_to("/bin/sh")  # type change
    os.setxattr(tree / "ssh", "user.note", b"x")  # xattr on a directory
    (tree / "cache" / "more").write_text("ignored")  # excluded
    report = Scanner(config).scan(baseline)
    changes = _by_path(report.changes)
    hosts = changes[str(tree / "hosts")]
    assert hosts.kind is ChangeKind.CONTENT_CHANGED
    assert hosts.old_blake3 == baseline.entries[str(tree / "hosts")].blake3
    assert hosts.new_blake3
    assert hosts.new_blake3 != hosts.old_blake3
    assert (hosts.detection, hosts.baseline_version, hosts.heal) == (
        Detection.FULL_SCAN,
        3,
        "approve",
    )
    passwd = changes[str(tree / "passwd")]
    assert passwd.kind is ChangeKind.METADATA_CHANGED
    assert MetaField.MODE in passwd.fields
    link = changes[str(tree / "localtime")]
    assert link.kind is ChangeKind.METADATA_CHANGED
    assert MetaField.SYMLINK_TARGET in link.fields
    assert changes[str(tree / "ssh" / "sshd_config")].kind is ChangeKind.DELETED
    assert changes[str(tree / "ssh" / "sshd_config")].new is None
    created = changes[str(tree / "ssh" / "authorized_keys")]
    assert created.kind is ChangeKind.CREATED
    assert created.old is None
    binary = changes[str(tree / "bin")]
    assert binary.kind is ChangeKind.CONTENT_CHANGED
    assert MetaField.FILE_TYPE in binary.fields
    assert "regular -> symlink" in binary.detail
    ssh = changes[str(tree / "ssh")]
    assert ssh.kind is ChangeKind.METADATA_CHANGED
    assert ssh.fields == (MetaField.XATTRS,)  # directory size/times churn is not reported
    assert str(tree / "cache" / "more") not in changes


@pytest.mark.root
@needs_root
def test_owner_and_capability_tampering(tree: Path) -> None:
    config = _config(tree)
    baseline = _baseline(config)
    os.chown(tree / "passwd", 1234, 5678)
    if shutil.which("setcap"):
        subprocess.run(["setcap", "cap_setuid+ep", str(tree / "bin")], check=True)
    else:
        cap = (0x02000001).to_bytes(4, "little") + (1 << 7).to_bytes(4, "little") + bytes(12)
        os.setxattr(tree / "bin", "security.capability", cap)
    changes = _by_path(Scanner(config).scan(baseline).changes)
    owner = changes[str(tree / "passwd")]
    assert {MetaField.UID, MetaField.GID} <= set(owner.fields)
    assert owner.new is not None
    assert owner.new.meta.uid == 1234
    caps = changes[str(tree / "bin")]
    assert caps.kind is ChangeKind.METADATA_CHANGED
    assert MetaField.CAPABILITIES in caps.fields
    assert MetaField.XATTRS not in caps.fields


def test_quick_scan_rehashes_only_what_moved_and_ctime_betrays_a_backdated_edit(
    tree: Path,
) -> None:
    config = _config(tree)
    baseline = _baseline(config)
    quiet = Scanner(config).scan(baseline, quick=True)
    assert quiet.changes == ()
    assert quiet.bytes == 0
    assert quiet.detection is Detection.QUICK_SCAN
    target = tree / "hosts"
    st = target.stat()
    target.write_text("127.0.0.2 localhost\n")  # same size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back
    report = Scanner(config).scan(baseline, quick=True)
    (change,) = report.changes
    assert change.kind is ChangeKind.CONTENT_CHANGED
    assert MetaField.MTIME not in change.fields
    assert MetaField.CTIME in change.fields


def test_unreadable_file_is_an_issue_not_a_crash(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tree)
    baseline = _baseline(config)
    real_open = metadata._open_noatime
    victim = str(tree / "hosts")

    def refusing(path: str) -> int:
        if path == victim:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path)

    monkeypatch.setattr(metadata, "_open_noatime", refusing)
    report = Scanner(config).scan(baseline)
    assert report.changes == ()  # content unknown: not claimed as changed
    assert [(i.path, i.reason) for i in report.issues] == [
        (victim, "cannot open: Permission denied")
    ]


def test_unlistable_directory_does_not_make_its_files_look_deleted(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tree)
    baseline = _baseline(config)
    real_scandir = os.scandir
    ssh = str(tree / "ssh")

    def scandir(path: str) -> Iterator[os.DirEntry[str]]:
        if path == ssh:
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = Scanner(config).scan(baseline)
    assert report.changes == ()
    assert any(i.path == ssh and "cannot list" in i.reason for i in report.issues)


def test_missing_watched_path_is_reported(tmp_path: Path) -> None:
    config = FimConfig(paths=(WatchPath(tmp_path / "absent"),), baseline=tmp_path / "b.qsc")
    report = Scanner(config).snapshot()
    assert report.entries == {}
    assert [i.reason for i in report.issues] == ["watched path does not exist"]


def test_entries_outside_the_config_are_an_issue_not_deletions(tree: Path) -> None:
    baseline = _baseline(_config(tree))
    narrower = FimConfig(paths=(WatchPath(tree / "ssh"),), baseline=tree.parent / "b.qsc")
    report = Scanner(narrower).scan(baseline)
    assert report.changes == ()
    assert any("outside the configured paths" in i.reason for i in report.issues)


def test_nested_rules_record_each_path_once(tree: Path) -> None:
    config = FimConfig(
        paths=(
            WatchPath(tree, exclude=("cache/",)),
            WatchPath(tree / "ssh", heal="auto"),
            WatchPath(tree / "passwd", heal="never"),
        ),
        baseline=tree.parent / "b.qsc",
    )
    report = Scanner(config).snapshot()
    assert report.entries is not None
    assert report.files == len(report.entries)
    baseline = Baseline(entries=report.entries)
    (tree / "ssh" / "sshd_config").write_text("PermitRootLogin yes\n")
    (change,) = Scanner(config).scan(baseline).changes
    assert change.heal == "auto"  # the deeper rule's policy


def test_check_looks_at_named_paths_and_subtrees_only(tree: Path) -> None:
    config = _config(tree)
    baseline = _baseline(config)
    (tree / "hosts").write_text("changed\n")
    (tree / "passwd").write_text("changed too\n")
    (tree / "newdir" / "deep").mkdir(parents=True)
    (tree / "newdir" / "deep" / "f").write_text("f")
    report = Scanner(config).check(
        baseline, paths=[str(tree / "hosts")], subtrees=[str(tree / "newdir")]
    )
    assert sorted(c.path for c in report.changes) == [
        str(tree / "hosts"),
        str(tree / "newdir"),
        str(tree / "newdir" / "deep"),
        str(tree / "newdir" / "deep" / "f"),
    ]
    assert report.scope.contains(str(tree / "newdir" / "x"))
    assert not report.scope.contains(str(tree / "passwd"))
    # A removed subtree: everything the baseline had below it is deleted.
    shutil.rmtree(tree / "ssh")
    gone = Scanner(config).check(baseline, subtrees=[str(tree / "ssh")])
    assert sorted((c.path, c.kind) for c in gone.changes) == [
        (str(tree / "ssh"), ChangeKind.DELETED),
        (str(tree / "ssh" / "sshd_config"), ChangeKind.DELETED),
    ]


def test_progress_reports_rate_and_eta(tree: Path) -> None:
    for i in range(20):
        (tree / f"f{i}").write_bytes(os.urandom(10_000))
    seen: list[ScanProgress] = []
    report = Scanner(_config(tree), on_progress=seen.append, progress_interval=0).snapshot()
    assert len(seen) > 20
    final = seen[-1]
    assert final.finished
    assert final.eta == 0.0
    assert final.files_done == final.files_total == report.files
    assert final.bytes_done == final.bytes_total == report.bytes >= 200_000
    assert all(p.eta is None or p.eta >= 0 for p in seen)
    assert any(p.current.endswith("/hosts") for p in seen)


def test_io_budget_meters_every_chunk(tree: Path) -> None:
    (tree / "big").write_bytes(os.urandom(6 * 1024 * 1024))
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    rate = 2 * 1024 * 1024
    scanner = Scanner(_config(tree), io_budget=rate, clock=lambda: now[0], sleep=sleep)
    report = scanner.snapshot()
    assert report.bytes >= 6 * 1024 * 1024
    # Every byte is paid for at 2 MiB/s: the rate is a ceiling from the start.
    assert sum(slept) >= report.bytes / rate * 0.99


def test_io_budget_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        IoBudget(0)
