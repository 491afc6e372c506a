"""The one error tree of Guardian-Alpha.

Every Alpha error is an `AlphaError` and also one of the mesh kinds, so `mesh.status` maps it to
its gRPC code by the kind (the table walks the class hierarchy) without an Alpha entry. Add a kind
here by subclassing `AlphaError` and the mesh kind it is. Messages reach the peer: no secrets, no
raw payloads.
"""

from __future__ import annotations

from mesh.errors import InvalidArgumentError, MeshError, NotFoundError


class AlphaError(MeshError):
    """Base of every error Alpha raises on purpose."""


class AlphaInvalidArgumentError(AlphaError, InvalidArgumentError):
    """A request to Alpha is malformed, whatever the host's state (INVALID_ARGUMENT)."""


class AlphaNotFoundError(AlphaError, NotFoundError):
    """A request to Alpha names something that does not exist, e.g. a process (NOT_FOUND)."""
