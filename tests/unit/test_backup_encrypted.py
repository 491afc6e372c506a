"""Encrypted backup sets: sealed files verified by hash and by opening every chunk."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from beta.backups import FailureKind, create_manifest, verify_backup_set
from beta.backups.sealedfile import HEADER_SIZE, iter_plaintext, seal_file
from crypto.aead import AeadKey, Algorithm, Sealer
from crypto.errors import DecryptionError
from crypto.keyring import KeyManager
from crypto.nonces import RandomNonceSource

CHUNK = 4096


@pytest.fixture
def km(tmp_path: Path) -> KeyManager:
    return KeyManager.create(tmp_path / "keys", "beta")


def aes_key(tag: str = "backup/1") -> AeadKey:
    return AeadKey(tag, os.urandom(32), Algorithm.AES_256_GCM)


def aes_sealer(key: AeadKey) -> Sealer:
    return Sealer(key, RandomNonceSource.aes_gcm())


@pytest.fixture
def plain(tmp_path: Path) -> dict[str, bytes]:
    files = {
        "db.dump": os.urandom(CHUNK * 3 + 17),
        "etc.tar": os.urandom(CHUNK * 2),  # ends exactly on a chunk boundary
        "empty": b"",
    }
    src = tmp_path / "plain"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    return files


def seal_set(tmp_path: Path, sealer: Sealer, names: list[str]) -> Path:
    root = tmp_path / "sealed"
    root.mkdir(exist_ok=True)
    for name in names:
        seal_file(tmp_path / "plain" / name, root / f"{name}.qsc", sealer, chunk_size=CHUNK)
    return root


def test_sealed_files_round_trip_in_chunks(tmp_path: Path, plain: dict[str, bytes]) -> None:
    key = aes_key()
    root = seal_set(tmp_path, aes_sealer(key), list(plain))
    for name, data in plain.items():
        chunks = list(iter_plaintext(root / f"{name}.qsc", {key.key_id: key}))
        assert b"".join(chunks) == data
        assert all(len(c) <= CHUNK for c in chunks)
    with pytest.raises(DecryptionError):
        list(iter_plaintext(root / "db.dump.qsc", {"other": aes_key("other")}))


def test_intact_encrypted_set_passes_full_verify_with_keys(
    tmp_path: Path, plain: dict[str, bytes], km: KeyManager
) -> None:
    key = km.active_key("vault")  # XChaCha20-Poly1305 purpose key from the keyring
    root = seal_set(tmp_path, Sealer(key), list(plain))
    manifest = tmp_path / "m"
    m = create_manifest(root, manifest, km, backup_set="enc", encrypted=True)
    assert m.encrypted
    r = verify_backup_set(root, manifest, km, decryption_keys=km.decryption_keys("vault"))
    assert r.passed, r.failures
    assert r.bytes_checked == m.total_size  # ciphertext as stored
    # Without keys: hash-only, and the result says so.
    r = verify_backup_set(root, manifest, km)
    assert r.passed
    assert any("hash only" in n for n in r.notes)


def test_a_file_sealed_under_another_key_is_a_decryption_failure(
    tmp_path: Path, plain: dict[str, bytes], km: KeyManager
) -> None:
    good, stray = aes_key("backup/good"), aes_key("backup/lost")
    root = seal_set(tmp_path, aes_sealer(good), ["db.dump", "empty"])
    seal_file(tmp_path / "plain" / "etc.tar", root / "etc.tar.qsc", aes_sealer(stray))
    manifest = tmp_path / "m"
    create_manifest(root, manifest, km, backup_set="enc", encrypted=True)  # hashes match
    r = verify_backup_set(root, manifest, km, decryption_keys={good.key_id: good})
    assert [(f.kind, f.path) for f in r.failures] == [
        (FailureKind.DECRYPTION_FAILURE, "etc.tar.qsc")
    ]
    f = r.failures[0]
    assert f.actual_sha3_256 == f.expected_sha3_256
    assert "wrong or lost key" in f.message


@pytest.mark.parametrize(
    "damage",
    ["flip-ciphertext", "drop-last-chunk", "swap-chunks", "trailing-bytes", "bad-magic"],
)
def test_damaged_ciphertext_fails_to_open(
    tmp_path: Path, plain: dict[str, bytes], km: KeyManager, damage: str
) -> None:
    key = aes_key()
    root = seal_set(tmp_path, aes_sealer(key), ["db.dump"])
    target = root / "db.dump.qsc"
    data = bytearray(target.read_bytes())
    # Records: 4-byte length then the sealed chunk; all full chunks have the same length.
    rec = 4 + int.from_bytes(data[HEADER_SIZE : HEADER_SIZE + 4], "big")
    first, second = HEADER_SIZE, HEADER_SIZE + rec
    if damage == "flip-ciphertext":
        data[second + 100] ^= 0x01
    elif damage == "drop-last-chunk":
        data = data[: HEADER_SIZE + 3 * rec]  # a clean cut at a chunk boundary
    elif damage == "swap-chunks":
        data[first:second], data[second : second + rec] = (
            data[second : second + rec],
            data[first:second],
        )
    elif damage == "trailing-bytes":
        data += b"\x00" * 8
    else:
        data[0:8] = b"NOTSEAL!"
    manifest = tmp_path / "m"
    # Manifest made after the damage: only the decryption check can catch it.
    create_manifest(root, manifest, km, backup_set="enc", encrypted=True)
    target.write_bytes(bytes(data))
    create_manifest(root, manifest, km, backup_set="enc", encrypted=True, overwrite=True)
    r = verify_backup_set(root, manifest, km, decryption_keys={key.key_id: key})
    assert [f.kind for f in r.failures] == [FailureKind.DECRYPTION_FAILURE]


def test_rot_after_the_manifest_reports_decryption_failure_and_the_hash(
    tmp_path: Path, plain: dict[str, bytes], km: KeyManager
) -> None:
    key = aes_key()
    root = seal_set(tmp_path, aes_sealer(key), ["db.dump"])
    manifest = tmp_path / "m"
    create_manifest(root, manifest, km, backup_set="enc", encrypted=True)
    target = root / "db.dump.qsc"
    data = bytearray(target.read_bytes())
    data[-3] ^= 0x80
    target.write_bytes(bytes(data))
    r = verify_backup_set(root, manifest, km, decryption_keys={key.key_id: key})
    (f,) = r.failures
    assert f.kind is FailureKind.DECRYPTION_FAILURE
    assert f.actual_sha3_256 != f.expected_sha3_256
    assert "differs from the manifest" in f.message
    # Hash-only verification still catches the rot as a content mismatch.
    r = verify_backup_set(root, manifest, km)
    assert [f.kind for f in r.failures] == [FailureKind.CONTENT_MISMATCH]


def test_files_sealed_before_a_key_rotation_still_open(
    tmp_path: Path, plain: dict[str, bytes]
) -> None:
    now = [dt.datetime(2030, 1, 1, tzinfo=dt.UTC)]
    km = KeyManager.create(tmp_path / "keys", "beta", clock=lambda: now[0])
    root = seal_set(tmp_path, Sealer(km.active_key("vault")), list(plain))
    manifest = tmp_path / "m"
    create_manifest(root, manifest, km, backup_set="enc", encrypted=True)
    now[0] += dt.timedelta(days=91)
    assert km.rotate()
    r = verify_backup_set(root, manifest, km, decryption_keys=km.decryption_keys("vault"))
    assert r.passed, r.failures
