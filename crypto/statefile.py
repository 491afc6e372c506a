"""Small checksummed state files that survive any crash and are never silently reset.

The mechanism behind the nonce counters (:class:`crypto.nonces.CounterNonceSource`) and the outbox's
sequence high-water mark (:mod:`mesh.stream.outbox`): a reserved mark is written durably *before*
anything it covers is used, so a process killed at any point restarts past everything it might
have used. This module holds the file part of that, in one place:

* The file is one JSON object: ``format``, ``version``, the caller's fields and ``sha3_256``, a
  digest over ``format``, ``version`` and the field values in the caller's order. It detects
  corruption (bit rot, a torn or foreign file), not tampering: whoever can write the file can
  rewrite it anyway, so it relies on its permissions (0600), not on a MAC.
* :func:`write_state` replaces the file atomically and durably
  (:func:`crypto.files.write_file_atomic`): after a crash it holds the old or the new state.
* :func:`read_state` refuses, with :class:`crypto.errors.StateFileError` naming the problem, a file
  that is missing, not a regular file, larger than the cap, unparsable, of another format or
  version, with other fields, or whose digest does not match. The caller decides what a refusal
  means (the nonce counters refuse to run; the outbox numbers conservatively and reports).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, TypeAlias

from crypto.errors import StateFileError
from crypto.files import PRIVATE_MODE, FileTooLargeError, read_regular_capped, write_file_atomic

__all__ = ["StateValue", "read_state", "state_digest", "write_state"]

# JSON values a state field may hold.
StateValue: TypeAlias = str | int | list[int] | list[list[int]]

_META: Final = ("format", "version", "sha3_256")


def _render(value: object) -> str:
    # Strings as they are (the nonce state's digest predates this module and must not change);
    # anything else in canonical JSON, which is what an int has always been rendered as.
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def state_digest(kind: str, version: int, values: Sequence[object]) -> str:
    """SHA3-256 hex over ``kind``, ``version`` and ``values``, NUL-separated."""
    body = "\x00".join([kind, str(version), *(_render(value) for value in values)])
    return hashlib.sha3_256(body.encode()).hexdigest()


def encode_state(kind: str, version: int, fields: Mapping[str, StateValue]) -> bytes:
    """The file content for ``fields`` (digest over their values in the mapping's order)."""
    if any(name in _META for name in fields):
        raise ValueError(f"field names {_META} are reserved")
    doc: dict[str, object] = {"format": kind, "version": version, **fields}
    doc["sha3_256"] = state_digest(kind, version, list(fields.values()))
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


def decode_state(
    raw: bytes, path: Path, kind: str, version: int, names: Sequence[str]
) -> dict[str, object]:
    """The fields ``names`` of a state file's content, verified; raises StateFileError."""
    try:
        doc = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        raise StateFileError(path, "corrupt") from None
    if not isinstance(doc, dict) or doc.get("format") != kind:
        raise StateFileError(path, "corrupt")
    if doc.get("version") != version:
        raise StateFileError(path, "version")
    digest = doc.get("sha3_256")
    if set(doc) != {*_META, *names} or not isinstance(digest, str):
        raise StateFileError(path, "corrupt")
    values = [doc[name] for name in names]
    if not hmac.compare_digest(digest, state_digest(kind, version, values)):
        raise StateFileError(path, "corrupt")
    return {name: doc[name] for name in names}


def write_state(
    path: str | os.PathLike[str], kind: str, version: int, fields: Mapping[str, StateValue]
) -> None:
    """Replace the state file at ``path`` (mode 0600): old or new state whenever a crash strikes."""
    write_file_atomic(
        Path(path), encode_state(kind, version, fields), mode=PRIVATE_MODE, overwrite=True
    )


def read_state(
    path: str | os.PathLike[str], kind: str, version: int, names: Sequence[str], *, max_bytes: int
) -> dict[str, object]:
    """The verified fields ``names`` of the state file at ``path`` (types are the caller's to
    check); raises StateFileError with ``problem`` missing, unreadable, corrupt or version."""
    p = Path(path)
    try:
        raw = read_regular_capped(p, max_bytes)
    except FileNotFoundError:
        raise StateFileError(p, "missing") from None
    except FileTooLargeError:
        raise StateFileError(p, "corrupt") from None
    except OSError as e:
        raise StateFileError(p, "unreadable", e.strerror or str(e)) from None
    return decode_state(raw, p, kind, version, names)
