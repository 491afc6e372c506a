"""Hashing: known answers, files equal bytes on every path, bounded memory, clear file errors."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import tracemalloc
from pathlib import Path

import blake3
import pytest

import crypto.hashing as hashing
from crypto.hashing import (
    HashAlgorithm,
    blake3_256,
    blake3_file,
    hash_bytes,
    hash_file,
    sha3_256,
    sha3_256_file,
)

# FIPS 202 and the BLAKE3 reference test vectors.
SHA3_EMPTY = "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
SHA3_ABC = "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"
BLAKE3_EMPTY = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
BLAKE3_ABC = "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"


def test_known_answers() -> None:
    assert sha3_256(b"").hex() == SHA3_EMPTY
    assert sha3_256(b"abc").hex() == SHA3_ABC
    assert blake3_256(b"").hex() == BLAKE3_EMPTY
    assert blake3_256(b"abc").hex() == BLAKE3_ABC
    assert hash_bytes(HashAlgorithm.SHA3_256, b"abc").hex() == SHA3_ABC
    assert hash_bytes(HashAlgorithm.BLAKE3, b"abc").hex() == BLAKE3_ABC


def test_large_bytes_use_threads_and_agree() -> None:
    data = os.urandom(hashing.PARALLEL_THRESHOLD + 12345)
    assert blake3_256(data) == blake3.blake3(data).digest()


CHUNK = hashing.CHUNK_SIZE


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
def test_file_digest_equals_bytes_digest(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert sha3_256_file(path) == hashlib.sha3_256(data).digest()
    assert blake3_file(path) == blake3.blake3(data).digest()
    assert blake3_file(path, allow_mmap=False) == blake3.blake3(data).digest()
    assert hash_file(HashAlgorithm.SHA3_256, str(path)) == sha3_256(data)
    assert hash_file(HashAlgorithm.BLAKE3, str(path)) == blake3_256(data)


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Shrink the mapped-window path so window boundaries are crossed by a small file."""
    monkeypatch.setattr(hashing, "PARALLEL_THRESHOLD", 2 * mmap.ALLOCATIONGRANULARITY)
    monkeypatch.setattr(hashing, "MMAP_WINDOW", 4 * mmap.ALLOCATIONGRANULARITY)
    calls: list[int] = []
    real = hashing._mapped_windows

    def spy(fd: int, size: int, hasher: hashing._Hasher) -> None:
        calls.append(size)
        real(fd, size, hasher)

    monkeypatch.setattr(hashing, "_mapped_windows", spy)
    return calls


@pytest.mark.parametrize("extra", [0, 1, mmap.ALLOCATIONGRANULARITY - 1])
def test_mapped_windows_cover_the_whole_file(
    tmp_path: Path, small_windows: list[int], extra: int
) -> None:
    data = os.urandom(9 * mmap.ALLOCATIONGRANULARITY + extra)
    path = tmp_path / "big"
    path.write_bytes(data)
    path.chmod(0o644)
    assert blake3_file(path) == blake3.blake3(data).digest()
    assert small_windows == [len(data)]


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_files_others_could_truncate_are_not_mapped(
    tmp_path: Path, small_windows: list[int], mode: int
) -> None:
    # Truncating a mapped file kills the reader with SIGBUS: only map what others cannot shrink.
    data = os.urandom(200_000)
    path = tmp_path / "shared"
    path.write_bytes(data)
    path.chmod(mode)
    assert blake3_file(path) == blake3.blake3(data).digest()
    assert small_windows == []


def test_mapping_can_be_refused_by_the_caller(tmp_path: Path, small_windows: list[int]) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(200_000))
    path.chmod(0o600)
    blake3_file(path, allow_mmap=False)
    assert small_windows == []


@pytest.mark.parametrize("algorithm", list(HashAlgorithm))
def test_file_hashing_memory_is_bounded(tmp_path: Path, algorithm: HashAlgorithm) -> None:
    path = tmp_path / "f"
    with path.open("wb") as f:
        for _ in range(24):
            f.write(os.urandom(CHUNK))
    tracemalloc.start()
    try:
        hash_file(algorithm, path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * CHUNK  # one read buffer, not the 24 MiB file


@pytest.mark.parametrize("func", [sha3_256_file, blake3_file])
def test_missing_file_names_the_path(tmp_path: Path, func: object) -> None:
    assert callable(func)
    missing = tmp_path / "nope" / "file"
    with pytest.raises(FileNotFoundError) as info:
        func(missing)
    assert info.value.filename == str(missing)


@pytest.mark.parametrize("func", [sha3_256_file, blake3_file])
def test_directory_is_refused_with_its_path(tmp_path: Path, func: object) -> None:
    assert callable(func)
    with pytest.raises(IsADirectoryError) as info:
        func(tmp_path)
    assert info.value.filename == str(tmp_path)


@pytest.mark.parametrize("func", [sha3_256_file, blake3_file])
def test_fifo_is_refused_without_blocking(tmp_path: Path, func: object) -> None:
    assert callable(func)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file") as info:
        func(fifo)
    assert info.value.errno == errno.EINVAL
    assert info.value.filename == str(fifo)
