"""Encrypted backup files: a chunked stream of `crypto.aead` seals (the shape of age's STREAM).

Format (version 1)::

    magic b"QSCSEAL1" (8) | file id (16 random bytes)
    then per chunk: length (4, big-endian) | one crypto.aead sealed message

Chunk ``i`` is sealed with associated data ``encode_fields(label, 1, file_id, i, final)`` where
``final`` is 1 for the last chunk only. The file id stops chunks moving between files, the index
stops reordering and dropping, the final flag stops truncation at a chunk boundary, and anything
after the final chunk is refused. Any key the sealed headers name may open it (rotation). Reading
holds one chunk in memory, so a multi-GiB file is checked in bounded memory.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO, Final

from crypto.aead import AeadKey, Sealer, open_sealed
from crypto.errors import DecryptionError
from crypto.files import PRIVATE_MODE, atomic_file
from crypto.kdf import encode_fields

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAGIC",
    "iter_plaintext",
    "read_checked",
    "seal_file",
]

MAGIC: Final = b"QSCSEAL1"
FILE_ID_SIZE: Final = 16
HEADER_SIZE: Final = len(MAGIC) + FILE_ID_SIZE
DEFAULT_CHUNK_SIZE: Final = 1024 * 1024
# Caps what a damaged length prefix can make the reader allocate.
MAX_RECORD: Final = 16 * 1024 * 1024 + 1024
_LABEL: Final = "qsc-sealed-file"
_VERSION: Final = 1


def _aad(file_id: bytes, index: int, final: bool) -> bytes:
    return encode_fields(_LABEL, _VERSION, file_id, index, int(final))


def seal_file(
    src: Path, dst: Path, sealer: Sealer, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> None:
    """Encrypt `src` into `dst` (0600, written atomically: temporary file, fsync, rename)."""
    if not 1 <= chunk_size <= MAX_RECORD - 1024:
        raise ValueError(f"chunk size must be 1..{MAX_RECORD - 1024} bytes")
    file_id = secrets.token_bytes(FILE_ID_SIZE)
    with src.open("rb") as fin, atomic_file(dst, mode=PRIVATE_MODE, overwrite=True) as fout:
        fout.write(MAGIC + file_id)
        index = 0
        chunk = fin.read(chunk_size)
        while True:
            # Read one ahead: the last chunk is known only when the next read is empty.
            following = fin.read(chunk_size)
            record = sealer.seal(chunk, _aad(file_id, index, not following))
            fout.write(len(record).to_bytes(4, "big") + record)
            if not following:
                break
            chunk, index = following, index + 1


def _read_exact(f: BinaryIO, n: int, feed: Callable[[bytes], None]) -> bytes:
    data = f.read(n)
    feed(data)
    return data


def _records(
    f: BinaryIO, keys: Mapping[str, AeadKey], feed: Callable[[bytes], None]
) -> Iterator[bytes]:
    """Plaintext chunks in order; DecryptionError as soon as the structure or a seal fails.

    Every byte read goes through `feed` first (the caller hashes the ciphertext as stored)."""
    header = _read_exact(f, HEADER_SIZE, feed)
    if len(header) != HEADER_SIZE or header[: len(MAGIC)] != MAGIC:
        raise DecryptionError
    file_id = header[len(MAGIC) :]
    prefix = _read_exact(f, 4, feed)
    index = 0
    while True:
        if len(prefix) != 4:
            raise DecryptionError  # no chunk at all, or a cut length prefix
        length = int.from_bytes(prefix, "big")
        if length > MAX_RECORD:
            raise DecryptionError
        record = _read_exact(f, length, feed)
        if len(record) != length:
            raise DecryptionError
        prefix = _read_exact(f, 4, feed)
        final = not prefix
        yield open_sealed(record, keys, _aad(file_id, index, final))
        if final:
            return
        index += 1


def read_checked(
    f: BinaryIO,
    keys: Mapping[str, AeadKey],
    feed: Callable[[bytes], None],
) -> bool:
    """Read the whole stream, feeding every byte to `feed`; True if every chunk opened.

    The rest of the file is still read and fed after a failure, so the caller's hash covers the
    file as stored whatever its state."""
    ok = True
    try:
        for _ in _records(f, keys, feed):
            pass
    except DecryptionError:
        ok = False
    while data := f.read(DEFAULT_CHUNK_SIZE):
        feed(data)
    return ok


def iter_plaintext(path: Path, keys: Mapping[str, AeadKey]) -> Iterator[bytes]:
    """The decrypted content of a sealed file, chunk by chunk (restore path); DecryptionError
    if any chunk fails. Chunks already yielded are authentic but the file may still fail later:
    write them somewhere temporary until the iterator ends."""
    with path.open("rb") as f:
        yield from _records(f, keys, lambda _: None)
