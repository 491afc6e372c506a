"""The vault: sealed round trips, versions, tamper detection, AAD binding, path and symlink
tricks, and AES-GCM nonces that never repeat across reopen and rotation."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from beta.vault import (
    UnsafePathError,
    Vault,
    VaultConfig,
    VaultError,
    VaultNotFoundError,
    VaultTamperedError,
)
from beta.vault.store import INDEX_FILE, NONCES_DIR, OBJECTS_DIR, slot_of
from crypto.hashing import blake3_256
from crypto.keyring import KeyManager


@pytest.fixture
def keys(tmp_path: Path) -> KeyManager:
    return KeyManager.create(tmp_path / "keys", "beta")


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    (etc / "ssh").mkdir(parents=True)
    return etc


def _config(tmp_path: Path, etc: Path, versions: int = 5) -> VaultConfig:
    return VaultConfig(tmp_path / "state" / "vault", roots=(etc,), versions=versions)


@pytest.fixture
def vault(tmp_path: Path, etc: Path, keys: KeyManager) -> Iterator[Vault]:
    with Vault(_config(tmp_path, etc), keys) as v:
        yield v


def _objects(v: Vault) -> Path:
    return v.config.directory / OBJECTS_DIR


def _nonce(blob: bytes) -> bytes:
    kid_len = blob[3]
    return blob[4 + kid_len : 4 + kid_len + 12]


def test_round_trip_private_files(umask0: None, vault: Vault, etc: Path, tmp_path: Path) -> None:
    path = str(etc / "hosts")
    data = b"127.0.0.1 localhost\n"
    rec = vault.put(path, data, expected_blake3=blake3_256(data), baseline_version=3)
    assert (rec.version, rec.size, rec.baseline_version) == (1, len(data), 3)
    assert rec.blake3 == blake3_256(data)
    assert rec.key_id.endswith("/gcm")
    copy = vault.get(path)
    assert copy.content == data
    assert copy.record == rec
    assert vault.find(path, rec.blake3).content == data
    assert data.decode() not in repr(copy)
    root = vault.config.directory
    for d in (root, root / OBJECTS_DIR, root / NONCES_DIR):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    files = [p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert files
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert all(data not in p.read_bytes() for p in files)  # sealed, not stored in clear
    assert vault.paths() == (path,)


def test_reopen_reads_what_was_written(tmp_path: Path, etc: Path, keys: KeyManager) -> None:
    path = str(etc / "passwd")
    with Vault(_config(tmp_path, etc), keys) as v:
        v.put(path, b"root:x:0:0\n")
    with Vault(_config(tmp_path, etc), keys) as v:
        assert v.get(path).content == b"root:x:0:0\n"
        assert v.revision == 1


def test_versions_retained_and_pruned(tmp_path: Path, etc: Path, keys: KeyManager) -> None:
    path = str(etc / "sudoers")
    with Vault(_config(tmp_path, etc, versions=2), keys) as v:
        for i in range(1, 4):
            v.put(path, b"v%d\n" % i)
        assert v.put(path, b"v3\n").version == 3  # the newest already holds it: no new version
        assert [r.version for r in v.versions(path)] == [3, 2]
        assert v.get(path, version=2).content == b"v2\n"
        assert v.get(path).content == b"v3\n"
        with pytest.raises(VaultNotFoundError):
            v.get(path, version=1)
        assert not (_objects(v) / f"{slot_of(path)}.1").exists()  # pruned object deleted
        v.put(path, b"v2\n")  # reverting gets a new version, numbers never reused
        assert [r.version for r in v.versions(path)] == [4, 3]
        assert v.find(path, blake3_256(b"v2\n")).record.version == 4
        with pytest.raises(VaultNotFoundError):
            v.find(path, blake3_256(b"never stored"))
        assert v.forget(path)
        assert v.versions(path) == ()


def test_refuses_unexpected_or_oversized_content(
    tmp_path: Path, etc: Path, keys: KeyManager
) -> None:
    cfg = VaultConfig(tmp_path / "v", roots=(etc,), max_bytes=10)
    with Vault(cfg, keys) as v:
        with pytest.raises(VaultError, match="expected"):
            v.put(str(etc / "a"), b"x", expected_blake3=blake3_256(b"y"))
        with pytest.raises(VaultError, match="at most"):
            v.put(str(etc / "a"), b"x" * 11)
        assert v.paths() == ()


@pytest.mark.parametrize("how", ["flip", "truncate", "delete", "symlink"])
def test_tampered_object_detected(vault: Vault, etc: Path, tmp_path: Path, how: str) -> None:
    path = str(etc / "hosts")
    vault.put(path, b"good\n")
    obj = _objects(vault) / f"{slot_of(path)}.1"
    blob = obj.read_bytes()
    if how == "flip":
        obj.write_bytes(blob[:-5] + bytes([blob[-5] ^ 1]) + blob[-4:])
    elif how == "truncate":
        obj.write_bytes(blob[:-1])
    elif how == "delete":
        obj.unlink()
    else:  # a valid sealed copy reached through a symlink is still refused
        (tmp_path / "elsewhere").write_bytes(blob)
        obj.unlink()
        obj.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(VaultTamperedError):
        vault.get(path)


def test_tampered_index_detected(tmp_path: Path, etc: Path, keys: KeyManager) -> None:
    cfg = _config(tmp_path, etc)
    with Vault(cfg, keys) as v:
        v.put(str(etc / "hosts"), b"good\n")
    index = cfg.directory / INDEX_FILE
    good = index.read_bytes()
    index.write_bytes(good[:-3] + bytes([good[-3] ^ 0x40]) + good[-2:])
    with pytest.raises(VaultTamperedError, match="index"):
        Vault(cfg, keys)
    index.write_bytes(good.replace(b"revision=1", b"revision=9"))  # header is authenticated
    with pytest.raises(VaultTamperedError, match="index"):
        Vault(cfg, keys)
    index.unlink()  # copies without an index: not an empty vault
    with pytest.raises(VaultTamperedError, match="missing"):
        Vault(cfg, keys)


def test_old_index_put_back_is_refused(tmp_path: Path, etc: Path, keys: KeyManager) -> None:
    cfg = _config(tmp_path, etc)
    with Vault(cfg, keys) as v:
        v.put(str(etc / "hosts"), b"one\n")
        old = (cfg.directory / INDEX_FILE).read_bytes()
        v.put(str(etc / "hosts"), b"two\n")
        (cfg.directory / INDEX_FILE).write_bytes(old)  # validly sealed, but replayed
        with pytest.raises(VaultTamperedError, match="older"):
            v.get(str(etc / "hosts"))


def test_aad_binds_path(vault: Vault, etc: Path) -> None:
    a, b = str(etc / "a.conf"), str(etc / "b.conf")
    vault.put(a, b"same content\n")
    vault.put(b, b"same content\n")  # same hash, same size: only the path tells them apart
    objects = _objects(vault)
    shutil.copyfile(objects / f"{slot_of(a)}.1", objects / f"{slot_of(b)}.1")
    assert vault.get(a).content == b"same content\n"
    with pytest.raises(VaultTamperedError):
        vault.get(b)


def test_aad_binds_version(vault: Vault, etc: Path) -> None:
    path = str(etc / "hosts")
    for content in (b"A\n", b"B\n", b"A\n"):  # v1 and v3 hold the same bytes
        vault.put(path, content)
    objects = _objects(vault)
    shutil.copyfile(objects / f"{slot_of(path)}.1", objects / f"{slot_of(path)}.3")
    with pytest.raises(VaultTamperedError):
        vault.get(path, version=3)
    assert vault.get(path, version=1).content == b"A\n"


@pytest.mark.parametrize(
    "bad",
    [
        "relative/path",
        "{etc}/../outside",
        "{etc}/./hosts",
        "{etc}//hosts",
        "{etc}/hosts/",
        "/{etc}/hosts",
        "{etc}x/hosts",
        "/etc/passwd",
        "{etc}/nul\0byte",
    ],
)
def test_traversal_refused(vault: Vault, etc: Path, bad: str) -> None:
    path = bad.replace("{etc}", str(etc))
    with pytest.raises(UnsafePathError):
        vault.put(path, b"x")
    with pytest.raises(UnsafePathError):
        vault.get(path)
    assert vault.paths() == ()


def test_object_names_never_carry_the_path(vault: Vault, etc: Path) -> None:
    vault.put(str(etc / "ssh" / "sshd_config"), b"PermitRootLogin no\n")
    names = os.listdir(_objects(vault))
    assert names == [f"{slot_of(str(etc / 'ssh' / 'sshd_config'))}.1"]
    assert "sshd" not in names[0]


def test_capture_reads_live_file_without_following_symlinks(
    vault: Vault, etc: Path, tmp_path: Path
) -> None:
    real = etc / "ssh" / "sshd_config"
    real.write_bytes(b"PermitRootLogin no\n")
    rec = vault.capture(str(real), blake3_256(b"PermitRootLogin no\n"), baseline_version=2)
    assert rec.baseline_version == 2
    with pytest.raises(VaultError, match="expected"):  # changed since the baseline
        vault.capture(str(real), blake3_256(b"something else"))
    secret = tmp_path / "secret"
    secret.write_bytes(b"not yours\n")
    (etc / "link").symlink_to(secret)
    with pytest.raises(UnsafePathError):
        vault.capture(str(etc / "link"), blake3_256(b"not yours\n"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sshd_config").write_bytes(b"evil\n")
    (etc / "linkdir").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="symlink"):
        vault.capture(str(etc / "linkdir" / "sshd_config"), blake3_256(b"evil\n"))
    (etc / "fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(etc / "fifo")
    with pytest.raises(UnsafePathError):
        vault.capture(str(etc / "fifo"), blake3_256(b""))


def test_symlinked_vault_directory_refused(tmp_path: Path, etc: Path, keys: KeyManager) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "vault").symlink_to(tmp_path / "real")
    with pytest.raises(VaultError, match="symlink"):
        Vault(_config(tmp_path, etc), keys)


def test_loose_vault_directory_refused(tmp_path: Path, etc: Path, keys: KeyManager) -> None:
    cfg = _config(tmp_path, etc)
    cfg.directory.mkdir(parents=True)
    cfg.directory.chmod(0o755)
    with pytest.raises(VaultError, match="0700"):
        Vault(cfg, keys)


def test_nonces_never_repeat_across_reopen(tmp_path: Path, etc: Path, keys: KeyManager) -> None:
    cfg = _config(tmp_path, etc, versions=1000)
    path = str(etc / "hosts")
    nonces: list[bytes] = []
    n = 0
    for _ in range(3):
        with Vault(cfg, keys) as v:
            for _ in range(5):
                n += 1
                rec = v.put(path, b"content %d\n" % n)
                nonces.append(_nonce((_objects(v) / rec.object_name).read_bytes()))
                index = (cfg.directory / INDEX_FILE).read_bytes()
                nonces.append(_nonce(index[index.index(b"\n") + 1 :]))
    assert len(nonces) == 30
    assert len(set(nonces)) == 30
    fixed = {x[:4] for x in nonces}
    assert len(fixed) == 1  # one counter per key id, resumed (not re-created) on reopen
    counters = sorted(int.from_bytes(x[4:], "big") for x in nonces)
    assert counters[-1] >= 2 * 4096  # each reopen skips past the reserved block
    state = list((cfg.directory / NONCES_DIR).glob("*.json"))
    assert len(state) == 1
    assert stat.S_IMODE(state[0].stat().st_mode) == 0o600


def test_rotation_new_key_new_counter_old_copies_open(
    tmp_path: Path, etc: Path, keys: KeyManager
) -> None:
    cfg = _config(tmp_path, etc)
    path = str(etc / "hosts")
    with Vault(cfg, keys) as v:
        old = v.put(path, b"before rotation\n")
        assert keys.rotate(force=True)
        new = v.put(path, b"after rotation\n")
        assert new.key_id != old.key_id
        assert new.key_id == v.active_key_id()
        assert v.get(path, version=1).content == b"before rotation\n"
    assert len(list((cfg.directory / NONCES_DIR).glob("*.json"))) == 2
    with Vault(cfg, keys) as v:
        assert v.get(path, version=1).content == b"before rotation\n"
        assert v.get(path).content == b"after rotation\n"


def test_lost_nonce_state_is_not_recreated(tmp_path: Path, etc: Path, keys: KeyManager) -> None:
    cfg = _config(tmp_path, etc)
    with Vault(cfg, keys) as v:
        v.put(str(etc / "hosts"), b"one\n")
    for f in (cfg.directory / NONCES_DIR).iterdir():
        f.unlink()
    with Vault(cfg, keys) as v:
        assert v.get(str(etc / "hosts")).content == b"one\n"  # reading needs no nonces
        with pytest.raises(VaultTamperedError, match="nonce"):
            v.put(str(etc / "hosts"), b"two\n")


def test_keys_never_in_repr(vault: Vault) -> None:
    text = repr(vault) + repr(vault.config)
    assert "secret" not in text.lower()


# --- verification: every copy, before a heal needs it --------------------------------------------


def _damage(obj: Path, how: str) -> None:
    blob = obj.read_bytes()
    if how == "flip":
        obj.write_bytes(blob[:40] + bytes([blob[40] ^ 1]) + blob[41:])
    elif how == "truncate":
        obj.write_bytes(blob[:-3])
    else:
        obj.unlink()


@pytest.mark.parametrize(
    ("how", "reason"),
    [("flip", "does not open"), ("truncate", "does not open"), ("delete", "object missing")],
)
def test_verify_names_each_bad_copy_and_quarantine_takes_it_out(
    vault: Vault, etc: Path, how: str, reason: str
) -> None:
    hosts, sshd = str(etc / "hosts"), str(etc / "ssh" / "sshd_config")
    vault.put(hosts, b"hosts v1\n")
    vault.put(hosts, b"hosts v2\n")
    vault.put(sshd, b"PermitRootLogin no\n")
    assert vault.verify().ok
    assert vault.verify().checked == 3
    obj = _objects(vault) / f"{slot_of(hosts)}.1"
    _damage(obj, how)
    result = vault.verify()
    assert not result.ok
    assert [(b.record.path, b.record.version, b.reason) for b in result.bad] == [(hosts, 1, reason)]
    assert vault.quarantine(result.bad) == 1
    assert [r.version for r in vault.versions(hosts)] == [2]
    assert vault.verify().ok
    assert vault.verify().checked == 2
    if how != "delete":  # kept aside for investigation, never read again
        assert (obj.parent / (obj.name + ".tampered")).exists()
    assert vault.quarantine(result.bad) == 0  # idempotent


def test_a_bad_newest_copy_is_replaced_by_a_fresh_version_on_capture(
    vault: Vault, etc: Path
) -> None:
    path = str(etc / "hosts")
    good = b"127.0.0.1 localhost\n"
    vault.put(path, good)
    _damage(_objects(vault) / f"{slot_of(path)}.1", "flip")
    # Before: "the newest version already holds it" kept the corrupted copy forever.
    rec = vault.put(path, good, expected_blake3=blake3_256(good))
    assert rec.version == 2
    assert vault.get(path).content == good


def test_verify_reports_a_tampered_index_as_the_open_does(
    tmp_path: Path, etc: Path, keys: KeyManager
) -> None:
    cfg = _config(tmp_path, etc)
    with Vault(cfg, keys) as v:
        v.put(str(etc / "hosts"), b"good\n")
        index = cfg.directory / INDEX_FILE
        raw = index.read_bytes()
        index.write_bytes(raw[:-3] + bytes([raw[-3] ^ 0x40]) + raw[-2:])
        with pytest.raises(VaultTamperedError, match="index"):
            v.verify()
