"""Walking a backup set and hashing its files: shared by manifest creation and verification.

Walks never follow symlinks and only regular files count as backup content: a symlink planted in
a backup set must not make Beta hash (or report on) whatever it points at. Hashing reads 1 MiB at
a time; a thread pool hashes several files at once (hashlib releases the GIL on large updates,
so two cores give close to twice the SHA3-256 throughput of one) with a bounded window of files in
flight, and results come back in input order so reports are deterministic.
"""

from __future__ import annotations

import collections
import errno
import fnmatch
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from beta.backups import sealedfile
from crypto.aead import AeadKey

__all__ = [
    "ByteCounter",
    "Digest",
    "Found",
    "Progress",
    "ProgressCallback",
    "default_workers",
    "digest_file",
    "excluded",
    "map_ordered",
    "walk",
]

CHUNK_SIZE: Final = 1024 * 1024
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Progress:
    """Where a create or verify run stands; `phase` is "scan" (walking) or "hash"."""

    phase: str
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True, slots=True)
class Found:
    """A non-directory entry of the set: `rel` is its '/'-separated path below the root."""

    rel: str
    size: int
    regular: bool
    kind: str  # "file", "symlink", "fifo", "socket", "device"


@dataclass(frozen=True, slots=True)
class Digest:
    size: int  # bytes read
    sha3_256: bytes
    decrypted: bool | None  # None: not an encrypted set
    error: OSError | None = None


def default_workers() -> int:
    # More threads than cores only adds contention: SHA3 is CPU-bound once data is cached.
    return max(1, min(4, os.cpu_count() or 1))


def excluded(rel: str, patterns: Iterable[str]) -> bool:
    """fnmatch on the relative path; '*' also matches '/', so '*.tmp' excludes at any depth."""
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device"


def walk(
    root: Path,
    *,
    exclude: tuple[str, ...] = (),
    skip: frozenset[str] = frozenset(),
    on_error: Callable[[str, OSError], None],
) -> Iterator[Found]:
    """Every non-directory entry below `root` in sorted order, without following symlinks.

    `skip` names relative paths to leave out (the manifest or cursor file inside the set). A
    directory that cannot be listed goes to `on_error` with its relative path ("" for the root)
    and the walk goes on."""
    stack: list[tuple[bytes, str]] = [(os.fsencode(root), "")]
    while stack:
        path, rel_dir = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            on_error(rel_dir, exc)
            continue
        subdirs: list[tuple[bytes, str]] = []
        for entry in entries:
            name = os.fsdecode(entry.name)
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if rel in skip or excluded(rel, exclude):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone since listing: as if it never was
            except OSError as exc:
                on_error(rel, exc)
                continue
            if stat.S_ISDIR(st.st_mode):
                subdirs.append((entry.path, rel))
            elif stat.S_ISREG(st.st_mode):
                yield Found(rel, st.st_size, True, "file")
            else:
                yield Found(rel, st.st_size, False, _kind(st.st_mode))
        # Reversed onto the stack so directories come out in sorted order.
        stack.extend(reversed(subdirs))


class ByteCounter:
    """Bytes read so far, added to by hashing threads and read by the progress reporter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


def digest_file(
    path: Path, *, keys: Mapping[str, AeadKey] | None, counter: ByteCounter | None = None
) -> Digest:
    """SHA3-256 of the file as stored and, when `keys` is given, whether it opens as a sealed
    file. OSErrors (missing, a symlink swapped in: ELOOP, permission) come back in `error`."""
    h = hashlib.sha3_256()
    total = 0

    def feed(data: bytes | memoryview) -> None:
        nonlocal total
        h.update(data)
        total += len(data)
        if counter is not None:
            counter.add(len(data))

    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        return Digest(0, b"", None, exc)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        if keys is not None:
            with open(fd, "rb", closefd=False) as f:
                ok = sealedfile.read_checked(f, keys, feed)
            return Digest(total, h.digest(), ok)
        buf = bytearray(CHUNK_SIZE)
        view = memoryview(buf)
        with open(fd, "rb", buffering=0, closefd=False) as raw:
            while n := raw.readinto(buf):
                feed(view[:n])
        return Digest(total, h.digest(), None)
    except OSError as exc:
        return Digest(total, b"", None, exc)
    finally:
        os.close(fd)


def map_ordered(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    tick: Callable[[], None] | None = None,
    tick_interval: float = 0.25,
) -> Iterator[tuple[T, R]]:
    """`(item, fn(item))` in input order, computed by `workers` threads with at most 2 x workers
    items in flight (bounded memory whatever the number of items). `tick` runs in the caller's
    thread about every `tick_interval` seconds while waiting, for progress reports."""
    if workers <= 1:
        last = time.monotonic()
        for item in items:
            result = fn(item)
            if tick is not None and time.monotonic() - last >= tick_interval:
                tick()
                last = time.monotonic()
            yield item, result
        return
    source = iter(items)
    window: collections.deque[tuple[T, Future[R]]] = collections.deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qsc-backup-hash") as pool:

        def fill() -> None:
            while len(window) < 2 * workers:
                try:
                    item = next(source)
                except StopIteration:
                    return
                window.append((item, pool.submit(fn, item)))

        fill()
        while window:
            item, future = window[0]
            while True:
                try:
                    result = future.result(timeout=tick_interval)
                    break
                except TimeoutError:
                    if tick is not None:
                        tick()
            window.popleft()
            fill()
            yield item, result
