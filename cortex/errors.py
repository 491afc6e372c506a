"""The one error tree of the Cortex.

Every Cortex error is a `CortexError` and also one of the mesh kinds (`mesh.errors`), so
`mesh.status` maps it to its gRPC code through the class hierarchy without a Cortex entry.
Messages reach the peer: they name the offending argument, a position and a reason, never key
material or stored (blind-indexed) values.
"""

from __future__ import annotations

from mesh.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    MeshError,
)


class CortexError(MeshError):
    """Base of every error the Cortex raises on purpose."""


class FilterError(CortexError, InvalidArgumentError):
    """A `filter` (or `order_by`) the Cortex cannot run (INVALID_ARGUMENT).

    `position` is the 1-based character position in the argument's text where the problem is (one
    past the end for "ended too early"); `argument` names the request field, so the message reads
    `filter position 17: field "proccess.exe" is not filterable; fields: ...`.
    """

    def __init__(self, position: int, reason: str, *, argument: str = "filter") -> None:
        super().__init__(f"{argument} position {position}: {reason}")
        self.position = position
        self.reason = reason
        self.argument = argument


# --- the event store (`cortex.store`) -------------------------------------------------------


class StoreError(CortexError):
    """Base of the event store's errors. Messages name the file or record, never key material
    or stored values."""


class StoreOpenError(StoreError, FailedPreconditionError):
    """The store refuses to start: wrong or missing key, another Cortex's database, a corrupted
    or foreign file, loose permissions, another writer. The message names the file and the
    reason; nothing is ever re-created over an existing store."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"event store {path}: {reason}")
        self.path = path
        self.reason = reason


class StoreReadOnlyError(StoreError, FailedPreconditionError):
    """A write on a store opened read-only (or without a checkpoint signing key)."""


class StoreIntegrityError(StoreError, FailedPreconditionError):
    """A stored record does not open or does not match its row (tampered or corrupted); run
    `qsc-cortex store verify` for the first bad record."""


class StoreConflictError(StoreError, AlreadyExistsError):
    """A batch reuses an event id already stored for another (guardian, seq)."""


class StoreArgumentError(StoreError, InvalidArgumentError):
    """A malformed call: events of another guardian, an unset seq or id, a bad page position."""


class CheckpointFileError(StoreError, InvalidArgumentError):
    """An exported checkpoint file cannot be read, is malformed, is another store's, or its
    signature does not verify with its certificate."""
