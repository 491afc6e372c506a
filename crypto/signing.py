"""Signatures with the key types QSC certificates carry: ECDSA P-256/P-384 and Ed25519.

One recipe per key type, so whoever signs and whoever verifies agree without negotiating:
ECDSA P-256 with SHA-256, ECDSA P-384 with SHA-384 (DER signatures), Ed25519 (pure).
`verify` answers True or False (never raises on a bad signature: the caller turns False into its
one opaque error). `public_key_id` names a public key by the SHA-256 of its SubjectPublicKeyInfo,
so records signed by a key can say which key without carrying it.
"""

from __future__ import annotations

import hashlib
from typing import Final, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

__all__ = ["PrivateSigningKey", "PublicSigningKey", "public_key_id", "sign", "verify"]

PrivateSigningKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicSigningKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

_CURVE_DIGEST: Final = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384}


def _digest(curve: ec.EllipticCurve) -> hashes.HashAlgorithm:
    factory = _CURVE_DIGEST.get(curve.name)
    if factory is None:
        raise ValueError(f"ECDSA curve {curve.name} is not supported (P-256 or P-384)")
    return factory()


def sign(key: PrivateSigningKey, data: bytes) -> bytes:
    """The signature of `data` (ValueError for an unsupported curve or key type)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(_digest(key.curve)))
    raise ValueError("signing keys must be ECDSA P-256, ECDSA P-384 or Ed25519")


def verify(key: object, signature: bytes, data: bytes) -> bool:
    """Whether `signature` is `key`'s over `data`; False for any other key type or curve."""
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
            return True
        if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _CURVE_DIGEST:
            key.verify(signature, data, ec.ECDSA(_digest(key.curve)))
            return True
    except (InvalidSignature, ValueError):
        pass
    return False


def public_key_id(key: PublicSigningKey) -> str:
    """``spki-sha256/<16 hex>``: the SHA-256 of the key's DER SubjectPublicKeyInfo, shortened."""
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"spki-sha256/{hashlib.sha256(spki).hexdigest()[:16]}"
