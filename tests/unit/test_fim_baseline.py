"""The authenticated baseline: round trip, tamper detection, rollback, key rotation, atomicity."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from beta.errors import IntegrityError
from beta.fim.baseline import (
    Baseline,
    BaselineMissingError,
    BaselineStore,
    BaselineStoreError,
    BaselineTamperedError,
    ChangeKind,
    Entry,
    tampered_change,
)
from beta.fim.metadata import FileMeta, FileType
from crypto.keyring import KeyManager


def _entry(
    path: str, content: bytes = b"x", *, xattrs: tuple[tuple[str, bytes], ...] = ()
) -> Entry:
    meta = FileMeta(FileType.REGULAR, 0o644, 0, 0, 42, len(content), 1, 2, None, xattrs)
    return Entry(path, meta, bytes(range(32)))


@pytest.fixture
def keys(tmp_path: Path) -> KeyManager:
    return KeyManager.create(tmp_path / "keys", "beta")


@pytest.fixture
def store(tmp_path: Path, keys: KeyManager) -> BaselineStore:
    return BaselineStore(tmp_path / "state" / "baseline.qsc", keys)


def _entries() -> list[Entry]:
    link = FileMeta(FileType.SYMLINK, 0o777, 0, 0, 7, 4, 1, 2, "target", ())
    odd = "/etc/caf\udce9"  # a non-UTF-8 file name, as os.fsdecode gives it
    return [
        _entry("/etc/a", xattrs=(("security.capability", b"\x01\x00"), ("user.k", b"v"))),
        Entry("/etc/link", link, None),
        _entry(odd),
    ]


def test_round_trip(store: BaselineStore) -> None:
    saved = store.create(_entries(), config_digest="cfg", host="h1", now=100.0)
    assert (saved.version, saved.revision, saved.host) == (1, 1, "h1")
    assert saved.key_id.startswith("baseline/e1/")
    loaded = BaselineStore(store.path, store._keys).load()
    assert loaded == saved
    assert loaded.entries["/etc/a"].meta.capabilities == b"\x01\x00"
    assert loaded.entries["/etc/link"].meta.symlink_target == "target"
    assert "/etc/caf\udce9" in loaded.entries
    assert [e.path for e in loaded.under("/etc")] == sorted(loaded.entries)


def test_file_is_private_and_written_atomically(store: BaselineStore) -> None:
    store.create(_entries())
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    leftovers = [p.name for p in store.path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    assert store.path.read_bytes().startswith(b"QSC-FIM-BASELINE 1 version=1 revision=1\n")


def test_missing_baseline_is_not_found(store: BaselineStore) -> None:
    with pytest.raises(BaselineMissingError, match="baseline init"):
        store.load()


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda d: d[:-1] + bytes([d[-1] ^ 1]), id="flip-last-byte"),
        pytest.param(lambda d: d[:60] + bytes([d[60] ^ 0x80]) + d[61:], id="flip-in-blob"),
        pytest.param(lambda d: d.replace(b"version=1", b"version=9", 1), id="edit-header"),
        pytest.param(lambda d: d[: len(d) // 2], id="truncate"),
        pytest.param(lambda d: b"", id="empty"),
        pytest.param(lambda d: b'{"entries": []}\n', id="replaced-by-json"),
        pytest.param(lambda d: d.replace(b"BASELINE 1", b"BASELINE 2", 1), id="format-number"),
    ],
)
def test_any_edit_is_detected(store: BaselineStore, tamper: object) -> None:
    store.create(_entries())
    data = store.path.read_bytes()
    store.path.write_bytes(tamper(data))  # type: ignore[operator]
    with pytest.raises(BaselineTamperedError) as info:
        BaselineStore(store.path, store._keys).load()
    assert isinstance(info.value, IntegrityError)
    assert "cannot be trusted" in str(info.value)


def test_baseline_sealed_by_another_keyring_is_refused(
    tmp_path: Path, store: BaselineStore
) -> None:
    other = BaselineStore(tmp_path / "other.qsc", KeyManager.create(tmp_path / "k2", "beta"))
    other.create(_entries())
    store.path.parent.mkdir(parents=True, exist_ok=True)
    store.path.write_bytes(other.path.read_bytes())
    with pytest.raises(BaselineTamperedError, match="authentication failed"):
        store.load()


def test_an_old_baseline_put_back_is_a_rollback(store: BaselineStore) -> None:
    store.create(_entries())
    old = store.path.read_bytes()
    store.update(lambda b: b.evolve([_entry("/etc/new")]))
    store.path.write_bytes(old)  # validly sealed, but older
    with pytest.raises(BaselineTamperedError, match="older than revision 2"):
        store.load()
    # Across restarts the caller carries the highest revision it has seen.
    restarted = BaselineStore(store.path, store._keys, min_revision=2)
    with pytest.raises(BaselineTamperedError):
        restarted.load()


def test_versions_and_revisions_increase(store: BaselineStore) -> None:
    first = store.create(_entries())
    evolved = store.update(lambda b: b.evolve([_entry("/etc/b")], ["/etc/a"]))
    assert evolved is not None
    assert (evolved.version, evolved.revision) == (1, 2)
    assert "/etc/a" not in evolved.entries
    assert "/etc/b" in evolved.entries
    assert store.update(lambda b: None) is None
    second = store.create(_entries())
    assert (second.version, second.revision) == (first.version + 1, 3)
    with pytest.raises(BaselineStoreError, match="not newer"):
        store.save(first)


def test_create_refuses_to_replace_a_tampered_baseline_unless_asked(store: BaselineStore) -> None:
    store.create(_entries())
    store.update(lambda b: b.evolve([_entry("/etc/b")]))
    data = bytearray(store.path.read_bytes())
    data[-3] ^= 1
    store.path.write_bytes(bytes(data))
    fresh = BaselineStore(store.path, store._keys)
    with pytest.raises(BaselineTamperedError):
        fresh.create(_entries())
    replaced = fresh.create(_entries(), replace_tampered=True)
    # Numbers keep increasing from the (unverified) header hint.
    assert (replaced.version, replaced.revision) == (2, 3)
    assert BaselineStore(store.path, store._keys).load() == replaced


def test_key_rotation_old_baseline_opens_and_is_resealed(store: BaselineStore) -> None:
    saved = store.create(_entries())
    keys = store._keys
    assert keys.rotate(force=True)
    loaded = BaselineStore(store.path, keys).load()
    assert loaded.key_id == saved.key_id
    assert store.needs_reseal(loaded)
    resealed = store.update(lambda b: b.evolve())
    assert resealed is not None
    assert resealed.key_id.startswith("baseline/e2/")
    assert not store.needs_reseal(BaselineStore(store.path, keys).load())


def test_tampered_change_names_the_baseline(tmp_path: Path) -> None:
    change = tampered_change(tmp_path / "b.qsc", "authentication failed")
    assert change.kind is ChangeKind.BASELINE_TAMPERED
    assert change.path == str(tmp_path / "b.qsc")
    assert change.detail == "authentication failed"


def test_baseline_is_immutable() -> None:
    b = Baseline(entries={"/a": _entry("/a")})
    with pytest.raises(TypeError):
        b.entries["/b"] = _entry("/b")  # type: ignore[index]
    assert b.total_bytes == 1
    assert b.evolve().revision == 2
