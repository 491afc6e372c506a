"""Backup manifests: content, atomic creation, authentication, and every way to tamper with one."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

import pytest

from beta.backups import (
    FailureKind,
    ManifestMissingError,
    ManifestTamperedError,
    create_manifest,
    load_manifest,
    verify_backup_set,
)
from beta.backups.manifest import BackupSetChangedError, ManifestEntry, encode_manifest
from beta.errors import IntegrityError
from crypto.keyring import KeyManager

T0 = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@pytest.fixture
def km(tmp_path: Path) -> KeyManager:
    return KeyManager.create(tmp_path / "keys", "beta", clock=lambda: T0)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "set"
    (r / "db" / "2030").mkdir(parents=True)
    (r / "db" / "2030" / "full.dump").write_bytes(os.urandom(300_000))
    (r / "db" / "2030" / "incr.dump").write_bytes(os.urandom(5_000))
    (r / "README").write_bytes(b"nightly backups\n")
    (r / "empty").write_bytes(b"")
    return r


def test_manifest_lists_every_regular_file_with_sha3_and_size(
    root: Path, tmp_path: Path, km: KeyManager
) -> None:
    (root / "link").symlink_to(root / "README")  # not backup content
    os.mkfifo(root / "fifo")
    path = tmp_path / "set.manifest"
    m = create_manifest(root, path, km, backup_set="nightly", clock=lambda: T0)
    assert [e.path for e in m.entries] == [
        "README",
        "db/2030/full.dump",
        "db/2030/incr.dump",
        "empty",
    ]
    for e in m.entries:
        data = (root / e.path).read_bytes()
        assert e.size == len(data)
        assert e.sha3_256 == hashlib.sha3_256(data).digest()
    assert m.file_count == 4
    assert m.total_size == 300_000 + 5_000 + 16
    assert m.key_id == km.active_key("manifest").key_id
    loaded = load_manifest(path, km)
    assert loaded == m
    assert loaded.created == T0
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_manifest_format_is_versioned_json_lines_with_an_auth_trailer(
    root: Path, tmp_path: Path, km: KeyManager
) -> None:
    path = tmp_path / "m"
    create_manifest(root, path, km, backup_set="nightly", exclude=("*.tmp",), clock=lambda: T0)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    header, entries, trailer = lines[0], lines[1:-1], lines[-1]
    assert header == {
        "format": "qsc-backup-manifest",
        "version": 1,
        "backup_set": "nightly",
        "created": "2030-01-02T03:04:05Z",
        "hash": "sha3-256",
        "encrypted": False,
        "exclude": ["*.tmp"],
        "file_count": 4,
        "total_size": 305_016,
    }
    assert entries[0] == {
        "path": "README",
        "size": 16,
        "sha3_256": hashlib.sha3_256(b"nightly backups\n").hexdigest(),
    }
    assert set(trailer) == {"auth"}


def test_excludes_and_a_manifest_inside_the_set_are_left_out(root: Path, km: KeyManager) -> None:
    (root / "db" / "scratch.tmp").write_bytes(b"x")
    (root / "cache").mkdir()
    (root / "cache" / "blob").write_bytes(b"y")
    path = root / "MANIFEST"
    m = create_manifest(root, path, km, backup_set="s", exclude=("*.tmp", "cache"))
    assert {e.path for e in m.entries} == {
        "README",
        "db/2030/full.dump",
        "db/2030/incr.dump",
        "empty",
    }
    # The same excludes (from the authenticated header) and the manifest itself are skipped.
    r = verify_backup_set(root, path, km)
    assert r.passed, r.failures


def test_undecodable_file_names_round_trip(tmp_path: Path, km: KeyManager) -> None:
    root = tmp_path / "set"
    root.mkdir()
    name = b"caf\xe9-latin1.bin"  # not UTF-8
    with open(os.path.join(os.fsencode(root), name), "wb") as f:
        f.write(b"data")
    path = tmp_path / "m"
    m = create_manifest(root, path, km, backup_set="s")
    assert m.entries[0].path == os.fsdecode(name)
    assert verify_backup_set(root, path, km).passed


def test_creation_is_atomic_and_does_not_clobber(
    root: Path, tmp_path: Path, km: KeyManager
) -> None:
    path = tmp_path / "m"
    create_manifest(root, path, km, backup_set="s")
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        create_manifest(root, path, km, backup_set="s")
    assert path.read_bytes() == before
    (root / "new").write_bytes(b"n")
    m = create_manifest(root, path, km, backup_set="s", overwrite=True)
    assert m.file_count == 5
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_file_changing_during_creation_is_refused(
    root: Path, tmp_path: Path, km: KeyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    import beta.backups.manifest as manifest_mod
    from beta.backups.scan import digest_file as real_digest

    def growing(path: Path, **kw: object) -> object:
        with open(path, "ab") as f:
            f.write(b"+")
        return real_digest(path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(manifest_mod, "digest_file", growing)
    with pytest.raises(BackupSetChangedError, match="changed size"):
        create_manifest(root, tmp_path / "m", km, backup_set="s", workers=1)
    assert not (tmp_path / "m").exists()


# --- tampering ------------------------------------------------------------------------------


def _made(root: Path, tmp_path: Path, km: KeyManager) -> Path:
    path = tmp_path / "m"
    create_manifest(root, path, km, backup_set="s")
    return path


def _edit_line(path: Path, index: int, edit: dict[str, object]) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    doc = json.loads(lines[index])
    doc.update(edit)
    lines[index] = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode() + b"\n"
    path.write_bytes(b"".join(lines))


def _assert_tampered(root: Path, path: Path, km: KeyManager, reason: str | None) -> None:
    with pytest.raises(ManifestTamperedError, match=reason):
        load_manifest(path, km)
    r = verify_backup_set(root, path, km)
    assert not r.passed
    assert [f.kind for f in r.failures] == [FailureKind.MANIFEST_TAMPERED]
    assert r.failures[0].path == str(path)
    assert r.files_checked == 0
    assert r.bytes_checked == 0


@pytest.mark.parametrize(
    ("index", "edit"),
    [
        (1, {"sha3_256": "00" * 32}),  # a rotted file re-blessed
        (2, {"size": 1}),
        (0, {"backup_set": "other"}),
        (0, {"exclude": ["*"]}),  # would hide every file
    ],
)
def test_an_edited_entry_or_header_fails_authentication(
    root: Path, tmp_path: Path, km: KeyManager, index: int, edit: dict[str, object]
) -> None:
    path = _made(root, tmp_path, km)
    _edit_line(path, index, edit)
    _assert_tampered(root, path, km, "edited after it was created")


def test_a_single_bit_flip_anywhere_fails(root: Path, tmp_path: Path, km: KeyManager) -> None:
    path = _made(root, tmp_path, km)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    _assert_tampered(root, path, km, None)


def test_removed_and_added_lines_fail(root: Path, tmp_path: Path, km: KeyManager) -> None:
    path = _made(root, tmp_path, km)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2] + lines[3:]))
    _assert_tampered(root, path, km, "edited")
    path.write_bytes(b"".join([*lines[:-1], lines[1], lines[-1]]))
    _assert_tampered(root, path, km, "edited")


def test_trailer_damage_and_truncation_fail(root: Path, tmp_path: Path, km: KeyManager) -> None:
    path = _made(root, tmp_path, km)
    good = path.read_bytes()
    path.write_bytes(good[:-5])
    _assert_tampered(root, path, km, "truncated")
    path.write_bytes(good.rsplit(b"\n", 2)[0] + b"\n" + b'{"auth":"AAAA"}\n')
    _assert_tampered(root, path, km, "no valid authentication line")
    path.write_bytes(good + b'{"path":"x","size":1,"sha3_256":"' + b"00" * 32 + b'"}\n')
    _assert_tampered(root, path, km, None)


def test_a_trailer_from_another_manifest_does_not_fit(
    root: Path, tmp_path: Path, km: KeyManager
) -> None:
    path = _made(root, tmp_path, km)
    other = tmp_path / "other"
    (root / "extra").write_bytes(b"e")
    create_manifest(root, other, km, backup_set="s")
    body = path.read_bytes().rsplit(b"\n", 2)[0] + b"\n"
    path.write_bytes(body + other.read_bytes().rsplit(b"\n", 2)[1] + b"\n")
    _assert_tampered(root, path, km, "edited")


def test_a_manifest_forged_with_another_keyring_is_refused(
    root: Path, tmp_path: Path, km: KeyManager
) -> None:
    forger = KeyManager.create(tmp_path / "forger", "beta")
    path = tmp_path / "m"
    create_manifest(root, path, forger, backup_set="s")
    _assert_tampered(root, path, km, "which this keyring does not have")


def test_a_valid_but_malformed_manifest_is_still_refused(tmp_path: Path, km: KeyManager) -> None:
    # Authentic (sealed with our key) yet unsafe: a path escaping the root.
    bad = ManifestEntry("../etc/passwd", 1, b"\x00" * 32)
    path = tmp_path / "m"
    path.write_bytes(
        encode_manifest(
            backup_set="s",
            created=T0,
            encrypted=False,
            exclude=(),
            entries=[bad],
            key=km.active_key("manifest"),
        )
    )
    with pytest.raises(ManifestTamperedError, match="invalid entry"):
        load_manifest(path, km)


def test_a_missing_manifest_is_reported_not_raised(
    root: Path, tmp_path: Path, km: KeyManager
) -> None:
    path = tmp_path / "absent"
    with pytest.raises(ManifestMissingError):
        load_manifest(path, km)
    r = verify_backup_set(root, path, km)
    assert [f.kind for f in r.failures] == [FailureKind.MANIFEST_TAMPERED]
    assert "no such file" in r.failures[0].message
    assert issubclass(ManifestTamperedError, IntegrityError)


def test_manifests_survive_key_rotation(root: Path, tmp_path: Path) -> None:
    now = [T0]
    km = KeyManager.create(tmp_path / "keys", "beta", clock=lambda: now[0])
    path = _made(root, tmp_path, km)
    now[0] = T0 + dt.timedelta(days=100)
    assert km.rotate()
    assert km.active_key("manifest").key_id != load_manifest(path, km).key_id
    assert verify_backup_set(root, path, km).passed


def test_a_manifest_of_another_set_is_refused(root: Path, tmp_path: Path, km: KeyManager) -> None:
    path = tmp_path / "m"
    create_manifest(root, path, km, backup_set="web")
    assert verify_backup_set(root, path, km, backup_set="web").passed
    r = verify_backup_set(root, path, km, backup_set="db")
    assert [f.kind for f in r.failures] == [FailureKind.MANIFEST_TAMPERED]
    assert "backup set 'web', not 'db'" in r.failures[0].message
