"""The one error tree of the mesh and of the components built on it.

Each class names a kind of failure a peer can act on; `mesh.status` maps the kinds to gRPC status
codes in one table. A component's own errors subclass one of these kinds (for example
`class RuleNotFound(NotFoundError)`), so the table never grows per component.

Messages of these errors reach the peer as the status details: write them for the caller and never
put key material, secrets or raw payloads in them.
"""

from __future__ import annotations


class MeshError(Exception):
    """Base of every error the mesh or a component raises on purpose."""


class ConfigError(MeshError):
    """A configuration value is missing or invalid; the message names the key and the reason."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class IdentityError(MeshError):
    """Our TLS identity files cannot be used, or a peer presented no usable QSC identity."""


class PolicyViolationError(MeshError):
    """The connection breaks the transport policy (classical key exchange under `require`, or
    a TLS version other than 1.3)."""


class PermissionDeniedError(MeshError):
    """An authenticated peer whose role may not call this RPC."""


class InvalidArgumentError(MeshError):
    """The request is malformed, whatever the server's state."""


class NotFoundError(MeshError):
    """The request names something that does not exist."""


class AlreadyExistsError(MeshError):
    """The request would create something that already exists."""


class FailedPreconditionError(MeshError):
    """The server is not in a state where the request can run (retrying as is will not help)."""


class OutOfRangeError(MeshError):
    """The request points past the valid range, e.g. a stream cursor older than retention."""


class ResourceExhaustedError(MeshError):
    """A limit was hit: concurrent streams per peer, a quota, a disk budget."""


class UnavailableError(MeshError):
    """Temporarily unable to serve (shutting down, a dependency is down); retrying may help."""


class UnimplementedError(MeshError):
    """The RPC is not served here."""
