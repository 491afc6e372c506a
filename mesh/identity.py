"""TLS identity: our certificate, key and CA as loaded bytes, and who the peer of a call is.

Our files are checked at load (key private and matching the certificate, certificate chaining to
the CA) so a misconfigured component fails at start with a message naming the file, not with an
opaque handshake error later. A peer's identity comes from the SPIFFE ID grpc puts in the call's
auth context after the handshake has verified the peer's chain against our CA; its trust domain
must be ours.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from crypto.errors import KeyFileError, PkiError, VerificationError
from crypto.keyfile import read_private_file
from crypto.pki import Identity, ca_trust_domain, load_certificates, parse_spiffe_id, verify_leaf
from mesh.config import TlsFiles  # the one TlsFiles: config validates its shape, we load it
from mesh.errors import ConfigError, IdentityError

AUTH_PEER_SPIFFE_ID: Final = "peer_spiffe_id"

__all__ = [
    "SigningKey",
    "TlsFiles",
    "TlsMaterial",
    "bind_peer",
    "identity_from_auth_context",
    "load_tls",
    "peer_identity",
    "signing_key",
    "unbind_peer",
]

# The TLS key types that can also sign sealed-session handshakes (`mesh.stream.sealing`).
SigningKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True, repr=False)
class TlsMaterial:
    """The loaded, checked identity files, ready for grpc credentials."""

    cert_chain: bytes
    private_key: bytes
    root_certificates: bytes
    identity: Identity
    trust_domain: str
    key_path: Path  # where private_key came from, for messages

    def __repr__(self) -> str:
        return f"TlsMaterial(identity={self.identity.spiffe_id!r}, private_key=<hidden>)"


def load_tls(files: TlsFiles) -> TlsMaterial:
    """Read and cross-check the identity files; IdentityError names the file and the problem."""
    cas = _certificates(files.ca, "CA certificate")
    domains = set()
    for ca in cas:
        try:
            domains.add(ca_trust_domain(ca))
        except PkiError as exc:
            raise IdentityError(f"CA certificate {files.ca}: {exc}") from None
    if len(domains) != 1:
        raise IdentityError(
            f"CA certificate {files.ca}: certificates of {len(domains)} trust domains; "
            "a component trusts exactly one"
        )
    (trust_domain,) = domains
    chain = _certificates(files.cert, "certificate")
    identity = _verify_own(chain[0], cas, files)
    try:
        key_pem = read_private_file(files.key, what="TLS key")
    except KeyFileError as exc:
        raise IdentityError(str(exc)) from None
    _check_key_matches(key_pem, chain[0], files)
    return TlsMaterial(
        cert_chain=files.cert.read_bytes(),
        private_key=key_pem,
        root_certificates=files.ca.read_bytes(),
        identity=identity,
        trust_domain=trust_domain,
        key_path=files.key,
    )


def load_tls_of_role(files: TlsFiles, role: str, *, key: str = "server.tls.cert") -> TlsMaterial:
    """`load_tls`, refusing (ConfigError on `key`) a certificate that is not of `role`: a
    component started with another component's identity stops before it listens."""
    material = load_tls(files)
    identity = material.identity
    if identity.role != role:
        raise ConfigError(
            key, f"certifies role {identity.role!r}, not {role!r} ({identity.spiffe_id})"
        )
    return material


def signing_key(material: TlsMaterial) -> SigningKey:
    """The TLS private key as the key that signs sealed-session handshakes (both ends: the
    subscriber's offer, the guardian's accept; the peer checks it against the TLS certificate).

    IdentityError naming the key file unless it is an ECDSA or Ed25519 key.
    """
    key = _private_key(material.private_key, material.key_path)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise IdentityError(
            f"TLS key {material.key_path}: sealed sessions need an ECDSA or Ed25519 key"
        )
    return key


def _certificates(path: Path, what: str) -> list[x509.Certificate]:
    try:
        return load_certificates(path)
    except PkiError as exc:
        raise IdentityError(f"{what} {exc}") from None


def _verify_own(leaf: x509.Certificate, cas: list[x509.Certificate], files: TlsFiles) -> Identity:
    for ca in cas:
        try:
            return verify_leaf(leaf, ca)
        except VerificationError:
            continue
    raise IdentityError(
        f"certificate {files.cert} does not verify against {files.ca} (another CA, expired, or "
        "without a QSC SPIFFE ID); inspect it with `qsc pki show`"
    )


def _private_key(key_pem: bytes, path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        # Never echo the content: it is a private key, or whatever was put in its place.
        raise IdentityError(f"TLS key {path}: not an unencrypted PEM private key") from None


def _check_key_matches(key_pem: bytes, leaf: x509.Certificate, files: TlsFiles) -> None:
    key = _private_key(key_pem, files.key)
    if key.public_key() != leaf.public_key():
        raise IdentityError(f"TLS key {files.key} does not belong to certificate {files.cert}")


def identity_from_auth_context(auth: Mapping[str, Iterable[bytes]], trust_domain: str) -> Identity:
    """The QSC identity of a call's peer; IdentityError unless it is valid and of our domain."""
    values = list(auth.get(AUTH_PEER_SPIFFE_ID, ()))
    if len(values) != 1:
        raise IdentityError("peer certificate carries no QSC SPIFFE ID")
    try:
        identity = parse_spiffe_id(values[0].decode("ascii"))
    except (UnicodeDecodeError, PkiError):
        raise IdentityError("peer certificate carries no valid QSC SPIFFE ID") from None
    if identity.trust_domain != trust_domain:
        raise IdentityError(
            f"peer trust domain {identity.trust_domain!r} is not this server's ({trust_domain!r})"
        )
    return identity


# The interceptor authenticates each call once and binds the result here; the servicer runs in the
# same task (and so the same context), which makes the lookup free and impossible to spoof.
_CURRENT_PEER: contextvars.ContextVar[tuple[object, Identity] | None] = contextvars.ContextVar(
    "qsc_mesh_peer", default=None
)


def bind_peer(
    context: object, identity: Identity
) -> contextvars.Token[tuple[object, Identity] | None]:
    """Record the authenticated peer of the call whose servicer context is `context`."""
    return _CURRENT_PEER.set((context, identity))


def unbind_peer(token: contextvars.Token[tuple[object, Identity] | None]) -> None:
    _CURRENT_PEER.reset(token)


def peer_identity(context: object) -> Identity:
    """The authenticated identity of the peer of the call being served with `context`.

    Only calls that went through the mesh interceptor have one; anything else raises
    IdentityError rather than trusting an unchecked certificate.
    """
    bound = _CURRENT_PEER.get()
    if bound is None or bound[0] is not context:
        raise IdentityError("no authenticated peer for this call")
    return bound[1]
