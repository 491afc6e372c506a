"""Sealing recipes: AES-256-GCM and XChaCha20-Poly1305 with key ids and safe nonces.

Sealed format (version 1), all integers big-endian::

    0x51 'Q' | version (1) | algorithm id (1) | key id length (1) | key id (ASCII)
    | nonce (12 for AES-256-GCM, 24 for XChaCha20-Poly1305) | ciphertext || tag (16)

Algorithm ids: 1 = AES-256-GCM, 2 = XChaCha20-Poly1305. Everything before the ciphertext is the
*header*. The AEAD's associated data is
``len(header) (4 bytes) || header || caller's aad``: the header (key id, algorithm, nonce,
version) is authenticated, and the length prefix keeps header and caller aad from sliding into
each other. Opening fails with one opaque :class:`crypto.errors.DecryptionError` whatever went
wrong (unknown key id, wrong algorithm, truncation, tampering, wrong aad).

:class:`RawAead` is the bare AEAD under a caller-supplied nonce, for protocols that derive
the nonce and carry it nowhere (the mesh's sealed streams): ciphertext || tag only, no header,
the caller's aad as is. The caller owns nonce uniqueness under the key; decrypting fails with
the same opaque DecryptionError. Every AEAD call in the project goes through this module.
"""

from __future__ import annotations

import enum
import hmac
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl import bindings as sodium
from nacl.exceptions import CryptoError as NaclCryptoError

from crypto.errors import DecryptionError
from crypto.nonces import (
    AES_GCM_NONCE_SIZE,
    XCHACHA_NONCE_SIZE,
    NonceSource,
    RandomNonceSource,
)

__all__ = [
    "KEY_SIZE",
    "TAG_SIZE",
    "AeadKey",
    "Algorithm",
    "RawAead",
    "Sealer",
    "open_sealed",
    "sealed_key_id",
]

KEY_SIZE: Final = 32
TAG_SIZE: Final = 16
MAX_KEY_ID_LEN: Final = 64
_MAGIC: Final = 0x51
_VERSION: Final = 1
_PREFIX_LEN: Final = 4  # magic, version, algorithm id, key id length
# AES-GCM seals up to this size go through a per-thread scratch buffer (see Sealer.seal).
_SCRATCH_MIN: Final = 32 * 1024
_SCRATCH_MAX: Final = 4 * 1024 * 1024


class Algorithm(enum.Enum):
    AES_256_GCM = "aes-256-gcm"
    XCHACHA20_POLY1305 = "xchacha20-poly1305"

    @property
    def nonce_size(self) -> int:
        return _NONCE_SIZE[self]


_NONCE_SIZE: Final = {
    Algorithm.AES_256_GCM: AES_GCM_NONCE_SIZE,
    Algorithm.XCHACHA20_POLY1305: XCHACHA_NONCE_SIZE,
}
# Wire ids: never renumber, only add.
_ALG_ID: Final = {Algorithm.AES_256_GCM: 1, Algorithm.XCHACHA20_POLY1305: 2}
_ALG_BY_ID: Final = {v: k for k, v in _ALG_ID.items()}


def _valid_key_id(key_id: object) -> bool:
    return (
        isinstance(key_id, str)
        and 1 <= len(key_id) <= MAX_KEY_ID_LEN
        and key_id.isascii()
        and key_id.isprintable()
    )


@dataclass(frozen=True, repr=False, eq=False)
class AeadKey:
    """A 32-byte AEAD key with its id and algorithm. Its repr never shows the secret."""

    key_id: str  # printable ASCII, 1..64 chars, carried in the sealed format
    secret: bytes
    algorithm: Algorithm
    _aesgcm: AESGCM | None = field(init=False, default=None, compare=False)

    def __post_init__(self) -> None:
        if not _valid_key_id(self.key_id):
            raise ValueError("key_id must be 1..64 printable ASCII characters")
        if not isinstance(self.algorithm, Algorithm):
            raise TypeError("algorithm must be an Algorithm")
        if not isinstance(self.secret, bytes) or len(self.secret) != KEY_SIZE:
            raise ValueError(f"AEAD key must be {KEY_SIZE} bytes")
        if self.algorithm is Algorithm.AES_256_GCM:
            # Built once: key schedule per call would cost more than sealing 1 KiB.
            object.__setattr__(self, "_aesgcm", AESGCM(self.secret))

    def __repr__(self) -> str:
        return f"AeadKey(key_id={self.key_id!r}, algorithm={self.algorithm.value})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AeadKey):
            return NotImplemented
        return (
            self.key_id == other.key_id
            and self.algorithm is other.algorithm
            and hmac.compare_digest(self.secret, other.secret)
        )

    def __hash__(self) -> int:
        return hash((self.key_id, self.algorithm))


def _header(key: AeadKey, nonce: bytes) -> bytes:
    kid = key.key_id.encode("ascii")
    return bytes((_MAGIC, _VERSION, _ALG_ID[key.algorithm], len(kid))) + kid + nonce


def _full_aad(header: bytes, aad: bytes) -> bytes:
    return len(header).to_bytes(4, "big") + header + aad


class RawAead:
    """The bare AEAD of one key: ``ciphertext || tag`` under the caller's nonce and aad.

    No header, no nonce on the wire: for protocols that derive nonces both ends can compute
    (the mesh's sealed streams, :class:`crypto.nonces.StreamNonce` under per-session keys). The
    caller owns nonce uniqueness: never encrypt twice under one nonce. A nonce of the wrong
    length for the key's algorithm is a ValueError (it is the caller's own, not the peer's);
    anything else that stops `decrypt` is the opaque DecryptionError.
    """

    __slots__ = ("_key",)

    def __init__(self, key: AeadKey) -> None:
        if not isinstance(key, AeadKey):
            raise TypeError("key must be an AeadKey")
        self._key = key

    @property
    def algorithm(self) -> Algorithm:
        return self._key.algorithm

    def _check_nonce(self, nonce: bytes) -> None:
        size = self._key.algorithm.nonce_size
        if len(nonce) != size:
            raise ValueError(f"{self._key.algorithm.value} needs {size}-byte nonces")

    def encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
        self._check_nonce(nonce)
        key = self._key
        if key._aesgcm is not None:
            return key._aesgcm.encrypt(nonce, plaintext, aad)
        return sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
            bytes(plaintext), aad, nonce, key.secret
        )

    def decrypt(self, nonce: bytes, ciphertext: bytes | memoryview, aad: bytes = b"") -> bytes:
        self._check_nonce(nonce)
        key = self._key
        try:
            if key._aesgcm is not None:
                return key._aesgcm.decrypt(nonce, ciphertext, aad)
            return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
                bytes(ciphertext), aad, nonce, key.secret
            )
        except (InvalidTag, NaclCryptoError, ValueError, TypeError):
            raise DecryptionError from None

    def __repr__(self) -> str:
        return f"RawAead({self._key!r})"


class Sealer:
    """Seals messages under one key with one nonce discipline.

    XChaCha20-Poly1305 defaults to random 192-bit nonces. AES-256-GCM needs an explicit source:
    a :class:`crypto.nonces.CounterNonceSource` (persistent, crash-safe) for long-lived keys, or
    ``RandomNonceSource.aes_gcm()`` (random 96-bit, at most 2**32 messages per process) for
    short-lived ones.
    """

    def __init__(self, key: AeadKey, nonces: NonceSource | None = None) -> None:
        if nonces is None:
            if key.algorithm is not Algorithm.XCHACHA20_POLY1305:
                raise ValueError(
                    "AES-256-GCM needs an explicit nonce source: CounterNonceSource "
                    "(persistent) or RandomNonceSource.aes_gcm() (short-lived keys)"
                )
            nonces = RandomNonceSource(XCHACHA_NONCE_SIZE)
        if nonces.nonce_size != key.algorithm.nonce_size:
            raise ValueError(
                f"{key.algorithm.value} needs {key.algorithm.nonce_size}-byte nonces, "
                f"the source gives {nonces.nonce_size}"
            )
        if nonces.key_id is not None and nonces.key_id != key.key_id:
            raise ValueError("nonce source is bound to another key")
        self._key = key
        self._nonces = nonces
        self._aesgcm = key._aesgcm
        self._raw = RawAead(key)
        # Constant per key: precomputed so a seal only appends the nonce.
        self._prefix = _header(key, b"")
        self._aad_prefix = (len(self._prefix) + key.algorithm.nonce_size).to_bytes(4, "big")

    @property
    def key_id(self) -> str:
        return self._key.key_id

    @property
    def algorithm(self) -> Algorithm:
        return self._key.algorithm

    def __repr__(self) -> str:
        return f"Sealer({self._key!r})"

    def sealed_size(self, plaintext_len: int) -> int:
        """How many bytes sealing `plaintext_len` bytes produces (header, ciphertext, tag)."""
        return len(self._prefix) + self._key.algorithm.nonce_size + plaintext_len + TAG_SIZE

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        total = self.sealed_size(len(plaintext))
        if self._aesgcm is None or total < _SCRATCH_MIN or total > _SCRATCH_MAX:
            nonce = self._nonces.next_nonce()
            header = self._prefix + nonce
            return header + self._raw.encrypt(nonce, plaintext, self._aad_prefix + header + aad)
        # `header + encrypt()` makes two output-sized allocations per call; from about 1 MiB
        # glibc then hands the freed pair back to the OS and page-faults it in again on every
        # call (measured 6x slower). Encrypting into a reused per-thread buffer leaves one
        # allocation and one copy, the least any bytes result with a header can cost; callers
        # that own a buffer avoid even that with seal_into().
        buf = _scratch(total)
        self.seal_into(plaintext, buf, aad)
        return bytes(buf[:total])

    def seal_into(self, plaintext: bytes, out: memoryview | bytearray, aad: bytes = b"") -> int:
        """Seal into the start of the caller's writable buffer; return the bytes written.

        The zero-copy path for bulk data (a store or outbox writing sealed records): AES-256-GCM
        encrypts straight into `out`. `out` must hold at least `sealed_size(len(plaintext))`
        bytes; PyNaCl has no in-place API, so XChaCha20-Poly1305 copies once.
        """
        total = self.sealed_size(len(plaintext))
        view = memoryview(out)
        if view.readonly or len(view) < total:
            raise ValueError(f"output buffer must be writable and hold {total} bytes")
        nonce = self._nonces.next_nonce()
        header = self._prefix + nonce
        hlen = len(header)
        aesgcm = self._aesgcm
        full_aad = self._aad_prefix + header + aad
        view[:hlen] = header
        if aesgcm is None:
            view[hlen:total] = self._raw.encrypt(nonce, plaintext, full_aad)
        else:
            aesgcm.encrypt_into(nonce, plaintext, full_aad, view[hlen:total])
        return total


_tls = threading.local()


def _scratch(size: int) -> memoryview:
    view: memoryview | None = getattr(_tls, "view", None)
    if view is None or len(view) < size:
        view = memoryview(bytearray(max(size, 64 * 1024)))
        _tls.view = view
    return view


def _parse(sealed: bytes) -> tuple[Algorithm, str, int]:
    """-> (algorithm, key id, header length). DecryptionError on any malformed header."""
    if len(sealed) < _PREFIX_LEN:
        raise DecryptionError
    magic, version, alg_id, kid_len = sealed[0], sealed[1], sealed[2], sealed[3]
    alg = _ALG_BY_ID.get(alg_id)
    if magic != _MAGIC or version != _VERSION or alg is None or not 1 <= kid_len <= 64:
        raise DecryptionError
    header_len = _PREFIX_LEN + kid_len + alg.nonce_size
    if len(sealed) < header_len + TAG_SIZE:
        raise DecryptionError
    try:
        key_id = bytes(sealed[_PREFIX_LEN : _PREFIX_LEN + kid_len]).decode("ascii")
    except UnicodeDecodeError:
        raise DecryptionError from None
    if not key_id.isprintable():
        raise DecryptionError
    return alg, key_id, header_len


def sealed_key_id(sealed: bytes) -> str:
    """The key id a sealed message names (unauthenticated until opened). DecryptionError if
    the header is malformed."""
    return _parse(sealed)[1]


def open_sealed(sealed: bytes, keys: AeadKey | Mapping[str, AeadKey], aad: bytes = b"") -> bytes:
    """Authenticate and decrypt; DecryptionError (opaque) on any failure."""
    alg, key_id, header_len = _parse(sealed)
    if isinstance(keys, AeadKey):
        key: AeadKey | None = keys if keys.key_id == key_id else None
    else:
        key = keys.get(key_id)
    if key is None or key.algorithm is not alg or key.key_id != key_id:
        raise DecryptionError
    view = memoryview(sealed)
    header = bytes(view[:header_len])
    nonce = header[header_len - alg.nonce_size :]
    return RawAead(key).decrypt(nonce, view[header_len:], _full_aad(header, aad))
