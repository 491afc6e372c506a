"""Safe file operations every component builds on: atomic writes, durable renames, capped reads.

The ground floor of the project (no other project module is imported here), so keys, cursors,
outbox metadata, baselines, manifests and models all get the same crash and planted-file safety:

* `write_file_atomic` (and `atomic_file`, its streaming form): readers see nothing or the whole
  file; the final mode is set from birth; the temporary name is random and created with
  O_EXCL|O_NOFOLLOW, so a planted file or symlink is never written through; file and directory
  are fsynced. Optionally relative to a directory fd, for callers that walk paths themselves.
* `fsync_directory`: make a rename, link or unlink in a directory durable.
* `make_private_dirs`: `mkdir -p` where every directory it creates is 0700 (`Path.mkdir`'s
  `mode` applies to the last one only: its missing parents would come out 0755).
* `read_regular_capped`: read a file that must be a regular file no larger than a cap, without
  hanging on a planted FIFO and without allocating more than the cap for a huge file.

Errors are `OSError`s (with the path as `filename`) for the caller to phrase in its own error
tree: `NotRegularFileError` and `FileTooLargeError` for the two refusals made here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "PRIVATE_MODE",
    "PUBLIC_MODE",
    "FileTooLargeError",
    "NotRegularFileError",
    "atomic_file",
    "fsync_directory",
    "make_private_dirs",
    "read_regular_capped",
    "write_file_atomic",
]

PRIVATE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
PUBLIC_MODE = 0o644
_CHUNK = 1024 * 1024


class NotRegularFileError(OSError):
    """The path is a directory, FIFO, device or socket where a regular file was expected."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(errno.EINVAL, "not a regular file", str(path))


class FileTooLargeError(OSError):
    """The file holds more bytes than the caller's cap (checked while reading, not by stat)."""

    def __init__(self, path: Path | str, limit: int) -> None:
        super().__init__(errno.EFBIG, f"larger than {limit} bytes", str(path))
        self.limit = limit


def write_file_atomic(
    path: Path | str,
    data: bytes,
    *,
    mode: int = PRIVATE_MODE,
    overwrite: bool = False,
    dir_fd: int | None = None,
) -> None:
    """Write `data` to `path` so that readers see either nothing or the whole file.

    The temporary file is created with its final mode (O_EXCL, so never through a planted file
    or symlink) and fsynced before it is linked in; the directory is fsynced after. Without
    `overwrite`, an existing `path` raises FileExistsError and is left untouched (link(2) does
    not clobber, unlike rename(2)). With `dir_fd`, `path` is a name in that open directory and
    no path is looked up again (for callers that walked to the directory without following
    symlinks). OSError propagates for the caller to phrase.
    """
    with atomic_file(path, mode=mode, overwrite=overwrite, dir_fd=dir_fd) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_file(
    path: Path | str,
    *,
    mode: int = PRIVATE_MODE,
    overwrite: bool = False,
    dir_fd: int | None = None,
) -> Iterator[BinaryIO]:
    """A file to write `path`'s new content into, as a stream; `write_file_atomic` for data
    too large to hold in memory.

    When the block ends normally the file is fsynced, linked in (as `write_file_atomic`
    describes, including `overwrite` and `dir_fd`) and the directory fsynced; when it raises,
    the temporary file is removed and `path` is untouched.
    """
    name = os.fspath(path)
    head, tail = os.path.split(name)
    tmp = os.path.join(head, f".{tail}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(fd, mode)  # the umask must not narrow it
            yield f
            f.flush()
            os.fsync(fd)
        if overwrite:
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.unlink(tmp, dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    fsync_directory(Path(head or ".") if dir_fd is None else dir_fd)


def make_private_dirs(path: Path) -> None:
    """Create `path` and its missing parents, each 0700 whatever the umask; directories that
    already exist are left as they are (their owner chose their mode)."""
    missing: list[Path] = []
    here = path
    while not here.exists():
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it first
            directory.mkdir(mode=PRIVATE_DIR_MODE)
            os.chmod(directory, PRIVATE_DIR_MODE)  # mkdir's mode is masked by the umask
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))


def fsync_directory(directory: Path | int) -> None:
    """Make a rename, link or unlink in `directory` (a path, or an open directory fd) durable."""
    if isinstance(directory, int):
        os.fsync(directory)
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_regular_capped(
    path: Path | str, limit: int, *, follow_symlinks: bool = True, dir_fd: int | None = None
) -> bytes:
    """The whole content of the regular file `path`, at most `limit` bytes.

    Raises FileNotFoundError, NotRegularFileError (FIFO, directory, device...; opened with
    O_NONBLOCK so a planted FIFO cannot hang the caller, O_NOCTTY so a terminal cannot become
    ours), FileTooLargeError (more than `limit` bytes, counted while reading, so a file that
    grows after fstat is caught too), or the OSError of the failed open/read. With
    `follow_symlinks=False` a symlink at `path` is refused (ELOOP) instead of followed. With
    `dir_fd`, `path` is a name in that open directory.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    fd = os.open(path, flags) if dir_fd is None else os.open(path, flags, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFileError(path)
        parts: list[bytes] = []
        total = 0
        # Read in pieces: read(limit + 1) would allocate the whole cap up front.
        while total <= limit and (part := os.read(fd, min(_CHUNK, limit + 1 - total))):
            parts.append(part)
            total += len(part)
    finally:
        os.close(fd)
    if total > limit:
        raise FileTooLargeError(path, limit)
    return b"".join(parts)
