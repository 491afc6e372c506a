"""The subscriber library without a network: scripted connections drive its reconnect loop.

What goes over real gRPC (handshake, a real guardian, tampering in flight) is in
tests/e2e/test_guardian_stream.py; here each connection is a script of responses and errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from crypto.pki import init_ca, issue_leaf, load_certificate, write_leaf
from mesh.channel import ChannelConfig
from mesh.config import TlsFiles
from mesh.errors import ConfigError
from mesh.stream import sealing, subscriber
from mesh.stream.batching import CursorAheadError, CursorTooOldError
from mesh.stream.subscriber import (
    CursorFileError,
    CursorOutOfRangeError,
    CursorStore,
    ForeignCursorError,
    GuardianSubscriber,
    GuardianUnavailableError,
    ReconnectPolicy,
    SealedBatchRejectedError,
    StoredCursor,
    StreamProtocolError,
    SubscriberConfig,
    SubscriptionRefusedError,
)
from qsc.common.v1 import event_pb2
from qsc.guardian.v1 import guardian_service_pb2 as pb

TD = "unit.test"
GUARDIAN = f"spiffe://{TD}/alpha/web-01"
OTHER_GUARDIAN = f"spiffe://{TD}/alpha/web-02"
FAST = ReconnectPolicy(
    initial_backoff=timedelta(milliseconds=1), max_backoff=timedelta(milliseconds=4)
)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    base = tmp_path_factory.mktemp("pki")
    ca = init_ca(base, TD)
    write_leaf(issue_leaf(ca, "cortex", "c1"), base, ca.cert)
    write_leaf(issue_leaf(ca, "alpha", "web-01"), base, ca.cert)
    return TlsFiles.in_dir(base, "cortex-c1")


# --- scripted connections -------------------------------------------------------------------


Script = Sequence[pb.SubscribeResponse | BaseException]


class FakeConnection:
    def __init__(self, script: Script, guardian: str, opener: Any = None) -> None:
        self.script = list(script)
        self.guardian = guardian
        self.opener = opener
        self.closed = False

    async def read(self) -> pb.SubscribeResponse | None:
        await asyncio.sleep(0)
        if not self.script:
            return None
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self) -> None:
        self.closed = True


class Scripted:
    """Replaces GuardianSubscriber._connect: each dial takes the next connection (or error)."""

    def __init__(self, sub: GuardianSubscriber, dials: list[FakeConnection | BaseException]):
        self.sub, self.dials = sub, dials
        self.requests: list[pb.SubscribeRequest] = []
        self.connections: list[FakeConnection] = []
        sub._connect = self.connect  # type: ignore[method-assign,assignment]

    async def connect(self) -> FakeConnection:
        self.requests.append(self.sub._request())
        if not self.dials:
            raise AssertionError("dialled more often than scripted")
        item = self.dials.pop(0)
        if isinstance(item, BaseException):
            raise item
        await self.sub._adopt_guardian(item.guardian)
        self.sub.stats.connects += 1
        self.connections.append(item)
        return item

    @property
    def starts(self) -> list[int]:
        return [r.start_after_seq for r in self.requests]


def conn(*script: pb.SubscribeResponse | BaseException, guardian: str = GUARDIAN) -> FakeConnection:
    return FakeConnection(script, guardian)


def batch(first: int, last: int, seqs: Sequence[int] | None = None) -> pb.SubscribeResponse:
    numbers = range(first, last + 1) if seqs is None else seqs
    events = [event_pb2.Event(seq=s, summary=f"e{s}") for s in numbers]
    return pb.SubscribeResponse(
        batch=event_pb2.EventBatch(events=events, first_seq=first, last_seq=last)
    )


def progress(through: int, latest: int | None = None) -> pb.SubscribeResponse:
    return pb.SubscribeResponse(
        progress=event_pb2.Progress(
            delivered_through_seq=through, latest_seq=latest or through, oldest_seq=1
        )
    )


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


def make(tls: TlsFiles, store: CursorStore | None = None, **kw: Any) -> GuardianSubscriber:
    kw.setdefault("sealed", False)
    kw.setdefault("reconnect", FAST)
    config = SubscriberConfig(channel=ChannelConfig("127.0.0.1:1", tls), **kw)
    return GuardianSubscriber(config, cursor_store=store)


async def collect_events(sub: GuardianSubscriber, until: int) -> list[int]:
    seen: list[int] = []
    async for event in sub.events():
        seen.append(event.seq)
        if event.seq >= until:
            break
    return seen


# --- dedup and resume -----------------------------------------------------------------------


def test_each_seq_delivered_once_across_reconnects_and_resends(tls: TlsFiles) -> None:
    sub = make(tls)
    script = Scripted(
        sub,
        [
            conn(batch(1, 3), batch(4, 6), rpc_error(grpc.StatusCode.UNAVAILABLE, "reset")),
            conn(batch(4, 6), batch(5, 8)),  # a resend, an overlap, then a clean end
            rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused"),
            conn(batch(7, 10)),
        ],
    )
    seen = asyncio.run(collect_events(sub, 10))
    assert seen == list(range(1, 11))
    assert script.starts == [0, 6, 8, 8]
    assert sub.stats.duplicate_events == 3 + 2 + 2
    assert sub.stats.reconnects == 3
    assert sub.cursor == 10
    assert all(c.closed for c in script.connections)


def test_batches_cursor_covers_the_filtered_range_and_empty_advances(tls: TlsFiles) -> None:
    sub = make(tls, start_after_seq=0)
    Scripted(sub, [conn(batch(1, 7, [2, 5]), batch(8, 9, []), batch(10, 12, [12]))])

    async def run() -> list[tuple[list[int], int, int]]:
        got = []
        async for b in sub.batches():
            got.append(([e.seq for e in b.events], b.first_seq, b.last_seq))
            if b.last_seq >= 12:
                break
        return got

    # The empty batch is not handed over, but it moves the cursor (and the next first_seq).
    assert asyncio.run(run()) == [([2, 5], 1, 7), ([12], 10, 12)]
    assert sub.cursor == 12


def test_unsealed_progress_moves_the_cursor(tls: TlsFiles) -> None:
    sub = make(tls, start_after_seq=10)
    script = Scripted(sub, [conn(progress(15)), conn(batch(16, 16))])
    assert asyncio.run(collect_events(sub, 16)) == [16]
    assert script.starts == [10, 15]


def test_sealed_stream_ignores_progress_for_the_cursor(tls: TlsFiles) -> None:
    sub = make(tls, start_after_seq=10)
    dummy = object()  # an opener is only consulted for sealed batches
    script = Scripted(sub, [FakeConnection([progress(15, 20)], GUARDIAN, dummy), conn()])
    script.dials.append(rpc_error(grpc.StatusCode.PERMISSION_DENIED, "stop here"))

    with pytest.raises(SubscriptionRefusedError):
        asyncio.run(collect_events(sub, 99))
    assert script.starts[:2] == [10, 10]  # the unauthenticated progress moved nothing
    assert sub.latest_seq == 20


def test_events_cursor_follows_each_event_and_commit_saves_it(
    tls: TlsFiles, tmp_path: Path
) -> None:
    store = CursorStore(tmp_path / "cursor.json")
    sub = make(tls, store)
    Scripted(sub, [conn(batch(1, 3), batch(4, 6))])

    async def run() -> None:
        events = sub.events()
        async for event in events:
            if event.seq == 5:  # stop mid-batch: 6 was never handed over
                break
        await events.aclose()
        await sub.commit()

    asyncio.run(run())
    assert sub.cursor == 5
    assert store.load() == StoredCursor(GUARDIAN, 5)


def test_batches_are_committed_when_the_consumer_comes_back(tls: TlsFiles, tmp_path: Path) -> None:
    store = CursorStore(tmp_path / "cursor.json")
    sub = make(tls, store)
    Scripted(sub, [conn(batch(1, 3), batch(4, 6))])

    async def run() -> list[int | None]:
        saved = []
        async for b in sub.batches():
            stored = store.load()
            saved.append(None if stored is None else stored.seq)
            if b.last_seq == 6:
                break
        return saved

    # While the consumer holds a batch the file still says the previous one (a crash redelivers).
    assert asyncio.run(run()) == [None, 3]


def test_resume_from_a_stored_cursor(tls: TlsFiles, tmp_path: Path) -> None:
    store = CursorStore(tmp_path / "cursor.json")
    store.save(StoredCursor(GUARDIAN, 42))
    sub = make(tls, store, start_after_seq=7)
    script = Scripted(sub, [conn(batch(43, 44))])
    assert asyncio.run(collect_events(sub, 44)) == [43, 44]
    assert script.starts == [42]

    explicit = make(tls, store, start_after_seq=7, prefer_stored_cursor=False)
    script = Scripted(explicit, [conn(batch(8, 8))])
    assert asyncio.run(collect_events(explicit, 8)) == [8]
    assert script.starts == [7]


# --- errors ---------------------------------------------------------------------------------


def test_cursor_older_than_retention_is_typed(tls: TlsFiles) -> None:
    sub = make(tls, start_after_seq=5)
    details = str(CursorTooOldError(5, 40))  # the guardian's own wording
    Scripted(sub, [rpc_error(grpc.StatusCode.OUT_OF_RANGE, details)])
    with pytest.raises(CursorOutOfRangeError) as info:
        asyncio.run(collect_events(sub, 99))
    err = info.value
    assert (err.oldest_available_seq, err.ahead) == (40, False)
    assert (err.lost_first, err.lost_last, err.lost_count) == (6, 39, 34)
    assert "events 6 to 39 are no longer available" in str(err)


def test_cursor_ahead_of_the_guardian_is_typed(tls: TlsFiles) -> None:
    sub = make(tls, start_after_seq=500)
    details = str(CursorAheadError(500, 20))
    Scripted(sub, [rpc_error(grpc.StatusCode.OUT_OF_RANGE, details)])
    with pytest.raises(CursorOutOfRangeError) as info:
        asyncio.run(collect_events(sub, 99))
    assert info.value.ahead
    assert info.value.lost_count == 0
    assert "ahead" in str(info.value)


def test_cursor_zero_starts_at_the_oldest_retained(tls: TlsFiles) -> None:
    sub = make(tls)
    details = str(CursorTooOldError(0, 40))
    script = Scripted(sub, [rpc_error(grpc.StatusCode.OUT_OF_RANGE, details), conn(batch(40, 41))])
    assert asyncio.run(collect_events(sub, 41)) == [40, 41]
    assert script.starts == [0, 39]


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
    ],
)
def test_refusals_are_not_retried(tls: TlsFiles, code: grpc.StatusCode) -> None:
    sub = make(tls)
    script = Scripted(sub, [rpc_error(code, "no")])
    with pytest.raises(SubscriptionRefusedError, match=code.name):
        asyncio.run(collect_events(sub, 99))
    assert len(script.requests) == 1


def test_gives_up_after_the_configured_time(tls: TlsFiles) -> None:
    policy = ReconnectPolicy(
        initial_backoff=timedelta(milliseconds=5),
        max_backoff=timedelta(milliseconds=10),
        give_up_after=timedelta(milliseconds=100),
    )
    sub = make(tls, reconnect=policy)
    Scripted(sub, [rpc_error(grpc.StatusCode.UNAVAILABLE, "refused")] * 200)
    with pytest.raises(GuardianUnavailableError, match="refused"):
        asyncio.run(collect_events(sub, 99))


def test_a_plain_batch_on_a_sealed_stream_is_a_downgrade(tls: TlsFiles) -> None:
    sub = make(tls)
    Scripted(sub, [FakeConnection([batch(1, 1)], GUARDIAN, opener=object())])
    with pytest.raises(StreamProtocolError, match="on a sealed stream"):
        asyncio.run(collect_events(sub, 99))


def test_a_tampered_sealed_batch_stops_the_stream(tls: TlsFiles) -> None:
    base = tls.cert.parent
    guardian_files = TlsFiles.in_dir(base, "alpha-web-01")
    ca = load_certificate(tls.ca)
    handshake, offer = sealing.SubscriberHandshake.start(
        subscriber._load_signing_key(tls.key), context=b"ctx"
    )
    accept, sealer = sealing.accept_offer(
        offer,
        client_cert=load_certificate(tls.cert),
        guardian_key=subscriber._load_signing_key(guardian_files.key),
        guardian_chain=[load_certificate(guardian_files.cert)],
        context=b"ctx",
    )
    opener = handshake.finish(accept, ca_cert=ca, expected_role="alpha", expected_host="web-01")
    sealed = []
    for first in (1, 4, 7):
        plain = batch(first, first + 2).batch
        sealed.append(pb.SubscribeResponse(sealed_batch=sealer.seal(plain)))
    flipped = bytearray(sealed[1].sealed_batch.ciphertext)
    flipped[5] ^= 1
    sealed[1].sealed_batch.ciphertext = bytes(flipped)

    sub = make(tls)
    Scripted(sub, [FakeConnection(sealed, GUARDIAN, opener)])
    seen: list[int] = []

    async def run() -> None:
        async for event in sub.events():
            seen.append(event.seq)

    with pytest.raises(SealedBatchRejectedError) as info:
        asyncio.run(run())
    assert isinstance(info.value, sealing.SealedStreamError)
    assert "sealed batch 2 (seq 4-6)" in str(info.value)
    assert GUARDIAN in str(info.value)
    assert seen == [1, 2, 3]
    assert sub.cursor == 3


# --- the cursor store -----------------------------------------------------------------------


def test_cursor_store_round_trip_is_private_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = CursorStore(tmp_path / "c.json")
    assert store.load() is None
    store.save(StoredCursor(GUARDIAN, 1))
    first_inode = (tmp_path / "c.json").stat().st_ino
    store.save(StoredCursor(GUARDIAN, 2**64 - 1))
    assert store.load() == StoredCursor(GUARDIAN, 2**64 - 1)
    st = (tmp_path / "c.json").stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_ino != first_inode  # replaced, never rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]


def test_cursor_store_failed_save_keeps_the_old_cursor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CursorStore(tmp_path / "c.json")
    store.save(StoredCursor(GUARDIAN, 10))

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(CursorFileError, match="No space left"):
        store.save(StoredCursor(GUARDIAN, 11))
    monkeypatch.undo()
    assert store.load() == StoredCursor(GUARDIAN, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"[]",
        json.dumps({"format": "other", "guardian": GUARDIAN, "seq": 1}).encode(),
        json.dumps({"format": "qsc-stream-cursor-v1", "guardian": "web-01", "seq": 1}).encode(),
        json.dumps({"format": "qsc-stream-cursor-v1", "guardian": GUARDIAN, "seq": -1}).encode(),
        json.dumps({"format": "qsc-stream-cursor-v1", "guardian": GUARDIAN, "seq": "1"}).encode(),
        json.dumps({"format": "qsc-stream-cursor-v1", "guardian": GUARDIAN}).encode(),
    ],
)
def test_cursor_store_refuses_a_damaged_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "c.json").write_bytes(content)
    with pytest.raises(CursorFileError, match=r"c\.json"):
        CursorStore(tmp_path / "c.json").load()


def test_cursor_store_refuses_another_guardians_cursor(tls: TlsFiles, tmp_path: Path) -> None:
    store = CursorStore(tmp_path / "c.json")
    store.save(StoredCursor(OTHER_GUARDIAN, 77))
    with pytest.raises(ForeignCursorError, match="web-02"):
        store.seq_for(GUARDIAN)

    sub = make(tls, store)
    Scripted(sub, [conn(batch(78, 80))])
    with pytest.raises(ForeignCursorError):
        asyncio.run(collect_events(sub, 99))
    assert sub.stats.events == 0
    assert store.load() == StoredCursor(OTHER_GUARDIAN, 77)  # untouched


def test_another_guardian_behind_the_same_address_is_refused(tls: TlsFiles) -> None:
    sub = make(tls)
    Scripted(sub, [conn(batch(1, 2)), conn(batch(3, 4), guardian=OTHER_GUARDIAN)])
    with pytest.raises(ForeignCursorError, match="web-02"):
        asyncio.run(collect_events(sub, 99))
    assert sub.cursor == 2


# --- configuration and backoff ----------------------------------------------------------------


def test_backoff_grows_caps_and_stays_within_its_jitter_band() -> None:
    policy = ReconnectPolicy(
        initial_backoff=timedelta(milliseconds=100),
        max_backoff=timedelta(seconds=2),
        multiplier=2.0,
        jitter=0.5,
    )
    assert [policy.bound(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert policy.bound(10_000) == 2.0
    assert policy.delay(3, rng=lambda: 0.0) == pytest.approx(0.4)
    assert policy.delay(3, rng=lambda: 1.0) == pytest.approx(0.2)
    for attempt in range(1, 12):
        bound = policy.bound(attempt)
        for _ in range(50):
            assert bound * 0.5 <= policy.delay(attempt) <= bound
    exact = ReconnectPolicy(jitter=0.0)
    assert exact.delay(2) == exact.bound(2)
    with pytest.raises(ValueError, match="1-based"):
        policy.bound(0)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"initial_backoff": timedelta(0)}, "initial_backoff"),
        ({"max_backoff": timedelta(milliseconds=1)}, "max_backoff"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": 1.5}, "jitter"),
        ({"give_up_after": timedelta(0)}, "give_up_after"),
    ],
)
def test_reconnect_policy_validation(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        ReconnectPolicy(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"expected_role": "cortex"}, "expected_role"),
        ({"expected_host": "not a host!"}, "expected_host"),
        ({"start_after_seq": -1}, "start_after_seq"),
        ({"start_after_seq": 3, "start_at_latest": True}, "start_at_latest"),
        ({"idle_timeout": timedelta(0)}, "idle_timeout"),
        (
            {"heartbeat_interval": timedelta(seconds=5), "idle_timeout": timedelta(seconds=5)},
            "idle_timeout",
        ),
    ],
)
def test_subscriber_config_validation(tls: TlsFiles, kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        SubscriberConfig(channel=ChannelConfig("127.0.0.1:1", tls), **kwargs)
