"""The one error tree of Beta. Each kind subclasses the mesh kind that fixes its gRPC status."""

from __future__ import annotations

from mesh import errors


class BetaError(errors.MeshError):
    """Base of every error Beta raises on purpose."""


class BetaConfigError(BetaError, errors.InvalidArgumentError):
    """A Beta setting (watched paths, globs, thresholds, policies) is invalid."""


class BetaInvalidArgumentError(BetaError, errors.InvalidArgumentError):
    """A request names something malformed (a path outside the watched set, a bad depth...)."""


class BetaNotFoundError(BetaError, errors.NotFoundError):
    """A named thing does not exist: a backup set, a watched certificate, a heal proposal."""


class IntegrityError(BetaError, errors.FailedPreconditionError):
    """Authenticated state (a baseline, a manifest, a vault entry) failed verification."""


class BetaBusyError(BetaError, errors.ResourceExhaustedError):
    """The operation is already running (one on-demand integrity scan at a time)."""


class BetaUnavailableError(BetaError, errors.FailedPreconditionError):
    """Beta cannot do this in its current state (no trusted baseline, FIM not configured...)."""
