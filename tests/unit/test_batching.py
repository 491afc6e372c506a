"""The pure parts of Subscribe: batch encoding, filters, limits, start cursors, sealing context."""

from __future__ import annotations

from datetime import timedelta

import pytest
from google.protobuf import duration_pb2

from mesh.errors import ConfigError, InvalidArgumentError, OutOfRangeError
from mesh.stream import batching
from mesh.stream.batching import (
    MESSAGE_MARGIN,
    CursorAheadError,
    CursorTooOldError,
    StreamSettings,
    batch_limits,
    compile_filter,
    encode_batch,
    max_event_bytes,
    select,
    start_cursor,
    subscribe_context,
)
from mesh.stream.outbox_segment import seq_field
from qsc.common.v1 import classification_pb2 as cls
from qsc.common.v1 import event_pb2, file_details_pb2, pipeline_details_pb2, process_details_pb2
from qsc.guardian.v1 import guardian_service_pb2 as pb
from qsc.guardian.v1.sealed_session_pb2 import SealedSessionOffer


def _stored(event: event_pb2.Event, seq: int) -> bytes:
    """An event as the outbox stores it: serialized without seq, then the seq field."""
    copy = event_pb2.Event()
    copy.CopyFrom(event)
    copy.seq = 0
    return copy.SerializeToString() + seq_field(seq)


def _event(**fields: object) -> event_pb2.Event:
    fields.setdefault("summary", "x")
    return event_pb2.Event(id="e", **fields)  # type: ignore[arg-type]


# --- encoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("summary_len", [0, 10, 100, 200, 20_000, 3_000_000])
def test_encode_batch_frames_stored_events_as_an_event_batch(summary_len: int) -> None:
    events = [_event(summary="s" * summary_len, severity=cls.SEVERITY_LOW)] * 3
    first = 2**40
    payloads = [_stored(e, seq) for seq, e in enumerate(events, start=first)]
    parsed = event_pb2.EventBatch.FromString(encode_batch(payloads, first, first + 2))
    assert [e.seq for e in parsed.events] == [first, first + 1, first + 2]
    assert (parsed.first_seq, parsed.last_seq) == (first, first + 2)
    assert parsed.events[0].summary == "s" * summary_len
    # With canonically serialized events the bytes are exactly protobuf's own.
    canonical = [e.SerializeToString() for e in parsed.events]
    assert encode_batch(canonical, first, first + 2) == parsed.SerializeToString()


def test_encode_batch_without_events_covers_a_range() -> None:
    data = encode_batch([], 5, 9)
    assert data == event_pb2.EventBatch(first_seq=5, last_seq=9).SerializeToString()
    assert encode_batch([], 0, 0) == b""
    with pytest.raises(ValueError, match="first_seq"):
        encode_batch([], 10, 5)


def test_encoded_size_counts_the_framing() -> None:
    for size in (0, 127, 128, 16_383, 16_384):
        assert batching.encoded_size(size) == len(encode_batch([b"x" * size], 0, 0))


# --- filters --------------------------------------------------------------------------------


def _request(**filter_fields: object) -> pb.SubscribeRequest:
    return pb.SubscribeRequest(filter=pb.EventFilter(**filter_fields))  # type: ignore[arg-type]


GAP = _event(gap=pipeline_details_pb2.Gap(first_seq=1, last_seq=2, count=2))
HEALTH = _event(sensor_health=pipeline_details_pb2.SensorHealth(sensor="s"))
EXEC = _event(
    category=cls.CATEGORY_PROCESS,
    severity=cls.SEVERITY_HIGH,
    rule=cls.RuleRef(id="alpha.exec"),
    process_exec=process_details_pb2.ProcessExec(filename="/bin/sh"),
)
READ = _event(
    category=cls.CATEGORY_FILE,
    severity=cls.SEVERITY_LOW,
    rule=cls.RuleRef(id="alpha.read"),
    file_access=file_details_pb2.FileAccess(path="/etc/shadow"),
)
BARE = _event(category=cls.CATEGORY_FILE, severity=cls.SEVERITY_CRITICAL)


def test_no_filter_or_an_empty_one_compiles_to_none() -> None:
    assert compile_filter(pb.SubscribeRequest()) is None
    assert compile_filter(_request()) is None
    payloads = [b"not even an event"]
    assert select(payloads, None) is payloads  # nothing parsed


@pytest.mark.parametrize(
    ("criteria", "passing"),
    [
        ({"categories": [cls.CATEGORY_PROCESS]}, {"EXEC"}),
        ({"categories": [cls.CATEGORY_FILE, cls.CATEGORY_PROCESS]}, {"EXEC", "READ", "BARE"}),
        ({"min_severity": cls.SEVERITY_HIGH}, {"EXEC", "BARE"}),
        ({"rule_ids": ["alpha.read"]}, {"READ"}),
        ({"detail_kinds": [event_pb2.DETAIL_KIND_FILE_ACCESS]}, {"READ"}),
        ({"categories": [cls.CATEGORY_FILE], "min_severity": cls.SEVERITY_MEDIUM}, {"BARE"}),
        ({"rule_ids": ["nothing"]}, set()),
    ],
)
def test_filters_match_every_criterion_and_always_pass_gaps_and_health(
    criteria: dict[str, object], passing: set[str]
) -> None:
    matcher = compile_filter(_request(**criteria))
    assert matcher is not None
    named = {"GAP": GAP, "HEALTH": HEALTH, "EXEC": EXEC, "READ": READ, "BARE": BARE}
    got = {name for name, event in named.items() if matcher.matches(event)}
    assert got == passing | {"GAP", "HEALTH"}
    payloads = [_stored(e, i) for i, e in enumerate(named.values(), start=1)]
    selected = select(payloads, matcher)
    assert len(selected) == len(passing) + 2
    assert all(p in payloads for p in selected)  # the stored bytes, not re-serialized


def test_oversized_filters_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="rule_ids"):
        compile_filter(_request(rule_ids=[str(i) for i in range(batching.MAX_FILTER_ITEMS + 1)]))


# --- limits ---------------------------------------------------------------------------------


def test_hints_only_lower_the_configured_limits() -> None:
    settings = StreamSettings(
        max_batch_events=512,
        max_batch_delay=timedelta(milliseconds=50),
        heartbeat_interval=timedelta(seconds=5),
    )
    default = batch_limits(pb.SubscribeRequest(), settings)
    assert (default.max_events, default.max_delay, default.heartbeat) == (512, 0.05, 5.0)
    lower = batch_limits(
        pb.SubscribeRequest(
            max_batch_events=10,
            max_batch_delay=duration_pb2.Duration(nanos=5_000_000),
            heartbeat_interval=duration_pb2.Duration(nanos=1_000_000),
        ),
        settings,
    )
    assert (lower.max_events, lower.max_delay) == (10, 0.005)
    assert lower.heartbeat == batching.MIN_HEARTBEAT.total_seconds()  # clamped, no busy loop
    higher = batch_limits(
        pb.SubscribeRequest(
            max_batch_events=100_000,
            max_batch_delay=duration_pb2.Duration(seconds=60),
            heartbeat_interval=duration_pb2.Duration(seconds=600),
        ),
        settings,
    )
    assert (higher.max_events, higher.max_delay, higher.heartbeat) == (512, 0.05, 5.0)
    zero_delay = pb.SubscribeRequest(max_batch_delay=duration_pb2.Duration())
    assert batch_limits(zero_delay, settings).max_delay == 0
    with pytest.raises(InvalidArgumentError, match="negative"):
        batch_limits(
            pb.SubscribeRequest(max_batch_delay=duration_pb2.Duration(seconds=-1)), settings
        )


@pytest.mark.parametrize("message_bytes", [8 * 1024, 64 * 1024, 4 * 1024 * 1024])
def test_a_full_batch_always_fits_the_message_limit(message_bytes: int) -> None:
    limits = batch_limits(pb.SubscribeRequest(), StreamSettings(max_message_bytes=message_bytes))
    assert limits.max_batch_bytes == message_bytes - MESSAGE_MARGIN
    # Worst case the outbox returns: max_events records adding up to max_payload_bytes.
    size = max(1, limits.max_payload_bytes // limits.max_events)
    payloads = [b"x" * size] * limits.max_events
    assert len(encode_batch(payloads, 2**63, 2**64 - 1)) <= limits.max_batch_bytes
    largest = max_event_bytes(StreamSettings(max_message_bytes=message_bytes))
    assert len(encode_batch([b"x" * largest], 2**63, 2**64 - 1)) <= limits.max_batch_bytes


def test_stream_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="unsealed_roles"):
        StreamSettings(unsealed_roles=frozenset({"root"}))
    with pytest.raises(ConfigError, match="max_batch_events"):
        StreamSettings(max_batch_events=0)
    with pytest.raises(ConfigError, match="heartbeat_interval"):
        StreamSettings(heartbeat_interval=timedelta(0))
    with pytest.raises(ConfigError, match="max_message_bytes"):
        StreamSettings(max_message_bytes=1024)


# --- start cursor ---------------------------------------------------------------------------


def test_start_cursor() -> None:
    req = pb.SubscribeRequest
    assert start_cursor(req(), 1, 0) == 0  # empty outbox
    assert start_cursor(req(start_after_seq=7), 1, 10) == 7
    assert start_cursor(req(start_after_seq=10), 1, 10) == 10
    assert start_cursor(req(start_at_latest=True, start_after_seq=3), 5, 10) == 10
    assert start_cursor(req(start_after_seq=4), 5, 10) == 4  # oldest - 1 is still gapless
    assert start_cursor(req(start_after_seq=10), 11, 10) == 10  # everything aged out
    assert start_cursor(req(), 5, 10) == 4  # 0 = everything retained, even after ageing


def test_a_cursor_older_than_retention_names_the_oldest_available_seq() -> None:
    with pytest.raises(CursorTooOldError) as caught:
        start_cursor(pb.SubscribeRequest(start_after_seq=3), 5, 10)
    assert isinstance(caught.value, OutOfRangeError)
    assert "oldest available seq 5;" in str(caught.value)
    assert caught.value.oldest_available_seq == 5


def test_a_cursor_ahead_of_the_guardian_names_the_latest_seq() -> None:
    with pytest.raises(CursorAheadError) as caught:
        start_cursor(pb.SubscribeRequest(start_after_seq=11), 1, 10)
    assert isinstance(caught.value, OutOfRangeError)
    assert "latest seq 10 " in str(caught.value)


# --- sealing context ------------------------------------------------------------------------


def test_subscribe_context_covers_everything_but_the_offer() -> None:
    request = _request(categories=[cls.CATEGORY_FILE], rule_ids=["a", "b"])
    request.start_after_seq = 42
    request.max_batch_events = 9
    before = subscribe_context(request)
    request.sealed_session.CopyFrom(SealedSessionOffer(client_nonce=b"n" * 32))
    assert subscribe_context(request) == before  # the offer is not part of it
    assert request.HasField("sealed_session")  # and the request is left alone
    parsed = pb.SubscribeRequest.FromString(before)
    assert (parsed.start_after_seq, list(parsed.filter.rule_ids)) == (42, ["a", "b"])
    request.start_after_seq = 41
    assert subscribe_context(request) != before
    assert subscribe_context(pb.SubscribeRequest()) == b""
