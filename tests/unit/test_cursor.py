"""The cursor stores: the file (atomic, private, damage refused) and the in-memory one, and the
refusal of another guardian's cursor that the subscriber applies to every store."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from mesh.stream.cursor import (
    CursorFileError,
    CursorStore,
    CursorStoreError,
    FileCursorStore,
    ForeignCursorError,
    MemoryCursorStore,
    StoredCursor,
    refuse_foreign,
)

GUARDIAN = "spiffe://unit.test/alpha/web-01"
OTHER_GUARDIAN = "spiffe://unit.test/alpha/web-02"


# --- the file store -----------------------------------------------------------------------------


def test_file_store_round_trip_is_private_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = FileCursorStore(tmp_path / "c.json")
    assert asyncio.run(store.load()) is None
    asyncio.run(store.commit(StoredCursor(GUARDIAN, 1)))
    first_inode = (tmp_path / "c.json").stat().st_ino
    asyncio.run(store.commit(StoredCursor(GUARDIAN, 2**64 - 1)))
    assert asyncio.run(store.load()) == StoredCursor(GUARDIAN, 2**64 - 1)
    assert store.read() == StoredCursor(GUARDIAN, 2**64 - 1)
    st = (tmp_path / "c.json").stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_ino != first_inode  # replaced, never rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]
    on_disk = json.loads((tmp_path / "c.json").read_text())
    assert on_disk == {"format": "qsc-stream-cursor-v1", "guardian": GUARDIAN, "seq": 2**64 - 1}


def test_file_store_is_private_whatever_the_umask(tmp_path: Path, umask0: None) -> None:
    store = FileCursorStore(tmp_path / "c.json")
    store.write(StoredCursor(GUARDIAN, 3))
    assert stat.S_IMODE((tmp_path / "c.json").stat().st_mode) == 0o600


def test_file_store_failed_commit_keeps_the_old_cursor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileCursorStore(tmp_path / "c.json")
    store.write(StoredCursor(GUARDIAN, 10))

    def broken_replace(src: object, dst: object, **_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(CursorFileError, match=r"c\.json: No space left"):
        asyncio.run(store.commit(StoredCursor(GUARDIAN, 11)))
    monkeypatch.undo()
    assert store.read() == StoredCursor(GUARDIAN, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"[]",
        b"\xff\xfe",
        json.dumps({"format": "other", "guardian": GUARDIAN, "seq": 1}).encode(),
        json.dumps({"format": "qsc-stream-cursor-v1", "guardian": "web-01", "seq": 1}).encode(),
        json.dumps({"format": "qsc-stream-cursor-v1", "guardian": 7, "seq": 1}).encode(),
        json.dumps({"format": "qsc-stream-cursor-v1", "guardian": GUARDIAN, "seq": -1}).encode(),
        json.dumps({"format": "qsc-stream-cursor-v1", "guardian": GUARDIAN, "seq": 2**64}).encode(),
        json.dumps({"format": "qsc-stream-cursor-v1", "guardian": GUARDIAN, "seq": "1"}).encode(),
        json.dumps({"format": "qsc-stream-cursor-v1", "guardian": GUARDIAN, "seq": True}).encode(),
        json.dumps({"format": "qsc-stream-cursor-v1", "guardian": GUARDIAN}).encode(),
    ],
)
def test_file_store_refuses_a_damaged_file_naming_it(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "c.json").write_bytes(content)
    with pytest.raises(CursorFileError, match=r"cursor file .*c\.json is invalid"):
        FileCursorStore(tmp_path / "c.json").read()


def test_file_store_refuses_what_is_not_a_small_regular_file(tmp_path: Path) -> None:
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(CursorFileError, match=r"dir\.json: not a regular file"):
        FileCursorStore(tmp_path / "dir.json").read()
    os.mkfifo(tmp_path / "fifo.json")  # must not hang
    with pytest.raises(CursorFileError, match=r"fifo\.json: not a regular file"):
        asyncio.run(FileCursorStore(tmp_path / "fifo.json").load())
    (tmp_path / "big.json").write_bytes(b" " * 5000)
    with pytest.raises(CursorFileError, match=r"big\.json: larger than"):
        FileCursorStore(tmp_path / "big.json").read()


def test_file_store_errors_are_cursor_store_errors(tmp_path: Path) -> None:
    store = FileCursorStore(tmp_path / "missing-dir" / "c.json")
    assert store.read() is None
    with pytest.raises(CursorStoreError, match="missing-dir"):
        store.write(StoredCursor(GUARDIAN, 1))


# --- the in-memory store and the protocol --------------------------------------------------------


def test_memory_store_round_trip_and_commit_count() -> None:
    store = MemoryCursorStore()
    assert asyncio.run(store.load()) is None
    asyncio.run(store.commit(StoredCursor(GUARDIAN, 4)))
    asyncio.run(store.commit(StoredCursor(GUARDIAN, 9)))
    assert asyncio.run(store.load()) == StoredCursor(GUARDIAN, 9)
    assert store.commits == 2
    assert asyncio.run(MemoryCursorStore(StoredCursor(GUARDIAN, 3)).load()) == StoredCursor(
        GUARDIAN, 3
    )


def test_both_stores_satisfy_the_protocol(tmp_path: Path) -> None:
    stores: list[CursorStore] = [FileCursorStore(tmp_path / "c.json"), MemoryCursorStore()]
    for store in stores:
        asyncio.run(store.commit(StoredCursor(GUARDIAN, 5)))
        assert asyncio.run(store.load()) == StoredCursor(GUARDIAN, 5)


@pytest.mark.parametrize(
    ("guardian", "seq"),
    [("web-01", 1), (GUARDIAN, -1), (GUARDIAN, 2**64), (GUARDIAN, True)],
)
def test_a_stored_cursor_is_a_spiffe_id_and_an_unsigned_64_bit_seq(guardian: str, seq: int) -> None:
    with pytest.raises(ValueError, match=r"SPIFFE|seq"):
        StoredCursor(guardian, seq)


# --- another guardian's cursor ------------------------------------------------------------------


def test_another_guardians_cursor_is_refused_naming_the_store(tmp_path: Path) -> None:
    file_store = FileCursorStore(tmp_path / "c.json")
    file_store.write(StoredCursor(OTHER_GUARDIAN, 77))
    stored = file_store.read()
    with pytest.raises(ForeignCursorError, match=r"cursor file .*c\.json holds the cursor of"):
        refuse_foreign(file_store, stored, GUARDIAN)
    memory = MemoryCursorStore(StoredCursor(OTHER_GUARDIAN, 77))
    with pytest.raises(
        ForeignCursorError, match=r"in-memory cursor store holds .*web-02, not of .*web-01"
    ):
        refuse_foreign(memory, memory.cursor, GUARDIAN)
    # Its own cursor, and no cursor at all, pass.
    refuse_foreign(file_store, stored, OTHER_GUARDIAN)
    refuse_foreign(memory, None, GUARDIAN)
