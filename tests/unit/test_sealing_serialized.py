"""SessionSealer.seal_serialized: sealing EventBatch bytes the guardian built without parsing."""

from __future__ import annotations

import pytest

from crypto import pki
from mesh.stream.batching import encode_batch
from mesh.stream.outbox_segment import seq_field
from mesh.stream.sealing import (
    SealedStreamError,
    SessionOpener,
    SessionSealer,
    SubscriberHandshake,
    accept_offer,
)
from qsc.common.v1.event_pb2 import Event, EventBatch

TD = "example.org"


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.create_ca(TD)


@pytest.fixture
def session(ca: pki.CertificateAuthority) -> tuple[SessionSealer, SessionOpener]:
    subscriber = pki.issue_leaf(ca, "cortex", "c1.example.org")
    guardian = pki.issue_leaf(ca, "alpha", "web1.example.org")
    handshake, offer = SubscriberHandshake.start(subscriber.key, context=b"ctx")
    accept, sealer = accept_offer(
        offer,
        client_cert=subscriber.cert,
        guardian_key=guardian.key,
        guardian_chain=[guardian.cert],
        context=b"ctx",
    )
    opener = handshake.finish(
        accept, ca_cert=ca.cert, expected_role="alpha", expected_host="web1.example.org"
    )
    return sealer, opener


def _stored(seq: int) -> bytes:
    return Event(id=f"id-{seq}", summary="s" * seq).SerializeToString() + seq_field(seq)


def test_sealed_bytes_open_to_the_batch(session: tuple[SessionSealer, SessionOpener]) -> None:
    sealer, opener = session
    data = encode_batch([_stored(s) for s in range(10, 13)], 10, 12)
    sealed = sealer.seal_serialized(data, 10, 12, 3)
    assert (sealed.batch_number, sealed.first_seq, sealed.last_seq, sealed.event_count) == (
        1,
        10,
        12,
        3,
    )
    batch = opener.open(sealed)
    assert [e.seq for e in batch.events] == [10, 11, 12]
    assert batch.events[2].summary == "s" * 12


def test_it_shares_the_numbering_with_seal(session: tuple[SessionSealer, SessionOpener]) -> None:
    sealer, opener = session
    first = sealer.seal(EventBatch(events=[Event(seq=1)], first_seq=1, last_seq=1))
    second = sealer.seal_serialized(encode_batch([_stored(2)], 2, 5), 2, 5, 1)
    assert (first.batch_number, second.batch_number) == (1, 2)
    assert opener.open(first).last_seq == 1
    assert opener.open(second).last_seq == 5  # a batch may cover filtered-out seqs


def test_an_empty_range_batch_seals(session: tuple[SessionSealer, SessionOpener]) -> None:
    sealer, opener = session
    batch = opener.open(sealer.seal_serialized(encode_batch([], 1, 7), 1, 7, 0))
    assert (len(batch.events), batch.first_seq, batch.last_seq) == (0, 1, 7)


@pytest.mark.parametrize(
    ("first", "last", "count"), [(11, 12, 3), (10, 13, 3), (10, 12, 2), (10, 12, 4)]
)
def test_clear_fields_that_disagree_with_the_bytes_fail_to_open(
    session: tuple[SessionSealer, SessionOpener], first: int, last: int, count: int
) -> None:
    sealer, opener = session
    data = encode_batch([_stored(s) for s in range(10, 13)], 10, 12)
    with pytest.raises(SealedStreamError):
        opener.open(sealer.seal_serialized(data, first, last, count))


def test_bad_arguments_do_not_use_up_a_batch_number(
    session: tuple[SessionSealer, SessionOpener],
) -> None:
    sealer, opener = session
    with pytest.raises(TypeError):
        sealer.seal_serialized("text", 1, 1, 1)  # type: ignore[arg-type]
    for first, last, count in [(-1, 1, 1), (1, 2**64, 1), (1, 1, 2**32), (1, 1, -1)]:
        with pytest.raises(ValueError, match=r"integer|events"):
            sealer.seal_serialized(b"", first, last, count)
    with pytest.raises(ValueError, match="integer"):
        sealer.seal_serialized(b"", True, 1, 0)
    assert sealer.next_batch_number == 1
    data = encode_batch([_stored(1)], 1, 1)
    assert opener.open(sealer.seal_serialized(memoryview(data), 1, 1, 1)).events[0].seq == 1
