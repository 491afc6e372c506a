"""Master key files, HKDF purpose keys and ids, and the rotating keyring."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import multiprocessing
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crypto import files, kdf, keyfile
from crypto.aead import AeadKey, Algorithm, Sealer, open_sealed, sealed_key_id
from crypto.errors import DecryptionError, KeyFileError, KeyringError
from crypto.keyring import KeyManager

T0 = dt.datetime(2030, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


class FakeClock:
    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += dt.timedelta(**kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def km(tmp_path: Path, clock: FakeClock) -> KeyManager:
    return KeyManager.create(tmp_path / "keys", "beta", clock=clock)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _encodings(secret: bytes) -> list[str]:
    """Every way a secret could plausibly leak into text output."""
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode(),
        base64.b64encode(secret).decode().rstrip("="),
        repr(secret),
    ]


# --- master key files -----------------------------------------------------------------------


def test_master_key_is_created_0600_even_under_a_permissive_umask(
    tmp_path: Path, umask0: None
) -> None:
    path = tmp_path / "master.key"
    secret = keyfile.create_master_key(path)
    assert len(secret) == 32
    assert _mode(path) == 0o600
    assert path.read_bytes() == secret
    assert keyfile.load_master_key(path) == secret
    assert [p.name for p in tmp_path.iterdir()] == ["master.key"]  # no temp file left behind


def test_master_key_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    secret = keyfile.create_master_key(path)
    with pytest.raises(KeyFileError, match="already exists"):
        keyfile.create_master_key(path)
    assert path.read_bytes() == secret


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        (0o644, "readable by group or other"),
        (0o640, "readable by group or other"),
        (0o604, "readable by group or other"),
        (0o620, "writable by group or other"),
        (0o602, "writable by group or other"),
    ],
)
def test_loose_master_key_modes_are_refused_with_the_fix(
    tmp_path: Path, mode: int, reason: str
) -> None:
    path = tmp_path / "master.key"
    keyfile.create_master_key(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError) as err:
        keyfile.load_master_key(path)
    message = str(err.value)
    assert str(path) in message
    assert reason in message
    assert f"chmod 600 {path}" in message


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_wrong_length_master_key_is_refused(tmp_path: Path, length: int) -> None:
    path = tmp_path / "master.key"
    files.write_file_atomic(path, os.urandom(length))
    with pytest.raises(KeyFileError, match=rf"{length} bytes, a master key is exactly 32"):
        keyfile.load_master_key(path)


def test_non_regular_master_key_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "master.key"
    directory.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        keyfile.load_master_key(directory)
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):  # and does not hang
        keyfile.load_master_key(fifo)


def test_missing_master_key_is_reported(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no such file"):
        keyfile.load_master_key(tmp_path / "nope.key")


def test_symlinked_master_key_is_checked_at_its_target(tmp_path: Path) -> None:
    target = tmp_path / "real.key"
    secret = keyfile.create_master_key(target)
    link = tmp_path / "master.key"
    link.symlink_to(target)
    assert keyfile.load_master_key(link) == secret
    target.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        keyfile.load_master_key(link)


# --- HKDF info and purpose keys -------------------------------------------------------------


def test_info_fields_cannot_slide_into_each_other() -> None:
    assert kdf.encode_fields("ab", "c") != kdf.encode_fields("a", "bc")
    assert kdf.encode_fields("1") != kdf.encode_fields(1)
    assert kdf.encode_fields(b"x") != kdf.encode_fields("x")
    root = os.urandom(32)
    assert kdf.derive_purpose_key(root, "ab", "c", 1) != kdf.derive_purpose_key(root, "a", "bc", 1)
    info = kdf.build_info("purpose-key", "beta", "vault", 1)
    assert info.startswith(kdf.encode_fields("qsc", "v1", "purpose-key"))


def test_purpose_keys_differ_per_purpose_epoch_component_and_root() -> None:
    root, other_root = os.urandom(32), os.urandom(32)
    base = kdf.derive_purpose_key(root, "beta", "vault", 1)
    assert base == kdf.derive_purpose_key(root, "beta", "vault", 1)  # deterministic
    variants = [
        kdf.derive_purpose_key(root, "beta", "outbox", 1),
        kdf.derive_purpose_key(root, "beta", "vault", 2),
        kdf.derive_purpose_key(root, "alpha", "vault", 1),
        kdf.derive_purpose_key(other_root, "beta", "vault", 1),
    ]
    assert len({base, *variants}) == 5
    assert all(len(k) == 32 for k in variants)


def test_key_ids_are_printable_and_reveal_nothing_about_the_key() -> None:
    root = os.urandom(32)
    key = kdf.derive_purpose_key(root, "beta", "vault", 3)
    key_id = kdf.derive_purpose_key_id(root, "beta", "vault", 3)
    assert re.fullmatch(r"vault/e3/[0-9a-f]{8}", key_id)
    tag = key_id.rsplit("/", 1)[1]
    assert tag not in key.hex()
    assert tag not in hashlib.sha256(key).hexdigest()
    assert tag not in hashlib.sha256(root).hexdigest()
    assert kdf.derive_purpose_key_id(root, "beta", "outbox", 3).startswith("outbox/e3/")


def test_names_are_validated() -> None:
    for bad in ("", "Beta", "be/ta", "b" * 33, "1beta", "be ta"):
        with pytest.raises(ValueError, match="component"):
            kdf.validate_name("component", bad)
    with pytest.raises(ValueError, match="known purposes: event-store, vault, outbox, baseline"):
        kdf.validate_purpose("vualt")


# --- the key manager ------------------------------------------------------------------------


def test_create_writes_private_files_and_hands_out_xchacha_keys(
    tmp_path: Path, umask0: None, clock: FakeClock
) -> None:
    km = KeyManager.create(tmp_path / "keys", "beta", clock=clock)
    keys_dir = tmp_path / "keys"
    assert _mode(keys_dir) == 0o700
    assert _mode(keys_dir / "master.key") == 0o600
    assert _mode(keys_dir / "keyring.json") == 0o600
    key = km.active_key("vault")
    assert key.algorithm is Algorithm.XCHACHA20_POLY1305
    assert re.fullmatch(r"vault/e1/[0-9a-f]{8}", key.key_id)
    ids = {km.active_key(p).key_id for p in kdf.PURPOSES}
    secrets = {km.active_key(p).secret for p in kdf.PURPOSES}
    assert len(ids) == len(secrets) == len(kdf.PURPOSES)


def test_create_refuses_an_existing_keyring(km: KeyManager, tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="already exists"):
        KeyManager.create(tmp_path / "keys", "beta")


def test_open_with_create_is_idempotent(km: KeyManager, tmp_path: Path) -> None:
    again = KeyManager.open(tmp_path / "keys", "beta", create=True)
    assert again.active_key("vault") == km.active_key("vault")


def test_reopening_gives_the_same_keys(km: KeyManager, tmp_path: Path) -> None:
    reopened = KeyManager.open(tmp_path / "keys", "beta")
    assert reopened.active_key("outbox") == km.active_key("outbox")


def test_components_get_different_keys(tmp_path: Path) -> None:
    alpha = KeyManager.create(tmp_path / "a", "alpha")
    beta = KeyManager.create(tmp_path / "b", "beta")
    assert alpha.active_key("outbox").secret != beta.active_key("outbox").secret


def test_wrong_component_is_refused(km: KeyManager, tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="belongs to component 'beta', not 'alpha'"):
        KeyManager.open(tmp_path / "keys", "alpha")
    with pytest.raises(KeyringError, match="component"):
        KeyManager.create(tmp_path / "x", "Not/Valid")


def test_unknown_purpose_and_key_id_are_refused(km: KeyManager) -> None:
    with pytest.raises(KeyringError, match="known purposes"):
        km.active_key("vualt")
    for key_id in ("vault/e9/00000000", "vault/e1/00000000", "nonsense", "vault/ex/1"):
        with pytest.raises(KeyringError, match="no key with id"):
            km.key_for_id(key_id)


def test_rotation_keeps_old_epochs_for_decryption(km: KeyManager, clock: FakeClock) -> None:
    old_key = km.active_key("vault")
    sealed = Sealer(old_key).seal(b"backup manifest", b"aad")
    assert km.rotate(force=True)
    new_key = km.active_key("vault")
    assert new_key.key_id.startswith("vault/e2/")
    assert new_key.secret != old_key.secret
    assert sealed_key_id(Sealer(new_key).seal(b"x")) == new_key.key_id
    keys = km.decryption_keys("vault")
    assert set(keys) == {old_key.key_id, new_key.key_id}
    assert open_sealed(sealed, keys, b"aad") == b"backup manifest"
    assert km.key_for_id(sealed_key_id(sealed)) == old_key
    # Another purpose's keys do not open it.
    with pytest.raises(DecryptionError):
        open_sealed(sealed, km.decryption_keys("outbox"), b"aad")


def test_rotate_is_a_no_op_until_due(km: KeyManager, clock: FakeClock, tmp_path: Path) -> None:
    ring_path = tmp_path / "keys" / "keyring.json"
    before = ring_path.read_bytes()
    clock.advance(days=89, hours=23)
    assert not km.rotate()
    assert ring_path.read_bytes() == before
    assert not km.status().rotation_due
    clock.advance(hours=1)
    assert km.status().rotation_due
    assert km.rotate()
    assert km.status().active_epoch == 2
    assert not km.rotate()  # the new epoch is fresh


def test_rotation_period_is_configurable(tmp_path: Path, clock: FakeClock) -> None:
    km = KeyManager.create(tmp_path, "ml", rotation_period=dt.timedelta(days=7), clock=clock)
    clock.advance(days=7)
    assert km.rotate()
    with pytest.raises(KeyringError, match="positive"):
        KeyManager.open(tmp_path, rotation_period=dt.timedelta(0))


def test_other_instances_see_a_rotation(km: KeyManager, tmp_path: Path) -> None:
    other = KeyManager.open(tmp_path / "keys", "beta")
    assert other.active_key("vault").key_id.startswith("vault/e1/")
    km.rotate(force=True)
    assert other.active_key("vault") == km.active_key("vault")
    assert other.active_key("vault").key_id.startswith("vault/e2/")


def _rotate_in_child(directory: str, barrier: Any, results: Any) -> None:
    later = T0 + dt.timedelta(days=100)
    km = KeyManager.open(directory, "beta", clock=lambda: later)
    barrier.wait()
    results.put(km.rotate())


def test_concurrent_rotations_rotate_once(km: KeyManager, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [
        ctx.Process(target=_rotate_in_child, args=(str(tmp_path / "keys"), barrier, results))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes == [False, False, False, True]
    assert km.status().active_epoch == 2


# --- tampering and wrong keys ---------------------------------------------------------------


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _flip_wrap(doc: dict[str, Any]) -> None:
    raw = bytearray(base64.b64decode(doc["epochs"][0]["wrapped_root"]))
    raw[-1] ^= 1
    doc["epochs"][0]["wrapped_root"] = base64.b64encode(bytes(raw)).decode()


def _swap_wraps(doc: dict[str, Any]) -> None:
    # Epochs 1 and 2 share component, creation time and state: only the number tells them apart.
    e = doc["epochs"]
    e[0]["wrapped_root"], e[1]["wrapped_root"] = e[1]["wrapped_root"], e[0]["wrapped_root"]


def _renumber(doc: dict[str, Any]) -> None:
    doc["epochs"][0]["epoch"], doc["epochs"][1]["epoch"] = 2, 1


def _backdate(doc: dict[str, Any]) -> None:
    doc["epochs"][-1]["created"] = "2020-01-01T00:00:00Z"


def _revive_old_epoch(doc: dict[str, Any]) -> None:
    # Roll back to epoch 1 as the active one (e.g. to reuse a compromised epoch).
    del doc["epochs"][-1]
    doc["epochs"][-1]["state"] = "active"


def _drop_first(doc: dict[str, Any]) -> None:
    del doc["epochs"][0]


def _flip_states(doc: dict[str, Any]) -> None:
    doc["epochs"][0]["state"], doc["epochs"][-1]["state"] = "active", "decrypt-only"


def _rename_component(doc: dict[str, Any]) -> None:
    doc["component"] = "alpha"


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (_flip_wrap, "epoch 1 that does not open"),
        (_swap_wraps, "epoch 1 that does not open"),
        (_renumber, "out of sequence"),
        (_backdate, "epoch 3 that does not open"),
        (_revive_old_epoch, "epoch 2 that does not open"),
        (_drop_first, "out of sequence"),
        (_flip_states, "only the newest epoch is active"),
        (_rename_component, "does not open"),
    ],
)
def test_tampered_keyring_is_refused_and_not_recreated(
    km: KeyManager,
    tmp_path: Path,
    tamper: Callable[[dict[str, Any]], None],
    expected: str,
) -> None:
    km.rotate(force=True)
    km.rotate(force=True)  # three epochs, all created at the same (fake) time
    ring_path = tmp_path / "keys" / "keyring.json"
    _edit(ring_path, tamper)
    tampered = ring_path.read_bytes()
    for create in (False, True):
        with pytest.raises(KeyringError) as err:
            KeyManager.open(tmp_path / "keys", None, create=create)
        assert expected in str(err.value)
        assert "restore it from backup" in str(err.value)
    assert ring_path.read_bytes() == tampered


def test_a_running_manager_refuses_a_keyring_tampered_under_it(
    km: KeyManager, tmp_path: Path
) -> None:
    _edit(tmp_path / "keys" / "keyring.json", _flip_wrap)
    with pytest.raises(KeyringError, match="does not open"):
        km.active_key("vault")


@pytest.mark.parametrize("cut", [0, 1, 40, -2])
def test_truncated_keyring_is_refused(km: KeyManager, tmp_path: Path, cut: int) -> None:
    ring_path = tmp_path / "keys" / "keyring.json"
    data = ring_path.read_bytes()
    ring_path.write_bytes(data[:cut])
    with pytest.raises(KeyringError, match=r"not valid JSON.*restore it from backup"):
        KeyManager.open(tmp_path / "keys", "beta", create=True)
    assert ring_path.read_bytes() == data[:cut]


def test_wrong_master_key_is_named(km: KeyManager, tmp_path: Path) -> None:
    master = tmp_path / "keys" / "master.key"
    master.unlink()
    keyfile.create_master_key(master)
    with pytest.raises(KeyringError, match="wrong master key"):
        KeyManager.open(tmp_path / "keys", "beta")


def test_missing_files_are_not_silently_recreated(km: KeyManager, tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    (keys_dir / "keyring.json").rename(keys_dir / "keyring.bak")
    with pytest.raises(KeyringError, match="no keyring"):
        KeyManager.open(keys_dir, "beta")
    with pytest.raises(KeyringError, match="restore it from backup"):
        KeyManager.open(keys_dir, "beta", create=True)
    (keys_dir / "keyring.bak").rename(keys_dir / "keyring.json")
    (keys_dir / "master.key").rename(keys_dir / "master.bak")
    with pytest.raises(KeyFileError, match="no such file"):
        KeyManager.open(keys_dir, "beta")
    with pytest.raises(KeyringError, match="already exists"):
        KeyManager.open(keys_dir, "beta", create=True)
    with pytest.raises(KeyringError, match="does not exist"):
        KeyManager.open(tmp_path / "nowhere", "beta")


def test_loose_master_key_mode_stops_the_manager(km: KeyManager, tmp_path: Path) -> None:
    (tmp_path / "keys" / "master.key").chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        KeyManager.open(tmp_path / "keys", "beta")


# --- status and reprs -----------------------------------------------------------------------


def test_status_reports_epochs_schedule_ids_and_modes(km: KeyManager, clock: FakeClock) -> None:
    clock.advance(days=10)
    km.rotate(force=True)
    clock.advance(days=1)
    st = km.status()
    assert st.component == "beta"
    assert st.active_epoch == 2
    assert [e.number for e in st.epochs] == [2, 1]
    assert [e.state.value for e in st.epochs] == ["active", "decrypt-only"]
    assert st.epochs[0].age == dt.timedelta(days=1)
    assert st.next_rotation_due == T0 + dt.timedelta(days=100)
    assert not st.rotation_due
    assert st.master_key_mode == st.keyring_mode == 0o600
    assert st.epochs[0].key_ids[kdf.PURPOSES.index("vault")] == km.active_key("vault").key_id
    assert re.fullmatch(r"master/[0-9a-f]{8}", st.master_key_id)
    doc = st.to_json()
    assert doc["epochs"][1]["key_ids"]["vault"].startswith("vault/e1/")
    assert doc["master_key"]["mode"] == "0600"


def test_status_and_reprs_never_contain_key_material(km: KeyManager, tmp_path: Path) -> None:
    km.rotate(force=True)
    master = (tmp_path / "keys" / "master.key").read_bytes()
    secrets = [master]
    for purpose in kdf.PURPOSES:
        secrets += [k.secret for k in km.decryption_keys(purpose).values()]
    secrets += [e.root for e in km._ring.epochs]
    st = km.status()
    texts = [
        repr(st),
        str(st),
        json.dumps(st.to_json()),
        repr(km),
        repr(km._ring.epochs),
        repr(km.active_key("vault")),
        repr(km.decryption_keys("vault")),
    ]
    for secret in secrets:
        for encoded in _encodings(secret):
            for text in texts:
                assert encoded not in text


def test_keyring_file_holds_only_wrapped_roots(km: KeyManager, tmp_path: Path) -> None:
    text = (tmp_path / "keys" / "keyring.json").read_text()
    master = (tmp_path / "keys" / "master.key").read_bytes()
    for secret in [master, km._ring.epochs[0].root, km.active_key("vault").secret]:
        for encoded in _encodings(secret):
            assert encoded not in text


def test_aead_keys_from_the_manager_compare_by_value(km: KeyManager) -> None:
    key = km.active_key("baseline")
    same = AeadKey(key_id=key.key_id, secret=key.secret, algorithm=key.algorithm)
    assert same == key
