"""The event store's interface: what ingest and the API use, whatever the database.

`EventStore` is small on purpose, so a PostgreSQL store can replace the SQLite one without
touching its callers: append a batch with its cursor (one transaction, exactly once by
(guardian id, seq)), read a cursor, get one event, page through a filtered query, verify,
checkpoint, retain, close. The values it takes and returns are plain frozen dataclasses and
`qsc.common.v1.Event` messages.

`where` is any object with `sql` and `params` (`cortex.filter.SqlFragment` is one): a WHERE
fragment over the table `events` and `event_terms` as `cortex.fields` lays them out. Pages are
ordered by (time, rowid), ascending or descending, and resumed from an opaque `Position`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from cortex.errors import StoreArgumentError
from cortex.store.runs import NewRun
from mesh.stream.cursor import StoredCursor
from qsc.common.v1 import event_pb2

__all__ = [
    "Checkpoint",
    "EventStore",
    "Page",
    "Position",
    "Problem",
    "Progress",
    "RetentionResult",
    "VerifyReport",
    "WhereClause",
]

SqlParam = int | str | bytes
# progress(done, total): records checked so far and the number to check (an estimate).
Progress = Callable[[int, int], None]
_TOKEN: Final = re.compile(r"(n|t(-?\d{1,20}))\.(\d{1,20})")


class WhereClause(Protocol):
    """A WHERE fragment and its `?` parameters (`cortex.filter.SqlFragment` fits)."""

    @property
    def sql(self) -> str: ...

    @property
    def params(self) -> tuple[SqlParam, ...]: ...


@dataclass(frozen=True)
class Position:
    """Where a page ended: the (time, rowid) of its last event. Opaque to callers: pass back
    `token()` (a short ASCII string) and read it with `Position.parse`."""

    time_ns: int | None
    rowid: int

    def token(self) -> str:
        head = "n" if self.time_ns is None else f"t{self.time_ns}"
        return f"{head}.{self.rowid}"

    @classmethod
    def parse(cls, token: str) -> Position:
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise StoreArgumentError("page position is malformed")
        time_s = match.group(2)
        return cls(None if time_s is None else int(time_s), int(match.group(3)))


@dataclass(frozen=True)
class Page:
    events: tuple[event_pb2.Event, ...]
    next: Position | None  # None: nothing after this page (at the time of the query)


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement: the store `store_id` held `count` records (rowids 1..count ever
    appended), the last one's chain hash being `head`, at `time_ns`. `kind` is "head" (taken
    every N records or T seconds, or on demand) or "cut" (written by retention: records up to
    `count` were deleted, and the chain goes on from `head`)."""

    store_id: str
    kind: str
    count: int
    head: bytes
    time_ns: int
    key_id: str  # the signer's public key id (`crypto.signing.public_key_id`)
    signature: bytes


@dataclass(frozen=True)
class Problem:
    """The first bad thing verify found: a record (rowid, and its guardian and seq as stored,
    which may themselves be the edited part), or a checkpoint or the store head (rowid None
    unless it points at one)."""

    rowid: int | None
    guardian_id: str | None
    seq: int | None
    reason: str

    def __str__(self) -> str:
        if self.rowid is None:
            return self.reason
        return f"record {self.rowid} (guardian {self.guardian_id}, seq {self.seq}): {self.reason}"


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    records: int  # records checked
    first_record: int | None  # rowid the chain was checked from (after any retention cut)
    last_record: int | None
    checkpoints: int  # signed checkpoints checked (the exported one included)
    problem: Problem | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetentionResult:
    deleted: int
    cut: Checkpoint | None  # None: nothing was old enough


class EventStore(Protocol):
    """The Cortex's event store (see the module docstring)."""

    def append_batch(
        self,
        guardian_id: str,
        events: Sequence[event_pb2.Event],
        cursor: StoredCursor | None,
        *,
        new_runs: Sequence[NewRun] = (),
    ) -> int:
        """Store `events` of `guardian_id`, its `cursor` and the playbook runs they trigger in
        one transaction; events whose (guardian id, seq) is already stored are skipped.
        Returns how many were stored."""
        ...

    def cursor(self, guardian_id: str) -> StoredCursor | None: ...

    def get(self, event_id: str) -> event_pb2.Event | None: ...

    def query(
        self,
        where: WhereClause | None = None,
        *,
        descending: bool = False,
        after: Position | None = None,
        limit: int = 100,
    ) -> Page: ...

    def count(self, where: WhereClause | None = None) -> int:
        """How many stored events match `where` (all of them for None)."""
        ...

    def blind(self, field: str, value: str) -> bytes:
        """The blind index term of `value` in the blind field `field`, for the filter compiler."""
        ...

    def verify(
        self, *, checkpoint: Checkpoint | None = None, progress: Progress | None = None
    ) -> VerifyReport: ...

    def checkpoint(self) -> Checkpoint: ...

    def retain(self, older_than: dt.timedelta) -> RetentionResult: ...

    def close(self) -> None: ...
