"""crypto.files: atomic writes (whole, streamed, relative to a directory fd) and capped reads."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto.files import (
    PUBLIC_MODE,
    FileTooLargeError,
    NotRegularFileError,
    atomic_file,
    fsync_directory,
    make_private_dirs,
    read_regular_capped,
    write_file_atomic,
)


@pytest.fixture
def dir_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_write_refuses_to_clobber_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_file_atomic(path, b"one")
    with pytest.raises(FileExistsError):
        write_file_atomic(path, b"two")
    assert path.read_bytes() == b"one"
    write_file_atomic(path, b"two", overwrite=True)
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["f"]


def test_the_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_file_atomic(tmp_path / "pub", b"x", mode=PUBLIC_MODE)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "pub").stat().st_mode) == PUBLIC_MODE


def test_a_streamed_write_that_fails_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def fail_halfway() -> None:
        with atomic_file(path, overwrite=True) as f:
            f.write(b"half")
            raise RuntimeError("source failed")

    with pytest.raises(RuntimeError, match="source failed"):
        fail_halfway()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]
    with atomic_file(path, overwrite=True) as f:
        for part in (b"a", b"b", b"c"):
            f.write(part)
    assert path.read_bytes() == b"abc"


def test_write_and_read_relative_to_a_directory_fd(tmp_path: Path, dir_fd: int) -> None:
    write_file_atomic("f", b"data", dir_fd=dir_fd)
    assert (tmp_path / "f").read_bytes() == b"data"
    assert read_regular_capped("f", 4, dir_fd=dir_fd) == b"data"
    fsync_directory(dir_fd)
    (tmp_path / "link").symlink_to(tmp_path / "f")
    with pytest.raises(OSError, match="symbolic links") as info:
        read_regular_capped("link", 4, follow_symlinks=False, dir_fd=dir_fd)
    assert info.value.errno == errno.ELOOP


def test_capped_read_refusals(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"12345")
    assert read_regular_capped(path, 5) == b"12345"
    with pytest.raises(FileTooLargeError, match="larger than 4 bytes"):
        read_regular_capped(path, 4)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFileError):
        read_regular_capped(fifo, 10)  # O_NONBLOCK: refused, not hung
    with pytest.raises(NotRegularFileError):
        read_regular_capped(tmp_path, 10)
    with pytest.raises(FileNotFoundError):
        read_regular_capped(tmp_path / "missing", 10)


def test_private_dirs_are_0700_all_the_way_down_and_existing_ones_are_kept(
    tmp_path: Path, umask0: None
) -> None:
    existing = tmp_path / "shared"
    existing.mkdir(mode=0o755)
    os.chmod(existing, 0o755)
    target = existing / "a" / "b" / "c"
    make_private_dirs(target)
    for directory in (existing / "a", existing / "a" / "b", target):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE(existing.stat().st_mode) == 0o755  # not ours to change
    make_private_dirs(target)  # idempotent
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        make_private_dirs(tmp_path / "file")
