"""Path handling that cannot be steered by symlinks: checked absolute paths, directory-fd walks.

A path is walked from "/" one component at a time with ``openat(O_DIRECTORY | O_NOFOLLOW)``, so a
symlink (or a non-directory) anywhere in the parent chain fails the walk instead of redirecting
it; the final name is then used only relative to the parent's fd, again with O_NOFOLLOW. Whoever
swaps a directory for a symlink between our checks gains nothing: there are no later path lookups.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from typing import Final

from beta.errors import BetaInvalidArgumentError
from crypto.files import (
    FileTooLargeError,
    NotRegularFileError,
    read_regular_capped,
    write_file_atomic,
)

__all__ = [
    "UnsafePathError",
    "check_path",
    "open_dir",
    "open_parent",
    "read_regular_at",
    "write_atomic_at",
]

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePathError(BetaInvalidArgumentError):
    """A path that is malformed, outside the allowed roots, or reaches through a symlink."""


def check_path(path: str) -> str:
    """`path` if it is absolute and already normal (no '.', '..', '//', trailing '/', NUL).

    Refused rather than normalised: a caller that sends `/etc/../root` is not to be guessed at.
    """
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise UnsafePathError(f"{path!r} is not an absolute path")
    if path != "/" and (os.path.normpath(path) != path or path.startswith("//")):
        raise UnsafePathError(f"{path!r} is not a normal path ('.', '..', '//' or trailing '/')")
    return path


def _components(path: str) -> list[str]:
    return [c for c in check_path(path).split("/") if c]


def _open_dir_chain(parts: list[str]) -> int:
    fd = os.open("/", _DIR_FLAGS)
    try:
        for part in parts:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePathError(
                        f"{part!r} in the parent chain is a symlink or not a directory"
                    ) from None
                raise
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def open_parent(path: str) -> Iterator[tuple[int, str]]:
    """(fd of the parent directory, final name); the fd is closed on exit."""
    parts = _components(path)
    if not parts:
        raise UnsafePathError("'/' has no parent")
    fd = _open_dir_chain(parts[:-1])
    try:
        yield fd, parts[-1]
    finally:
        os.close(fd)


def open_dir(path: str) -> int:
    """An fd of directory `path` itself, walked without following symlinks (caller closes)."""
    return _open_dir_chain(_components(path))


def read_regular_at(dir_fd: int, name: str, max_bytes: int) -> bytes:
    """Content of regular file `name` in `dir_fd`, never following a symlink.

    UnsafePathError for a symlink or a non-regular file, ValueError when larger than
    `max_bytes`, OSError (FileNotFoundError...) otherwise.
    """
    try:
        return read_regular_capped(name, max_bytes, follow_symlinks=False, dir_fd=dir_fd)
    except NotRegularFileError:
        raise UnsafePathError(f"{name!r} is not a regular file") from None
    except FileTooLargeError:
        raise ValueError(f"{name!r} is larger than {max_bytes} bytes") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            raise UnsafePathError(f"{name!r} is a symlink or a special file") from None
        raise


def write_atomic_at(dir_fd: int, name: str, data: bytes, *, mode: int = 0o600) -> None:
    """Readers of `name` see the old file or the whole new one (`crypto.files`' atomic write,
    relative to the walked directory fd so no path is looked up again)."""
    write_file_atomic(name, data, mode=mode, overwrite=True, dir_fd=dir_fd)
