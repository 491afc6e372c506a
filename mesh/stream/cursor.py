"""Where a subscriber's resume point lives: the cursor-store protocol and two stores.

A cursor is the seq through which a guardian's events were handed to, and accepted by, the
consumer, together with the guardian's SPIFFE ID (sequence numbers are per guardian: one
guardian's cursor used on another skips or replays events).

    store = FileCursorStore(Path("/var/lib/qsc/web-01.cursor"))     # or MemoryCursorStore()
    stored = await store.load()                                    # StoredCursor | None
    await store.commit(StoredCursor("spiffe://td/alpha/web-01", 42))

The shape, and why:

* **One store per subscription.** A store holds the cursor of one guardian subscription, not a
  map keyed by guardian: the resume point has to be known before the guardian is identified (it
  is part of the Subscribe request, which a sealed session signs before the guardian answers).
  The stored cursor names its guardian, so the subscriber refuses another guardian's cursor with
  :class:`ForeignCursorError` (:func:`refuse_foreign`) once the guardian is identified and before
  anything is delivered. A database store is one row per subscription (e.g. keyed by the name
  the Cortex gives the guardian) holding that SPIFFE ID and the seq.
* **Async, both methods.** ``load`` and ``commit`` are coroutines, so a store on an async
  database driver fits as it is; a blocking store (the file) runs its I/O in a worker thread.
* **Who commits.** The subscriber commits through the store by default, after each batch once the
  consumer comes back for more. A consumer that keeps the cursor in its own database, in the
  same transaction as the events, tells the subscriber not to commit
  (``GuardianSubscriber(..., commit_cursor=False)``, or ``consumer_commits`` in
  :mod:`mesh.stream.fanin`) and writes ``batch.cursor`` itself; the store is then only read, to
  resume. A crash between the two can then neither lose a batch nor deliver it twice.
* **Errors.** A store raises :class:`CursorStoreError` (the file store its subclass
  :class:`CursorFileError`, naming the file) when it cannot read or write; a damaged cursor is an
  error, never a silent restart from scratch (that replays or skips).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Final, Protocol

from crypto.files import PRIVATE_MODE, read_regular_capped, write_file_atomic
from mesh.errors import MeshError

__all__ = [
    "CursorFileError",
    "CursorStore",
    "CursorStoreError",
    "FileCursorStore",
    "ForeignCursorError",
    "MemoryCursorStore",
    "StoredCursor",
    "refuse_foreign",
]

_CURSOR_FORMAT: Final = "qsc-stream-cursor-v1"
# A cursor file is one short JSON line; anything bigger is not one.
_MAX_CURSOR_FILE: Final = 4096
_MAX_SEQ: Final = 2**64


class CursorStoreError(MeshError):
    """A cursor store cannot read or write its cursor; never retried by the subscriber."""


class CursorFileError(CursorStoreError):
    """The cursor file cannot be read or written, or is damaged; the message names the file."""


class ForeignCursorError(MeshError):
    """A stored cursor (or the previous connection) belongs to another guardian."""


@dataclasses.dataclass(frozen=True)
class StoredCursor:
    guardian: str  # the guardian's SPIFFE ID
    seq: int

    def __post_init__(self) -> None:
        if not self.guardian.startswith("spiffe://"):
            raise ValueError("guardian must be a SPIFFE ID")
        if isinstance(self.seq, bool) or not isinstance(self.seq, int):
            raise ValueError("seq must be an integer")
        if not 0 <= self.seq < _MAX_SEQ:
            raise ValueError("seq must be an unsigned 64-bit integer")


class CursorStore(Protocol):
    """The cursor of one guardian subscription; see the module docstring.

    ``str(store)`` names the store in error messages (e.g. "cursor file /path").
    """

    async def load(self) -> StoredCursor | None:
        """The stored cursor; None when none was ever committed."""
        ...

    async def commit(self, cursor: StoredCursor) -> None:
        """Store `cursor` durably before returning (replacing the previous one)."""
        ...


def refuse_foreign(store: CursorStore, stored: StoredCursor | None, guardian: str) -> None:
    """Raise ForeignCursorError when `stored` (what `store` held) is not `guardian`'s cursor."""
    if stored is not None and stored.guardian != guardian:
        raise ForeignCursorError(
            f"{store} holds the cursor of {stored.guardian}, not of {guardian}; keep one "
            "cursor per guardian"
        )


class FileCursorStore:
    """One guardian's cursor in a small JSON file (0600), replaced atomically on every commit:
    a crash leaves the old cursor or the new one, never a torn file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __str__(self) -> str:
        return f"cursor file {self.path}"

    def __repr__(self) -> str:
        return f"FileCursorStore({str(self.path)!r})"

    async def load(self) -> StoredCursor | None:
        return await asyncio.to_thread(self.read)

    async def commit(self, cursor: StoredCursor) -> None:
        await asyncio.to_thread(self.write, cursor)

    def read(self) -> StoredCursor | None:
        """The blocking form of :meth:`load`, for scripts and tests."""
        try:
            raw = read_regular_capped(self.path, _MAX_CURSOR_FILE)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CursorFileError(f"cursor file {self.path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != _CURSOR_FORMAT:
                raise ValueError("not a QSC stream cursor file")
            guardian, seq = data["guardian"], data["seq"]
            if not isinstance(guardian, str):
                raise ValueError("guardian must be a SPIFFE ID")
            return StoredCursor(guardian, seq)
        except (ValueError, KeyError) as exc:
            raise CursorFileError(f"cursor file {self.path} is invalid: {exc}") from None

    def write(self, cursor: StoredCursor) -> None:
        """The blocking form of :meth:`commit`, for scripts and tests."""
        body = json.dumps(
            {"format": _CURSOR_FORMAT, "guardian": cursor.guardian, "seq": cursor.seq},
            sort_keys=True,
        ).encode()
        try:
            write_file_atomic(self.path, body + b"\n", mode=PRIVATE_MODE, overwrite=True)
        except OSError as exc:
            raise CursorFileError(f"cursor file {self.path}: {exc.strerror or exc}") from None


class MemoryCursorStore:
    """A cursor kept in this process only: for tests, and for consumers that resume from
    elsewhere (a restart starts from the subscriber's configured position)."""

    def __init__(self, cursor: StoredCursor | None = None) -> None:
        self.cursor = cursor
        self.commits = 0

    def __str__(self) -> str:
        return "in-memory cursor store"

    async def load(self) -> StoredCursor | None:
        return self.cursor

    async def commit(self, cursor: StoredCursor) -> None:
        self.cursor = cursor
        self.commits += 1
