"""Signed checkpoints: who signs them, how they are checked, and the exported file.

**Key choice.** Checkpoints are signed with the Cortex's TLS identity key (`mesh.identity.
signing_key`: ECDSA P-256 as `qsc pki issue` makes it, or P-384 / Ed25519), not a keyring key.
An exported checkpoint then verifies with the Cortex's certificate alone, off the host and
without any secret, and its signer is a name the deployment CA vouches for
(`spiffe://<td>/cortex/<host>`). The store keeps every certificate it signed with (table
`signers`, by `crypto.signing.public_key_id`), so checkpoints survive a certificate renewal.

**Exported file** (`export_checkpoint`, `read_checkpoint_file`): one JSON object,

    {"format": "qsc-cortex-store-checkpoint", "version": 1, "store_id": ..., "cortex": SPIFFE ID,
     "kind": "head" | "cut", "count": N, "head": hex, "time": RFC 3339, "time_ns": ...,
     "key_id": "spki-sha256/...", "signature": base64, "certificate": PEM}

Reading it checks the signature against the certificate in the file and that the certificate
is the key id's; the store then checks that it is its own (store id, Cortex identity) and that
its records match (`cortex.store.verify`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from cortex.errors import CheckpointFileError, StoreArgumentError
from cortex.store.api import Checkpoint
from cortex.store.codec import checkpoint_body
from crypto.errors import PkiError
from crypto.files import PRIVATE_MODE, read_regular_capped, write_file_atomic
from crypto.pki import parse_identity
from crypto.signing import PrivateSigningKey, public_key_id, sign, verify
from mesh.identity import TlsMaterial, signing_key

__all__ = [
    "FILE_FORMAT",
    "CheckpointSigner",
    "checkpoint_valid",
    "export_checkpoint",
    "read_checkpoint_file",
]

FILE_FORMAT: Final = "qsc-cortex-store-checkpoint"
_FILE_VERSION: Final = 1
_MAX_FILE: Final = 64 * 1024
KINDS: Final = ("head", "cut")


@dataclass(frozen=True, repr=False)
class CheckpointSigner:
    """The Cortex's signing key and the certificate that names it."""

    key: PrivateSigningKey
    certificate: x509.Certificate

    def __post_init__(self) -> None:
        if self.key.public_key() != self.certificate.public_key():
            raise StoreArgumentError("the checkpoint signing key does not match its certificate")

    def __repr__(self) -> str:
        return f"CheckpointSigner({self.identity!r}, key=<hidden>)"

    @classmethod
    def from_tls(cls, material: TlsMaterial) -> CheckpointSigner:
        """The signer of a loaded TLS identity (its leaf certificate and private key)."""
        leaf = x509.load_pem_x509_certificates(material.cert_chain)[0]
        return cls(signing_key(material), leaf)

    @property
    def key_id(self) -> str:
        return public_key_id(self.key.public_key())

    @property
    def identity(self) -> str:
        return certificate_identity(self.certificate)

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def sign(self, store_id: str, kind: str, count: int, head: bytes, time_ns: int) -> Checkpoint:
        key_id = self.key_id
        body = checkpoint_body(store_id, kind, count, head, time_ns, key_id)
        return Checkpoint(store_id, kind, count, head, time_ns, key_id, sign(self.key, body))


def certificate_identity(cert: x509.Certificate) -> str:
    """The SPIFFE ID a certificate names ("" for one that names none)."""
    try:
        return parse_identity(cert).spiffe_id
    except PkiError:
        return ""


def checkpoint_valid(cp: Checkpoint, cert: x509.Certificate) -> bool:
    """Whether `cp` is signed by `cert`'s key and names it."""
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        return False
    if public_key_id(public) != cp.key_id or cp.kind not in KINDS:
        return False
    body = checkpoint_body(cp.store_id, cp.kind, cp.count, cp.head, cp.time_ns, cp.key_id)
    return verify(public, cp.signature, body)


def _rfc3339(time_ns: int) -> str:
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


def export_checkpoint(
    path: Path, cp: Checkpoint, cert: x509.Certificate, *, overwrite: bool = True
) -> None:
    """Write `cp` with its certificate to `path` (atomically, 0600)."""
    doc: dict[str, Any] = {
        "format": FILE_FORMAT,
        "version": _FILE_VERSION,
        "store_id": cp.store_id,
        "cortex": certificate_identity(cert),
        "kind": cp.kind,
        "count": cp.count,
        "head": cp.head.hex(),
        "time": _rfc3339(cp.time_ns),
        "time_ns": cp.time_ns,
        "key_id": cp.key_id,
        "signature": base64.b64encode(cp.signature).decode("ascii"),
        "certificate": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    }
    data = (json.dumps(doc, indent=2) + "\n").encode("ascii")
    try:
        write_file_atomic(path, data, mode=PRIVATE_MODE, overwrite=overwrite)
    except FileExistsError:
        raise CheckpointFileError(f"checkpoint file {path} already exists") from None
    except OSError as exc:
        raise CheckpointFileError(f"checkpoint file {path}: {exc.strerror or exc}") from None


def read_checkpoint_file(path: Path) -> tuple[Checkpoint, x509.Certificate]:
    """The checkpoint in `path` and its certificate, its signature checked against it.

    CheckpointFileError naming the file: unreadable, malformed, or a signature that does not
    verify with the certificate it carries."""
    try:
        raw = read_regular_capped(path, _MAX_FILE)
    except OSError as exc:
        raise CheckpointFileError(f"checkpoint file {path}: {exc.strerror or exc}") from None

    def bad(reason: str) -> CheckpointFileError:
        return CheckpointFileError(f"checkpoint file {path} {reason}")

    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad("is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT:
        raise bad("is not a QSC event store checkpoint")
    if doc.get("version") != _FILE_VERSION:
        raise bad(f"has unsupported version {doc.get('version')!r}")
    try:
        store_id, kind, key_id = doc["store_id"], doc["kind"], doc["key_id"]
        count, time_ns = doc["count"], doc["time_ns"]
        if not all(isinstance(v, str) for v in (store_id, kind, key_id)):
            raise ValueError
        if type(count) is not int or type(time_ns) is not int or count < 0:
            raise ValueError
        head = bytes.fromhex(doc["head"])
        signature = base64.b64decode(doc["signature"], validate=True)
        cert = x509.load_pem_x509_certificate(doc["certificate"].encode("ascii"))
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error):
        raise bad("is malformed (a field is missing or of the wrong type)") from None
    cp = Checkpoint(store_id, kind, count, head, time_ns, key_id, signature)
    if not checkpoint_valid(cp, cert):
        raise bad("does not verify: its signature is not its certificate's (edited file)")
    return cp, cert
