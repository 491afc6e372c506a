"""The generic hybrid KEM, instantiated as X-Wing (ML-KEM-768 + X-Wing label), against the
draft-connolly-cfrg-xwing-kem test vectors.

Reproduced exactly: key generation from ``seed`` (``pk``; the private key is the seed, ``sk``)
and decapsulation of ``ct`` to ``ss``. Encapsulation from ``eseed`` can only be checked for its
X25519 half (``ct_X`` and, through decapsulation, the combined secret): neither ``cryptography``
nor ``pqcrypto`` lets the ML-KEM encapsulation randomness be supplied.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from crypto.kem import XWING, HybridKem, MlKem

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "xwing-test-vectors.json").read_text()
)


def h(v: dict[str, Any], name: str) -> bytes:
    return bytes.fromhex(v[name])


def test_there_are_vectors() -> None:
    assert len(VECTORS) == 3


@pytest.mark.parametrize("v", VECTORS, ids=range(len(VECTORS)))
def test_keygen_from_seed(v: dict[str, Any]) -> None:
    sk = XWING.private_key_from_seed(h(v, "seed"))
    assert sk.seed_bytes() == h(v, "sk")
    assert sk.public_key.public_bytes() == h(v, "pk")


@pytest.mark.parametrize("v", VECTORS, ids=range(len(VECTORS)))
def test_decapsulation(v: dict[str, Any]) -> None:
    sk = XWING.private_key_from_seed(h(v, "sk"))
    assert XWING.decapsulate(sk, h(v, "ct")) == h(v, "ss")


@pytest.mark.parametrize("v", VECTORS, ids=range(len(VECTORS)))
def test_encapsulation_x25519_half(v: dict[str, Any]) -> None:
    eph = x25519.X25519PrivateKey.from_private_bytes(h(v, "eseed")[32:64])
    assert eph.public_key().public_bytes_raw() == h(v, "ct")[1088:]


@pytest.mark.parametrize("v", VECTORS, ids=range(len(VECTORS)))
def test_public_key_parses_and_encapsulates_to_the_vector_key(v: dict[str, Any]) -> None:
    pk = XWING.public_key_from_bytes(h(v, "pk"))
    assert pk.public_bytes() == h(v, "pk")
    enc = pk.encapsulate()
    assert XWING.private_key_from_seed(h(v, "seed")).decapsulate(enc.ciphertext) == (
        enc.shared_secret
    )


def test_the_generic_code_is_what_reproduces_them() -> None:
    # Built from the parts, not the XWING constant: the QSC instance differs only in these.
    kem = HybridKem("rebuilt", MlKem.ML_KEM_768, bytes.fromhex("5c2e2f2f5e5c"))
    v = VECTORS[0]
    assert kem.private_key_from_seed(h(v, "seed")).decapsulate(h(v, "ct")) == h(v, "ss")
