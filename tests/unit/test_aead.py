"""Sealing: round trips, the documented format, and one opaque error for every bad input."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypto.aead import AeadKey, Algorithm, RawAead, Sealer, open_sealed, sealed_key_id
from crypto.errors import DecryptionError, NonceExhaustedError
from crypto.nonces import CounterNonceSource, RandomNonceSource, SequenceNonceSource, StreamNonce

ALGORITHMS = list(Algorithm)


def make_key(alg: Algorithm, key_id: str = "store-2025-01") -> AeadKey:
    return AeadKey(key_id, os.urandom(32), alg)


def make_sealer(key: AeadKey) -> Sealer:
    if key.algorithm is Algorithm.AES_256_GCM:
        return Sealer(key, RandomNonceSource.aes_gcm())
    return Sealer(key)


def nonce_of(sealed: bytes) -> bytes:
    kid_len = sealed[3]
    size = 12 if sealed[2] == 1 else 24
    return sealed[4 + kid_len : 4 + kid_len + size]


class FixedNonce:
    """A test double: always the same nonce (only to pin the wire format)."""

    def __init__(self, nonce: bytes) -> None:
        self._nonce = nonce

    @property
    def nonce_size(self) -> int:
        return len(self._nonce)

    @property
    def key_id(self) -> str | None:
        return None

    def next_nonce(self) -> bytes:
        return self._nonce


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("size", [0, 1, 1024, 65536 + 7, 3 * 1024 * 1024])
def test_round_trip(alg: Algorithm, size: int) -> None:
    key = make_key(alg)
    plaintext = os.urandom(size)
    sealed = make_sealer(key).seal(plaintext, b"batch 7")
    assert open_sealed(sealed, key, b"batch 7") == plaintext
    assert open_sealed(sealed, {key.key_id: key}, b"batch 7") == plaintext
    assert sealed_key_id(sealed) == key.key_id


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_open_picks_the_key_named_in_the_sealed_message(alg: Algorithm) -> None:
    old, new = make_key(alg, "k-old"), make_key(alg, "k-new")
    ring = {"k-old": old, "k-new": new}
    assert open_sealed(make_sealer(old).seal(b"a"), ring) == b"a"
    assert open_sealed(make_sealer(new).seal(b"b"), ring) == b"b"


def test_wire_format_is_the_documented_one() -> None:
    key = make_key(Algorithm.AES_256_GCM, "kid")
    nonce = bytes(range(12))
    sealed = Sealer(key, FixedNonce(nonce)).seal(b"payload", b"ctx")
    header = b"\x51\x01\x01\x03kid" + nonce
    assert sealed[: len(header)] == header
    aad = len(header).to_bytes(4, "big") + header + b"ctx"
    assert sealed[len(header) :] == AESGCM(key.secret).encrypt(nonce, b"payload", aad)


def test_xchacha_header_carries_a_24_byte_nonce() -> None:
    key = make_key(Algorithm.XCHACHA20_POLY1305, "x")
    sealed = Sealer(key).seal(b"")
    assert sealed[:5] == b"\x51\x01\x02\x01x"
    assert len(sealed) == 5 + 24 + 16


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_wrong_aad_fails(alg: Algorithm) -> None:
    key = make_key(alg)
    sealed = make_sealer(key).seal(b"secret event", b"seq=1")
    for aad in (b"", b"seq=2", b"seq=1\x00", b"seq="):
        with pytest.raises(DecryptionError):
            open_sealed(sealed, key, aad)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_every_flipped_byte_fails(alg: Algorithm) -> None:
    key = make_key(alg)
    sealed = make_sealer(key).seal(b"0123456789abcdef-payload", b"aad")
    for i in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[i] ^= 0x01
        with pytest.raises(DecryptionError):
            open_sealed(bytes(tampered), key, b"aad")


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_every_truncation_and_extension_fails(alg: Algorithm) -> None:
    key = make_key(alg)
    sealed = make_sealer(key).seal(b"some payload", b"aad")
    for n in range(len(sealed)):
        with pytest.raises(DecryptionError):
            open_sealed(sealed[:n], key, b"aad")
    with pytest.raises(DecryptionError):
        open_sealed(sealed + b"\x00", key, b"aad")


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_unknown_or_wrong_key_fails(alg: Algorithm) -> None:
    key = make_key(alg, "a")
    sealed = make_sealer(key).seal(b"x")
    with pytest.raises(DecryptionError):
        open_sealed(sealed, make_key(alg, "b"))  # another id
    with pytest.raises(DecryptionError):
        open_sealed(sealed, {"b": make_key(alg, "b")})  # id not in the ring
    with pytest.raises(DecryptionError):
        open_sealed(sealed, make_key(alg, "a"))  # same id, other secret
    with pytest.raises(DecryptionError):
        open_sealed(sealed, {})


def test_key_of_the_other_algorithm_fails() -> None:
    secret = os.urandom(32)
    aes = AeadKey("k", secret, Algorithm.AES_256_GCM)
    xch = AeadKey("k", secret, Algorithm.XCHACHA20_POLY1305)
    with pytest.raises(DecryptionError):
        open_sealed(Sealer(xch).seal(b"x"), aes)
    with pytest.raises(DecryptionError):
        open_sealed(Sealer(aes, RandomNonceSource.aes_gcm()).seal(b"x"), xch)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x51",
        b"\x51\x01\x01",
        b"\x00" * 64,
        b"\x51\x02\x01\x01k" + bytes(28),
        b"\x51\x01\x09",
    ],
)
def test_malformed_headers_fail_opaquely(blob: bytes) -> None:
    with pytest.raises(DecryptionError):
        open_sealed(blob, make_key(Algorithm.AES_256_GCM, "k"))
    with pytest.raises(DecryptionError):
        sealed_key_id(blob)


def test_the_error_reveals_nothing() -> None:
    key = make_key(Algorithm.AES_256_GCM)
    sealed = make_sealer(key).seal(b"x", b"a")
    errors = []
    for bad in (sealed[:10], sealed + b"!", sealed):
        try:
            open_sealed(bad, key, b"b")
        except DecryptionError as e:
            errors.append(e)
    assert [str(e) for e in errors] == ["decryption failed"] * 3
    assert all(e.__cause__ is None and e.__suppress_context__ for e in errors[1:])


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_nonces_never_repeat(alg: Algorithm) -> None:
    key = make_key(alg)
    sealer = make_sealer(key)
    nonces = {nonce_of(sealer.seal(b"m")) for _ in range(20_000)}
    assert len(nonces) == 20_000


def test_counter_nonces_are_unique_across_threads(tmp_path: Path) -> None:
    key = make_key(Algorithm.AES_256_GCM)
    with CounterNonceSource.create(tmp_path / "n.state", key.key_id, block_size=64) as src:
        sealer = Sealer(key, src)
        out: list[bytes] = []
        lock = threading.Lock()

        def work() -> None:
            mine = [nonce_of(sealer.seal(b"m")) for _ in range(2000)]
            with lock:
                out.extend(mine)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(set(out)) == len(out) == 8000


def test_aes_gcm_needs_an_explicit_nonce_source() -> None:
    with pytest.raises(ValueError, match="explicit nonce source"):
        Sealer(make_key(Algorithm.AES_256_GCM))


def test_nonce_source_must_fit_the_algorithm_and_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="12-byte"):
        Sealer(make_key(Algorithm.AES_256_GCM), RandomNonceSource(24))
    with pytest.raises(ValueError, match="24-byte"):
        Sealer(make_key(Algorithm.XCHACHA20_POLY1305), RandomNonceSource.aes_gcm())
    with (
        CounterNonceSource.create(tmp_path / "s", "key-a") as src,
        pytest.raises(ValueError, match="another key"),
    ):
        Sealer(make_key(Algorithm.AES_256_GCM, "key-b"), src)


def test_random_aes_gcm_source_refuses_past_its_limit() -> None:
    key = make_key(Algorithm.AES_256_GCM)
    sealer = Sealer(key, RandomNonceSource(12, limit=3))
    for _ in range(3):
        sealer.seal(b"m")
    with pytest.raises(NonceExhaustedError):
        sealer.seal(b"m")
    assert RandomNonceSource.aes_gcm()._limit == 2**32


def test_stream_sealing_with_sequence_in_nonce_and_aad() -> None:
    key = make_key(Algorithm.AES_256_GCM)
    stream = StreamNonce(stream_id=1)
    src = SequenceNonceSource(stream)
    sealer = Sealer(key, src)
    batches = []
    for _ in range(3):
        seq = src.next_sequence
        batches.append((seq, sealer.seal(b"batch", seq.to_bytes(8, "big"))))
    for seq, sealed in batches:
        assert stream.sequence_of(nonce_of(sealed)) == seq
        assert open_sealed(sealed, key, seq.to_bytes(8, "big")) == b"batch"
    with pytest.raises(DecryptionError):  # replayed under another sequence number
        open_sealed(batches[0][1], key, (1).to_bytes(8, "big"))


def test_key_repr_never_shows_the_secret() -> None:
    secret = bytes(range(32))
    key = AeadKey("k1", secret, Algorithm.AES_256_GCM)
    for text in (repr(key), str(key), repr(Sealer(key, RandomNonceSource.aes_gcm()))):
        assert "k1" in text
        assert secret.hex() not in text
        assert repr(secret) not in text
        assert "secret" not in text


def test_key_equality_compares_secret() -> None:
    secret = os.urandom(32)
    a = AeadKey("k", secret, Algorithm.AES_256_GCM)
    assert a == AeadKey("k", secret, Algorithm.AES_256_GCM)
    assert a != AeadKey("k", os.urandom(32), Algorithm.AES_256_GCM)
    assert a != AeadKey("k", secret, Algorithm.XCHACHA20_POLY1305)


@pytest.mark.parametrize("key_id", ["", "x" * 65, "tab\there", "naïve", "line\n"])
def test_bad_key_ids_are_refused(key_id: str) -> None:
    with pytest.raises(ValueError, match="key_id"):
        AeadKey(key_id, os.urandom(32), Algorithm.AES_256_GCM)


@pytest.mark.parametrize("secret", [b"", os.urandom(16), os.urandom(31), os.urandom(33)])
def test_bad_secret_lengths_are_refused(secret: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        AeadKey("k", secret, Algorithm.XCHACHA20_POLY1305)


def test_longest_key_id_round_trips() -> None:
    key = make_key(Algorithm.XCHACHA20_POLY1305, "k" * 64)
    sealed = Sealer(key).seal(b"x")
    assert sealed_key_id(sealed) == "k" * 64
    assert open_sealed(sealed, key) == b"x"


# --- the raw primitive (caller's nonce, no header) -------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("size", [0, 1, 4096])
def test_raw_round_trip_is_ciphertext_and_tag_only(alg: Algorithm, size: int) -> None:
    raw = RawAead(make_key(alg))
    nonce = StreamNonce(1, alg.nonce_size).for_sequence(3)
    plaintext = os.urandom(size)
    sealed = raw.encrypt(nonce, plaintext, b"aad")
    assert len(sealed) == size + 16  # no header, no nonce on the wire
    assert raw.decrypt(nonce, sealed, b"aad") == plaintext
    assert raw.decrypt(nonce, memoryview(sealed), b"aad") == plaintext


def test_raw_aes_gcm_is_the_plain_aead() -> None:
    key = make_key(Algorithm.AES_256_GCM)
    nonce = os.urandom(12)
    assert RawAead(key).encrypt(nonce, b"payload", b"ad") == AESGCM(key.secret).encrypt(
        nonce, b"payload", b"ad"
    )


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("damage", ["nonce", "aad", "tag", "body", "truncated", "key"])
def test_raw_decrypt_fails_with_the_one_opaque_error(alg: Algorithm, damage: str) -> None:
    key = make_key(alg)
    nonce = StreamNonce(1, alg.nonce_size).for_sequence(1)
    sealed = RawAead(key).encrypt(nonce, b"event batch", b"aad")
    raw, aad = RawAead(key), b"aad"
    if damage == "nonce":
        nonce = StreamNonce(1, alg.nonce_size).for_sequence(2)
    elif damage == "aad":
        aad = b"aae"
    elif damage == "tag":
        sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
    elif damage == "body":
        sealed = bytes([sealed[0] ^ 0x80]) + sealed[1:]
    elif damage == "truncated":
        sealed = sealed[:15]
    else:
        raw = RawAead(make_key(alg))
    with pytest.raises(DecryptionError) as info:
        raw.decrypt(nonce, sealed, aad)
    assert str(info.value) == str(DecryptionError())


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_raw_nonce_length_is_checked(alg: Algorithm) -> None:
    raw = RawAead(make_key(alg))
    good = bytes(alg.nonce_size)
    sealed = raw.encrypt(good, b"x")
    other = 24 if alg.nonce_size == 12 else 12
    for bad in (bytes(other), bytes(alg.nonce_size - 1), bytes(alg.nonce_size + 1), b""):
        with pytest.raises(ValueError, match=f"{alg.nonce_size}-byte nonces"):
            raw.encrypt(bad, b"x")
        with pytest.raises(ValueError, match=f"{alg.nonce_size}-byte nonces"):
            raw.decrypt(bad, sealed)


def test_raw_repr_never_shows_the_secret() -> None:
    key = make_key(Algorithm.XCHACHA20_POLY1305)
    assert key.secret.hex() not in repr(RawAead(key))
    assert "store-2025-01" in repr(RawAead(key))
