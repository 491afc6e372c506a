"""Hybrid KEM: round trips, sizes, implicit rejection, and KemError for malformed input."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from crypto.errors import KemError
from crypto.kem import (
    QSC_HYBRID_KEM,
    QSC_LABEL,
    XWING,
    XWING_LABEL,
    HybridKem,
    MlKem,
)

KEMS = [QSC_HYBRID_KEM, XWING]


def test_instances() -> None:
    assert QSC_HYBRID_KEM.mlkem is MlKem.ML_KEM_1024
    assert QSC_HYBRID_KEM.label == QSC_LABEL != XWING_LABEL
    assert (QSC_HYBRID_KEM.public_key_size, QSC_HYBRID_KEM.ciphertext_size) == (1600, 1600)
    assert (XWING.public_key_size, XWING.ciphertext_size) == (1216, 1120)


@pytest.mark.parametrize("kem", KEMS, ids=lambda k: k.name)
def test_round_trip(kem: HybridKem) -> None:
    sk = kem.generate()
    pk_bytes = sk.public_key.public_bytes()
    assert len(pk_bytes) == kem.public_key_size
    enc = kem.encapsulate(pk_bytes)
    assert len(enc.ciphertext) == kem.ciphertext_size
    assert len(enc.shared_secret) == 32
    assert kem.decapsulate(sk, enc.ciphertext) == enc.shared_secret
    assert sk.decapsulate(sk.public_key.encapsulate().ciphertext) != enc.shared_secret


@pytest.mark.parametrize("kem", KEMS, ids=lambda k: k.name)
def test_private_key_is_its_seed(kem: HybridKem) -> None:
    sk = kem.generate()
    again = kem.private_key_from_seed(sk.seed_bytes())
    assert again == sk
    assert again.public_key == sk.public_key
    enc = sk.public_key.encapsulate()
    assert again.decapsulate(enc.ciphertext) == enc.shared_secret


@pytest.mark.parametrize("kem", KEMS, ids=lambda k: k.name)
def test_encapsulations_are_fresh(kem: HybridKem) -> None:
    pk = kem.generate().public_key
    a, b = pk.encapsulate(), pk.encapsulate()
    assert a.ciphertext != b.ciphertext
    assert a.shared_secret != b.shared_secret


@pytest.mark.parametrize("kem", KEMS, ids=lambda k: k.name)
@pytest.mark.parametrize("where", ["mlkem-first", "mlkem-last", "x25519"])
def test_tampered_ciphertext_gives_another_secret(kem: HybridKem, where: str) -> None:
    sk = kem.generate()
    enc = sk.public_key.encapsulate()
    i = {"mlkem-first": 0, "mlkem-last": kem.mlkem.ciphertext_size - 1, "x25519": -5}[where]
    tampered = bytearray(enc.ciphertext)
    tampered[i] ^= 0x04
    ss = sk.decapsulate(bytes(tampered))  # implicit rejection: no error, unrelated secret
    assert len(ss) == 32
    assert ss != enc.shared_secret


@pytest.mark.parametrize("kem", KEMS, ids=lambda k: k.name)
@pytest.mark.parametrize("delta", [-1, 1, None])
def test_wrong_ciphertext_length_is_a_kem_error(kem: HybridKem, delta: int | None) -> None:
    sk = kem.generate()
    ct = sk.public_key.encapsulate().ciphertext
    bad = b"" if delta is None else (ct[:-1] if delta < 0 else ct + b"\x00")
    with pytest.raises(KemError, match="ciphertext"):
        sk.decapsulate(bad)


@pytest.mark.parametrize("kem", KEMS, ids=lambda k: k.name)
@pytest.mark.parametrize("delta", [-1, 1, None])
def test_wrong_public_key_length_is_a_kem_error(kem: HybridKem, delta: int | None) -> None:
    pk = kem.generate().public_key.public_bytes()
    bad = b"" if delta is None else (pk[:-1] if delta < 0 else pk + b"\x00")
    with pytest.raises(KemError, match="public key"):
        kem.public_key_from_bytes(bad)
    with pytest.raises(KemError):
        kem.encapsulate(bad)


@pytest.mark.parametrize("kem", KEMS, ids=lambda k: k.name)
@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_wrong_seed_length_is_a_kem_error(kem: HybridKem, size: int) -> None:
    with pytest.raises(KemError, match="seed"):
        kem.private_key_from_seed(os.urandom(size))


@pytest.mark.parametrize("kem", KEMS, ids=lambda k: k.name)
def test_malformed_mlkem_public_key_is_a_kem_error(kem: HybridKem) -> None:
    pk = bytearray(kem.generate().public_key.public_bytes())
    pk[0], pk[1] = 0xFF, 0x0F  # first 12-bit coefficient = 4095 >= q (FIPS 203 7.2 check)
    with pytest.raises(KemError, match="encapsulation key"):
        kem.public_key_from_bytes(bytes(pk))


@pytest.mark.parametrize("kem", KEMS, ids=lambda k: k.name)
def test_low_order_x25519_values_are_refused(kem: HybridKem) -> None:
    sk = kem.generate()
    ct = sk.public_key.encapsulate().ciphertext
    with pytest.raises(KemError, match="low-order"):
        sk.decapsulate(ct[:-32] + bytes(32))
    pk = sk.public_key.public_bytes()
    with pytest.raises(KemError, match="low-order"):
        kem.encapsulate(pk[:-32] + bytes(32))


def test_keys_of_one_instance_do_not_work_with_another() -> None:
    sk = XWING.generate()
    with pytest.raises(KemError, match="X-Wing"):
        QSC_HYBRID_KEM.decapsulate(sk, b"\x00" * QSC_HYBRID_KEM.ciphertext_size)
    with pytest.raises(KemError, match="X-Wing"):
        QSC_HYBRID_KEM.encapsulate(sk.public_key)


def test_the_label_separates_instances_with_the_same_parameters() -> None:
    other = HybridKem("X-Wing-relabelled", MlKem.ML_KEM_768, b"another label")
    seed = os.urandom(32)
    a, b = XWING.private_key_from_seed(seed), other.private_key_from_seed(seed)
    assert a.public_key.public_bytes() == b.public_key.public_bytes()
    ct = a.public_key.encapsulate().ciphertext
    assert a.decapsulate(ct) != b.decapsulate(ct)


def test_combiner_is_sha3_of_the_documented_inputs_label_last() -> None:
    parts = [os.urandom(32) for _ in range(4)]
    expected = hashlib.sha3_256(b"".join(parts) + QSC_LABEL).digest()
    assert QSC_HYBRID_KEM.combine(*parts) == expected


def test_qsc_decapsulation_follows_the_combiner() -> None:
    # Recompute the secret from the parts with the libraries directly: the documented formula.
    seed = os.urandom(32)
    sk = QSC_HYBRID_KEM.private_key_from_seed(seed)
    enc = sk.public_key.encapsulate()
    expanded = hashlib.shake_256(seed).digest(96)
    ml = mlkem.MLKEM1024PrivateKey.from_seed_bytes(expanded[:64])
    xk = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
    ct_m, ct_x = enc.ciphertext[:1568], enc.ciphertext[1568:]
    ss_m = ml.decapsulate(ct_m)
    ss_x = xk.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
    pk_x = xk.public_key().public_bytes_raw()
    assert enc.shared_secret == hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + QSC_LABEL).digest()
    assert sk.public_key.public_bytes() == ml.public_key().public_bytes_raw() + pk_x


def test_reprs_never_show_secrets() -> None:
    sk = QSC_HYBRID_KEM.generate()
    enc = sk.public_key.encapsulate()
    for text in (repr(sk), str(sk), repr(enc), repr(sk.public_key)):
        assert sk.seed_bytes().hex() not in text
        assert enc.shared_secret.hex() not in text
        assert repr(enc.shared_secret) not in text
        assert repr(sk.seed_bytes()) not in text


def test_non_bytes_inputs_are_kem_errors() -> None:
    sk = QSC_HYBRID_KEM.generate()
    ct = sk.public_key.encapsulate().ciphertext
    with pytest.raises(KemError, match="bytes"):
        sk.decapsulate(bytearray(ct))  # type: ignore[arg-type]
    with pytest.raises(KemError, match="bytes"):
        QSC_HYBRID_KEM.private_key_from_seed("0" * 32)  # type: ignore[arg-type]
