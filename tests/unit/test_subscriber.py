"""The subscriber library without a network: a scripted guardian behind the dialer.

The subscriber takes its dialer as a parameter; here it is given one whose channels are played by
a script: each dial takes the next script of responses and errors, answers GetStatus (unsealed)
or runs the guardian's real side of the sealed handshake (sealed) and seals the batches it sends.
What goes over real gRPC (a real guardian, tampering in flight) is in
tests/e2e/test_guardian_stream.py, the fan-in of several real guardians in
tests/integration/test_fanin.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import grpc
import grpc.aio
import pytest

from crypto.pki import init_ca, issue_leaf, load_certificate, write_leaf
from mesh.channel import ChannelConfig
from mesh.config import TlsFiles
from mesh.errors import ConfigError
from mesh.identity import load_tls
from mesh.stream import sealing
from mesh.stream.batching import CursorAheadError, CursorTooOldError, subscribe_context
from mesh.stream.cursor import FileCursorStore, ForeignCursorError, MemoryCursorStore, StoredCursor
from mesh.stream.service import SealingIdentity
from mesh.stream.subscriber import (
    CursorOutOfRangeError,
    GuardianIdentityError,
    GuardianSubscriber,
    GuardianUnavailableError,
    ReconnectPolicy,
    SealedBatchRejectedError,
    StreamProtocolError,
    SubscriberConfig,
    SubscriptionRefusedError,
)
from qsc.common.v1 import event_pb2, identity_pb2
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


# --- a scripted guardian behind the dialer --------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """Sent as it is, even on a sealed session (where a plain batch is a downgrade)."""

    response: pb.SubscribeResponse


@dataclass(frozen=True)
class Tampered:
    """Sealed like any batch, then one bit of its ciphertext flipped."""

    response: pb.SubscribeResponse


@dataclass
class Gate:
    """The guardian's next message is whatever the test puts into ``future``, when it does."""

    future: asyncio.Future[pb.SubscribeResponse]
    waiting: bool = False


Item = pb.SubscribeResponse | Raw | Tampered | Gate | BaseException


@dataclass
class Dial:
    """One connection: what the guardian sends (errors raised in their place), and the host
    GetStatus reports on unsealed streams. ``fails``: the connection's first call (GetStatus
    unsealed, the handshake sealed) fails with it, as with an unreachable guardian."""

    script: list[Item]
    host: str = "web-01"
    fails: BaseException | None = None


class FakeCall:
    def __init__(self, items: list[pb.SubscribeResponse | Gate | BaseException]) -> None:
        self.items = items
        self.cancelled = False

    def __aiter__(self) -> FakeCall:
        return self

    async def __anext__(self) -> pb.SubscribeResponse:
        await asyncio.sleep(0)
        if not self.items:
            raise StopAsyncIteration
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, Gate):
            item.waiting = True
            return await item.future
        return item

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeChannel:
    """The two methods of GuardianServiceStub's channel, played by the guardian's script."""

    def __init__(self, guardian: ScriptedGuardian, dial: Dial) -> None:
        self.guardian = guardian
        self.dial = dial
        self.calls: list[FakeCall] = []
        self.closed = False

    def unary_stream(self, method: str, **_: Any) -> Callable[[pb.SubscribeRequest], FakeCall]:
        assert method == "/qsc.guardian.v1.GuardianService/Subscribe"
        return self._subscribe

    def unary_unary(self, method: str, **_: Any) -> Callable[[Any], Any]:
        assert method == "/qsc.guardian.v1.GuardianService/GetStatus"
        return self._get_status

    async def close(self, grace: float | None = None) -> None:
        self.closed = True

    async def _get_status(self, request: pb.GetStatusRequest) -> pb.GetStatusResponse:
        if self.dial.fails is not None:
            raise self.dial.fails
        ref = identity_pb2.GuardianRef(role=identity_pb2.ROLE_ALPHA, host=self.dial.host)
        return pb.GetStatusResponse(guardian=ref)

    def _subscribe(self, request: pb.SubscribeRequest) -> FakeCall:
        self.guardian.requests.append(request)
        script = list(self.dial.script)
        items: list[pb.SubscribeResponse | Gate | BaseException] = []
        if self.dial.fails is not None:
            items = [self.dial.fails]
        elif not request.HasField("sealed_session"):
            items = [i.response if isinstance(i, Raw | Tampered) else i for i in script]
        elif script and isinstance(script[0], BaseException):
            items = [script[0]]  # refused before the handshake
        else:
            items = self.guardian.sealed(request, script)
        call = FakeCall(items)
        self.calls.append(call)
        return call


class ScriptedGuardian:
    """The dialer: each dial takes the next Dial of the script (a test fails on one too many)."""

    def __init__(self, tls: TlsFiles, dials: Sequence[Dial]) -> None:
        self.dials = list(dials)
        self.requests: list[pb.SubscribeRequest] = []
        self.channels: list[FakeChannel] = []
        self.configs: list[ChannelConfig] = []
        self._client_cert = load_certificate(tls.cert)
        self._identity = SealingIdentity.from_tls(
            load_tls(TlsFiles.in_dir(tls.cert.parent, "alpha-web-01"))
        )

    def __call__(self, config: ChannelConfig) -> grpc.aio.Channel:
        self.configs.append(config)
        if not self.dials:
            raise AssertionError("dialled more often than scripted")
        channel = FakeChannel(self, self.dials.pop(0))
        self.channels.append(channel)
        return cast(grpc.aio.Channel, channel)

    def sealed(
        self, request: pb.SubscribeRequest, script: list[Item]
    ) -> list[pb.SubscribeResponse | Gate | BaseException]:
        """The guardian's side of a sealed session: the accept, then the script sealed."""
        accept, sealer = sealing.accept_offer(
            request.sealed_session,
            client_cert=self._client_cert,
            guardian_key=self._identity.key,
            guardian_chain=self._identity.chain,
            context=subscribe_context(request),
        )
        out: list[pb.SubscribeResponse | Gate | BaseException] = [
            pb.SubscribeResponse(session_accept=accept)
        ]
        for item in script:
            if isinstance(item, Raw | Gate | BaseException):
                out.append(item.response if isinstance(item, Raw) else item)
                continue
            response = item.response if isinstance(item, Tampered) else item
            if response.WhichOneof("payload") != "batch":
                out.append(response)
                continue
            sealed = pb.SubscribeResponse(sealed_batch=sealer.seal(response.batch))
            if isinstance(item, Tampered):
                flipped = bytearray(sealed.sealed_batch.ciphertext)
                flipped[5] ^= 1
                sealed.sealed_batch.ciphertext = bytes(flipped)
            out.append(sealed)
        return out

    @property
    def starts(self) -> list[int]:
        return [r.start_after_seq for r in self.requests]


def dial(*script: Item, host: str = "web-01") -> Dial:
    return Dial(list(script), host)


def down(details: str) -> Dial:
    return Dial([], fails=rpc_error(grpc.StatusCode.UNAVAILABLE, details))


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


@dataclass
class Setup:
    sub: GuardianSubscriber
    guardian: ScriptedGuardian


def make(
    tls: TlsFiles,
    dials: Sequence[Dial],
    store: Any = None,
    *,
    commit_cursor: bool = True,
    **kw: Any,
) -> Setup:
    kw.setdefault("sealed", False)
    kw.setdefault("reconnect", FAST)
    config = SubscriberConfig(channel=ChannelConfig("127.0.0.1:1", tls), **kw)
    guardian = ScriptedGuardian(tls, dials)
    sub = GuardianSubscriber(config, cursor_store=store, commit_cursor=commit_cursor, dial=guardian)
    return Setup(sub, guardian)


async def collect_events(sub: GuardianSubscriber, until: int) -> list[int]:
    seen: list[int] = []
    async for event in sub.events():
        seen.append(event.seq)
        if event.seq >= until:
            break
    return seen


# --- dedup and resume -----------------------------------------------------------------------


def test_each_seq_delivered_once_across_reconnects_and_resends(tls: TlsFiles) -> None:
    s = make(
        tls,
        [
            dial(batch(1, 3), batch(4, 6), rpc_error(grpc.StatusCode.UNAVAILABLE, "reset")),
            dial(batch(4, 6), batch(5, 8)),  # a resend, an overlap, then a clean end
            down("connection refused"),
            dial(batch(7, 10)),
        ],
    )
    seen = asyncio.run(collect_events(s.sub, 10))
    assert seen == list(range(1, 11))
    assert s.guardian.starts == [0, 6, 8]  # the refused dial never got to Subscribe
    assert len(s.guardian.configs) == 4
    assert s.sub.stats.duplicate_events == 3 + 2 + 2
    assert s.sub.stats.reconnects == 3
    assert s.sub.cursor == 10
    assert all(c.closed for c in s.guardian.channels)
    assert all(call.cancelled for c in s.guardian.channels for call in c.calls)


def test_each_dial_gets_a_channel_config_without_retries(tls: TlsFiles) -> None:
    # The subscriber's loop owns reconnects: the channel's own retry interceptor must not.
    s = make(tls, [dial(batch(1, 1))])
    assert asyncio.run(collect_events(s.sub, 1)) == [1]
    [config] = s.guardian.configs
    assert config.retry.max_attempts == 1
    assert config.target == "127.0.0.1:1"


def test_batches_cursor_covers_the_filtered_range_and_empty_advances(tls: TlsFiles) -> None:
    s = make(tls, [dial(batch(1, 7, [2, 5]), batch(8, 9, []), batch(10, 12, [12]))])

    async def run() -> list[tuple[list[int], int, int, str]]:
        got = []
        async for b in s.sub.batches():
            got.append(([e.seq for e in b.events], b.first_seq, b.last_seq, b.guardian))
            if b.last_seq >= 12:
                break
        return got

    # The empty batch is not handed over, but it moves the cursor (and the next first_seq).
    assert asyncio.run(run()) == [([2, 5], 1, 7, GUARDIAN), ([12], 10, 12, GUARDIAN)]
    assert s.sub.cursor == 12


def test_unsealed_progress_moves_the_cursor(tls: TlsFiles) -> None:
    s = make(tls, [dial(progress(15)), dial(batch(16, 16))], start_after_seq=10)
    assert asyncio.run(collect_events(s.sub, 16)) == [16]
    assert s.guardian.starts == [10, 15]


def test_sealed_stream_ignores_progress_for_the_cursor(tls: TlsFiles) -> None:
    s = make(
        tls,
        [
            dial(progress(15, 20)),
            dial(),
            dial(rpc_error(grpc.StatusCode.PERMISSION_DENIED, "stop here")),
        ],
        sealed=True,
        start_after_seq=10,
    )
    with pytest.raises(SubscriptionRefusedError):
        asyncio.run(collect_events(s.sub, 99))
    assert s.guardian.starts == [10, 10, 10]  # the unauthenticated progress moved nothing
    assert s.sub.latest_seq == 20
    assert s.sub.guardian == GUARDIAN  # from the verified session accept


def test_sealed_batches_open_and_carry_the_verified_guardian(tls: TlsFiles) -> None:
    s = make(tls, [dial(batch(1, 3), batch(4, 6))], sealed=True, expected_role="alpha")

    async def run() -> list[tuple[int, int, StoredCursor]]:
        got = []
        async for b in s.sub.batches():
            got.append((b.first_seq, b.last_seq, b.cursor))
            if b.last_seq == 6:
                break
        return got

    assert asyncio.run(run()) == [
        (1, 3, StoredCursor(GUARDIAN, 3)),
        (4, 6, StoredCursor(GUARDIAN, 6)),
    ]
    assert s.guardian.requests[0].HasField("sealed_session")


def test_connected_while_a_stream_is_established(tls: TlsFiles) -> None:
    s = make(tls, [dial(batch(1, 1)), dial(batch(2, 2))])
    states: list[bool] = []

    async def run() -> None:
        assert not s.sub.connected
        async for event in s.sub.events():
            states.append(s.sub.connected)
            if event.seq == 2:
                break

    asyncio.run(run())
    assert states == [True, True]
    assert not s.sub.connected  # closed when the consumer stopped


def test_events_cursor_follows_each_event_and_commit_saves_it(
    tls: TlsFiles, tmp_path: Path
) -> None:
    store = FileCursorStore(tmp_path / "cursor.json")
    s = make(tls, [dial(batch(1, 3), batch(4, 6))], store)

    async def run() -> None:
        events = s.sub.events()
        async for event in events:
            if event.seq == 5:  # stop mid-batch: 6 was never handed over
                break
        await events.aclose()
        await s.sub.commit()

    asyncio.run(run())
    assert s.sub.cursor == 5
    assert store.read() == StoredCursor(GUARDIAN, 5)


def test_batches_are_committed_when_the_consumer_comes_back(tls: TlsFiles) -> None:
    store = MemoryCursorStore()
    s = make(tls, [dial(batch(1, 3), batch(4, 6))], store)

    async def run() -> list[int | None]:
        saved = []
        async for b in s.sub.batches():
            saved.append(None if store.cursor is None else store.cursor.seq)
            if b.last_seq == 6:
                break
        return saved

    # While the consumer holds a batch the store still says the previous one (a crash redelivers).
    assert asyncio.run(run()) == [None, 3]


def test_without_commit_cursor_only_the_consumer_writes(tls: TlsFiles) -> None:
    store = MemoryCursorStore(StoredCursor(GUARDIAN, 2))
    s = make(tls, [dial(batch(3, 5), batch(6, 8), batch(9, 9))], store, commit_cursor=False)
    kept: list[StoredCursor] = []

    async def run() -> None:
        async for b in s.sub.batches():
            kept.append(b.cursor)  # where the consumer's own transaction would write it
            if b.last_seq == 9:
                break

    asyncio.run(run())
    assert s.guardian.starts == [2]  # the store is still read to resume
    assert store.commits == 0
    assert store.cursor == StoredCursor(GUARDIAN, 2)
    assert kept == [StoredCursor(GUARDIAN, 5), StoredCursor(GUARDIAN, 8), StoredCursor(GUARDIAN, 9)]
    asyncio.run(s.sub.commit())  # explicit commit still writes
    assert store.cursor == StoredCursor(GUARDIAN, 9)


def test_resume_from_a_stored_cursor(tls: TlsFiles, tmp_path: Path) -> None:
    store = FileCursorStore(tmp_path / "cursor.json")
    store.write(StoredCursor(GUARDIAN, 42))
    s = make(tls, [dial(batch(43, 44))], store, start_after_seq=7)
    assert asyncio.run(collect_events(s.sub, 44)) == [43, 44]
    assert s.guardian.starts == [42]

    explicit = make(tls, [dial(batch(8, 8))], store, start_after_seq=7, prefer_stored_cursor=False)
    assert asyncio.run(collect_events(explicit.sub, 8)) == [8]
    assert explicit.guardian.starts == [7]


def test_cancelling_the_consumer_stops_the_subscriber_even_as_a_message_arrives(
    tls: TlsFiles,
) -> None:
    async def run() -> None:
        gate = Gate(asyncio.get_running_loop().create_future())
        s = make(tls, [dial(batch(1, 1), gate)], idle_timeout=timedelta(seconds=5))
        task = asyncio.create_task(collect_events(s.sub, 99))
        while not gate.waiting:
            await asyncio.sleep(0)
        # The message and the cancellation in the same turn of the loop: the cancellation must
        # win (asyncio.wait_for on Python 3.11 returned the message and dropped it).
        gate.future.set_result(progress(1))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(s.guardian.channels) == 1
        assert s.guardian.channels[0].closed

    asyncio.run(run())


# --- errors ---------------------------------------------------------------------------------


def test_cursor_older_than_retention_is_typed(tls: TlsFiles) -> None:
    details = str(CursorTooOldError(5, 40))  # the guardian's own wording
    s = make(tls, [dial(rpc_error(grpc.StatusCode.OUT_OF_RANGE, details))], start_after_seq=5)
    with pytest.raises(CursorOutOfRangeError) as info:
        asyncio.run(collect_events(s.sub, 99))
    err = info.value
    assert (err.oldest_available_seq, err.ahead) == (40, False)
    assert (err.lost_first, err.lost_last, err.lost_count) == (6, 39, 34)
    assert "events 6 to 39 are no longer available" in str(err)


def test_cursor_ahead_of_the_guardian_is_typed(tls: TlsFiles) -> None:
    details = str(CursorAheadError(500, 20))
    s = make(tls, [dial(rpc_error(grpc.StatusCode.OUT_OF_RANGE, details))], start_after_seq=500)
    with pytest.raises(CursorOutOfRangeError) as info:
        asyncio.run(collect_events(s.sub, 99))
    assert info.value.ahead
    assert info.value.lost_count == 0
    assert "ahead" in str(info.value)


def test_cursor_zero_starts_at_the_oldest_retained(tls: TlsFiles) -> None:
    details = str(CursorTooOldError(0, 40))
    s = make(tls, [dial(rpc_error(grpc.StatusCode.OUT_OF_RANGE, details)), dial(batch(40, 41))])
    assert asyncio.run(collect_events(s.sub, 41)) == [40, 41]
    assert s.guardian.starts == [0, 39]


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
    ],
)
def test_refusals_are_not_retried(tls: TlsFiles, code: grpc.StatusCode) -> None:
    s = make(tls, [dial(rpc_error(code, "no"))])
    with pytest.raises(SubscriptionRefusedError, match=code.name):
        asyncio.run(collect_events(s.sub, 99))
    assert len(s.guardian.requests) == 1


def test_gives_up_after_the_configured_time(tls: TlsFiles) -> None:
    policy = ReconnectPolicy(
        initial_backoff=timedelta(milliseconds=5),
        max_backoff=timedelta(milliseconds=10),
        give_up_after=timedelta(milliseconds=100),
    )
    refused = [down("refused") for _ in range(200)]
    s = make(tls, refused, reconnect=policy)
    with pytest.raises(GuardianUnavailableError, match="refused"):
        asyncio.run(collect_events(s.sub, 99))


def test_a_plain_batch_on_a_sealed_stream_is_a_downgrade(tls: TlsFiles) -> None:
    s = make(tls, [dial(Raw(batch(1, 1)))], sealed=True)
    with pytest.raises(StreamProtocolError, match="on a sealed stream"):
        asyncio.run(collect_events(s.sub, 99))
    assert s.sub.stats.events == 0


def test_a_tampered_sealed_batch_stops_the_stream(tls: TlsFiles) -> None:
    s = make(tls, [dial(batch(1, 3), Tampered(batch(4, 6)), batch(7, 9))], sealed=True)
    seen: list[int] = []

    async def run() -> None:
        async for event in s.sub.events():
            seen.append(event.seq)

    with pytest.raises(SealedBatchRejectedError) as info:
        asyncio.run(run())
    assert isinstance(info.value, sealing.SealedStreamError)
    assert "sealed batch 2 (seq 4-6)" in str(info.value)
    assert GUARDIAN in str(info.value)
    assert seen == [1, 2, 3]
    assert s.sub.cursor == 3
    assert len(s.guardian.requests) == 1  # stopped, not retried


def test_a_guardian_of_another_role_is_refused_before_anything_is_delivered(
    tls: TlsFiles,
) -> None:
    s = make(tls, [dial(batch(1, 1))], sealed=True, expected_role="beta")
    with pytest.raises(GuardianIdentityError, match="role 'alpha'"):
        asyncio.run(collect_events(s.sub, 99))
    assert s.sub.stats.connects == 0
    assert len(s.guardian.requests) == 1


# --- the cursor store, as the subscriber uses it ----------------------------------------------


def test_another_guardians_stored_cursor_is_refused(tls: TlsFiles, tmp_path: Path) -> None:
    store = FileCursorStore(tmp_path / "c.json")
    store.write(StoredCursor(OTHER_GUARDIAN, 77))
    s = make(tls, [dial(batch(78, 80))], store)
    with pytest.raises(ForeignCursorError, match=r"c\.json holds the cursor of .*web-02"):
        asyncio.run(collect_events(s.sub, 99))
    assert s.sub.stats.events == 0
    assert store.read() == StoredCursor(OTHER_GUARDIAN, 77)  # untouched


def test_another_guardians_cursor_is_refused_even_when_not_resuming_from_it(
    tls: TlsFiles,
) -> None:
    store = MemoryCursorStore(StoredCursor(OTHER_GUARDIAN, 77))
    s = make(tls, [dial(batch(1, 2))], store, prefer_stored_cursor=False)
    with pytest.raises(ForeignCursorError, match="web-02"):
        asyncio.run(collect_events(s.sub, 99))
    assert store.commits == 0


def test_another_guardian_behind_the_same_address_is_refused(tls: TlsFiles) -> None:
    s = make(tls, [dial(batch(1, 2)), dial(batch(3, 4), host="web-02")])
    with pytest.raises(ForeignCursorError, match="web-02"):
        asyncio.run(collect_events(s.sub, 99))
    assert s.sub.cursor == 2


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
