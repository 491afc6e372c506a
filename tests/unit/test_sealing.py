"""Sealed sessions: the signed hybrid-KEM handshake and the in-order AEAD-sealed batch stream.

Real certificates from crypto.pki throughout: a deployment CA, a `cortex` subscriber, an `alpha`
guardian, and a second CA of the same trust domain that the subscriber must not trust.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from crypto import pki
from crypto.errors import DecryptionError, NonceExhaustedError
from mesh.stream import sealing
from mesh.stream.sealing import (
    AES_SUITE,
    XCHACHA_SUITE,
    HandshakeError,
    SealedStreamError,
    SessionOpener,
    SessionSealer,
    SubscriberHandshake,
    accept_offer,
)
from qsc.common.v1.event_pb2 import Event, EventBatch
from qsc.guardian.v1.sealed_session_pb2 import (
    SealedBatch,
    SealedSessionAccept,
    SealedSessionOffer,
    SignatureAlgorithm,
)

TD = "example.org"
GUARDIAN_HOST = "web1.example.org"
SUITES = [AES_SUITE, XCHACHA_SUITE]


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.create_ca(TD)


@pytest.fixture(scope="module")
def other_ca() -> pki.CertificateAuthority:
    return pki.create_ca(TD)  # same trust domain: only the chain tells them apart


@pytest.fixture(scope="module")
def subscriber(ca: pki.CertificateAuthority) -> pki.IssuedLeaf:
    return pki.issue_leaf(ca, "cortex", "cortex1.example.org")


@pytest.fixture(scope="module")
def guardian(ca: pki.CertificateAuthority) -> pki.IssuedLeaf:
    return pki.issue_leaf(ca, "alpha", GUARDIAN_HOST)


@dataclass
class Session:
    offer: SealedSessionOffer
    accept: SealedSessionAccept
    sealer: SessionSealer
    opener: SessionOpener


def _open_session(
    ca: pki.CertificateAuthority,
    subscriber: pki.IssuedLeaf,
    guardian: pki.IssuedLeaf,
    suites: tuple[sealing.Suite, ...] = sealing.DEFAULT_SUITES,
) -> Session:
    handshake, offer = SubscriberHandshake.start(subscriber.key, suites=suites)
    accept, sealer = accept_offer(
        offer,
        client_cert=subscriber.cert,
        guardian_key=guardian.key,
        guardian_chain=[guardian.cert],
    )
    opener = handshake.finish(
        accept, ca_cert=ca.cert, expected_role="alpha", expected_host=GUARDIAN_HOST
    )
    return Session(offer, accept, sealer, opener)


@pytest.fixture(params=SUITES, ids=["aes-256-gcm", "xchacha20-poly1305"])
def session(
    request: pytest.FixtureRequest,
    ca: pki.CertificateAuthority,
    subscriber: pki.IssuedLeaf,
    guardian: pki.IssuedLeaf,
) -> Session:
    return _open_session(ca, subscriber, guardian, (request.param,))


def _batch(first: int, n: int) -> EventBatch:
    events = [
        Event(id=f"ev-{seq}", seq=seq, summary=f"openat /etc/shadow by pid {seq}")
        for seq in range(first, first + n)
    ]
    return EventBatch(events=events, first_seq=first, last_seq=first + max(n, 1) - 1)


def _flip(data: bytes, index: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _copy_accept(accept: SealedSessionAccept) -> SealedSessionAccept:
    out = SealedSessionAccept()
    out.CopyFrom(accept)
    return out


def _copy_offer(offer: SealedSessionOffer) -> SealedSessionOffer:
    out = SealedSessionOffer()
    out.CopyFrom(offer)
    return out


def _copy_sealed(sealed: SealedBatch) -> SealedBatch:
    out = SealedBatch()
    out.CopyFrom(sealed)
    return out


# --- happy path -----------------------------------------------------------------------------


def test_handshake_then_batches_round_trip(session: Session) -> None:
    assert session.sealer.session_id == session.opener.session_id == session.accept.session_id
    assert session.sealer.key_id == session.opener.key_id
    assert session.sealer.suite == session.opener.suite == session.accept.suite
    assert session.opener.peer == pki.Identity(TD, "alpha", GUARDIAN_HOST)
    batches = [_batch(1, 5), _batch(6, 512), _batch(518, 0), _batch(518, 1)]
    sealed = [session.sealer.seal(b) for b in batches]
    assert [s.batch_number for s in sealed] == [1, 2, 3, 4]
    for batch, s in zip(batches, sealed, strict=True):
        assert (s.first_seq, s.last_seq, s.event_count) == (
            batch.first_seq,
            batch.last_seq,
            len(batch.events),
        )
        assert b"/etc/shadow" not in s.ciphertext
        assert session.opener.open(s) == batch
    assert session.opener.last_batch_number == 4


def test_offer_and_accept_sizes_and_suite_preference(
    ca: pki.CertificateAuthority, subscriber: pki.IssuedLeaf, guardian: pki.IssuedLeaf
) -> None:
    s = _open_session(ca, subscriber, guardian, (XCHACHA_SUITE, AES_SUITE))
    assert len(s.offer.x25519_public_key) == 32
    assert len(s.offer.mlkem_encapsulation_key) == 1568
    assert len(s.offer.client_nonce) == 32
    assert s.offer.signature_algorithm == SignatureAlgorithm.SIGNATURE_ALGORITHM_ECDSA_P256_SHA256
    assert len(s.accept.x25519_ciphertext) == 32
    assert len(s.accept.mlkem_ciphertext) == 1568
    assert len(s.accept.session_id) == 16
    assert len(s.accept.server_nonce) == 32
    assert s.accept.suite == AES_SUITE  # the guardian's preference wins among those offered


def _self_signed(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "subscriber")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    digest = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, digest)


@pytest.mark.parametrize(
    ("make_key", "alg"),
    [
        (
            lambda: ec.generate_private_key(ec.SECP384R1()),
            SignatureAlgorithm.SIGNATURE_ALGORITHM_ECDSA_P384_SHA384,
        ),
        (ed25519.Ed25519PrivateKey.generate, SignatureAlgorithm.SIGNATURE_ALGORITHM_ED25519),
    ],
    ids=["p384", "ed25519"],
)
def test_other_subscriber_key_types(
    make_key: Callable[[], ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey],
    alg: SignatureAlgorithm.ValueType,
    ca: pki.CertificateAuthority,
    guardian: pki.IssuedLeaf,
) -> None:
    key = make_key()
    handshake, offer = SubscriberHandshake.start(key)
    assert offer.signature_algorithm == alg
    accept, sealer = accept_offer(
        offer,
        client_cert=_self_signed(key),
        guardian_key=guardian.key,
        guardian_chain=[guardian.cert],
    )
    opener = handshake.finish(accept, ca_cert=ca.cert, expected_role="alpha", expected_host=None)
    batch = _batch(1, 3)
    assert opener.open(sealer.seal(batch)) == batch


def test_context_binds_the_request(
    subscriber: pki.IssuedLeaf, guardian: pki.IssuedLeaf, ca: pki.CertificateAuthority
) -> None:
    handshake, offer = SubscriberHandshake.start(subscriber.key, context=b"after_seq=41")
    with pytest.raises(HandshakeError, match="offer signature does not verify"):
        accept_offer(
            offer,
            client_cert=subscriber.cert,
            guardian_key=guardian.key,
            guardian_chain=[guardian.cert],
            context=b"after_seq=9000",  # what a rewriting proxy would make the guardian see
        )
    accept, sealer = accept_offer(
        offer,
        client_cert=subscriber.cert,
        guardian_key=guardian.key,
        guardian_chain=[guardian.cert],
        context=b"after_seq=41",
    )
    opener = handshake.finish(accept, ca_cert=ca.cert, expected_role="alpha", expected_host=None)
    assert opener.key_id == sealer.key_id


# --- the guardian checks the offer ----------------------------------------------------------


def test_offer_signed_by_another_key_is_rejected(
    ca: pki.CertificateAuthority, subscriber: pki.IssuedLeaf, guardian: pki.IssuedLeaf
) -> None:
    impostor = pki.issue_leaf(ca, "cortex", "cortex2.example.org")
    _, offer = SubscriberHandshake.start(impostor.key)
    with pytest.raises(HandshakeError, match="offer signature does not verify"):
        accept_offer(
            offer,
            client_cert=subscriber.cert,  # what TLS says the peer is
            guardian_key=guardian.key,
            guardian_chain=[guardian.cert],
        )


@pytest.mark.parametrize(
    "tamper",
    [
        lambda o: setattr(o, "x25519_public_key", _flip(o.x25519_public_key)),
        lambda o: setattr(o, "mlkem_encapsulation_key", _flip(o.mlkem_encapsulation_key, 100)),
        lambda o: setattr(o, "client_nonce", _flip(o.client_nonce)),
        lambda o: o.suites.pop(),
        lambda o: setattr(o, "signature", _flip(o.signature, 10)),
    ],
    ids=["x25519", "mlkem", "nonce", "suites", "signature"],
)
def test_tampered_offer_is_rejected(
    tamper: Callable[[SealedSessionOffer], object],
    subscriber: pki.IssuedLeaf,
    guardian: pki.IssuedLeaf,
) -> None:
    _, offer = SubscriberHandshake.start(subscriber.key)
    tamper(offer)
    with pytest.raises(HandshakeError, match="offer signature does not verify"):
        accept_offer(
            offer,
            client_cert=subscriber.cert,
            guardian_key=guardian.key,
            guardian_chain=[guardian.cert],
        )


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("suites", "offer lists no sealing suite"),
        ("x25519_public_key", "x25519_public_key must be 32 bytes, got 0"),
        ("mlkem_encapsulation_key", "mlkem_encapsulation_key must be 1568 bytes, got 0"),
        ("client_nonce", "client_nonce must be 32 bytes, got 0"),
        ("signature_algorithm", "SIGNATURE_ALGORITHM_UNSPECIFIED does not match"),
        ("signature", "signature is missing"),
    ],
)
def test_offer_missing_fields(
    field: str, message: str, subscriber: pki.IssuedLeaf, guardian: pki.IssuedLeaf
) -> None:
    _, offer = SubscriberHandshake.start(subscriber.key)
    offer.ClearField(field)  # type: ignore[arg-type]
    with pytest.raises(HandshakeError, match=message):
        accept_offer(
            offer,
            client_cert=subscriber.cert,
            guardian_key=guardian.key,
            guardian_chain=[guardian.cert],
        )


def _signed_offer(key: ec.EllipticCurvePrivateKey, suites: list[int]) -> SealedSessionOffer:
    """A correctly signed offer listing `suites` as given (which the subscriber API refuses)."""
    _, offer = SubscriberHandshake.start(key)
    del offer.suites[:]
    offer.suites.extend(suites)  # type: ignore[arg-type]
    offer.signature = sealing._sign(
        key, offer.signature_algorithm, sealing._offer_transcript(offer, b"")
    )
    return offer


@pytest.mark.parametrize(
    ("suites", "message"),
    [
        ([], "offer lists no sealing suite"),
        ([int(AES_SUITE), int(AES_SUITE)], "AES_256_GCM more than once"),
        ([int(XCHACHA_SUITE), int(AES_SUITE), int(XCHACHA_SUITE)], "3 sealing suites"),
        ([int(XCHACHA_SUITE), int(XCHACHA_SUITE)], "XCHACHA20_POLY1305 more than once"),
        ([99, int(XCHACHA_SUITE)], "unknown sealing suite 99"),
        ([int(AES_SUITE), 0], "unknown sealing suite SEALING_SUITE_UNSPECIFIED"),
        ([int(AES_SUITE), int(XCHACHA_SUITE), 3], "there are only 2 distinct suites"),
        ([int(AES_SUITE)] * 1000, "1000 sealing suites"),
    ],
    ids=[
        "none",
        "aes-twice",
        "three",
        "xchacha-twice",
        "unknown",
        "unspecified",
        "too-many",
        "1000",
    ],
)
def test_offer_with_a_bad_suite_list_is_refused(
    suites: list[int], message: str, subscriber: pki.IssuedLeaf, guardian: pki.IssuedLeaf
) -> None:
    # Correctly signed, so the list itself is what is refused (before any KEM work).
    offer = _signed_offer(subscriber.key, suites)
    with pytest.raises(HandshakeError, match=re.escape(message)):
        accept_offer(
            offer,
            client_cert=subscriber.cert,
            guardian_key=guardian.key,
            guardian_chain=[guardian.cert],
        )


@pytest.mark.parametrize(
    ("suites", "chosen"),
    [
        ([int(XCHACHA_SUITE), int(AES_SUITE)], AES_SUITE),  # the guardian's order wins
        ([int(XCHACHA_SUITE)], XCHACHA_SUITE),
    ],
)
def test_known_suites_each_once_are_accepted(
    suites: list[int], chosen: int, subscriber: pki.IssuedLeaf, guardian: pki.IssuedLeaf
) -> None:
    accept, _ = accept_offer(
        _signed_offer(subscriber.key, suites),
        client_cert=subscriber.cert,
        guardian_key=guardian.key,
        guardian_chain=[guardian.cert],
    )
    assert accept.suite == chosen


def test_no_common_suite_is_refused(subscriber: pki.IssuedLeaf, guardian: pki.IssuedLeaf) -> None:
    offer = _signed_offer(subscriber.key, [int(XCHACHA_SUITE)])
    with pytest.raises(HandshakeError, match=r"no common sealing suite \(offered: SEALING_SUITE_"):
        accept_offer(
            offer,
            client_cert=subscriber.cert,
            guardian_key=guardian.key,
            guardian_chain=[guardian.cert],
            suite_preference=(AES_SUITE,),
        )


def test_subscriber_refuses_to_offer_copies(subscriber: pki.IssuedLeaf) -> None:
    with pytest.raises(ValueError, match="distinct suites"):
        SubscriberHandshake.start(subscriber.key, suites=(AES_SUITE, AES_SUITE))


def test_low_order_x25519_key_is_rejected(
    subscriber: pki.IssuedLeaf, guardian: pki.IssuedLeaf
) -> None:
    _, offer = SubscriberHandshake.start(subscriber.key)
    offer.x25519_public_key = bytes(32)
    offer.signature = sealing._sign(
        subscriber.key, offer.signature_algorithm, sealing._offer_transcript(offer, b"")
    )
    with pytest.raises(HandshakeError, match="hybrid public key is invalid"):
        accept_offer(
            offer,
            client_cert=subscriber.cert,
            guardian_key=guardian.key,
            guardian_chain=[guardian.cert],
        )


def test_guardian_local_arguments(subscriber: pki.IssuedLeaf, guardian: pki.IssuedLeaf) -> None:
    _, offer = SubscriberHandshake.start(subscriber.key)
    with pytest.raises(ValueError, match="at least the guardian's leaf"):
        accept_offer(
            offer, client_cert=subscriber.cert, guardian_key=guardian.key, guardian_chain=[]
        )
    with pytest.raises(ValueError, match="does not belong"):
        accept_offer(
            offer,
            client_cert=subscriber.cert,
            guardian_key=subscriber.key,
            guardian_chain=[guardian.cert],
        )
    with pytest.raises(ValueError, match="unknown sealing suite"):
        SubscriberHandshake.start(subscriber.key, suites=(0,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        SubscriberHandshake.start(subscriber.key, suites=())


# --- the subscriber checks the accept -------------------------------------------------------


def _start_and_accept(
    subscriber: pki.IssuedLeaf,
    guardian: pki.IssuedLeaf,
    chain: list[x509.Certificate] | None = None,
) -> tuple[SubscriberHandshake, SealedSessionAccept]:
    handshake, offer = SubscriberHandshake.start(subscriber.key)
    accept, _ = accept_offer(
        offer,
        client_cert=subscriber.cert,
        guardian_key=guardian.key,
        guardian_chain=chain or [guardian.cert],
    )
    return handshake, accept


@pytest.mark.parametrize(
    "tamper",
    [
        lambda a: setattr(a, "mlkem_ciphertext", _flip(a.mlkem_ciphertext, 700)),
        lambda a: setattr(a, "x25519_ciphertext", _flip(a.x25519_ciphertext)),
        lambda a: setattr(a, "server_nonce", _flip(a.server_nonce)),
        lambda a: setattr(a, "session_id", _flip(a.session_id)),
        lambda a: setattr(a, "suite", XCHACHA_SUITE),  # the other offered suite
        lambda a: setattr(a, "signature", _flip(a.signature, 12)),
        lambda a: a.certificate_chain.append(a.certificate_chain[0]),
        lambda a: setattr(
            a, "signature_algorithm", SignatureAlgorithm.SIGNATURE_ALGORITHM_ECDSA_P384_SHA384
        ),
    ],
    ids=["mlkem", "x25519", "nonce", "session-id", "suite", "signature", "chain", "sig-alg"],
)
def test_tampered_accept_fails_the_signature(
    tamper: Callable[[SealedSessionAccept], object],
    ca: pki.CertificateAuthority,
    subscriber: pki.IssuedLeaf,
    guardian: pki.IssuedLeaf,
) -> None:
    handshake, accept = _start_and_accept(subscriber, guardian)
    assert accept.suite == AES_SUITE
    tamper(accept)
    with pytest.raises(HandshakeError, match="handshake signature does not verify"):
        handshake.finish(
            accept, ca_cert=ca.cert, expected_role="alpha", expected_host=GUARDIAN_HOST
        )


def test_accept_for_another_subscriber_fails_the_signature(
    ca: pki.CertificateAuthority, subscriber: pki.IssuedLeaf, guardian: pki.IssuedLeaf
) -> None:
    # The guardian signs the client key it authenticated: an accept made for someone else's
    # (stolen) offer does not verify at the subscriber whose key differs.
    other = pki.issue_leaf(ca, "cortex", "cortex3.example.org")
    handshake, offer = SubscriberHandshake.start(subscriber.key)
    handshake._spki = sealing._spki(other.cert.public_key())
    accept, _ = accept_offer(
        offer,
        client_cert=subscriber.cert,
        guardian_key=guardian.key,
        guardian_chain=[guardian.cert],
    )
    with pytest.raises(HandshakeError, match="handshake signature does not verify"):
        handshake.finish(accept, ca_cert=ca.cert, expected_role="alpha", expected_host=None)


def test_guardian_from_another_ca_is_rejected(
    ca: pki.CertificateAuthority, other_ca: pki.CertificateAuthority, subscriber: pki.IssuedLeaf
) -> None:
    rogue = pki.issue_leaf(other_ca, "alpha", GUARDIAN_HOST)
    handshake, accept = _start_and_accept(subscriber, rogue, [rogue.cert, other_ca.cert])
    with pytest.raises(HandshakeError, match="does not verify against the deployment CA"):
        handshake.finish(
            accept, ca_cert=ca.cert, expected_role="alpha", expected_host=GUARDIAN_HOST
        )


def test_guardian_of_wrong_role_or_host_is_rejected(
    ca: pki.CertificateAuthority, subscriber: pki.IssuedLeaf, guardian: pki.IssuedLeaf
) -> None:
    beta = pki.issue_leaf(ca, "beta", GUARDIAN_HOST)
    handshake, accept = _start_and_accept(subscriber, beta)
    with pytest.raises(HandshakeError, match="role 'beta', expected 'alpha'"):
        handshake.finish(
            accept, ca_cert=ca.cert, expected_role="alpha", expected_host=GUARDIAN_HOST
        )
    handshake, accept = _start_and_accept(subscriber, guardian)
    with pytest.raises(
        HandshakeError, match=re.escape("host 'web1.example.org', expected 'web2.example.org'")
    ):
        handshake.finish(
            accept, ca_cert=ca.cert, expected_role="alpha", expected_host="WEB2.example.org"
        )
    handshake, accept = _start_and_accept(subscriber, guardian)
    with pytest.raises(HandshakeError, match="trust domain"):
        handshake.finish(
            accept, ca_cert=ca.cert, expected_role="alpha", expected_host=None, trust_domain="x.org"
        )


def test_expired_guardian_certificate_is_rejected(
    ca: pki.CertificateAuthority, subscriber: pki.IssuedLeaf, guardian: pki.IssuedLeaf
) -> None:
    handshake, accept = _start_and_accept(subscriber, guardian)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    with pytest.raises(HandshakeError, match="deployment CA"):
        handshake.finish(
            accept, ca_cert=ca.cert, expected_role="alpha", expected_host=None, now=later
        )


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda a: a.ClearField("certificate_chain"), "no guardian certificate"),
        (lambda a: a.certificate_chain.__setitem__(0, b"\x30\x03junk"), "not valid DER"),
        (lambda a: a.ClearField("session_id"), "session_id must be 16 bytes, got 0"),
        (lambda a: a.ClearField("x25519_ciphertext"), "x25519_ciphertext must be 32 bytes"),
        (lambda a: a.ClearField("mlkem_ciphertext"), "mlkem_ciphertext must be 1568 bytes"),
        (lambda a: setattr(a, "server_nonce", b"x" * 33), "server_nonce must be 32 bytes, got 33"),
        (lambda a: a.ClearField("signature"), "signature is missing"),
        (lambda a: a.ClearField("suite"), "SEALING_SUITE_UNSPECIFIED, which was not offered"),
        (lambda a: setattr(a, "suite", 7), "suite 7, which was not offered"),
    ],
    ids=["no-chain", "bad-der", "session-id", "x25519", "mlkem", "nonce", "sig", "suite", "99"],
)
def test_malformed_accept(
    tamper: Callable[[SealedSessionAccept], object],
    message: str,
    ca: pki.CertificateAuthority,
    subscriber: pki.IssuedLeaf,
    guardian: pki.IssuedLeaf,
) -> None:
    handshake, accept = _start_and_accept(subscriber, guardian)
    tamper(accept)
    with pytest.raises(HandshakeError, match=message):
        handshake.finish(accept, ca_cert=ca.cert, expected_role="alpha", expected_host=None)


def test_handshake_is_single_use(
    ca: pki.CertificateAuthority, subscriber: pki.IssuedLeaf, guardian: pki.IssuedLeaf
) -> None:
    handshake, accept = _start_and_accept(subscriber, guardian)
    bad = _copy_accept(accept)
    bad.server_nonce = _flip(bad.server_nonce)
    with pytest.raises(HandshakeError):
        handshake.finish(bad, ca_cert=ca.cert, expected_role="alpha", expected_host=None)
    with pytest.raises(HandshakeError, match="already finished"):
        handshake.finish(accept, ca_cert=ca.cert, expected_role="alpha", expected_host=None)


# --- the sealed stream ----------------------------------------------------------------------


def _expect_stream_error(opener: SessionOpener, sealed: SealedBatch) -> None:
    with pytest.raises(SealedStreamError) as info:
        opener.open(sealed)
    assert str(info.value) == "sealed stream integrity failure"
    assert isinstance(info.value, DecryptionError)


def test_replayed_batch_is_rejected(session: Session) -> None:
    first = session.sealer.seal(_batch(1, 3))
    session.opener.open(first)
    _expect_stream_error(session.opener, first)


def test_reordered_batch_is_rejected(session: Session) -> None:
    session.sealer.seal(_batch(1, 3))
    second = session.sealer.seal(_batch(4, 3))
    _expect_stream_error(session.opener, second)


def test_skipped_batch_is_rejected(session: Session) -> None:
    session.opener.open(session.sealer.seal(_batch(1, 3)))
    session.sealer.seal(_batch(4, 3))  # dropped in transit
    _expect_stream_error(session.opener, session.sealer.seal(_batch(7, 3)))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda s: setattr(s, "ciphertext", _flip(s.ciphertext, 5)),
        lambda s: setattr(s, "ciphertext", _flip(s.ciphertext, len(s.ciphertext) - 1)),
        lambda s: setattr(s, "ciphertext", s.ciphertext[:-1]),
        lambda s: setattr(s, "ciphertext", b""),
        lambda s: setattr(s, "first_seq", s.first_seq + 1),
        lambda s: setattr(s, "last_seq", s.last_seq - 1),
        lambda s: setattr(s, "event_count", s.event_count - 1),
        lambda s: setattr(s, "batch_number", 2),
    ],
    ids=["ct-byte", "tag-byte", "truncated", "empty", "first", "last", "count", "number"],
)
def test_tampered_batch_is_rejected(
    tamper: Callable[[SealedBatch], object], session: Session
) -> None:
    sealed = session.sealer.seal(_batch(10, 4))
    tampered = _copy_sealed(sealed)
    tamper(tampered)
    _expect_stream_error(session.opener, tampered)


def test_failure_ends_the_stream(session: Session) -> None:
    sealed = session.sealer.seal(_batch(1, 3))
    tampered = _copy_sealed(sealed)
    tampered.ciphertext = _flip(tampered.ciphertext)
    _expect_stream_error(session.opener, tampered)
    _expect_stream_error(session.opener, sealed)  # the genuine batch too: the stream is over


def test_authentic_batch_must_agree_with_its_clear_fields(session: Session) -> None:
    # A guardian bug (not an attacker) sealing a plaintext whose range differs from the clear
    # fields it sends: subscribers commit cursors from those fields, so it is refused.
    plaintext = _batch(1, 3).SerializeToString()
    sid = session.sealer.session_id
    aad = sealing._batch_aad(sid, 1, 1, 4, 3)
    nonce = session.sealer._nonce.for_sequence(1)
    sealed = SealedBatch(
        batch_number=1,
        first_seq=1,
        last_seq=4,
        event_count=3,
        ciphertext=session.sealer._cipher.encrypt(nonce, plaintext, aad),
    )
    _expect_stream_error(session.opener, sealed)


def test_old_session_batch_is_rejected_by_a_new_session(
    ca: pki.CertificateAuthority, subscriber: pki.IssuedLeaf, guardian: pki.IssuedLeaf
) -> None:
    old = _open_session(ca, subscriber, guardian)
    new = _open_session(ca, subscriber, guardian)
    old_batch = old.sealer.seal(_batch(1, 3))
    _expect_stream_error(new.opener, old_batch)


def test_sessions_never_share_keys(
    ca: pki.CertificateAuthority, subscriber: pki.IssuedLeaf, guardian: pki.IssuedLeaf
) -> None:
    sessions = [_open_session(ca, subscriber, guardian) for _ in range(3)]
    for s in sessions:
        assert s.sealer._keys.g2s == s.opener._keys.g2s
        assert s.sealer._keys.s2g == s.opener._keys.s2g
        assert s.sealer._keys.g2s.secret != s.sealer._keys.s2g.secret
    secrets_seen = {k.secret for s in sessions for k in (s.sealer._keys.g2s, s.sealer._keys.s2g)}
    assert len(secrets_seen) == 6
    assert len({s.sealer.key_id for s in sessions}) == 3
    assert len({s.accept.session_id for s in sessions}) == 3


def test_nonces_never_repeat_in_a_session(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    nonces: list[bytes] = []
    encrypt = sealing._Cipher.encrypt

    def recording(self: sealing._Cipher, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        nonces.append(nonce)
        return encrypt(self, nonce, plaintext, aad)

    monkeypatch.setattr(sealing._Cipher, "encrypt", recording)
    n = 5000
    batch = _batch(1, 1)
    for number in range(1, n + 1):
        sealed = session.sealer.seal(batch)
        assert sealed.batch_number == number
        session.opener.open(sealed)
    assert len(nonces) == len(set(nonces)) == n
    size = 12 if session.sealer.suite == AES_SUITE else 24
    assert all(len(x) == size and x[:4] == b"\x00\x00\x00\x01" for x in nonces)


def test_sealer_refuses_copies_fork_and_exhaustion(session: Session) -> None:
    for obj in (session.sealer, session.opener):
        with pytest.raises(TypeError):
            copy.copy(obj)
        with pytest.raises(TypeError):
            copy.deepcopy(obj)
        with pytest.raises(TypeError):
            pickle.dumps(obj)
    session.sealer._pid = -1  # as seen from a forked child
    with pytest.raises(NonceExhaustedError, match="after fork"):
        session.sealer.seal(_batch(1, 1))
    session.sealer._pid = os.getpid()
    session.sealer._next = sealing.MAX_BATCHES + 1
    with pytest.raises(NonceExhaustedError, match="batch limit"):
        session.sealer.seal(_batch(1, 1))


def test_reprs_hide_keys(session: Session) -> None:
    keys = session.sealer._keys
    text = " ".join(
        repr(x) for x in (session.sealer, session.opener, keys, keys.g2s, session.sealer._cipher)
    )
    for secret in (keys.g2s.secret, keys.s2g.secret):
        assert secret.hex() not in text
        assert repr(secret) not in text
    assert session.sealer.key_id in text
