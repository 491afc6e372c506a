"""Growing and rotated logs: churn that is not tampering, and the clearing that is.

For a path under a `log = true` rule, compared with its baseline entry:

* same inode, not shorter, and the first `old size` bytes still hash to the baseline hash:
  appends only, **not a change** (metadata other than size and times is still compared). A
  realtime check skips the prefix read (it would re-read the whole log on every append); every
  full scan verifies it, so an in-place edit is caught by the next scan.
* same inode, not shorter, prefix differs: rewritten in place, a content change.
* same inode, shorter: `copytruncate` rotation **if** a rotated sibling (`app.log.1`,
  `app.log-20240101.gz`...) holds the old content (its first `old size` bytes, decompressed if
  gzip/xz/bz2, hash to the baseline hash); otherwise the log was **truncated** (possible log
  clearing).
* another inode: rename rotation if a sibling is the old inode or holds the old content;
  otherwise the log was replaced and its content is gone: **truncated**.

A rotation is one LOG_ROTATED change, and the baseline entry then moves to the new file, so the
next comparison starts from it (the rotated archives themselves are not tracked).
"""

from __future__ import annotations

import bz2
import enum
import gzip
import io
import lzma
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import blake3 as _blake3

from beta.fim.baseline import Entry
from beta.fim.config import is_rotated_archive
from beta.fim.metadata import FileType, Observation, hash_prefix

__all__ = [
    "LogCheck",
    "LogVerdict",
    "classify",
    "classify_missing",
    "find_rotated",
    "realtime_skip_hash",
]

MAX_SIBLINGS: Final = 10  # rotated archives examined, newest first
MAX_CONTENT_CHECKS: Final = 3  # of those, how many may be read (decompressed) in full
_CHUNK: Final = 1024 * 1024
_OPENERS: Final[dict[str, Callable[[str], io.BufferedIOBase]]] = {
    ".gz": gzip.GzipFile,
    ".xz": lzma.LZMAFile,
    ".bz2": bz2.BZ2File,
}


class LogVerdict(enum.Enum):
    GROWTH = "growth"  # appends only (or unchanged): not a content change
    CONTENT_CHANGED = "content_changed"
    ROTATED = "rotated"
    TRUNCATED = "truncated"


@dataclass(frozen=True)
class LogCheck:
    verdict: LogVerdict
    detail: str = ""


def realtime_skip_hash(old: Entry, inode: int, size: int) -> bool:
    """Whether a realtime check of a log may skip reading it: same file, not shorter."""
    return (
        old.meta.file_type is FileType.REGULAR and inode == old.meta.inode and size >= old.meta.size
    )


def _siblings(path: str) -> list[tuple[float, str, os.stat_result]]:
    directory, _, base = path.rpartition("/")
    directory = directory or "/"
    found: list[tuple[float, str, os.stat_result]] = []
    try:
        with os.scandir(directory) as it:
            for entry in it:
                name = entry.name
                if name == base or not name.startswith(base) or not is_rotated_archive(name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                found.append((st.st_mtime, entry.path, st))
    except OSError:
        return []
    found.sort(reverse=True)
    return found[:MAX_SIBLINGS]


def _compressed_holds(path: str, old: Entry, min_size: int) -> bool:
    """Whether a compressed archive starts with the baseline content and holds at least
    `min_size` bytes once decompressed."""
    opener = _OPENERS.get(os.path.splitext(path)[1])
    if opener is None:
        return False
    want = max(old.meta.size, min_size)
    h = _blake3.blake3()
    done = 0
    try:
        with opener(path) as f:
            while done < want:
                chunk = f.read(min(_CHUNK, want - done))
                if not chunk:
                    return False
                if done < old.meta.size:
                    h.update(chunk[: old.meta.size - done])
                done += len(chunk)
    except (OSError, EOFError, lzma.LZMAError, ValueError):
        return False
    return bytes(h.digest()) == old.blake3


def find_rotated(path: str, old: Entry, *, min_size: int = 0) -> str | None:
    """A rotated sibling of `path` that is the baseline's inode, or that starts with the
    baseline content and holds at least `min_size` bytes (what the log had when last seen)."""
    if old.blake3 is None:
        return None
    siblings = _siblings(path)
    for _, sibling, st in siblings:
        if st.st_ino == old.meta.inode and not os.path.islink(sibling):
            return sibling
    for _, sibling, st in siblings[:MAX_CONTENT_CHECKS]:
        if min_size > old.meta.size and st.st_ctime_ns <= old.meta.mtime_ns:
            # The baseline prefix does not cover what the log held when last seen, so the copy
            # must at least have been made after that state: an older archive does not count.
            continue
        if os.path.splitext(sibling)[1] in _OPENERS:
            if _compressed_holds(sibling, old, min_size):
                return sibling
        elif st.st_size >= max(old.meta.size, min_size) and (
            hash_prefix(sibling, old.meta.size) == old.blake3
        ):
            return sibling
    return None


def classify(
    old: Entry, now: Observation, *, hashed: bool, last_size: int | None = None
) -> LogCheck | None:
    """How a log changed relative to its baseline entry; None when log semantics do not apply
    (not a regular file then or now: the ordinary comparison handles it). `hashed` says
    whether `now` carries the prefix hash (full scans) or not (a realtime growth check);
    `last_size` is the size this same inode had when last seen (realtime), so a log that grew
    since the baseline and was then cut back is caught before the next scan."""
    if old.meta.file_type is not FileType.REGULAR or now.meta.file_type is not FileType.REGULAR:
        return None
    old_size, new_size = old.meta.size, now.meta.size
    if now.meta.inode == old.meta.inode:
        floor = max(old_size, last_size or 0)
        if new_size >= floor:
            if not hashed or now.prefix_blake3 == old.blake3:
                return LogCheck(LogVerdict.GROWTH)
            if now.error is not None:
                return LogCheck(LogVerdict.GROWTH, f"prefix not verified: {now.error}")
            return LogCheck(
                LogVerdict.CONTENT_CHANGED,
                f"rewritten in place: the first {old_size} bytes differ from the baseline",
            )
        copy = find_rotated(now.path, old, min_size=floor)
        if copy is not None:
            return LogCheck(LogVerdict.ROTATED, f"copied to {copy} and truncated")
        return LogCheck(
            LogVerdict.TRUNCATED,
            f"shrank from {floor} to {new_size} bytes and no rotated copy holds the old content",
        )
    if old_size == 0 and not last_size:
        return LogCheck(LogVerdict.ROTATED, "empty log replaced by a new file")
    moved = find_rotated(now.path, old, min_size=last_size or 0)
    if moved is not None:
        return LogCheck(LogVerdict.ROTATED, f"rotated to {moved}")
    return LogCheck(
        LogVerdict.TRUNCATED,
        f"replaced by a new file; the previous {old_size} bytes are not in any rotated sibling",
    )


def classify_missing(path: str, old: Entry) -> LogCheck | None:
    """A log that is gone: rotated away and not recreated yet, or deleted (None)."""
    if old.meta.file_type is not FileType.REGULAR or old.meta.size == 0:
        return None
    moved = find_rotated(path, old)
    if moved is not None:
        return LogCheck(LogVerdict.ROTATED, f"rotated to {moved}; not recreated yet")
    return None
