"""ML-KEM-768/1024 against the NIST ACVP FIPS 203 cases (keyGen, encapDecap, key checks).

What each library can be driven with: ``cryptography`` imports a key from its seed ``d || z`` and
an encapsulation key (running the FIPS 203 7.2 check), but exports no expanded decapsulation key
and takes no encapsulation randomness ``m``; ``pqcrypto`` decapsulates with an expanded ``dk``.
So: keyGen is checked through ``ek`` and a functional check of ``dk``; encapsulation cases
through decapsulating the expected ``c`` to ``k`` and a round trip to ``ek`` (``m`` cannot be
injected, so ``c`` is not recomputed); decapsulation cases, including implicit rejection,
exactly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem
from pqcrypto.kem import ml_kem_768, ml_kem_1024

HERE = Path(__file__).parent
K = {"ML-KEM-768": 3, "ML-KEM-1024": 4}
PQ = {"ML-KEM-768": ml_kem_768, "ML-KEM-1024": ml_kem_1024}


def public_key(param: str, ek: bytes) -> mlkem.MLKEM768PublicKey | mlkem.MLKEM1024PublicKey:
    if param == "ML-KEM-768":
        return mlkem.MLKEM768PublicKey.from_public_bytes(ek)
    return mlkem.MLKEM1024PublicKey.from_public_bytes(ek)


def private_key(param: str, seed: bytes) -> mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey:
    if param == "ML-KEM-768":
        return mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
    return mlkem.MLKEM1024PrivateKey.from_seed_bytes(seed)


Case = tuple[str, dict[str, Any]]


def _cases(filename: str, function: str | None = None) -> list[Case]:
    doc = json.loads((HERE / filename).read_text())
    out = []
    for group in doc["testGroups"]:
        if function is None or group.get("function") == function:
            out += [(group["parameterSet"], test) for test in group["tests"]]
    return out


def _ids(cases: list[Case]) -> list[str]:
    return [f"{p}-tc{t['tcId']}" for p, t in cases]


def h(test: dict[str, Any], name: str) -> bytes:
    return bytes.fromhex(test[name])


KEYGEN = _cases("mlkem-keygen-fips203.json")
ENCAPS = _cases("mlkem-encapdecap-fips203.json", "encapsulation")
DECAPS = _cases("mlkem-encapdecap-fips203.json", "decapsulation")
EK_CHECK = _cases("mlkem-encapdecap-fips203.json", "encapsulationKeyCheck")
DK_CHECK = _cases("mlkem-encapdecap-fips203.json", "decapsulationKeyCheck")


def test_every_group_is_present() -> None:
    assert (len(KEYGEN), len(ENCAPS), len(DECAPS)) == (50, 50, 20)
    assert (len(EK_CHECK), len(DK_CHECK)) == (20, 20)
    assert {t["reason"] for _, t in DECAPS} == {"modified ciphertext", "valid decapsulation"}


def dk_is_usable(param: str, dk: bytes, ek: bytes) -> bool:
    """dk decapsulates what is encapsulated to ek (catches any wrong byte of dkPKE, H or z
    with overwhelming probability: a mismatch gives the implicit-rejection secret)."""
    ss, ct = public_key(param, ek).encapsulate()
    return bool(PQ[param].decaps(dk, ct) == ss)


@pytest.mark.parametrize(("param", "t"), KEYGEN, ids=_ids(KEYGEN))
def test_keygen(param: str, t: dict[str, Any]) -> None:
    sk = private_key(param, h(t, "d") + h(t, "z"))
    ek, dk, k = h(t, "ek"), h(t, "dk"), K[param]
    assert sk.public_key().public_bytes_raw() == ek
    # dk = dk_PKE || ek || H(ek) || z  (FIPS 203 Algorithm 16)
    assert len(dk) == 768 * k + 96
    assert dk[384 * k : 768 * k + 32] == ek
    assert dk[768 * k + 32 : 768 * k + 64] == hashlib.sha3_256(ek).digest()
    assert dk[-32:] == h(t, "z")
    assert dk_is_usable(param, dk, ek)
    ss, ct = sk.public_key().encapsulate()
    assert PQ[param].decaps(dk, ct) == ss == sk.decapsulate(ct)


@pytest.mark.parametrize(("param", "t"), ENCAPS, ids=_ids(ENCAPS))
def test_encapsulation(param: str, t: dict[str, Any]) -> None:
    ek, dk, c, k = h(t, "ek"), h(t, "dk"), h(t, "c"), h(t, "k")
    assert PQ[param].decaps(dk, c) == k
    pub = public_key(param, ek)
    assert pub.public_bytes_raw() == ek
    ss, ct = pub.encapsulate()
    assert len(ct) == len(c)
    assert PQ[param].decaps(dk, ct) == ss


@pytest.mark.parametrize(("param", "t"), DECAPS, ids=_ids(DECAPS))
def test_decapsulation_including_implicit_rejection(param: str, t: dict[str, Any]) -> None:
    assert PQ[param].decaps(h(t, "dk"), h(t, "c")) == h(t, "k")


@pytest.mark.parametrize(("param", "t"), EK_CHECK, ids=_ids(EK_CHECK))
def test_encapsulation_key_check(param: str, t: dict[str, Any]) -> None:
    # cryptography's import is the FIPS 203 7.2 check: it must refuse exactly the bad keys.
    if t["testPassed"]:
        assert public_key(param, h(t, "ek")).public_bytes_raw() == h(t, "ek")
    else:
        with pytest.raises(ValueError):  # noqa: PT011 - the library raises a bare ValueError
            public_key(param, h(t, "ek"))


def fips203_dk_check(param: str, dk: bytes) -> bool:
    """FIPS 203 7.3 decapsulation input check (length, hash of the embedded ek). Neither library
    imports an expanded dk with this check, so it is computed here with hashlib."""
    k = K[param]
    return len(dk) == 768 * k + 96 and (
        hashlib.sha3_256(dk[384 * k : 768 * k + 32]).digest() == dk[768 * k + 32 : 768 * k + 64]
    )


@pytest.mark.parametrize(("param", "t"), DK_CHECK, ids=_ids(DK_CHECK))
def test_decapsulation_key_check(param: str, t: dict[str, Any]) -> None:
    assert fips203_dk_check(param, h(t, "dk")) is t["testPassed"]
