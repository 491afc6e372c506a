"""GuardianService for real: a Guardian on 127.0.0.1:0 over mTLS with PKI certificates, called
through the raw generated stub (no client library), plus `python -m mesh.guardian` as a process.

Each test gets a fresh guardian (its own outbox) running on a background event loop, so the
blocking grpcio client can be used from the test thread.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import duration_pb2

from crypto.pki import init_ca, issue_leaf, write_leaf
from mesh.config import config_from_dict
from mesh.guardian import Guardian, GuardianConfig, LossStage, SensorState
from mesh.stream import sealing
from mesh.stream.batching import subscribe_context
from mesh.stream.outbox import Outbox, OutboxConfig
from mesh.stream.sealing import SessionOpener, SubscriberHandshake
from qsc.common.v1 import classification_pb2 as cls
from qsc.common.v1 import event_pb2, identity_pb2, pipeline_details_pb2, process_details_pb2
from qsc.guardian.v1 import guardian_service_pb2 as pb
from qsc.guardian.v1 import guardian_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
TD = "guardian.test"
HOST = "127.0.0.1"
MAX_MESSAGE = 64 * 1024
CALL_TIMEOUT = 20.0
T = TypeVar("T")
R_co = TypeVar("R_co", covariant=True)


class _Stream(Protocol[R_co]):
    """A grpcio response stream (grpc-stubs types it too loosely for `next`)."""

    def __iter__(self) -> Iterator[R_co]: ...
    def __next__(self) -> R_co: ...
    def cancel(self) -> bool: ...
    def code(self) -> grpc.StatusCode: ...


# --- certificates and guardians -----------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("pki")
    ca = init_ca(base, TD)
    for role, host in [("alpha", HOST), ("operator", "ops-1"), ("cortex", "c1"), ("cortex", "c2")]:
        write_leaf(issue_leaf(ca, role, host), base, ca.cert)
    return base


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and key in out else value
    return out


def guardian_table(pki: Path, outbox: Path, /, **sections: dict[str, Any]) -> dict[str, Any]:
    stem = pki / f"alpha-{HOST}"
    base: dict[str, Any] = {
        "guardian": {"role": "alpha", "host": HOST},
        "server": {
            "listen": f"{HOST}:0",
            "tls": {"cert": f"{stem}.crt", "key": f"{stem}.key", "ca": str(pki / "ca.crt")},
            "max_message_bytes": MAX_MESSAGE,
            "shutdown_grace": "5s",
        },
        "outbox": {"directory": str(outbox)},
        "stream": {"heartbeat_interval": "5s"},
    }
    return _merge(base, sections)


class GuardianThread:
    """A started Guardian on its own event loop thread."""

    def __init__(self, config: GuardianConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.guardian = self.run(self._build(config))
        self.port = self.run(self.guardian.start())
        self.stopped = False

    @staticmethod
    async def _build(config: GuardianConfig) -> Guardian:
        return Guardian(config)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.run(self.guardian.stop())

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def make_guardian(pki: Path, tmp_path: Path) -> Iterator[Any]:
    started: list[GuardianThread] = []

    def make(**sections: dict[str, Any]) -> GuardianThread:
        table = guardian_table(pki, tmp_path / f"outbox{len(started)}", **sections)
        g = GuardianThread(config_from_dict(GuardianConfig, table))
        started.append(g)
        return g

    yield make
    for g in started:
        g.close()


@pytest.fixture
def gt(make_guardian: Any) -> GuardianThread:
    return make_guardian()  # type: ignore[no-any-return]


def _stub(pki: Path, port: int, stem: str) -> pb_grpc.GuardianServiceStub:
    creds = grpc.ssl_channel_credentials(
        (pki / "ca.crt").read_bytes(),
        (pki / f"{stem}.key").read_bytes(),
        (pki / f"{stem}.crt").read_bytes(),
    )
    channel = grpc.secure_channel(
        f"{HOST}:{port}", creds, options=[("grpc.max_receive_message_length", MAX_MESSAGE)]
    )
    return pb_grpc.GuardianServiceStub(channel)


def operator(pki: Path, g: GuardianThread) -> pb_grpc.GuardianServiceStub:
    return _stub(pki, g.port, "operator-ops-1")


def subscribe(
    stub: pb_grpc.GuardianServiceStub, request: pb.SubscribeRequest
) -> _Stream[pb.SubscribeResponse]:
    return stub.Subscribe(request, timeout=CALL_TIMEOUT)  # type: ignore[return-value]


# --- events and reading -------------------------------------------------------------------------


def event(i: int, **fields: Any) -> event_pb2.Event:
    fields.setdefault("summary", f"event {i}")
    fields.setdefault("category", cls.CATEGORY_PROCESS)
    fields.setdefault("severity", cls.SEVERITY_LOW)
    return event_pb2.Event(**fields)


def emit_n(g: GuardianThread, n: int, size: int = 0, chunk: int = 100) -> None:
    for start in range(0, n, chunk):
        g.guardian.emit_many(
            event(i, summary=f"event {i} " + "x" * size)
            for i in range(start, min(n, start + chunk))
        )


@dataclass
class Received:
    events: list[event_pb2.Event] = field(default_factory=list)
    batches: list[event_pb2.EventBatch] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    progress: list[event_pb2.Progress] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)

    @property
    def seqs(self) -> list[int]:
        return [e.seq for e in self.events]


def read_until(
    stream: _Stream[pb.SubscribeResponse],
    through: int,
    opener: SessionOpener | None = None,
    into: Received | None = None,
) -> Received:
    """Read until a batch or progress covers seq `through`."""
    got = into or Received()
    for response in stream:
        kind = response.WhichOneof("payload")
        assert kind is not None
        got.kinds.append(kind)
        covered = 0
        if kind == "progress":
            got.progress.append(response.progress)
            covered = response.progress.delivered_through_seq
        elif kind in ("batch", "sealed_batch"):
            if kind == "sealed_batch":
                assert opener is not None, "a sealed batch on an unsealed stream"
                batch = opener.open(response.sealed_batch)
            else:
                assert opener is None, "a plain batch on a sealed stream"
                batch = response.batch
            got.batches.append(batch)
            got.sizes.append(response.ByteSize())
            got.events.extend(batch.events)
            covered = batch.last_seq
        if covered >= through:
            return got
    raise AssertionError(f"stream ended before seq {through}")


def sealed_subscribe(
    pki: Path, g: GuardianThread, request: pb.SubscribeRequest, stem: str = "cortex-c1"
) -> tuple[_Stream[pb.SubscribeResponse], SessionOpener]:
    key = serialization.load_pem_private_key((pki / f"{stem}.key").read_bytes(), None)
    handshake, offer = SubscriberHandshake.start(key, context=subscribe_context(request))  # type: ignore[arg-type]
    request.sealed_session.CopyFrom(offer)
    stream = subscribe(_stub(pki, g.port, stem), request)
    first = next(stream)
    assert first.WhichOneof("payload") == "session_accept"
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    opener = handshake.finish(
        first.session_accept, ca_cert=ca, expected_role="alpha", expected_host=HOST
    )
    return stream, opener


def _rpc_error(stream: _Stream[pb.SubscribeResponse]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        for _ in stream:
            pass
    return caught.value


# --- Subscribe, unsealed ------------------------------------------------------------------------


def test_operator_gets_every_event_in_order_in_bounded_batches(
    pki: Path, gt: GuardianThread
) -> None:
    # ~1 KiB events against a 64 KiB message limit: batches are cut by bytes as well as count.
    emit_n(gt, 1500, size=1000)
    stream = subscribe(operator(pki, gt), pb.SubscribeRequest(max_batch_events=100))
    got = read_until(stream, 1500)
    stream.cancel()
    assert got.seqs == list(range(1, 1501))
    assert all(len(b.events) <= 100 for b in got.batches)
    assert max(got.sizes) <= MAX_MESSAGE
    assert min(len(b.events) for b in got.batches) < 100  # some were cut by bytes
    # Consecutive batches tile the seq space.
    for before, after in zip(got.batches, got.batches[1:], strict=False):
        assert after.first_seq == before.last_seq + 1
    assert got.events[0].guardian.id == "alpha-127.0.0.1"
    assert got.events[0].id
    assert got.events[0].HasField("observed_time")


def test_resume_after_n_gets_exactly_the_later_events(pki: Path, gt: GuardianThread) -> None:
    emit_n(gt, 300)
    stream = subscribe(operator(pki, gt), pb.SubscribeRequest(start_after_seq=123))
    got = read_until(stream, 300)
    assert got.seqs == list(range(124, 301))
    assert got.batches[0].first_seq == 124
    # Live events follow without a new call.
    emit_n(gt, 5)
    read_until(stream, 305, into=got)
    stream.cancel()
    assert got.seqs == list(range(124, 306))


def test_start_at_latest_skips_history(pki: Path, gt: GuardianThread) -> None:
    emit_n(gt, 50)
    stream = subscribe(
        operator(pki, gt),
        pb.SubscribeRequest(
            start_at_latest=True, heartbeat_interval=duration_pb2.Duration(nanos=100_000_000)
        ),
    )
    first = next(stream)  # a heartbeat: the subscription is in place
    assert first.progress.delivered_through_seq == 50
    emit_n(gt, 3)
    got = read_until(stream, 53)
    stream.cancel()
    assert got.seqs == [51, 52, 53]


def test_out_of_range_after_a_budget_drop_names_the_oldest_seq(
    pki: Path, make_guardian: Any
) -> None:
    g = make_guardian(outbox={"segment_bytes": 4096, "disk_budget_bytes": 16384})
    emit_n(g, 400, size=100, chunk=10)
    status = g.guardian.outbox.status()
    assert status.dropped_total > 0
    stub = operator(pki, g)
    error = _rpc_error(subscribe(stub, pb.SubscribeRequest(start_after_seq=1)))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert f"oldest available seq {status.first_seq}" in (error.details() or "")
    # Resuming where it says finds the gap event that reports the loss (it passes any filter).
    stream = subscribe(
        stub,
        pb.SubscribeRequest(
            start_after_seq=status.first_seq - 1, filter=pb.EventFilter(rule_ids=["none"])
        ),
    )
    got = read_until(stream, status.last_seq)
    stream.cancel()
    gaps = [e.gap for e in got.events if e.HasField("gap")]
    assert gaps
    assert all(gap.reason == pipeline_details_pb2.GAP_REASON_DISK_BUDGET for gap in gaps)
    # Older gap events were dropped in turn; the newest names the range just before the oldest.
    assert max(gap.last_seq for gap in gaps) == status.first_seq - 1


def test_a_cursor_ahead_of_the_guardian_is_out_of_range(pki: Path, gt: GuardianThread) -> None:
    emit_n(gt, 10)
    error = _rpc_error(subscribe(operator(pki, gt), pb.SubscribeRequest(start_after_seq=11)))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "latest seq 10 " in (error.details() or "")


def test_filters_select_events_and_always_pass_gaps_and_health(
    pki: Path, gt: GuardianThread
) -> None:
    g = gt.guardian
    g.emit(event(1, category=cls.CATEGORY_NETWORK, severity=cls.SEVERITY_LOW))
    g.emit(event(2, category=cls.CATEGORY_FILE, severity=cls.SEVERITY_HIGH))
    g.emit(event(3, rule=cls.RuleRef(id="alpha.ptrace"), ptrace=process_details_pb2.Ptrace()))
    g.emit(event(4, gap=pipeline_details_pb2.Gap(first_seq=1, last_seq=1, count=1)))
    g.sensors.register("test.sensor", "test")  # a sensor-health event
    g.emit(event(6, severity=cls.SEVERITY_CRITICAL))
    stub = operator(pki, gt)
    cases: list[tuple[pb.EventFilter, list[int]]] = [
        (pb.EventFilter(categories=[cls.CATEGORY_NETWORK]), [1]),
        (pb.EventFilter(min_severity=cls.SEVERITY_HIGH), [2, 6]),
        (pb.EventFilter(rule_ids=["alpha.ptrace"]), [3]),
        (pb.EventFilter(detail_kinds=[event_pb2.DETAIL_KIND_PTRACE]), [3]),
        (pb.EventFilter(rule_ids=["nothing"]), []),
    ]
    for event_filter, expected in cases:
        stream = subscribe(stub, pb.SubscribeRequest(filter=event_filter))
        got = read_until(stream, 6)
        stream.cancel()
        assert got.seqs == sorted([*expected, 4, 5]), event_filter
        assert got.events[-1 if 6 not in expected else -2].HasField("sensor_health")


def test_a_filtered_out_stretch_still_advances_the_cursor(pki: Path, gt: GuardianThread) -> None:
    emit_n(gt, 1000)
    stream = subscribe(
        operator(pki, gt), pb.SubscribeRequest(filter=pb.EventFilter(rule_ids=["none"]))
    )
    got = read_until(stream, 1000)  # a progress message, long before any heartbeat is due
    stream.cancel()
    assert not got.events
    assert got.progress[-1].delivered_through_seq == 1000
    assert got.progress[-1].latest_seq == 1000


def test_progress_heartbeats_when_idle(pki: Path, gt: GuardianThread) -> None:
    emit_n(gt, 3)
    stream = subscribe(
        operator(pki, gt),
        pb.SubscribeRequest(heartbeat_interval=duration_pb2.Duration(nanos=100_000_000)),
    )
    got = read_until(stream, 3)
    started = time.monotonic()
    beats = [next(stream) for _ in range(3)]
    elapsed = time.monotonic() - started
    stream.cancel()
    assert got.seqs == [1, 2, 3]
    assert all(b.WhichOneof("payload") == "progress" for b in beats)
    last = beats[-1].progress
    assert (last.latest_seq, last.oldest_seq, last.delivered_through_seq) == (3, 1, 3)
    assert last.time.seconds > 0
    assert elapsed >= 0.2  # paced by the interval, not a busy loop


# --- who may subscribe, and sealing -------------------------------------------------------------


def test_cortex_without_a_sealed_offer_is_denied(pki: Path, gt: GuardianThread) -> None:
    stub = _stub(pki, gt.port, "cortex-c1")
    error = _rpc_error(subscribe(stub, pb.SubscribeRequest()))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "role cortex" in (error.details() or "")


def test_sealed_subscribe_as_cortex(pki: Path, gt: GuardianThread) -> None:
    emit_n(gt, 700, size=200)
    stream, opener = sealed_subscribe(pki, gt, pb.SubscribeRequest(start_after_seq=5))
    got = read_until(stream, 700, opener)
    emit_n(gt, 10)
    read_until(stream, 710, opener, into=got)
    stream.cancel()
    assert got.seqs == list(range(6, 711))
    assert set(got.kinds) <= {"sealed_batch", "progress"}
    assert max(got.sizes) <= MAX_MESSAGE
    assert opener.peer.role == "alpha"
    assert opener.last_batch_number == len(got.batches)


def test_a_rewritten_request_breaks_the_sealed_offer(pki: Path, gt: GuardianThread) -> None:
    request = pb.SubscribeRequest(start_after_seq=5)
    key = serialization.load_pem_private_key((pki / "cortex-c1.key").read_bytes(), None)
    _, offer = SubscriberHandshake.start(key, context=subscribe_context(request))  # type: ignore[arg-type]
    request.sealed_session.CopyFrom(offer)
    request.start_after_seq = 0  # what a proxy replaying from the start would do
    error = _rpc_error(subscribe(_stub(pki, gt.port, "cortex-c1"), request))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "offer" in (error.details() or "")


def test_an_offer_listing_a_suite_twice_is_refused(pki: Path, gt: GuardianThread) -> None:
    request = pb.SubscribeRequest()
    key = serialization.load_pem_private_key((pki / "cortex-c1.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    _, offer = SubscriberHandshake.start(key, context=subscribe_context(request))
    # Re-signed, as a buggy or hostile subscriber would: the signature is fine, the list is not.
    del offer.suites[1:]
    offer.suites.append(offer.suites[0])  # [AES-256-GCM, AES-256-GCM]
    offer.signature = sealing._sign(
        key, offer.signature_algorithm, sealing._offer_transcript(offer, subscribe_context(request))
    )
    request.sealed_session.CopyFrom(offer)
    error = _rpc_error(subscribe(_stub(pki, gt.port, "cortex-c1"), request))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == (
        "sealed session offer refused: offer lists sealing suite "
        "SEALING_SUITE_X25519_MLKEM1024_HKDF_SHA256_AES_256_GCM more than once"
    )
    # The guardian is fine: a good offer on the next call is accepted.
    emit_n(gt, 3)
    stream, opener = sealed_subscribe(pki, gt, pb.SubscribeRequest())
    assert read_until(stream, 3, opener).seqs == [1, 2, 3]
    stream.cancel()


def test_two_subscribers_at_once_both_get_everything(pki: Path, gt: GuardianThread) -> None:
    plain = subscribe(operator(pki, gt), pb.SubscribeRequest())
    sealed, opener = sealed_subscribe(pki, gt, pb.SubscribeRequest(), stem="cortex-c2")
    results: dict[str, Received] = {}

    def drain(name: str, stream: _Stream[pb.SubscribeResponse], op: Any) -> None:
        results[name] = read_until(stream, 2000, op)

    readers = [
        threading.Thread(target=drain, args=("plain", plain, None)),
        threading.Thread(target=drain, args=("sealed", sealed, opener)),
    ]
    for reader in readers:
        reader.start()
    emit_n(gt, 2000)  # while both are connected
    for reader in readers:
        reader.join(CALL_TIMEOUT)
    plain.cancel()
    sealed.cancel()
    assert results["plain"].seqs == list(range(1, 2001))
    assert results["sealed"].seqs == list(range(1, 2001))


def test_a_stalled_subscriber_does_not_hold_up_emit(pki: Path, gt: GuardianThread) -> None:
    emit_n(gt, 1)
    stream = subscribe(operator(pki, gt), pb.SubscribeRequest())
    read_until(stream, 1)
    # Now read nothing while ~12 MB go in: far beyond every HTTP/2 and gRPC buffer.
    timings: list[float] = []

    def produce() -> None:
        for start in range(0, 12_000, 500):
            began = time.perf_counter()
            gt.guardian.emit_many(event(i, summary="y" * 1000) for i in range(start, start + 500))
            timings.append(time.perf_counter() - began)

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(CALL_TIMEOUT)
    assert not producer.is_alive(), "emit blocked behind a stalled subscriber"
    assert gt.guardian.outbox.last_seq == 12_001
    print(f"emit_many(500 x 1 KB) while stalled: max {max(timings) * 1000:.1f} ms")
    # The stalled stream picks up where it stopped and loses nothing.
    got = read_until(stream, 12_001)
    stream.cancel()
    assert got.seqs == list(range(2, 12_002))


# --- status, sensors, drain ---------------------------------------------------------------------


def test_get_status(pki: Path, gt: GuardianThread) -> None:
    g = gt.guardian
    handle = g.sensors.register("ebpf.exec", "ebpf")
    handle.count_event(7)
    handle.count_loss(LossStage.RING_BUFFER, 3)
    handle.degraded("not root: eBPF disabled, polling /proc", mode="proc_poll")
    other = g.sensors.register("auth_log", "journal")
    other.count_loss("decode_errors", 2)
    emit_n(gt, 20)
    stub = operator(pki, gt)
    stream = subscribe(stub, pb.SubscribeRequest())
    read_until(stream, 1)
    status = stub.GetStatus(pb.GetStatusRequest(), timeout=CALL_TIMEOUT)
    stream.cancel()
    assert status.guardian == identity_pb2.GuardianRef(
        id="alpha-127.0.0.1", role=identity_pb2.ROLE_ALPHA, host=HOST
    )
    assert status.version == importlib.metadata.version("qsc")
    assert abs(status.start_time.ToSeconds() - time.time()) < 60
    assert status.uptime.ToTimedelta().total_seconds() >= 0
    assert status.HasField("uptime")
    sensors = {s.name: s for s in status.sensors}
    ebpf = sensors["ebpf.exec"]
    assert ebpf.state == pipeline_details_pb2.SENSOR_STATE_DEGRADED
    assert list(ebpf.reasons) == ["not root: eBPF disabled, polling /proc"]
    assert (ebpf.mode, ebpf.events, ebpf.loss.ring_buffer_lost) == ("proc_poll", 7, 3)
    assert ebpf.HasField("last_event_time")
    assert ebpf.HasField("state_change_time")
    assert sensors["auth_log"].state == pipeline_details_pb2.SENSOR_STATE_HEALTHY
    assert (status.loss.ring_buffer_lost, status.loss.decode_errors) == (3, 2)
    outbox = status.outbox
    assert (outbox.depth, outbox.first_seq, outbox.last_seq) == (23, 1, 23)  # + 3 health events
    assert outbox.disk_bytes > 0
    assert outbox.disk_budget_bytes == OutboxConfig().disk_budget_bytes
    assert outbox.retention.ToTimedelta() == OutboxConfig().retention
    assert outbox.dropped == 0
    assert status.subscriber_count == 1


def test_a_sensor_state_change_is_an_event_in_the_stream(pki: Path, gt: GuardianThread) -> None:
    stream = subscribe(
        operator(pki, gt),
        pb.SubscribeRequest(
            start_at_latest=True,
            filter=pb.EventFilter(rule_ids=["none"]),
            heartbeat_interval=duration_pb2.Duration(nanos=100_000_000),
        ),
    )
    assert next(stream).WhichOneof("payload") == "progress"  # subscribed
    handle = gt.guardian.sensors.register("inotify", "inotify")
    handle.degraded("inotify queue overflow; rescanning")
    handle.degraded("inotify queue overflow; rescanning")  # no change: no event
    handle.count_loss(LossStage.KERNEL_QUEUE, 1)
    assert gt.guardian.sensors.report_losses() == 1
    handle.healthy()
    got = read_until(stream, 4)
    stream.cancel()
    health = [e.sensor_health for e in got.events]
    assert [(SensorState(h.previous_state), SensorState(h.state)) for h in health] == [
        (SensorState.UNSPECIFIED, SensorState.HEALTHY),
        (SensorState.HEALTHY, SensorState.DEGRADED),
        (SensorState.DEGRADED, SensorState.DEGRADED),  # the loss report
        (SensorState.DEGRADED, SensorState.HEALTHY),
    ]
    assert list(health[1].reasons) == ["inotify queue overflow; rescanning"]
    assert health[2].loss_delta.kernel_queue_overflows == 1
    assert health[3].loss.kernel_queue_overflows == 1
    assert got.events[1].severity == cls.SEVERITY_MEDIUM


def test_drain_ends_streams_cleanly(pki: Path, gt: GuardianThread) -> None:
    emit_n(gt, 10)
    stream = subscribe(operator(pki, gt), pb.SubscribeRequest())
    read_until(stream, 10)
    stopper = threading.Thread(target=gt.stop)
    stopper.start()
    rest = list(stream)  # ends without an error
    stopper.join(CALL_TIMEOUT)
    assert stream.code() == grpc.StatusCode.OK
    assert all(r.WhichOneof("payload") == "progress" for r in rest)
    with pytest.raises(Exception, match="closed"):
        gt.guardian.emit(event(0))


# --- the process ------------------------------------------------------------------------------


def _toml(table: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, str):
            return '"' + v + '"'
        return str(v).lower() if isinstance(v, bool) else str(v)

    lines = []
    for section, fields in table.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"


def _run_guardian(config: Path, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QSC_")}
    return subprocess.Popen(
        [sys.executable, "-m", "mesh.guardian", "--config", str(config), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_guardian_process_streams_synthetic_events_and_exits_on_sigterm(
    pki: Path, tmp_path: Path
) -> None:
    total = 3000
    table = guardian_table(
        pki,
        tmp_path / "outbox",
        synthetic={"rate": 20000, "total": total, "batch": 64},
        log={"format": "json"},
    )
    config = tmp_path / "guardian.toml"
    config.write_text(_toml(table))
    port_file = tmp_path / "run" / "port"
    port_file.parent.mkdir()
    proc = _run_guardian(config, "--port-file", str(port_file))
    try:
        deadline = time.monotonic() + CALL_TIMEOUT
        while not port_file.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no port file"
            time.sleep(0.05)
        port = int(port_file.read_text())
        assert port_file.read_text() == f"{port}\n"
        stub = _stub(pki, port, "operator-ops-1")
        stream = subscribe(stub, pb.SubscribeRequest())
        got = Received()
        while sum(1 for e in got.events if e.labels.get("synthetic") == "true") < total:
            read_until(stream, len(got.events) + 1, into=got)
        stream.cancel()
        synthetic = [e for e in got.events if e.labels.get("synthetic") == "true"]
        others = [e for e in got.events if e.labels.get("synthetic") != "true"]
        assert len(synthetic) == total
        assert all(e.HasField("sensor_health") for e in others)
        assert got.seqs == list(range(1, len(got.events) + 1))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=CALL_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert '"message": "guardian listening"' in err
    # The outbox was closed cleanly: it reopens with every event, nothing torn.
    ref = identity_pb2.GuardianRef(id="x")
    with Outbox.open(tmp_path / "outbox", OutboxConfig(), guardian=ref) as outbox:
        status = outbox.status()
    assert (status.last_seq, status.truncated_bytes) == (len(got.events), 0)


def test_guardian_process_startup_errors(pki: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(_toml(guardian_table(pki, tmp_path / "o", stream={"max_batch_events": 0})))
    proc = _run_guardian(bad)
    _, err = proc.communicate(timeout=CALL_TIMEOUT)
    assert proc.returncode == 2
    assert err.startswith("qsc-guardian: error: ")
    assert "stream.max_batch_events" in err
    assert "Traceback" not in err

    good = tmp_path / "good.toml"
    good.write_text(_toml(guardian_table(pki, tmp_path / "locked")))
    with Outbox.open(tmp_path / "locked", OutboxConfig(), guardian=identity_pb2.GuardianRef()):
        proc = _run_guardian(good)
        _, err = proc.communicate(timeout=CALL_TIMEOUT)
    assert proc.returncode == 1
    assert err.startswith("qsc-guardian: error: ")
    assert "another process" in err
    assert "Traceback" not in err
