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
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
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


class CorrelationRuleError(CortexError, InvalidArgumentError):
    """A correlation rules file (or one rule in it) cannot be loaded: the message is
    `FILE:LINE: reason`, so an operator fixes a refused file without reading the engine."""

    def __init__(self, reason: str, file: str | None = None, line: int | None = None) -> None:
        where = "" if file is None else (f"{file}: " if line is None else f"{file}:{line}: ")
        super().__init__(f"{where}{reason}")
        self.reason = reason
        self.file = file
        self.line = line


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


# --- read API (`cortex.queries`, `cortex.paging`) ------------------------------------------


class ReadApiError(CortexError):
    """Base of the read API's own refusals. `reason` is the `google.rpc.ErrorInfo` reason the
    servicer sends (UPPER_SNAKE, stable: integrations branch on it, not on the message) and
    `metadata` its metadata (short strings, never stored or key-derived values)."""

    reason = "CORTEX_ERROR"

    def __init__(self, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.metadata: dict[str, str] = dict(metadata)


class PageSizeError(ReadApiError, InvalidArgumentError):
    """A negative `page_size` (INVALID_ARGUMENT): AIP-158 gives 0 a meaning, not -1."""

    reason = "INVALID_PAGE_SIZE"


class PageTokenError(ReadApiError, InvalidArgumentError):
    """A `page_token` that is malformed, tampered with, from another store, or reused with another
    filter or order_by (INVALID_ARGUMENT). One message for all: the token is authenticated, so
    which of them it was is not something the server can (or should) tell apart."""

    reason = "INVALID_PAGE_TOKEN"


class ResourceNameError(ReadApiError, InvalidArgumentError):
    """A resource `name` that is not `events/{id}` or `guardians/{id}` (INVALID_ARGUMENT)."""

    reason = "INVALID_NAME"


class AssessmentNotFoundError(ReadApiError, NotFoundError):
    """No assessment has this id (never raised, or dropped for the bound on kept ones)."""

    reason = "ASSESSMENT_NOT_FOUND"


class AssessmentResolvedError(ReadApiError, FailedPreconditionError):
    """The assessment already has a verdict (FAILED_PRECONDITION): a verdict is given once."""

    reason = "ASSESSMENT_RESOLVED"


class VerdictArgumentError(ReadApiError, InvalidArgumentError):
    """A verdict request the Cortex cannot take: no verdict given, or a comment too long."""

    reason = "INVALID_VERDICT"


class CorrelationOffError(ReadApiError, FailedPreconditionError):
    """Assessments were asked of a Cortex whose correlation is switched off."""

    reason = "CORRELATION_OFF"


class SubscriptionArgumentError(ReadApiError, InvalidArgumentError):
    """A SubscribeAssessments argument out of its range (heartbeat, a token ahead of the log)."""

    reason = "INVALID_ARGUMENT"


class ResumeTokenError(ReadApiError, InvalidArgumentError):
    """A resume token that is malformed, altered, another store's, or ahead of the log."""

    reason = "INVALID_RESUME_TOKEN"


class ResumeTokenExpiredError(ReadApiError, OutOfRangeError):
    """The changes after a resume token are gone (retention); `oldest_token` resumes."""

    reason = "RESUME_TOKEN_EXPIRED"


class PlaybookRunNotFoundError(ReadApiError, NotFoundError):
    """No playbook run has this id."""

    reason = "PLAYBOOK_RUN_NOT_FOUND"


class PlaybookRunStateError(ReadApiError, FailedPreconditionError):
    """The run is not in a state that allows it (replay a run that did not fail, approve one
    that does not wait for approval)."""

    reason = "PLAYBOOK_RUN_STATE"


class PlaybooksOffError(ReadApiError, FailedPreconditionError):
    """Playbook runs were asked of a Cortex with no playbooks configured."""

    reason = "PLAYBOOKS_OFF"


class SubscriptionLimitError(ReadApiError, ResourceExhaustedError):
    """As many assessment subscriptions as the Cortex serves are open."""

    reason = "TOO_MANY_SUBSCRIPTIONS"


class EventNotFoundError(ReadApiError, NotFoundError):
    """No stored event has this id (never stored, or aged out by retention)."""

    reason = "EVENT_NOT_FOUND"


class GuardianNotFoundError(ReadApiError, NotFoundError):
    """The Cortex follows no guardian of this id."""

    reason = "GUARDIAN_NOT_FOUND"


# --- ingest -----------------------------------------------------------------------------------


class IngestError(CortexError):
    """Base of the ingest's errors (`cortex.ingest`)."""


class GuardianMismatchError(IngestError, FailedPreconditionError):
    """A configured guardian does not match what it is: its events name another guardian id,
    or its id is the Cortex's own. It is refused until a reload changes its entry."""

    def __init__(self, guardian_id: str, reason: str) -> None:
        super().__init__(f"guardian {guardian_id}: {reason}")
        self.guardian_id = guardian_id
        self.reason = reason


# --- guardian calls (`cortex.guardian_client`) ----------------------------------------------


class AnomalyServiceError(CortexError, UnavailableError):
    """A Score call to the ML service failed (any status: scoring waits for the service either
    way); `code` is the gRPC status name."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"ML service: {code}: {details}")
        self.code = code
        self.details = details


class GuardianCallError(CortexError):
    """A call to a guardian (AlphaService, BetaService) failed; `code` is the gRPC status name
    the guardian (or the channel) answered, and the message is its details."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}" if details else code)
        self.code = code
        self.details = details


class GuardianUnavailableError(GuardianCallError, UnavailableError):
    """The guardian could not be reached, or did not answer within the call's deadline."""


class GuardianBusyError(GuardianCallError, ResourceExhaustedError):
    """The guardian is doing this work already (one integrity scan at a time) or is over a
    limit (RESOURCE_EXHAUSTED): try again later."""


class GuardianDeniedError(GuardianCallError, PermissionDeniedError):
    """The guardian refused the Cortex's certificate or its role for this call."""


class GuardianArgumentError(GuardianCallError, InvalidArgumentError):
    """The guardian refused the request's arguments (INVALID_ARGUMENT)."""


class GuardianNotFoundCallError(GuardianCallError, NotFoundError):
    """The request names something the guardian does not have (an unknown proposal id, backup
    set or process)."""


class GuardianPreconditionError(GuardianCallError, FailedPreconditionError):
    """The guardian cannot do it in its current state (a proposal already decided, a file that
    changed again, a tampered baseline)."""


# --- playbooks (`cortex.playbooks`) ---------------------------------------------------------


class PlaybookError(CortexError):
    """Base of the playbooks' errors."""


class PlaybookSecretError(PlaybookError, FailedPreconditionError):
    """A webhook secret or token file that cannot be used (missing, not private, malformed);
    the message names the file and the reason, never the content."""


class PlaybookDefinitionError(PlaybookError, InvalidArgumentError):
    """A playbook file that does not load: `FILE:LINE: reason`."""

    def __init__(self, reason: str, file: str | None = None, line: int | None = None) -> None:
        where = f"{file}:{line}: " if file and line else (f"{file}: " if file else "")
        super().__init__(f"{where}{reason}")
        self.reason = reason
        self.file = file
        self.line = line
