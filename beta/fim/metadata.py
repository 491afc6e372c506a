"""What a file is now: type, mode, owner, inode, size, times, extended attributes, symlink
target, and the BLAKE3 of its content.

A regular file's metadata, extended attributes and content come from one open file descriptor
(fstat, flistxattr, read), so they describe the same inode even when the path is swapped during
the read. Files are opened O_NOFOLLOW (a symlink is recorded as a symlink, never followed),
O_NONBLOCK (a FIFO swapped in cannot hang the scan) and O_NOATIME (a scan leaves no trace in
access times). Content is hashed in bounded memory: large files through
`crypto.hashing.blake3_file` (mapped windows, multi-threaded), or in 1 MiB chunks for small and
sparse files and when a caller meters the bytes (I/O budget) or needs a prefix hash (logs).
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import blake3 as _blake3

from crypto.hashing import CHUNK_SIZE, PARALLEL_THRESHOLD, blake3_file

__all__ = [
    "CAPABILITY_XATTR",
    "SELINUX_XATTR",
    "VOLATILE_FIELDS",
    "FileMeta",
    "FileType",
    "MetaField",
    "Observation",
    "diff_metadata",
    "empty_blake3",
    "hash_prefix",
    "observe",
    "read_xattrs",
]

CAPABILITY_XATTR: Final = "security.capability"
SELINUX_XATTR: Final = "security.selinux"
MAX_XATTRS: Final = 64  # more than any real file has; bounds what an attacker can make us store
MAX_XATTR_VALUE: Final = 64 * 1024

OnBytes = Callable[[int], None]


class FileType(enum.Enum):
    REGULAR = "regular"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    OTHER = "other"  # device, FIFO, socket

    @classmethod
    def of(cls, mode: int) -> FileType:
        if stat.S_ISREG(mode):
            return cls.REGULAR
        if stat.S_ISDIR(mode):
            return cls.DIRECTORY
        if stat.S_ISLNK(mode):
            return cls.SYMLINK
        return cls.OTHER


class MetaField(enum.Enum):
    """Metadata attributes compared with the baseline; names as in `qsc.common.v1.MetadataField`."""

    FILE_TYPE = "file_type"
    MODE = "mode"
    UID = "uid"
    GID = "gid"
    INODE = "inode"
    SIZE = "size"
    MTIME = "mtime"
    CTIME = "ctime"
    XATTRS = "xattrs"
    CAPABILITIES = "capabilities"
    SELINUX_LABEL = "selinux_label"
    SYMLINK_TARGET = "symlink_target"


# Fields any rewrite changes even when it restores content and permissions exactly (an atomic
# replace gets a new inode; ctime cannot be set back).
VOLATILE_FIELDS: Final = frozenset({MetaField.INODE, MetaField.MTIME, MetaField.CTIME})


@dataclass(frozen=True)
class FileMeta:
    """Recorded attributes of one path (not followed if a symlink)."""

    file_type: FileType
    mode: int  # permission and special bits, st_mode & 0o7777
    uid: int
    gid: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    symlink_target: str | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()  # sorted by name

    @classmethod
    def from_stat(
        cls,
        st: os.stat_result,
        *,
        symlink_target: str | None = None,
        xattrs: tuple[tuple[str, bytes], ...] = (),
    ) -> FileMeta:
        return cls(
            file_type=FileType.of(st.st_mode),
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            inode=st.st_ino,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            symlink_target=symlink_target,
            xattrs=xattrs,
        )

    def xattr(self, name: str) -> bytes | None:
        for key, value in self.xattrs:
            if key == name:
                return value
        return None

    @property
    def capabilities(self) -> bytes | None:
        return self.xattr(CAPABILITY_XATTR)

    @property
    def selinux_label(self) -> bytes | None:
        return self.xattr(SELINUX_XATTR)

    def _other_xattrs(self) -> tuple[tuple[str, bytes], ...]:
        return tuple(x for x in self.xattrs if x[0] not in (CAPABILITY_XATTR, SELINUX_XATTR))


def diff_metadata(old: FileMeta, new: FileMeta) -> tuple[MetaField, ...]:
    """The fields that differ, in `MetaField` order."""
    changed: list[MetaField] = []
    pairs = (
        (MetaField.FILE_TYPE, old.file_type, new.file_type),
        (MetaField.MODE, old.mode, new.mode),
        (MetaField.UID, old.uid, new.uid),
        (MetaField.GID, old.gid, new.gid),
        (MetaField.INODE, old.inode, new.inode),
        (MetaField.SIZE, old.size, new.size),
        (MetaField.MTIME, old.mtime_ns, new.mtime_ns),
        (MetaField.CTIME, old.ctime_ns, new.ctime_ns),
        (MetaField.XATTRS, old._other_xattrs(), new._other_xattrs()),
        (MetaField.CAPABILITIES, old.capabilities, new.capabilities),
        (MetaField.SELINUX_LABEL, old.selinux_label, new.selinux_label),
        (MetaField.SYMLINK_TARGET, old.symlink_target, new.symlink_target),
    )
    for name, a, b in pairs:
        if a != b:
            changed.append(name)
    return tuple(changed)


@dataclass(frozen=True)
class Observation:
    """One path as found now. `blake3` is set for a regular file whose content was read;
    `error` says why it could not be (the metadata is still valid)."""

    path: str
    meta: FileMeta
    blake3: bytes | None = None
    prefix_blake3: bytes | None = None  # hash of the first `prefix_len` bytes, if asked
    error: str | None = None
    bytes_read: int = 0


# --- extended attributes --------------------------------------------------------------------

_NO_XATTRS: Final = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA, errno.ENOENT})


def read_xattrs(target: int | str) -> tuple[tuple[str, bytes], ...]:
    """All extended attributes of an fd or (not followed) path, sorted; empty where the
    filesystem has none. Attributes vanishing between list and get are skipped."""
    is_fd = isinstance(target, int)
    try:
        names = os.listxattr(target) if is_fd else os.listxattr(target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _NO_XATTRS or exc.errno == errno.EPERM:
            return ()
        raise
    out: list[tuple[str, bytes]] = []
    for name in sorted(names)[:MAX_XATTRS]:
        try:
            if is_fd:
                value = os.getxattr(target, name)
            else:
                value = os.getxattr(target, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in _NO_XATTRS or exc.errno in (errno.EPERM, errno.E2BIG, errno.ERANGE):
                continue
            raise
        out.append((name, value[:MAX_XATTR_VALUE]))
    return tuple(out)


# --- content --------------------------------------------------------------------------------

_EMPTY: Final = bytes(_blake3.blake3().digest())
_ZEROS: Final = bytes(CHUNK_SIZE)
_PROC_FD: Final = "/proc/self/fd"
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def empty_blake3() -> bytes:
    return _EMPTY


def _open_noatime(path: str) -> int:
    try:
        return os.open(path, _OPEN_FLAGS | os.O_NOATIME)
    except PermissionError:
        # O_NOATIME needs ownership or CAP_FOWNER; the plain open may still be allowed.
        return os.open(path, _OPEN_FLAGS)


class _Digest:
    """BLAKE3 fed in pieces, with the hash of the first `prefix_len` bytes taken on the way."""

    def __init__(self, prefix_len: int | None, on_bytes: OnBytes | None) -> None:
        self.h = _blake3.blake3()
        self.prefix_len = prefix_len
        self.prefix = _EMPTY if prefix_len == 0 else None
        self.on_bytes = on_bytes
        self.done = 0

    def feed(self, chunk: memoryview | bytes) -> None:
        n = len(chunk)
        if self.prefix is None and self.prefix_len is not None and self.done + n >= self.prefix_len:
            cut = self.prefix_len - self.done
            self.h.update(chunk[:cut])
            self.prefix = bytes(self.h.copy().digest())
            self.h.update(chunk[cut:])
        else:
            self.h.update(chunk)
        self.done += n
        if self.on_bytes is not None:
            self.on_bytes(n)


def _skip_holes(fd: int, size: int, end: int, d: _Digest, view: memoryview) -> int:
    """Hash [0, min(size, end)) of a sparse file, feeding holes as zeros without reading them
    (reading a hole makes the kernel fill the page cache with zeros: 8 s for 3 GiB, against
    under 1 s this way). Returns where sequential reading should resume."""
    pos, stop = 0, min(size, end)
    while pos < stop:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                return pos  # SEEK_DATA unsupported here: read the rest
            data = stop  # no data after pos: a hole up to the end
        data = min(data, stop)
        while pos < data:
            n = min(CHUNK_SIZE, data - pos)
            d.feed(_ZEROS[:n])
            pos += n
        if pos >= stop:
            break
        hole = min(os.lseek(fd, pos, os.SEEK_HOLE), stop)
        while pos < hole:
            n = os.preadv(fd, [view[: min(CHUNK_SIZE, hole - pos)]], pos)
            if not n:
                return pos  # shrank meanwhile
            d.feed(view[:n])
            pos += n
    return pos


def _hash_chunked(
    fd: int,
    *,
    prefix_len: int | None,
    on_bytes: OnBytes | None,
    limit: int | None = None,
    st: os.stat_result | None = None,
) -> tuple[bytes, bytes | None, int]:
    """-> (hash of everything read, hash of the first prefix_len bytes or None, bytes read)."""
    d = _Digest(prefix_len, on_bytes)
    view = memoryview(bytearray(CHUNK_SIZE))
    end = limit if limit is not None else 1 << 62
    pos = 0
    if st is not None and st.st_blocks * 512 < st.st_size:
        pos = _skip_holes(fd, st.st_size, end, d, view)
    # Sequentially from there to EOF: also whatever was appended since fstat.
    os.lseek(fd, pos, os.SEEK_SET)
    with open(fd, "rb", buffering=0, closefd=False) as f:
        while pos < end:
            n = f.readinto(view[: min(CHUNK_SIZE, end - pos)])
            if not n:
                break
            d.feed(view[:n])
            pos += n
    return bytes(d.h.digest()), d.prefix, d.done


def hash_prefix(path: str, length: int) -> bytes | None:
    """BLAKE3 of the first `length` bytes of a regular file (not followed); None if it is
    shorter, not a regular file, or unreadable."""
    try:
        fd = _open_noatime(path)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        _, prefix, _ = _hash_chunked(fd, prefix_len=length, on_bytes=None, limit=length, st=st)
        return prefix
    except OSError:
        return None
    finally:
        os.close(fd)


def _observe_regular(
    path: str, *, hash_content: bool, prefix_len: int | None, on_bytes: OnBytes | None
) -> Observation | None:
    """None when the path stopped being a regular file before it could be opened (caller
    retries with a fresh lstat)."""
    try:
        fd = _open_noatime(path)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            return None  # became a symlink or a socket in between
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        xattrs = read_xattrs(fd)
        if not hash_content:
            return Observation(path, FileMeta.from_stat(st, xattrs=xattrs))
        prefix = None
        try:
            # Mapped windows fault in every page, holes included: a mostly sparse file
            # (VM image, database) is read much faster through read(), which skips them.
            sparse = st.st_blocks * 512 < st.st_size // 2
            big = st.st_size >= PARALLEL_THRESHOLD and not sparse
            if prefix_len is None and on_bytes is None and big:
                # Re-opening through /proc reaches this very inode, never a swapped path.
                digest, read = blake3_file(f"{_PROC_FD}/{fd}"), st.st_size
            else:
                digest, prefix, read = _hash_chunked(
                    fd, prefix_len=prefix_len, on_bytes=on_bytes, st=st
                )
        except OSError as exc:
            meta = FileMeta.from_stat(st, xattrs=xattrs)
            return Observation(path, meta, error=f"cannot read content: {exc.strerror}")
        if read != st.st_size:
            st = os.fstat(fd)  # it grew or shrank while read: record what the hash covers
        meta = FileMeta.from_stat(st, xattrs=xattrs)
        return Observation(path, meta, digest, prefix, bytes_read=read)
    finally:
        os.close(fd)


def observe(
    path: str,
    *,
    hash_content: bool = True,
    prefix_len: int | None = None,
    on_bytes: OnBytes | None = None,
) -> Observation | None:
    """The path as it is now, or None if it does not exist.

    `prefix_len` also hashes the first that many bytes (None in the result if the file is
    shorter); `on_bytes` is called after each chunk read (and forces chunked reading: the
    budget and progress of a scan). A file whose content cannot be read comes back with
    `error` set; a path whose metadata cannot be read raises OSError.
    """
    for _ in range(3):  # a path swapped between lstat and open is looked at again
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISREG(st.st_mode):
            try:
                obs = _observe_regular(
                    path, hash_content=hash_content, prefix_len=prefix_len, on_bytes=on_bytes
                )
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                # Metadata is known (lstat); the content is not: an observation, not a crash.
                meta = FileMeta.from_stat(st, xattrs=_xattrs_or_empty(path))
                return Observation(path, meta, error=f"cannot open: {exc.strerror}")
            if obs is not None:
                return obs
            continue
        target = None
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(path)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError:
                continue  # replaced by a non-link in between
        return Observation(
            path, FileMeta.from_stat(st, symlink_target=target, xattrs=_xattrs_or_empty(path))
        )
    raise OSError(errno.EAGAIN, "file keeps changing type while being read", path)


def _xattrs_or_empty(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        return read_xattrs(path)
    except OSError:
        return ()
