"""Sealed sessions: an authenticated hybrid-KEM handshake, then AEAD-sealed event batches.

Pure protocol logic (no gRPC, no sockets). The wire messages are
``qsc.guardian.v1.SealedSessionOffer`` / ``SealedSessionAccept`` / ``SealedBatch``.

Handshake::

    subscriber                                          guardian
    SubscriberHandshake.start(tls_key)  -- offer -->    accept_offer(offer, client_cert=TLS peer)
    handshake.finish(accept, ca_cert,   <-- accept --   -> (accept, SessionSealer)
                     role, host) -> SessionOpener

Transcript. Every string is ``crypto.kdf.encode_fields``: per field a type tag (``s`` string,
``b`` bytes, ``i`` unsigned 64-bit big-endian integer), a 2-byte big-endian length and the value.
Repeated fields are their element count then each element; enums are integers. Never protobuf::

    OFFER_FIELDS  = len(suites), suites..., x25519_public_key, mlkem_encapsulation_key,
                    client_nonce, offer.signature_algorithm, context
    T_offer       = fields("qsc", "v1", "sealed-session-offer", OFFER_FIELDS)
    T_accept      = fields("qsc", "v1", "sealed-session-accept", OFFER_FIELDS,
                           client SubjectPublicKeyInfo (DER),
                           suite, session_id, x25519_ciphertext, mlkem_ciphertext, server_nonce,
                           len(certificate_chain), certificate_chain...,
                           accept.signature_algorithm)
    offer.signature  = Sign(subscriber TLS key, T_offer)
    accept.signature = Sign(guardian leaf key, T_accept)

``context`` is bytes both sides compute from what they saw of the request that carries the offer
(e.g. a canonical encoding of the subscription's filter and resume point; empty by default), so a
proxy that rewrites the request breaks the offer signature. The client key in ``T_accept`` binds
the guardian's signature to the subscriber it authenticated. The labels differ, so one signature
can never pass for the other; and no mesh key signs anything else starting with these bytes
(TLS 1.3 signatures start with 64 spaces).

Key schedule (``ss`` = the ``QSC_HYBRID_KEM`` shared secret, ciphertext ``ct_M || ct_X`` =
``mlkem_ciphertext || x25519_ciphertext``)::

    th     = SHA3-256(T_accept)
    K(l,n) = HKDF-SHA256(ikm=ss, salt=th, info=fields("qsc", "v1", "sealed-session-key", l,
                                                       suite, session_id), length=n)
    k_g2s  = K("guardian-to-subscriber", 32)   # seals SealedBatch
    k_s2g  = K("subscriber-to-guardian", 32)   # reserved, unused today
    key id = "sealed/" + hex(session_id) + "/" + hex(K("key-id", 4))   # loggable, not secret

Batches: ``nonce = StreamNonce(1).for_sequence(batch_number)`` (``00000001 || zeros ||
batch_number`` in 12 or 24 bytes; stream 2 is reserved for subscriber-to-guardian) and
``aad = fields("qsc", "v1", "sealed-batch", session_id, batch_number, first_seq, last_seq,
event_count)``. Nonces never repeat under a key: keys are fresh per session and direction, and
the sealer hands out batch numbers 1, 2, 3, ... once each (refusing copies, use after fork, and
more than ``MAX_BATCHES``). The opener accepts exactly ``last + 1`` and checks the plaintext
against the clear fields. The end of a stream is not authenticated: a subscriber commits its
cursor only to the ``last_seq`` of batches it opened, so a cut stream loses nothing on resume.

Offers are strict: at least one suite, each one this code knows and each listed once (so never
more suites than exist). Copies or unknown values are refused, not negotiated around: the
transcript has one meaning, and a new suite is rolled out to guardians before subscribers.

Errors: :class:`HandshakeError` (clear, non-secret messages) for a bad offer or accept;
:class:`SealedStreamError` (one fixed message, no oracle) for any batch that does not open; after
one, the opener refuses everything (the stream is over). Bad local arguments raise ValueError.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
import threading
from collections.abc import Iterable, Sequence
from typing import Final, NoReturn, TypeAlias, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from google.protobuf.message import DecodeError

from crypto import pki
from crypto.aead import TAG_SIZE, AeadKey, Algorithm, RawAead
from crypto.errors import (
    CryptoError,
    DecryptionError,
    KemError,
    NonceExhaustedError,
    PkiError,
)
from crypto.kdf import InfoField, build_info
from crypto.kem import QSC_HYBRID_KEM, X25519_SIZE, HybridPrivateKey
from crypto.nonces import StreamNonce
from mesh.identity import SigningKey
from qsc.common.v1.event_pb2 import EventBatch
from qsc.guardian.v1.sealed_session_pb2 import (
    SealedBatch,
    SealedSessionAccept,
    SealedSessionOffer,
    SealingSuite,
    SignatureAlgorithm,
)

__all__ = [
    "AES_SUITE",
    "DEFAULT_SUITES",
    "MAX_BATCHES",
    "XCHACHA_SUITE",
    "HandshakeError",
    "SealedStreamError",
    "SessionOpener",
    "SessionSealer",
    "SubscriberHandshake",
    "Suite",
    "accept_offer",
]

Suite: TypeAlias = SealingSuite.ValueType
SigAlg: TypeAlias = SignatureAlgorithm.ValueType

AES_SUITE: Final = SealingSuite.SEALING_SUITE_X25519_MLKEM1024_HKDF_SHA256_AES_256_GCM
XCHACHA_SUITE: Final = SealingSuite.SEALING_SUITE_X25519_MLKEM1024_HKDF_SHA256_XCHACHA20_POLY1305
# AES-256-GCM first: AES-NI makes it the faster one on the mesh's hosts.
DEFAULT_SUITES: Final[tuple[Suite, ...]] = (AES_SUITE, XCHACHA_SUITE)
_SUITE_ALGORITHM: Final = {
    AES_SUITE: Algorithm.AES_256_GCM,
    XCHACHA_SUITE: Algorithm.XCHACHA20_POLY1305,
}

ECDSA_P256: Final = SignatureAlgorithm.SIGNATURE_ALGORITHM_ECDSA_P256_SHA256
ECDSA_P384: Final = SignatureAlgorithm.SIGNATURE_ALGORITHM_ECDSA_P384_SHA384
ED25519: Final = SignatureAlgorithm.SIGNATURE_ALGORITHM_ED25519

SESSION_ID_SIZE: Final = 16
HANDSHAKE_NONCE_SIZE: Final = 32
MLKEM_KEY_SIZE: Final = QSC_HYBRID_KEM.mlkem.public_key_size
MLKEM_CIPHERTEXT_SIZE: Final = QSC_HYBRID_KEM.mlkem.ciphertext_size
# Bounds on peer input, so a hostile peer cannot make us hash or parse megabytes.
MAX_CHAIN: Final = 4
MAX_CERT_DER: Final = 16 * 1024
MAX_SIGNATURE: Final = 512
# Batches per session. Far beyond any real session, and it keeps the AES-GCM data volume under
# one key well inside its bounds; at the limit the subscriber simply opens a new session.
MAX_BATCHES: Final = 2**32

G2S_STREAM: Final = 1  # guardian -> subscriber, in the nonce's stream id
S2G_STREAM: Final = 2  # subscriber -> guardian (reserved)
_STREAM_ERROR: Final = "sealed stream integrity failure"


class HandshakeError(CryptoError):
    """An offer or accept is malformed, unauthentic, or names the wrong peer. Never secret."""


class SealedStreamError(DecryptionError):
    """A sealed batch did not open: tampered, replayed, reordered, skipped, or from another
    session. One type, one fixed message: which check failed would be an oracle."""

    def __init__(self) -> None:
        Exception.__init__(self, _STREAM_ERROR)


# --- signatures -----------------------------------------------------------------------------


def _sig_alg_of(key: object) -> SigAlg | None:
    """The signature algorithm a (public or private) key implies; None if unsupported."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return {"secp256r1": ECDSA_P256, "secp384r1": ECDSA_P384}.get(key.curve.name)
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return ED25519
    return None


def _sign(key: SigningKey, alg: SigAlg, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    digest = hashes.SHA256() if alg == ECDSA_P256 else hashes.SHA384()
    return key.sign(data, ec.ECDSA(digest))


def _verify(key: object, alg: SigAlg, signature: bytes, data: bytes) -> bool:
    if _sig_alg_of(key) != alg:
        return False
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            digest = hashes.SHA256() if alg == ECDSA_P256 else hashes.SHA384()
            key.verify(signature, data, ec.ECDSA(digest))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def _spki(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise HandshakeError("certificate key type is not supported for sealed sessions")
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signing_alg(key: object, who: str) -> SigAlg:
    alg = _sig_alg_of(key)
    if alg is None or not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError(f"{who} key must be ECDSA P-256, ECDSA P-384 or Ed25519")
    return alg


# --- transcript and key schedule ------------------------------------------------------------


def _offer_fields(offer: SealedSessionOffer, context: bytes) -> tuple[InfoField, ...]:
    return (
        len(offer.suites),
        *(int(s) for s in offer.suites),
        offer.x25519_public_key,
        offer.mlkem_encapsulation_key,
        offer.client_nonce,
        int(offer.signature_algorithm),
        context,
    )


def _offer_transcript(offer: SealedSessionOffer, context: bytes) -> bytes:
    return build_info("sealed-session-offer", *_offer_fields(offer, context))


def _accept_transcript(
    offer: SealedSessionOffer, context: bytes, client_spki: bytes, accept: SealedSessionAccept
) -> bytes:
    return build_info(
        "sealed-session-accept",
        *_offer_fields(offer, context),
        client_spki,
        int(accept.suite),
        accept.session_id,
        accept.x25519_ciphertext,
        accept.mlkem_ciphertext,
        accept.server_nonce,
        len(accept.certificate_chain),
        *accept.certificate_chain,
        int(accept.signature_algorithm),
    )


class _SessionKeys:
    """Both directions' keys of one session. Never printed."""

    __slots__ = ("g2s", "key_id", "s2g")

    def __init__(self, shared_secret: bytes, transcript: bytes, suite: Suite, session_id: bytes):
        th = hashlib.sha3_256(transcript).digest()

        def derive(label: str, length: int) -> bytes:
            info = build_info("sealed-session-key", label, int(suite), session_id)
            return HKDF(hashes.SHA256(), length, salt=th, info=info).derive(shared_secret)

        alg = _SUITE_ALGORITHM[suite]
        self.key_id = f"sealed/{session_id.hex()}/{derive('key-id', 4).hex()}"
        self.g2s = AeadKey(f"{self.key_id}/g2s", derive("guardian-to-subscriber", 32), alg)
        self.s2g = AeadKey(f"{self.key_id}/s2g", derive("subscriber-to-guardian", 32), alg)

    def __repr__(self) -> str:
        return f"_SessionKeys({self.key_id!r})"


# The sessions' cipher: crypto.aead's raw AEAD (nonce derived, never sent; no header on the wire).
_Cipher = RawAead


def _batch_aad(session_id: bytes, number: int, first: int, last: int, count: int) -> bytes:
    return build_info("sealed-batch", session_id, number, first, last, count)


class _NoCopy:
    """Copying or pickling a live session would duplicate its batch counter (reused nonces) or
    its secrets; refuse both."""

    __slots__ = ()

    def __copy__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be copied")

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be pickled")


# --- the sealed stream ----------------------------------------------------------------------


class _Session(_NoCopy):
    """What both ends of one sealed session hold: its keys, id and suite, and the
    guardian-to-subscriber cipher and nonces (batch n is sealed and opened under nonce n, with
    `crypto.aead.RawAead`: the nonce is derived, never sent, and no header goes on the wire)."""

    __slots__ = ("_cipher", "_keys", "_nonce", "_session_id", "_suite")

    def __init__(self, keys: _SessionKeys, session_id: bytes, suite: Suite) -> None:
        self._keys = keys
        self._session_id = session_id
        self._suite = suite
        self._cipher = _Cipher(keys.g2s)
        self._nonce = StreamNonce(G2S_STREAM, keys.g2s.algorithm.nonce_size)

    @property
    def session_id(self) -> bytes:
        return self._session_id

    @property
    def key_id(self) -> str:
        return self._keys.key_id

    @property
    def suite(self) -> Suite:
        return self._suite


class SessionSealer(_Session):
    """The guardian's end: seals EventBatches as batch 1, 2, 3, ... under the session's key.

    One writer per session: batches must be sent in the order they were sealed.
    """

    __slots__ = ("_lock", "_next", "_pid")

    def __init__(self, keys: _SessionKeys, session_id: bytes, suite: Suite) -> None:
        super().__init__(keys, session_id, suite)
        self._next = 1
        self._lock = threading.Lock()
        self._pid = os.getpid()

    @property
    def next_batch_number(self) -> int:
        return self._next

    def seal(self, batch: EventBatch) -> SealedBatch:
        if not isinstance(batch, EventBatch):
            raise TypeError("seal() takes a qsc.common.v1.EventBatch")
        # Serialize before taking a number: a failure here must not skip a batch number.
        plaintext = batch.SerializeToString()
        return self.seal_serialized(plaintext, batch.first_seq, batch.last_seq, len(batch.events))

    def seal_serialized(
        self, batch_bytes: bytes | bytearray | memoryview, first_seq: int, last_seq: int, count: int
    ) -> SealedBatch:
        """Seal an already serialized EventBatch whose clear fields the caller states.

        The guardian's hot path builds batch bytes straight from stored events (see
        `mesh.stream.batching`) and must not parse them back. The caller vouches that
        ``batch_bytes`` is an EventBatch with these ``first_seq``, ``last_seq`` and ``count``
        events: a mismatch is not caught here, and the subscriber's opener rejects the batch
        (and so ends the stream) rather than trust clear fields that disagree with the plaintext.
        """
        if not isinstance(batch_bytes, bytes | bytearray | memoryview):
            raise TypeError("batch_bytes must be bytes")
        for name, value in (("first_seq", first_seq), ("last_seq", last_seq)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
                raise ValueError(f"{name} must be an unsigned 64-bit integer")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < 2**32:
            raise ValueError("a sealed batch holds fewer than 2**32 events")
        plaintext = bytes(batch_bytes)
        with self._lock:
            if os.getpid() != self._pid:
                # A forked child shares our counter: both would seal under the same nonces.
                raise NonceExhaustedError("sealed session used after fork; open a new session")
            number = self._next
            if number > MAX_BATCHES:
                raise NonceExhaustedError("sealed session batch limit reached; open a new session")
            self._next = number + 1
        aad = _batch_aad(self._session_id, number, first_seq, last_seq, count)
        ciphertext = self._cipher.encrypt(self._nonce.for_sequence(number), plaintext, aad)
        return SealedBatch(
            batch_number=number,
            first_seq=first_seq,
            last_seq=last_seq,
            event_count=count,
            ciphertext=ciphertext,
        )

    def __repr__(self) -> str:
        return f"SessionSealer(key_id={self._keys.key_id!r}, next_batch={self._next})"


class SessionOpener(_Session):
    """The subscriber's end: opens batch 1, 2, 3, ... exactly in order.

    Any failure raises SealedStreamError and ends the stream: every later open() fails too.
    """

    __slots__ = ("_failed", "_last", "_lock", "_peer")

    def __init__(
        self, keys: _SessionKeys, session_id: bytes, suite: Suite, peer: pki.Identity
    ) -> None:
        super().__init__(keys, session_id, suite)
        self._peer = peer
        self._last = 0
        self._failed = False
        self._lock = threading.Lock()

    @property
    def peer(self) -> pki.Identity:
        """The guardian's verified identity."""
        return self._peer

    @property
    def last_batch_number(self) -> int:
        return self._last

    def open(self, sealed: SealedBatch) -> EventBatch:
        with self._lock:
            try:
                batch = self._open(sealed)
            except Exception:
                self._failed = True
                raise SealedStreamError() from None
            self._last += 1
            return batch

    def _open(self, sealed: SealedBatch) -> EventBatch:
        number = self._last + 1
        if (
            self._failed
            or not isinstance(sealed, SealedBatch)
            or sealed.batch_number != number
            or number > MAX_BATCHES
            or len(sealed.ciphertext) < TAG_SIZE
        ):
            raise SealedStreamError()
        aad = _batch_aad(
            self._session_id, number, sealed.first_seq, sealed.last_seq, sealed.event_count
        )
        try:
            plaintext = self._cipher.decrypt(
                self._nonce.for_sequence(number), sealed.ciphertext, aad
            )
            batch = EventBatch.FromString(plaintext)
        except (DecryptionError, DecodeError, ValueError, TypeError):
            raise SealedStreamError() from None
        # Authentic, but a guardian bug must not let the clear fields (which subscribers use
        # for cursors) disagree with what was sealed.
        if (
            batch.first_seq != sealed.first_seq
            or batch.last_seq != sealed.last_seq
            or len(batch.events) != sealed.event_count
        ):
            raise SealedStreamError()
        return batch

    def __repr__(self) -> str:
        return (
            f"SessionOpener(peer={self._peer.spiffe_id!r}, key_id={self._keys.key_id!r}, "
            f"last_batch={self._last})"
        )


# --- handshake ------------------------------------------------------------------------------


def _suite_name(suite: int) -> str:
    try:
        return SealingSuite.Name(cast(Suite, suite))
    except ValueError:
        return str(suite)


def _sig_alg_name(alg: int) -> str:
    try:
        return SignatureAlgorithm.Name(cast(SigAlg, alg))
    except ValueError:
        return str(alg)


def _check_len(value: bytes, size: int, what: str) -> None:
    if len(value) != size:
        raise HandshakeError(f"{what} must be {size} bytes, got {len(value)}")


def _check_suites(suites: Iterable[Suite], what: str) -> tuple[Suite, ...]:
    result = tuple(suites)
    if not result:
        raise ValueError(f"{what} must name at least one sealing suite")
    for s in result:
        if s not in _SUITE_ALGORITHM:
            raise ValueError(f"{what}: unknown sealing suite {_suite_name(s)}")
    if len(set(result)) != len(result):
        raise ValueError(f"{what} must list distinct suites")
    return result


def _check_offered_suites(suites: Sequence[int]) -> None:
    """HandshakeError unless the offer lists known suites, each once (see the module doc).

    No QSC subscriber sends anything else: its own `_check_suites` refuses the same lists.
    """
    known = len(_SUITE_ALGORITHM)
    # The count first: it bounds the work below before we look at any element.
    if not suites:
        raise HandshakeError("offer lists no sealing suite")
    if len(suites) > known:
        raise HandshakeError(
            f"offer lists {len(suites)} sealing suites; there are only {known} distinct suites"
        )
    seen: set[int] = set()
    for s in suites:
        if s not in _SUITE_ALGORITHM:
            raise HandshakeError(f"offer lists unknown sealing suite {_suite_name(s)}")
        if s in seen:
            raise HandshakeError(f"offer lists sealing suite {_suite_name(s)} more than once")
        seen.add(s)


class SubscriberHandshake(_NoCopy):
    """The subscriber's half-open handshake: holds the ephemeral KEM key until finish()."""

    __slots__ = ("_context", "_kem_key", "_offer", "_spki")

    def __init__(
        self,
        kem_key: HybridPrivateKey,
        offer: SealedSessionOffer,
        spki: bytes,
        context: bytes,
    ) -> None:
        # Use start().
        self._kem_key: HybridPrivateKey | None = kem_key
        self._offer = offer
        self._spki = spki
        self._context = context

    @classmethod
    def start(
        cls,
        identity_key: SigningKey,
        *,
        suites: Sequence[Suite] = DEFAULT_SUITES,
        context: bytes = b"",
    ) -> tuple[SubscriberHandshake, SealedSessionOffer]:
        """A fresh ephemeral hybrid key and client nonce, signed with the subscriber's TLS key.

        `context`: bytes the guardian will compute identically from the request (see module doc).
        """
        alg = _signing_alg(identity_key, "identity")
        offered = _check_suites(suites, "suites")
        if not isinstance(context, bytes):
            raise TypeError("context must be bytes")
        kem_key = QSC_HYBRID_KEM.generate()
        pk = kem_key.public_key.public_bytes()
        offer = SealedSessionOffer(
            suites=offered,
            x25519_public_key=pk[MLKEM_KEY_SIZE:],
            mlkem_encapsulation_key=pk[:MLKEM_KEY_SIZE],
            client_nonce=secrets.token_bytes(HANDSHAKE_NONCE_SIZE),
            signature_algorithm=alg,
        )
        offer.signature = _sign(identity_key, alg, _offer_transcript(offer, context))
        spki = _spki(identity_key.public_key())
        sent = SealedSessionOffer()
        sent.CopyFrom(offer)  # the caller may mutate what it sends; we keep our own copy
        return cls(kem_key, offer, spki, context), sent

    def finish(
        self,
        accept: SealedSessionAccept,
        *,
        ca_cert: x509.Certificate,
        expected_role: str,
        expected_host: str | None,
        trust_domain: str | None = None,
        now: dt.datetime | None = None,
    ) -> SessionOpener:
        """Verify the guardian (chain to `ca_cert`, role, host, signature over the whole
        transcript), decapsulate and derive the session keys. Single use: the ephemeral key is
        dropped whatever the outcome. HandshakeError on any failure."""
        try:
            pki.validate_role(expected_role)
            host = pki.normalize_host(expected_host) if expected_host is not None else None
        except PkiError as exc:
            raise ValueError(str(exc)) from None
        kem_key, self._kem_key = self._kem_key, None
        if kem_key is None:
            raise HandshakeError("this handshake was already finished; start a new one")
        if not isinstance(accept, SealedSessionAccept):
            raise HandshakeError("expected a SealedSessionAccept")

        suite = accept.suite
        if suite not in self._offer.suites or suite not in _SUITE_ALGORITHM:
            raise HandshakeError(
                f"guardian chose suite {_suite_name(suite)}, which was not offered"
            )
        _check_len(accept.session_id, SESSION_ID_SIZE, "accept session_id")
        _check_len(accept.x25519_ciphertext, X25519_SIZE, "accept x25519_ciphertext")
        _check_len(accept.mlkem_ciphertext, MLKEM_CIPHERTEXT_SIZE, "accept mlkem_ciphertext")
        _check_len(accept.server_nonce, HANDSHAKE_NONCE_SIZE, "accept server_nonce")
        if not 1 <= len(accept.signature) <= MAX_SIGNATURE:
            raise HandshakeError("accept signature is missing or oversized")
        chain = accept.certificate_chain
        if not chain:
            raise HandshakeError("accept carries no guardian certificate")
        if len(chain) > MAX_CHAIN or any(len(der) > MAX_CERT_DER for der in chain):
            raise HandshakeError("accept certificate chain is oversized")
        try:
            leaf = x509.load_der_x509_certificate(chain[0])
        except ValueError:
            raise HandshakeError("guardian leaf certificate is not valid DER") from None

        try:
            identity = pki.verify_leaf(leaf, ca_cert, now=now)
        except CryptoError:
            raise HandshakeError(
                "guardian certificate does not verify against the deployment CA "
                "(another CA, expired, or not a QSC leaf)"
            ) from None
        if trust_domain is not None and identity.trust_domain != trust_domain:
            raise HandshakeError(
                f"guardian certificate is for trust domain {identity.trust_domain!r}, "
                f"expected {trust_domain!r}"
            )
        if identity.role != expected_role:
            raise HandshakeError(
                f"guardian certificate is for role {identity.role!r}, expected {expected_role!r}"
            )
        if host is not None and identity.host != host:
            raise HandshakeError(
                f"guardian certificate is for host {identity.host!r}, expected {host!r}"
            )

        transcript = _accept_transcript(self._offer, self._context, self._spki, accept)
        if not _verify(leaf.public_key(), accept.signature_algorithm, accept.signature, transcript):
            raise HandshakeError(f"guardian's handshake signature does not verify ({identity})")
        try:
            ss = kem_key.decapsulate(accept.mlkem_ciphertext + accept.x25519_ciphertext)
        except KemError:
            raise HandshakeError("guardian's KEM ciphertext is invalid") from None
        keys = _SessionKeys(ss, transcript, suite, accept.session_id)
        return SessionOpener(keys, accept.session_id, suite, identity)

    def __repr__(self) -> str:
        state = "finished" if self._kem_key is None else "pending"
        return f"SubscriberHandshake({state})"


def accept_offer(
    offer: SealedSessionOffer,
    *,
    client_cert: x509.Certificate,
    guardian_key: SigningKey,
    guardian_chain: Sequence[x509.Certificate],
    suite_preference: Sequence[Suite] = DEFAULT_SUITES,
    context: bytes = b"",
) -> tuple[SealedSessionAccept, SessionSealer]:
    """The guardian's side: verify the offer against the subscriber's TLS client certificate,
    pick a suite (ours, in our order), encapsulate, sign the transcript, derive the keys.

    HandshakeError for a bad offer; ValueError for bad local arguments.
    """
    alg = _signing_alg(guardian_key, "guardian")
    preference = _check_suites(suite_preference, "suite_preference")
    if not guardian_chain:
        raise ValueError("guardian_chain must hold at least the guardian's leaf certificate")
    leaf_spki = _spki(guardian_chain[0].public_key())
    if leaf_spki != _spki(guardian_key.public_key()):
        raise ValueError("guardian_key does not belong to guardian_chain[0]")
    if not isinstance(context, bytes):
        raise TypeError("context must be bytes")
    if not isinstance(offer, SealedSessionOffer):
        raise HandshakeError("expected a SealedSessionOffer")

    _check_offered_suites(offer.suites)
    _check_len(offer.x25519_public_key, X25519_SIZE, "offer x25519_public_key")
    _check_len(offer.mlkem_encapsulation_key, MLKEM_KEY_SIZE, "offer mlkem_encapsulation_key")
    _check_len(offer.client_nonce, HANDSHAKE_NONCE_SIZE, "offer client_nonce")
    if not 1 <= len(offer.signature) <= MAX_SIGNATURE:
        raise HandshakeError("offer signature is missing or oversized")
    client_key = client_cert.public_key()
    client_spki = _spki(client_key)
    if offer.signature_algorithm != _sig_alg_of(client_key):
        raise HandshakeError(
            f"offer signature algorithm {_sig_alg_name(offer.signature_algorithm)} does not "
            "match the client certificate's key type"
        )
    if not _verify(
        client_key,
        offer.signature_algorithm,
        offer.signature,
        _offer_transcript(offer, context),
    ):
        # Also what a proxy rewriting the request (context) or the offer looks like.
        raise HandshakeError("offer signature does not verify against the client certificate")

    suite = next((s for s in preference if s in offer.suites), None)
    if suite is None:
        offered = ", ".join(_suite_name(s) for s in offer.suites)
        raise HandshakeError(f"no common sealing suite (offered: {offered})")
    try:
        enc = QSC_HYBRID_KEM.encapsulate(offer.mlkem_encapsulation_key + offer.x25519_public_key)
    except KemError:
        raise HandshakeError("offer's hybrid public key is invalid") from None

    accept = SealedSessionAccept(
        suite=suite,
        session_id=secrets.token_bytes(SESSION_ID_SIZE),
        x25519_ciphertext=enc.ciphertext[MLKEM_CIPHERTEXT_SIZE:],
        mlkem_ciphertext=enc.ciphertext[:MLKEM_CIPHERTEXT_SIZE],
        server_nonce=secrets.token_bytes(HANDSHAKE_NONCE_SIZE),
        certificate_chain=[c.public_bytes(serialization.Encoding.DER) for c in guardian_chain],
        signature_algorithm=alg,
    )
    transcript = _accept_transcript(offer, context, client_spki, accept)
    accept.signature = _sign(guardian_key, alg, transcript)
    keys = _SessionKeys(enc.shared_secret, transcript, suite, accept.session_id)
    return accept, SessionSealer(keys, accept.session_id, suite)
