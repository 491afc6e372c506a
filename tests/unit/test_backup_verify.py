"""Backup verification: each failure class, both depths, rotating subsets, progress, bounds."""

from __future__ import annotations

import itertools
import json
import os
import tracemalloc
from pathlib import Path

import pytest

from beta.backups import (
    FailureKind,
    Progress,
    VerifyDepth,
    create_manifest,
    load_manifest,
    verify_backup_set,
)
from beta.backups.convert import result_to_event, result_to_proto
from beta.backups.verify import assign_subsets, subset_count_for
from beta.errors import BetaConfigError
from crypto.keyring import KeyManager
from qsc.common.v1 import classification_pb2 as cls
from qsc.common.v1 import integrity_details_pb2 as pb

FULL, STRUCTURAL = VerifyDepth.FULL, VerifyDepth.STRUCTURAL


@pytest.fixture
def km(tmp_path: Path) -> KeyManager:
    return KeyManager.create(tmp_path / "keys", "beta")


@pytest.fixture
def backup(tmp_path: Path, km: KeyManager) -> tuple[Path, Path]:
    root = tmp_path / "set"
    (root / "a").mkdir(parents=True)
    (root / "b" / "c").mkdir(parents=True)
    for i in range(6):
        (root / "a" / f"f{i}.bin").write_bytes(os.urandom(10_000 * (i + 1)))
    (root / "b" / "c" / "deep.bin").write_bytes(os.urandom(70_000))
    manifest = tmp_path / "set.manifest"
    create_manifest(root, manifest, km, backup_set="nightly")
    return root, manifest


def kinds(result: object) -> list[tuple[FailureKind, str]]:
    return [(f.kind, f.path) for f in result.failures]  # type: ignore[attr-defined]


def test_an_intact_set_passes_at_both_depths(backup: tuple[Path, Path], km: KeyManager) -> None:
    root, manifest = backup
    full = verify_backup_set(root, manifest, km, depth=FULL)
    assert full.passed
    assert full.failure_count == 0
    assert full.backup_set == "nightly"
    assert full.files_expected == full.files_checked == 7
    assert full.bytes_checked == sum(10_000 * (i + 1) for i in range(6)) + 70_000
    assert full.subset_count == 1
    structural = verify_backup_set(root, manifest, km, depth=STRUCTURAL)
    assert structural.passed
    assert structural.bytes_checked == 0
    assert structural.files_checked == 7


def test_bit_flip_is_content_mismatch_at_full_depth_only(
    backup: tuple[Path, Path], km: KeyManager
) -> None:
    root, manifest = backup
    victim = root / "a" / "f3.bin"
    data = bytearray(victim.read_bytes())
    data[12_345] ^= 0x10
    victim.write_bytes(bytes(data))
    assert verify_backup_set(root, manifest, km, depth=STRUCTURAL).passed
    r = verify_backup_set(root, manifest, km, depth=FULL)
    assert kinds(r) == [(FailureKind.CONTENT_MISMATCH, "a/f3.bin")]
    f = r.failures[0]
    expected = next(e for e in load_manifest(manifest, km).entries if e.path == "a/f3.bin")
    assert f.expected_sha3_256 == expected.sha3_256
    assert len(f.actual_sha3_256) == 32
    assert f.actual_sha3_256 != f.expected_sha3_256
    assert f.expected_size == f.actual_size == 40_000


@pytest.mark.parametrize("depth", [STRUCTURAL, FULL])
def test_truncation_growth_deletion_and_extra_files(
    backup: tuple[Path, Path], km: KeyManager, depth: VerifyDepth
) -> None:
    root, manifest = backup
    os.truncate(root / "a" / "f0.bin", 9_000)
    with open(root / "a" / "f1.bin", "ab") as f:
        f.write(b"appended")
    (root / "b" / "c" / "deep.bin").unlink()
    (root / "b" / "dropped.sh").write_bytes(b"#!/bin/sh\n")
    r = verify_backup_set(root, manifest, km, depth=depth)
    assert not r.passed
    assert kinds(r) == [
        (FailureKind.TRUNCATED, "a/f0.bin"),
        (FailureKind.SIZE_MISMATCH, "a/f1.bin"),
        (FailureKind.MISSING, "b/c/deep.bin"),
        (FailureKind.UNEXPECTED_FILE, "b/dropped.sh"),
    ]
    by_path = {f.path: f for f in r.failures}
    assert (by_path["a/f0.bin"].expected_size, by_path["a/f0.bin"].actual_size) == (10_000, 9_000)
    assert by_path["a/f1.bin"].actual_size == 20_008
    assert by_path["b/c/deep.bin"].actual_size == 0
    assert by_path["b/dropped.sh"].actual_size == 10
    if depth is FULL:
        # Size failures are not re-hashed: only the 4 intact files are read.
        assert r.files_checked == 4


def test_a_deleted_directory_reports_each_file_missing(
    backup: tuple[Path, Path], km: KeyManager
) -> None:
    root, manifest = backup
    for p in (root / "a").iterdir():
        p.unlink()
    (root / "a").rmdir()
    r = verify_backup_set(root, manifest, km, depth=STRUCTURAL)
    assert [k for k, _ in kinds(r)] == [FailureKind.MISSING] * 6


def test_a_file_replaced_by_a_symlink_is_not_followed(
    backup: tuple[Path, Path], km: KeyManager, tmp_path: Path
) -> None:
    root, manifest = backup
    target = tmp_path / "outside"
    target.write_bytes(b"x" * 10_000)
    (root / "a" / "f0.bin").unlink()
    (root / "a" / "f0.bin").symlink_to(target)
    r = verify_backup_set(root, manifest, km, depth=FULL)
    assert kinds(r) == [(FailureKind.UNREADABLE, "a/f0.bin")]
    assert "symlink" in r.failures[0].message


def test_an_unreadable_file_is_reported(
    backup: tuple[Path, Path], km: KeyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, manifest = backup
    real_open = os.open

    def deny(path: object, flags: int, *args: int) -> int:
        if str(path).endswith("f2.bin"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    # As root, chmod 000 would not stop us: fake the EACCES an unprivileged guardian would get.
    monkeypatch.setattr("beta.backups.scan.os.open", deny)
    r = verify_backup_set(root, manifest, km, depth=FULL)
    assert kinds(r) == [(FailureKind.UNREADABLE, "a/f2.bin")]
    assert r.failures[0].message == "Permission denied"


def test_failures_are_bounded_but_counted(tmp_path: Path, km: KeyManager) -> None:
    root = tmp_path / "many"
    root.mkdir()
    for i in range(50):
        (root / f"{i:03}").write_bytes(b"x")
    manifest = tmp_path / "m"
    create_manifest(root, manifest, km, backup_set="many")
    for i in range(50):
        (root / f"{i:03}").write_bytes(b"y")
    r = verify_backup_set(root, manifest, km, max_failures=10)
    assert r.failure_count == 50
    assert len(r.failures) == 10
    assert [f.path for f in r.failures] == [f"{i:03}" for i in range(10)]
    event = result_to_event(r)
    assert "first 10 listed" in event.summary


def test_results_convert_to_the_proto_event(backup: tuple[Path, Path], km: KeyManager) -> None:
    root, manifest = backup
    (root / "a" / "f5.bin").unlink()
    r = verify_backup_set(root, manifest, km, depth=FULL)
    msg = result_to_proto(r)
    assert msg.depth == pb.VERIFY_DEPTH_FULL
    assert not msg.passed
    assert msg.failure_count == 1
    assert msg.failures[0].kind == pb.BACKUP_FAILURE_KIND_MISSING
    assert msg.failures[0].expected_size == 60_000
    assert msg.manifest_path == str(manifest)
    assert msg.manifest_create_time.seconds > 0
    event = result_to_event(r)
    assert event.category == cls.CATEGORY_BACKUP
    assert event.severity == cls.SEVERITY_HIGH
    assert event.WhichOneof("detail") == "backup_integrity"
    assert "1 missing" in event.summary
    structural = verify_backup_set(root, manifest, km, depth=STRUCTURAL)
    assert result_to_proto(structural).depth == pb.VERIFY_DEPTH_STRUCTURAL
    manifest.write_bytes(manifest.read_bytes().replace(b"a/f1", b"a/f9"))
    tampered = result_to_event(verify_backup_set(root, manifest, km))
    assert tampered.severity == cls.SEVERITY_CRITICAL
    assert tampered.backup_integrity.failures[0].kind == pb.BACKUP_FAILURE_KIND_MANIFEST_TAMPERED


def test_progress_reports_both_phases_and_ends_complete(
    backup: tuple[Path, Path], km: KeyManager
) -> None:
    root, manifest = backup
    seen: list[Progress] = []
    verify_backup_set(root, manifest, km, progress=seen.append)
    assert seen[0].phase == "scan"
    last = seen[-1]
    assert last.phase == "hash"
    assert last.files_done == last.files_total == 7
    assert last.bytes_done == last.bytes_total == 280_000
    assert all(a.bytes_done <= b.bytes_done for a, b in itertools.pairwise(seen))


# --- rotating subsets -----------------------------------------------------------------------


def test_subsets_are_balanced_by_bytes() -> None:
    from beta.backups.manifest import ManifestEntry

    entries = [ManifestEntry(f"{i}", size, b"") for i, size in enumerate([900, 100] * 10 + [0] * 8)]
    assignment = assign_subsets(entries, 4)
    loads = [
        sum(e.size for e, s in zip(entries, assignment, strict=True) if s == k) for k in range(4)
    ]
    assert max(loads) - min(loads) <= 900
    counts = [assignment.count(k) for k in range(4)]
    assert max(counts) - min(counts) <= 2  # empty files are spread too
    assert subset_count_for(0.25, 100) == 4
    assert subset_count_for(0.3, 100) == 4
    assert subset_count_for(0.01, 3) == 3  # never more subsets than files
    with pytest.raises(BetaConfigError):
        subset_count_for(0, 10)


def test_rotating_subsets_cover_every_file_in_n_runs(tmp_path: Path, km: KeyManager) -> None:
    root = tmp_path / "big"
    root.mkdir()
    names = [f"file{i:02}" for i in range(37)]
    for i, name in enumerate(names):
        (root / name).write_bytes(os.urandom(100 + 37 * i))
    manifest = tmp_path / "m"
    cursor = tmp_path / "state" / "big.cursor"
    cursor.parent.mkdir()
    create_manifest(root, manifest, km, backup_set="big")
    # Rot every file: each run then reports exactly the files it re-hashed.
    for name in names:
        p = root / name
        data = bytearray(p.read_bytes())
        data[0] ^= 0xFF
        p.write_bytes(bytes(data))
    seen: list[set[str]] = []
    for run in range(4):
        r = verify_backup_set(root, manifest, km, subset_fraction=0.25, cursor_path=cursor)
        assert (r.subset_index, r.subset_count) == (run, 4)
        assert r.files_checked == r.failure_count
        assert {k for k, _ in kinds(r)} == {FailureKind.CONTENT_MISMATCH}
        seen.append({p for _, p in kinds(r)})
    assert set().union(*seen) == set(names)
    assert sum(len(s) for s in seen) == len(names)  # disjoint
    r = verify_backup_set(root, manifest, km, subset_fraction=0.25, cursor_path=cursor)
    assert r.subset_index == 0
    assert {p for _, p in kinds(r)} == seen[0]
    # whole_set ignores the rotation and leaves the cursor where it was.
    r = verify_backup_set(
        root, manifest, km, subset_fraction=0.25, cursor_path=cursor, whole_set=True
    )
    assert r.failure_count == 37
    assert r.subset_count == 1
    r = verify_backup_set(root, manifest, km, subset_fraction=0.25, cursor_path=cursor)
    assert r.subset_index == 1


def test_a_tampered_or_foreign_cursor_restarts_the_rotation(
    backup: tuple[Path, Path], km: KeyManager, tmp_path: Path
) -> None:
    root, manifest = backup
    cursor = tmp_path / "cursor"
    for expected in (0, 1):
        r = verify_backup_set(root, manifest, km, subset_fraction=0.34, cursor_path=cursor)
        assert r.subset_index == expected
        assert r.subset_count == 3
    doc = json.loads(cursor.read_text())
    assert doc["next_subset"] == 2
    doc["next_subset"] = 1  # pin the rotation on one subset
    cursor.write_text(json.dumps(doc))
    r = verify_backup_set(root, manifest, km, subset_fraction=0.34, cursor_path=cursor)
    assert r.subset_index == 0
    assert any("does not authenticate" in n for n in r.notes)
    # A new manifest (new content) starts a new rotation.
    (root / "new-file").write_bytes(b"n")
    create_manifest(root, manifest, km, backup_set="nightly", overwrite=True)
    r = verify_backup_set(root, manifest, km, subset_fraction=0.34, cursor_path=cursor)
    assert r.subset_index == 0
    assert not r.notes


def test_rotation_needs_a_cursor(backup: tuple[Path, Path], km: KeyManager) -> None:
    root, manifest = backup
    with pytest.raises(BetaConfigError, match="cursor"):
        verify_backup_set(root, manifest, km, subset_fraction=0.5)
    assert verify_backup_set(root, manifest, km, subset_fraction=0.5, whole_set=True).passed


def test_cursor_inside_the_set_is_not_an_unexpected_file(
    backup: tuple[Path, Path], km: KeyManager
) -> None:
    root, manifest = backup
    cursor = root / ".qsc-cursor"
    for _ in range(3):
        r = verify_backup_set(root, manifest, km, subset_fraction=0.5, cursor_path=cursor)
        assert r.passed, r.failures
        assert cursor.is_file()  # so the next run verifies a set that holds it


def test_large_file_is_hashed_in_bounded_memory(tmp_path: Path, km: KeyManager) -> None:
    root = tmp_path / "sparse"
    root.mkdir()
    with open(root / "disk.img", "wb") as f:
        f.truncate(256 * 1024 * 1024)  # sparse: cheap to make, real bytes to hash
    manifest = tmp_path / "m"
    create_manifest(root, manifest, km, backup_set="img")
    tracemalloc.start()
    try:
        r = verify_backup_set(root, manifest, km, workers=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.passed
    assert r.bytes_checked == 256 * 1024 * 1024
    assert peak < 8 * 1024 * 1024
