"""The store's cursors as a `mesh.stream.cursor.CursorStore`, for the fan-in.

    store = SqliteEventStore.open(...)
    source = FanInSource(
        "web-01", config, cursor_store=StoreCursorStore(store, "alpha-web-01"),
        consumer_commits=True,              # the fan-in only reads the store, to resume
    )

    async def consume(source: str, batch: DeliveredBatch) -> None:
        await asyncio.to_thread(store.append_batch, guardian_id, batch.events, batch.cursor)

With ``consumer_commits`` the cursor is written only by `append_batch`, in the transaction that
stores the batch: a crash at any instant leaves both or neither, so storage is exactly once by
(guardian id, seq). `commit` (used only without ``consumer_commits``) stores the cursor alone, in
a transaction of its own. The subscriber refuses a stored cursor of another guardian
(`mesh.stream.cursor.refuse_foreign`); the store refuses to move one guardian's cursor to
another SPIFFE ID.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from mesh.stream.cursor import StoredCursor

__all__ = ["CursorBackend", "StoreCursorStore"]


class CursorBackend(Protocol):
    """The part of an event store the adapter uses."""

    def cursor(self, guardian_id: str) -> StoredCursor | None: ...

    def commit_cursor(self, guardian_id: str, cursor: StoredCursor) -> None: ...


class StoreCursorStore:
    """One guardian's cursor in the event store's `cursors` table."""

    def __init__(self, store: CursorBackend, guardian_id: str) -> None:
        self.store = store
        self.guardian_id = guardian_id

    def __str__(self) -> str:
        return f"event store cursor of {self.guardian_id}"

    def __repr__(self) -> str:
        return f"StoreCursorStore({self.store!r}, {self.guardian_id!r})"

    async def load(self) -> StoredCursor | None:
        return await asyncio.to_thread(self.store.cursor, self.guardian_id)

    async def commit(self, cursor: StoredCursor) -> None:
        await asyncio.to_thread(self.store.commit_cursor, self.guardian_id, cursor)
