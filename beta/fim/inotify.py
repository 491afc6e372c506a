"""inotify through libc by ctypes (three calls, no dependency): the constants of
<sys/inotify.h>, the event parser and `Inotify`, the descriptor `FimMonitor` reads."""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = ["DIR_MASK", "FILE_MASK", "Inotify", "InotifyEvent", "InotifyLike", "parse_events"]

# <sys/inotify.h>
IN_MODIFY: Final = 0x00000002
IN_ATTRIB: Final = 0x00000004
IN_CLOSE_WRITE: Final = 0x00000008
IN_MOVED_FROM: Final = 0x00000040
IN_MOVED_TO: Final = 0x00000080
IN_CREATE: Final = 0x00000100
IN_DELETE: Final = 0x00000200
IN_DELETE_SELF: Final = 0x00000400
IN_MOVE_SELF: Final = 0x00000800
IN_UNMOUNT: Final = 0x00002000
IN_Q_OVERFLOW: Final = 0x00004000
IN_IGNORED: Final = 0x00008000
IN_ONLYDIR: Final = 0x01000000
IN_DONT_FOLLOW: Final = 0x02000000
IN_EXCL_UNLINK: Final = 0x04000000
IN_ISDIR: Final = 0x40000000
IN_NONBLOCK: Final = os.O_NONBLOCK
IN_CLOEXEC: Final = os.O_CLOEXEC

_CHANGES: Final = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
DIR_MASK: Final = _CHANGES | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK
FILE_MASK: Final = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF
_EVENT: Final = struct.Struct("iIII")
_READ_SIZE: Final = 64 * 1024


@dataclass(frozen=True)
class InotifyEvent:
    wd: int
    mask: int
    cookie: int
    name: bytes


def parse_events(buf: bytes) -> list[InotifyEvent]:
    out: list[InotifyEvent] = []
    off = 0
    while off + _EVENT.size <= len(buf):
        wd, mask, cookie, length = _EVENT.unpack_from(buf, off)
        start = off + _EVENT.size
        name = buf[start : start + length].split(b"\0", 1)[0]
        out.append(InotifyEvent(wd, mask, cookie, name))
        off = start + length
    return out


class _Libc:
    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.init1 = libc.inotify_init1
        self.init1.argtypes = [ctypes.c_int]
        self.init1.restype = ctypes.c_int
        self.add_watch = libc.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add_watch.restype = ctypes.c_int
        self.rm_watch = libc.inotify_rm_watch
        self.rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        self.rm_watch.restype = ctypes.c_int


_libc: _Libc | None = None


def _lib() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


class InotifyLike(Protocol):
    def fileno(self) -> int: ...
    def add_watch(self, path: str, mask: int) -> int: ...
    def rm_watch(self, wd: int) -> None: ...
    def read_events(self) -> list[InotifyEvent]: ...
    def close(self) -> None: ...


class Inotify:
    """One inotify instance (non-blocking). OSError carries errno and the path."""

    def __init__(self) -> None:
        fd = int(_lib().init1(IN_NONBLOCK | IN_CLOEXEC))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def add_watch(self, path: str, mask: int) -> int:
        wd = _lib().add_watch(self._fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        _lib().rm_watch(self._fd, wd)  # EINVAL: already gone with its inode; nothing to do

    def read_events(self) -> list[InotifyEvent]:
        out: list[InotifyEvent] = []
        while True:
            try:
                buf = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return out
            if not buf:
                return out
            out.extend(parse_events(buf))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
