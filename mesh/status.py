"""The one table from domain errors to gRPC status codes.

Lookup walks the exception's class hierarchy, so a component error that subclasses a mesh kind
(`class RuleNotFound(NotFoundError)`) maps without touching this table. Anything not in the table
is a bug as far as the peer is concerned: `INTERNAL` with a fixed message, while the caller (the
interceptor) logs the traceback server-side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import grpc

from crypto import errors as crypto_errors
from mesh import errors

GENERIC_INTERNAL_MESSAGE: Final = "internal error"
# Status details travel in a header: keep them short whatever a message grows to.
MAX_DETAILS_CHARS: Final = 512

STATUS_TABLE: Final[Mapping[type[BaseException], grpc.StatusCode]] = MappingProxyType(
    {
        errors.IdentityError: grpc.StatusCode.UNAUTHENTICATED,
        errors.PolicyViolationError: grpc.StatusCode.UNAUTHENTICATED,
        errors.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
        errors.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
        errors.NotFoundError: grpc.StatusCode.NOT_FOUND,
        errors.AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
        errors.FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
        errors.OutOfRangeError: grpc.StatusCode.OUT_OF_RANGE,
        errors.ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
        errors.UnavailableError: grpc.StatusCode.UNAVAILABLE,
        errors.UnimplementedError: grpc.StatusCode.UNIMPLEMENTED,
        # What generated base servicers raise for an RPC the component does not implement.
        NotImplementedError: grpc.StatusCode.UNIMPLEMENTED,
        # A peer's signature (e.g. a sealed-session offer) did not verify: the message is the
        # fixed, opaque "verification failed".
        crypto_errors.VerificationError: grpc.StatusCode.UNAUTHENTICATED,
        # A malformed KEM key or ciphertext sent by the peer; messages name sizes only.
        crypto_errors.KemError: grpc.StatusCode.INVALID_ARGUMENT,
    }
)


@dataclass(frozen=True)
class MappedStatus:
    code: grpc.StatusCode
    details: str
    expected: bool  # False: not a domain error, the caller must log the traceback


def to_status(exc: BaseException) -> MappedStatus:
    """The status a peer sees for `exc`."""
    for cls in type(exc).__mro__:
        code = STATUS_TABLE.get(cls)
        if code is not None:
            details = str(exc) or code.name.lower().replace("_", " ")
            if len(details) > MAX_DETAILS_CHARS:
                details = details[: MAX_DETAILS_CHARS - 3] + "..."
            return MappedStatus(code, details, expected=True)
    return MappedStatus(grpc.StatusCode.INTERNAL, GENERIC_INTERNAL_MESSAGE, expected=False)
