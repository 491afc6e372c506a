"""The one table from domain errors to gRPC status codes."""

from __future__ import annotations

import grpc
import pytest

from crypto.errors import DecryptionError, KemError, VerificationError
from mesh import errors
from mesh.status import GENERIC_INTERNAL_MESSAGE, MAX_DETAILS_CHARS, STATUS_TABLE, to_status


class RuleNotFound(errors.NotFoundError):
    """What a component defines: a subclass of a mesh kind."""


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.IdentityError("x"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.PolicyViolationError("x"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDeniedError("x"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.InvalidArgumentError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFoundError("x"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExistsError("x"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPreconditionError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.OutOfRangeError("x"), grpc.StatusCode.OUT_OF_RANGE),
        (errors.ResourceExhaustedError("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.UnavailableError("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.UnimplementedError("x"), grpc.StatusCode.UNIMPLEMENTED),
        (NotImplementedError("x"), grpc.StatusCode.UNIMPLEMENTED),
        (VerificationError(), grpc.StatusCode.UNAUTHENTICATED),
        (KemError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (RuleNotFound("rule r1 not loaded"), grpc.StatusCode.NOT_FOUND),
    ],
)
def test_domain_errors_map_through_the_table(exc: Exception, code: grpc.StatusCode) -> None:
    status = to_status(exc)
    assert (status.code, status.expected) == (code, True)
    assert status.details == str(exc)


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("key=3q2+7w== payload"),
        KeyError("secret"),
        errors.MeshError("base class"),
        errors.ConfigError("listen", "bad"),
        DecryptionError(),
    ],
)
def test_everything_else_is_internal_with_a_generic_message(exc: Exception) -> None:
    status = to_status(exc)
    assert status.code == grpc.StatusCode.INTERNAL
    assert status.details == GENERIC_INTERNAL_MESSAGE
    assert not status.expected


def test_details_are_bounded() -> None:
    status = to_status(errors.InvalidArgumentError("x" * 10_000))
    assert len(status.details) == MAX_DETAILS_CHARS


def test_every_mesh_kind_except_the_base_and_config_is_in_the_table() -> None:
    kinds = {
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.MeshError)
    }
    assert kinds - set(STATUS_TABLE) == {errors.MeshError, errors.ConfigError}
