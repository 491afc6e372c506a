"""Private files on disk: written atomically and 0600 from birth, loaded only when still private.

Used for component master keys (`crypto.keyring`) and for the CA and leaf private keys
(`crypto.pki`). Error messages name the path, the reason and the fix; they never contain file
contents.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from crypto.errors import KeyFileError
from crypto.files import PRIVATE_MODE, write_file_atomic

MASTER_KEY_LEN = 32


def read_private_file(path: Path, *, what: str = "key file") -> bytes:
    """Read a file that must be a regular file with no group or other permission bits.

    Symlinks are followed (secret mounts use them); the checks apply to the file they reach.
    """
    try:
        # O_NONBLOCK: opening a FIFO planted at the path must not hang; no effect on files.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path}: no such file") from None
    except PermissionError:
        raise KeyFileError(
            f"{what} {path}: permission denied; run as the user that owns it"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"{what} {path}: cannot open ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{what} {path}: not a regular file; point at the key file itself")
        _check_private_mode(path, st.st_mode, what)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _check_private_mode(path: Path, st_mode: int, what: str) -> None:
    mode = stat.S_IMODE(st_mode)
    if mode & 0o044:
        reason = "readable by group or other users"
    elif mode & 0o022:
        reason = "writable by group or other users"
    elif mode & 0o011:
        reason = "executable by group or other users"
    else:
        return
    raise KeyFileError(
        f"{what} {path}: mode {mode:04o} is {reason}; refusing to use it. "
        f"Run `chmod 600 {path}` (and check who may have copied it)"
    )


def create_master_key(path: Path) -> bytes:
    """Create a new random master key file at `path` (0600, atomic); refuse to replace one."""
    secret = secrets.token_bytes(MASTER_KEY_LEN)
    try:
        write_file_atomic(path, secret, mode=PRIVATE_MODE, overwrite=False)
    except FileExistsError:
        raise KeyFileError(
            f"master key {path}: already exists; refusing to replace it "
            "(everything sealed under it would become unreadable)"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"master key {path}: cannot create ({exc.strerror})") from None
    return secret


def load_master_key(path: Path) -> bytes:
    """Load a master key file, refusing unsafe permissions, non-files and wrong lengths."""
    secret = read_private_file(path, what="master key")
    if len(secret) != MASTER_KEY_LEN:
        raise KeyFileError(
            f"master key {path}: {len(secret)} bytes, a master key is exactly {MASTER_KEY_LEN}; "
            "the file is truncated or not a QSC master key. Restore it from backup"
        )
    return secret


def file_mode(path: Path) -> int | None:
    """Permission bits of `path`, or None if it does not exist."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None
