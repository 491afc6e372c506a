"""The one error tree of the ML service.

Every ML error is an `MlError` and also one of the mesh kinds, so `mesh.status` maps it to its gRPC
code through the class hierarchy without an ML entry. Messages reach the peer (or the operator's
terminal): no key material, no raw payloads beyond the offending field's name and a short value.

The client (ml.client) maps a failed call's status back into this tree: INVALID_ARGUMENT to
`InvalidInputError` naming the field, FAILED_PRECONDITION to `ModelVersionMismatchError`,
UNAVAILABLE and DEADLINE_EXCEEDED to `ServiceUnavailableError`, UNAUTHENTICATED and
PERMISSION_DENIED to `AccessDeniedError`, any other code to their base `ServiceCallError`.
"""

from __future__ import annotations

from pathlib import Path

from mesh.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    MeshError,
    PermissionDeniedError,
    UnavailableError,
)


class MlError(MeshError):
    """Base of every error the ML service raises on purpose."""


class InvalidInputError(MlError, InvalidArgumentError):
    """A Score request is malformed; `field` is the request field to blame (INVALID_ARGUMENT)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ModelVersionMismatchError(MlError, FailedPreconditionError):
    """The request pinned a model version that is not the one serving (FAILED_PRECONDITION)."""


class NoModelError(MlError, UnavailableError):
    """No model is loaded yet (UNAVAILABLE)."""


class DataFormatError(MlError, InvalidArgumentError):
    """A telemetry or feedback file cannot be read; the message names file, line and column."""

    def __init__(self, path: Path | str, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")
        self.path = str(path)
        self.line = line
        self.reason = reason


class TrainingError(MlError, InvalidArgumentError):
    """Training (or tuning) parameters or data cannot produce a model."""


class ModelIntegrityError(MlError, FailedPreconditionError):
    """A model file or its card failed authentication or is inconsistent: tampered, truncated, or
    sealed with a key this keyring does not have. The message names the file."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class ModelNotFoundError(MlError, FailedPreconditionError):
    """The model directory holds no model (or not the version asked for)."""


class ModelRollbackError(ModelIntegrityError):
    """An authentic model older than the newest this model directory has served or written: a
    rollback (the newest deleted or an old one put back). Refused; `qsc-ml promote` is the
    deliberate way back (see ml.revision)."""


class RevisionRecordError(ModelIntegrityError):
    """The model directory's revision record (ml.revision) does not verify: the rollback floor
    cannot be trusted, so it is reported and never silently reset."""


class PromotionError(MlError, InvalidArgumentError):
    """`qsc-ml promote` was asked for something that is not a rollback: the version is already
    the newest, or no reason was given."""


class ServiceCallError(MlError):
    """A call to the ML service failed (raised by ml.client); `code` is the gRPC status name and
    `details` the status message. Subclassed per kind below; this base alone is for a code no
    kind covers (INTERNAL, RESOURCE_EXHAUSTED, ...)."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{details} ({code})" if details else code)
        self.code = code
        self.details = details


class ServiceUnavailableError(ServiceCallError, UnavailableError):
    """The ML service cannot answer now (UNAVAILABLE: unreachable, stopping, no model loaded) or
    did not within the call's deadline (DEADLINE_EXCEEDED); trying again later may help."""


class AccessDeniedError(ServiceCallError, PermissionDeniedError):
    """The ML service refused the caller: its identity (UNAUTHENTICATED) or its role for this RPC
    (PERMISSION_DENIED)."""
