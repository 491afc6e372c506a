"""Hybrid KEM X25519 + ML-KEM in the X-Wing shape, generic over the ML-KEM set and the label.

Construction (draft-connolly-cfrg-xwing-kem, label-last revision), for a parameter set ``P`` and
a label ``L``:

* private key: a 32-byte seed; ``SHAKE-256(seed, 96)`` -> ML-KEM seed ``d || z`` (first 64
  bytes) and X25519 private key (last 32).
* public key: ``pk_M || pk_X`` (ML-KEM encapsulation key, then 32-byte X25519 public key).
* ciphertext: ``ct_M || ct_X`` (ML-KEM ciphertext, then the ephemeral X25519 public key).
* shared secret: ``SHA3-256(ss_M || ss_X || ct_X || pk_X || L)``.

:data:`XWING` (ML-KEM-768 + the X-Wing label) reproduces the X-Wing test vectors.
:data:`QSC_HYBRID_KEM` (ML-KEM-1024, category 5) is what the mesh uses. X25519 + ML-KEM-1024 has
**no standard instance**: it is this same code with the larger parameter set and the project's
own label, so its secrets can never collide with X-Wing's or another protocol's.

Primitives come from ``cryptography`` (ML-KEM, X25519) and ``hashlib`` (SHA3-256, SHAKE-256).
Known deviation from X-Wing, on malicious input only: an X25519 ciphertext or public key that is
a low-order point (all-zero X25519 output) is refused with :class:`KemError`, because
``cryptography`` refuses to return an all-zero X25519 secret; X-Wing would hash the zeros in.
Honestly generated keys and ciphertexts never hit this.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from crypto.errors import KemError

__all__ = [
    "QSC_HYBRID_KEM",
    "QSC_LABEL",
    "XWING",
    "XWING_LABEL",
    "Encapsulation",
    "HybridKem",
    "HybridPrivateKey",
    "HybridPublicKey",
    "MlKem",
]

SEED_SIZE: Final = 32
SHARED_SECRET_SIZE: Final = 32
X25519_SIZE: Final = 32
MLKEM_SEED_SIZE: Final = 64  # d || z (FIPS 203)

XWING_LABEL: Final = bytes.fromhex("5c2e2f2f5e5c")  # "\.//^\"
QSC_LABEL: Final = b"QSC-hybrid-KEM-v1 X25519+ML-KEM-1024"


class MlKem(enum.Enum):
    """ML-KEM parameter sets (FIPS 203) with their encoding sizes."""

    ML_KEM_768 = "ML-KEM-768"
    ML_KEM_1024 = "ML-KEM-1024"

    @property
    def public_key_size(self) -> int:
        return 1184 if self is MlKem.ML_KEM_768 else 1568

    @property
    def ciphertext_size(self) -> int:
        return 1088 if self is MlKem.ML_KEM_768 else 1568

    def _private_from_seed(
        self, seed: bytes
    ) -> mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey:
        if self is MlKem.ML_KEM_768:
            return mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        return mlkem.MLKEM1024PrivateKey.from_seed_bytes(seed)

    def _public_from_bytes(self, data: bytes) -> mlkem.MLKEM768PublicKey | mlkem.MLKEM1024PublicKey:
        # FIPS 203 7.2 encapsulation key check (length, coefficients < q) happens in here.
        if self is MlKem.ML_KEM_768:
            return mlkem.MLKEM768PublicKey.from_public_bytes(data)
        return mlkem.MLKEM1024PublicKey.from_public_bytes(data)


@dataclass(frozen=True, repr=False)
class Encapsulation:
    """What the sender gets: the ciphertext to send and the shared secret to keep."""

    ciphertext: bytes
    shared_secret: bytes

    def __repr__(self) -> str:
        return f"Encapsulation(ciphertext=<{len(self.ciphertext)} bytes>, shared_secret=<hidden>)"


class HybridPublicKey:
    """A hybrid public key of one :class:`HybridKem`; encoded as ``pk_M || pk_X``."""

    __slots__ = ("_kem", "_mlkem", "_x25519", "_x25519_raw")

    def __init__(self, kem: HybridKem, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise KemError("public key must be bytes")
        data = bytes(data)
        if len(data) != kem.public_key_size:
            raise KemError(f"{kem.name} public key must be {kem.public_key_size} bytes")
        split = kem.mlkem.public_key_size
        try:
            self._mlkem = kem.mlkem._public_from_bytes(data[:split])
        except ValueError:
            raise KemError(f"invalid {kem.mlkem.value} encapsulation key") from None
        self._kem = kem
        self._x25519_raw = data[split:]
        self._x25519 = x25519.X25519PublicKey.from_public_bytes(self._x25519_raw)

    @property
    def kem(self) -> HybridKem:
        return self._kem

    def public_bytes(self) -> bytes:
        return self._mlkem.public_bytes_raw() + self._x25519_raw

    def encapsulate(self) -> Encapsulation:
        """Fresh randomness every call.

        Deterministic encapsulation (from X-Wing's ``eseed``) is not possible here: neither
        ``cryptography`` 50 (``MLKEM*PublicKey.encapsulate()``) nor ``pqcrypto`` 1.0
        (``encaps(pk)``) accepts the ML-KEM message ``m``; the vector tests therefore check
        the X25519 half of the vector encapsulations and decapsulate the vector ciphertexts.
        """
        ss_m, ct_m = self._mlkem.encapsulate()
        eph = x25519.X25519PrivateKey.generate()
        ct_x = eph.public_key().public_bytes_raw()
        ss_x = _exchange(eph, self._x25519)
        ss = self._kem.combine(ss_m, ss_x, ct_x, self._x25519_raw)
        return Encapsulation(ct_m + ct_x, ss)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HybridPublicKey):
            return NotImplemented
        return self._kem == other._kem and self.public_bytes() == other.public_bytes()

    def __hash__(self) -> int:
        return hash((self._kem.name, self.public_bytes()))

    def __repr__(self) -> str:
        return f"HybridPublicKey({self._kem.name})"


class HybridPrivateKey:
    """A hybrid private key, stored as its 32-byte seed. Its repr never shows the seed."""

    __slots__ = ("_kem", "_mlkem", "_public", "_seed", "_x25519")

    def __init__(self, kem: HybridKem, seed: bytes) -> None:
        if not isinstance(seed, bytes):
            raise KemError("private key seed must be bytes")
        if len(seed) != SEED_SIZE:
            raise KemError(f"{kem.name} private key seed must be {SEED_SIZE} bytes")
        expanded = hashlib.shake_256(seed).digest(MLKEM_SEED_SIZE + X25519_SIZE)
        self._kem = kem
        self._seed = seed
        self._mlkem = kem.mlkem._private_from_seed(expanded[:MLKEM_SEED_SIZE])
        self._x25519 = x25519.X25519PrivateKey.from_private_bytes(expanded[MLKEM_SEED_SIZE:])
        pk = self._mlkem.public_key().public_bytes_raw() + (
            self._x25519.public_key().public_bytes_raw()
        )
        self._public = HybridPublicKey(kem, pk)

    @property
    def kem(self) -> HybridKem:
        return self._kem

    @property
    def public_key(self) -> HybridPublicKey:
        return self._public

    def seed_bytes(self) -> bytes:
        """The 32-byte seed: the whole private key. Treat as secret."""
        return self._seed

    def decapsulate(self, ciphertext: bytes) -> bytes:
        """The shared secret. A tampered ML-KEM ciphertext yields an unrelated secret (implicit
        rejection), so a mismatch shows only when keys derived from it fail to authenticate.
        KemError for a wrong length or a low-order X25519 part."""
        kem = self._kem
        if not isinstance(ciphertext, bytes):
            raise KemError("ciphertext must be bytes")
        if len(ciphertext) != kem.ciphertext_size:
            raise KemError(f"{kem.name} ciphertext must be {kem.ciphertext_size} bytes")
        split = kem.mlkem.ciphertext_size
        ct_x = ciphertext[split:]
        ss_m = self._mlkem.decapsulate(ciphertext[:split])
        ss_x = _exchange(self._x25519, x25519.X25519PublicKey.from_public_bytes(ct_x))
        return kem.combine(ss_m, ss_x, ct_x, self._public._x25519_raw)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HybridPrivateKey):
            return NotImplemented
        return self._kem == other._kem and hmac.compare_digest(self._seed, other._seed)

    def __hash__(self) -> int:
        return hash((self._kem.name, self._public.public_bytes()))

    def __repr__(self) -> str:
        return f"HybridPrivateKey({self._kem.name})"


def _exchange(private: x25519.X25519PrivateKey, public: x25519.X25519PublicKey) -> bytes:
    try:
        return private.exchange(public)
    except ValueError:
        # cryptography refuses an all-zero result, i.e. a low-order point.
        raise KemError("X25519 public value is a low-order point") from None


@dataclass(frozen=True)
class HybridKem:
    """One hybrid KEM instance: an ML-KEM parameter set and a label (last combiner input)."""

    name: str
    mlkem: MlKem
    label: bytes

    @property
    def public_key_size(self) -> int:
        return self.mlkem.public_key_size + X25519_SIZE

    @property
    def ciphertext_size(self) -> int:
        return self.mlkem.ciphertext_size + X25519_SIZE

    @property
    def private_key_size(self) -> int:
        return SEED_SIZE

    @property
    def shared_secret_size(self) -> int:
        return SHARED_SECRET_SIZE

    def generate(self) -> HybridPrivateKey:
        return HybridPrivateKey(self, os.urandom(SEED_SIZE))

    def private_key_from_seed(self, seed: bytes) -> HybridPrivateKey:
        return HybridPrivateKey(self, seed)

    def public_key_from_bytes(self, data: bytes) -> HybridPublicKey:
        return HybridPublicKey(self, data)

    def encapsulate(self, public_key: HybridPublicKey | bytes) -> Encapsulation:
        if not isinstance(public_key, HybridPublicKey):
            public_key = HybridPublicKey(self, public_key)
        elif public_key.kem != self:
            raise KemError(f"public key is for {public_key.kem.name}, not {self.name}")
        return public_key.encapsulate()

    def decapsulate(self, private_key: HybridPrivateKey, ciphertext: bytes) -> bytes:
        if private_key.kem != self:
            raise KemError(f"private key is for {private_key.kem.name}, not {self.name}")
        return private_key.decapsulate(ciphertext)

    def combine(self, ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
        """``SHA3-256(ss_M || ss_X || ct_X || pk_X || label)``; every input but the label has a
        fixed length, so the concatenation is unambiguous."""
        return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + self.label).digest()


XWING: Final = HybridKem("X-Wing", MlKem.ML_KEM_768, XWING_LABEL)
QSC_HYBRID_KEM: Final = HybridKem("QSC-KEM-X25519-MLKEM1024", MlKem.ML_KEM_1024, QSC_LABEL)
