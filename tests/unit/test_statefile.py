"""crypto.statefile: the checksummed state file behind the nonce counters and the outbox's
high-water mark. Round trip, every refusal its docstring lists, mode 0600 and atomic replacement."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from crypto.errors import StateFileError
from crypto.statefile import (
    StateValue,
    decode_state,
    encode_state,
    read_state,
    state_digest,
    write_state,
)

KIND = "qsc-test-state"
VERSION = 3
FIELDS: dict[str, StateValue] = {
    "counter": 42,
    "key_id": "k-1 \u00e9",
    "big": (1 << 64) - 1,
    "negative": -7,
    "marks": [1, 2, 3],
    "ranges": [[1, 5], [9, 9]],
    "empty": [],
}
NAMES = tuple(FIELDS)
CAP = 4096


def read(path: Path, names: Sequence[str] = NAMES, **kw: Any) -> dict[str, object]:
    kind = kw.pop("kind", KIND)
    version = kw.pop("version", VERSION)
    return read_state(path, kind, version, names, max_bytes=kw.pop("max_bytes", CAP))


def problem(path: Path, **kw: Any) -> str:
    names = kw.pop("names", NAMES)
    with pytest.raises(StateFileError) as info:
        read(path, names, **kw)
    assert info.value.path == path
    assert str(path) in str(info.value)
    return info.value.problem


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "STATE"
    write_state(path, KIND, VERSION, FIELDS)
    return path


def rewrite(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, sort_keys=True) + "\n")


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# -- round trip and format --------------------------------------------------------------------


def test_round_trip_returns_exactly_the_named_fields(state: Path) -> None:
    assert read(state) == FIELDS
    # A str path works as well as a Path.
    assert read_state(str(state), KIND, VERSION, NAMES, max_bytes=CAP) == FIELDS


def test_the_file_is_one_sorted_json_object_with_format_version_and_digest(state: Path) -> None:
    raw = state.read_bytes()
    assert raw.endswith(b"\n")
    doc = json.loads(raw)
    assert doc == {
        **FIELDS,
        "format": KIND,
        "version": VERSION,
        "sha3_256": state_digest(KIND, VERSION, list(FIELDS.values())),
    }
    assert raw == (json.dumps(doc, sort_keys=True) + "\n").encode()
    assert raw == encode_state(KIND, VERSION, FIELDS)


def test_digest_renders_strings_as_they_are_and_other_values_as_compact_json() -> None:
    # The nonce state's digest predates the module: it must keep this exact rendering.
    body = "\x00".join([KIND, "3", "k-1", "42", "[1,2]", "[[1,5]]"])
    expected = hashlib.sha3_256(body.encode()).hexdigest()
    assert state_digest(KIND, 3, ["k-1", 42, [1, 2], [[1, 5]]]) == expected


def test_the_digest_covers_the_field_order(state: Path) -> None:
    # Same names, same values, other order: the digest no longer matches.
    assert problem(state, names=tuple(reversed(NAMES))) == "corrupt"


def test_overwrite_replaces_the_state(state: Path) -> None:
    write_state(state, KIND, VERSION, {**FIELDS, "counter": 43})
    assert read(state)["counter"] == 43


def test_reserved_field_names_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    for name in ("format", "version", "sha3_256"):
        with pytest.raises(ValueError, match="reserved"):
            write_state(tmp_path / "STATE", KIND, VERSION, {name: 1})
    assert list(tmp_path.iterdir()) == []


def test_decode_state_verifies_what_encode_state_wrote(tmp_path: Path) -> None:
    raw = encode_state(KIND, VERSION, FIELDS)
    assert decode_state(raw, tmp_path / "x", KIND, VERSION, NAMES) == FIELDS
    with pytest.raises(StateFileError):
        decode_state(raw.replace(b"42", b"41"), tmp_path / "x", KIND, VERSION, NAMES)


# -- refusals ---------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert problem(tmp_path / "STATE") == "missing"
    assert problem(tmp_path / "no-such-dir" / "STATE") == "missing"


@pytest.mark.parametrize("kept", ["none", "one byte", "half", "all but the closing brace"])
def test_truncated_file_is_corrupt(state: Path, kept: str) -> None:
    raw = state.read_bytes()
    cut = {"none": 0, "one byte": 1, "half": len(raw) // 2}.get(kept, len(raw) - 2)
    state.write_bytes(raw[:cut])
    assert problem(state) == "corrupt"


def test_every_flipped_byte_is_refused(state: Path) -> None:
    raw = state.read_bytes()
    for i in range(len(raw)):
        damaged = bytearray(raw)
        damaged[i] ^= 0x01
        state.write_bytes(bytes(damaged))
        # A flipped version digit is a version mismatch; anything else is corruption.
        assert problem(state) in ("corrupt", "version"), (i, bytes(damaged))


def test_a_changed_value_without_a_matching_digest_is_corrupt(state: Path) -> None:
    def bump(doc: dict[str, Any]) -> None:
        doc["counter"] = 1

    rewrite(state, bump)
    assert problem(state) == "corrupt"


def test_a_file_larger_than_the_cap_is_corrupt(state: Path) -> None:
    size = state.stat().st_size
    assert read(state, max_bytes=size) == FIELDS  # exactly at the cap is fine
    assert problem(state, max_bytes=size - 1) == "corrupt"


def test_a_file_grown_past_the_cap_is_corrupt(state: Path) -> None:
    with state.open("ab") as file:
        file.write(b" " * CAP)
    assert problem(state) == "corrupt"


@pytest.mark.parametrize(
    "raw",
    [b"", b"\xff\xfe\x00", b"not json", b"[1, 2]", b'"a string"', b"null", b"{}"],
    ids=["empty", "not-utf8", "not-json", "list", "string", "null", "empty-object"],
)
def test_unparsable_or_foreign_content_is_corrupt(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "STATE"
    path.write_bytes(raw)
    assert problem(path) == "corrupt"


def test_another_format_is_corrupt(state: Path) -> None:
    assert problem(state, kind="qsc-other-state") == "corrupt"


def test_another_version_is_reported_as_version(state: Path) -> None:
    assert problem(state, version=VERSION + 1) == "version"


def test_a_missing_or_an_extra_field_is_corrupt(state: Path) -> None:
    assert problem(state, names=NAMES[:-1]) == "corrupt"
    assert problem(state, names=(*NAMES, "extra")) == "corrupt"


@pytest.mark.parametrize("digest", [None, 12, ["x"]])
def test_a_digest_that_is_not_a_string_is_corrupt(state: Path, digest: object) -> None:
    def replace(doc: dict[str, Any]) -> None:
        doc["sha3_256"] = digest

    rewrite(state, replace)
    assert problem(state) == "corrupt"


def test_not_a_regular_file_is_unreadable_and_never_blocks(tmp_path: Path) -> None:
    directory = tmp_path / "STATE"
    directory.mkdir()
    assert problem(directory) == "unreadable"
    fifo = tmp_path / "FIFO"
    os.mkfifo(fifo)  # no writer: a blocking open would hang here
    assert problem(fifo) == "unreadable"


# -- permissions and atomicity ----------------------------------------------------------------


@pytest.mark.usefixtures("umask0")
def test_mode_is_0600_even_with_umask_0(tmp_path: Path) -> None:
    path = tmp_path / "STATE"
    write_state(path, KIND, VERSION, FIELDS)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Replacing a file someone made world-readable gives a 0600 file again.
    path.chmod(0o644)
    write_state(path, KIND, VERSION, FIELDS)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_replacement_is_atomic_and_durable(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Until the rename the old state is whole at the path and the new one whole and synced
    beside it; the directory is synced after."""
    new: Mapping[str, StateValue] = {**FIELDS, "counter": 1000}
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src: str, dst: str, **kw: Any) -> None:
        calls.append("replace")
        # Readers at this instant see the complete old state...
        assert read(Path(dst)) == FIELDS
        # ...and the new content is complete in a temporary file beside it.
        assert Path(src).parent == state.parent
        assert Path(src).read_bytes() == encode_state(KIND, VERSION, new)
        real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_state(state, KIND, VERSION, new)
    assert calls == ["fsync-file", "replace", "fsync-dir"]
    assert read(state) == new
    assert leftovers(state.parent) == []


def test_a_failed_write_leaves_the_old_state_and_no_temporary_file(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        write_state(state, KIND, VERSION, {**FIELDS, "counter": 1000})
    monkeypatch.undo()
    assert read(state) == FIELDS
    assert leftovers(state.parent) == []


def test_a_planted_temporary_name_is_never_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The temporary file is created O_EXCL|O_NOFOLLOW: a symlink planted at its name makes the
    # write fail instead of writing through it.
    target = tmp_path / "target"
    target.write_bytes(b"untouched")
    monkeypatch.setattr("crypto.files.secrets.token_hex", lambda _: "0" * 16)
    (tmp_path / f".STATE.{'0' * 16}.tmp").symlink_to(target)
    with pytest.raises(FileExistsError):
        write_state(tmp_path / "STATE", KIND, VERSION, FIELDS)
    assert target.read_bytes() == b"untouched"
    assert not (tmp_path / "STATE").exists()
