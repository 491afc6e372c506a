"""The guardian stream end to end: real guardian processes, real certificates, real subscribers.

Guardians run as `python -m mesh.guardian` with the synthetic event source, on 127.0.0.1 over
mTLS with certificates from `qsc pki`; the subscriber is the library (`mesh.stream.subscriber`)
in this process, or `qsc tail` as a process. After a run the outbox directory is opened directly
and compared with what the subscriber delivered. A restarted guardian listens on the port it had
before (a deployment has a fixed address), so the subscriber simply dials it again.

Tampering needs a guardian that misbehaves: that test runs the real GuardianServicer in-process
over real mTLS, wrapped to alter its sealed batches in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from mesh.channel import ChannelConfig, open_channel
from mesh.config import TlsFiles
from mesh.identity import load_tls
from mesh.server import ComponentServer, ServerConfig
from mesh.stream.batching import StreamSettings
from mesh.stream.cursor import FileCursorStore, StoredCursor
from mesh.stream.outbox import Outbox, OutboxConfig
from mesh.stream.service import GuardianServicer, SealingIdentity
from mesh.stream.subscriber import (
    GuardianIdentityError,
    GuardianSubscriber,
    ReconnectPolicy,
    SealedBatchRejectedError,
    SubscriberConfig,
    SubscriptionRefusedError,
)
from qsc.common.v1 import event_pb2, identity_pb2, pipeline_details_pb2
from qsc.guardian.v1 import guardian_service_pb2 as pb
from qsc.guardian.v1 import guardian_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
QSC = [sys.executable, "-m", "mesh.cli"]
TD = "stream.e2e"
START_TIMEOUT = 20.0


# --- certificates, from the real CLI ------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    dir: Path

    def files(self, stem: str) -> TlsFiles:
        return TlsFiles.in_dir(self.dir, stem)


def _qsc(
    *args: str | Path, check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [*QSC, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )
    if check and out.returncode != 0:
        raise AssertionError(f"qsc {args} failed ({out.returncode}): {out.stderr}")
    return out


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    _qsc("pki", "init", "--dir", base, "--trust-domain", TD)
    _qsc("pki", "issue", "alpha", "web-01", "--dir", base, "--ip", "127.0.0.1")
    _qsc("pki", "issue", "cortex", "c1", "--dir", base)
    _qsc("pki", "issue", "operator", "ops-1", "--dir", base)
    return Pki(base)


# --- guardian processes -------------------------------------------------------------------------


class GuardianProcess:
    """One guardian's configuration and outbox; start() may run it again on the same port."""

    def __init__(
        self,
        pki: Pki,
        workdir: Path,
        *,
        outbox: dict[str, Any] | None = None,
        heartbeat: str = "200ms",
    ) -> None:
        self.pki = pki
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.outbox_dir = workdir / "outbox"
        self.outbox = outbox or {}
        self.heartbeat = heartbeat
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "guardian.log"
        self.starts = 0

    def _config(self, rate: float, total: int, batch: int) -> Path:
        files = self.pki.files("alpha-web-01")
        outbox = "".join(f"{k} = {json.dumps(v)}\n" for k, v in self.outbox.items())
        text = f"""
[guardian]
role = "alpha"
host = "web-01"
[server]
listen = "127.0.0.1:{self.port}"
tls = {{ cert = "{files.cert}", key = "{files.key}", ca = "{files.ca}" }}
shutdown_grace = "5s"
[outbox]
directory = "{self.outbox_dir}"
{outbox}
[stream]
heartbeat_interval = "{self.heartbeat}"
[synthetic]
rate = {rate}
total = {total}
batch = {batch}
[log]
level = "info"
"""
        path = self.workdir / f"guardian-{self.starts}.toml"
        path.write_text(text)
        return path

    async def start(self, *, rate: float, total: int = 0, batch: int = 32) -> int:
        self.starts += 1
        config = self._config(rate, total, batch)
        port_file = self.workdir / "port"
        port_file.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mesh.guardian",
                    "--config",
                    config,
                    "--port-file",
                    port_file,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                # A crash of the guardian shows where in its log.
                env={**os.environ, "PYTHONFAULTHANDLER": "1"},
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not port_file.exists() or not port_file.read_text().endswith("\n"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"guardian did not start:\n{self.log.read_text()[-3000:]}")
            await asyncio.sleep(0.02)
        self.port = int(port_file.read_text())
        return self.port

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stored_seqs(self) -> list[tuple[int, event_pb2.Event]]:
        """Every record of the outbox, read directly (the guardian must be stopped)."""
        out: list[tuple[int, event_pb2.Event]] = []
        with Outbox.open(self.outbox_dir, OutboxConfig(**self.outbox), guardian=REF) as outbox:
            after = 0
            while records := outbox.read_after(after, 4096):
                out += [(r.seq, event_pb2.Event.FromString(r.payload)) for r in records]
                after = records[-1].seq
        return out


REF = identity_pb2.GuardianRef(id="alpha-web-01", role=identity_pb2.ROLE_ALPHA, host="web-01")


@pytest.fixture
def guardians(pki: Pki, tmp_path: Path) -> Iterator[Callable[..., GuardianProcess]]:
    made: list[GuardianProcess] = []

    def make(name: str = "g", **kwargs: Any) -> GuardianProcess:
        g = GuardianProcess(pki, tmp_path / name, **kwargs)
        made.append(g)
        return g

    yield make
    for g in made:
        g.stop()


@pytest.fixture(scope="module")
def finite(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardianProcess]:
    """A guardian that produced FINITE_TOTAL synthetic events and then idles, shared by tests
    that only read."""
    g = GuardianProcess(pki, tmp_path_factory.mktemp("finite"))
    asyncio.run(g.start(rate=20_000, total=FINITE_TOTAL, batch=64))
    yield g
    assert g.terminate() == 0


FINITE_TOTAL = 600


# --- subscriber helpers -------------------------------------------------------------------------


def sub_config(pki: Pki, port: int, client: str = "cortex-c1", **kwargs: Any) -> SubscriberConfig:
    kwargs.setdefault("expected_role", "alpha")
    kwargs.setdefault("expected_host", "web-01")
    return SubscriberConfig(
        channel=ChannelConfig(f"127.0.0.1:{port}", pki.files(client)),
        heartbeat_interval=timedelta(milliseconds=200),
        idle_timeout=timedelta(seconds=5),
        reconnect=ReconnectPolicy(
            initial_backoff=timedelta(milliseconds=50),
            max_backoff=timedelta(milliseconds=300),
            give_up_after=timedelta(seconds=30),
        ),
        **kwargs,
    )


async def consume(sub: GuardianSubscriber, seen: list[event_pb2.Event]) -> None:
    async for batch in sub.batches():
        seen.extend(batch.events)


async def collect(sub: GuardianSubscriber, seen: list[int]) -> None:
    async for event in sub.events():
        seen.append(event.seq)


async def until(
    cond: Callable[[], bool], what: str, task: asyncio.Task[Any], timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if task.done():
            task.result()  # the subscriber's error, if it has one
            raise AssertionError(f"the subscriber stopped before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def caught_up(sub: GuardianSubscriber, task: asyncio.Task[Any], quiet: float = 0.8) -> None:
    """Until production stopped and the subscriber holds everything: its cursor equals the
    guardian's latest seq and has not moved for `quiet` seconds (several heartbeats)."""
    last, since = -1, time.monotonic()
    while True:
        await until(lambda: sub.cursor == sub.latest_seq > 0, "the subscriber to catch up", task)
        if sub.cursor != last:
            last, since = sub.cursor, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        await asyncio.sleep(0.05)


def assert_exactly_the_outbox(
    guardian: GuardianProcess, seen: list[event_pb2.Event], cursor: int
) -> None:
    seqs = [e.seq for e in seen]
    assert len(seqs) == len(set(seqs)), "an event was delivered twice"
    stored = guardian.stored_seqs()
    assert seqs == [s for s, _ in stored if s <= cursor], "delivered != the outbox up to the cursor"
    synthetic = [s for s, e in stored if e.rule.id.startswith("synthetic.")]
    assert synthetic
    assert max(synthetic) <= cursor, "a produced event was never delivered"
    by_seq = dict(stored)
    assert all(e == by_seq[e.seq] for e in seen[:: max(1, len(seen) // 50)])


# --- (a) kill -9 mid-stream, restart, resume ----------------------------------------------------


def test_kill9_mid_stream_then_restart_delivers_every_seq_exactly_once(
    pki: Pki, guardians: Callable[..., GuardianProcess]
) -> None:
    g = guardians()

    async def run() -> tuple[list[event_pb2.Event], GuardianSubscriber, int]:
        port = await g.start(rate=5000, total=0)
        sub = GuardianSubscriber(sub_config(pki, port, max_batch_events=128))
        seen: list[event_pb2.Event] = []
        task = asyncio.create_task(consume(sub, seen))
        await until(lambda: len(seen) >= 1500, "events before the kill", task)
        g.kill9()  # while the synthetic source is appending
        at_kill = len(seen)
        await until(lambda: sub.stats.reconnects >= 2, "reconnect attempts", task)
        await g.start(rate=5000, total=1500)
        await caught_up(sub, task)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return seen, sub, at_kill

    seen, sub, at_kill = asyncio.run(run())
    assert g.terminate() == 0
    assert len(seen) > at_kill + 1500
    assert any("UNAVAILABLE" in r for r in sub.stats.interruptions)
    assert_exactly_the_outbox(g, seen, sub.cursor)


# --- (g) SIGTERM drains: the stream ends OK, the subscriber comes back with the guardian --------


def test_sigterm_ends_the_stream_cleanly_and_the_subscriber_resumes(
    pki: Pki, guardians: Callable[..., GuardianProcess]
) -> None:
    g = guardians()

    async def run() -> tuple[list[event_pb2.Event], GuardianSubscriber, int]:
        port = await g.start(rate=3000, total=0)
        sub = GuardianSubscriber(sub_config(pki, port))
        seen: list[event_pb2.Event] = []
        task = asyncio.create_task(consume(sub, seen))
        await until(lambda: len(seen) >= 500, "events before SIGTERM", task)
        code = await asyncio.to_thread(g.terminate)
        await until(lambda: sub.stats.reconnects >= 1, "the stream to end", task)
        await g.start(rate=3000, total=500)
        await caught_up(sub, task)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return seen, sub, code

    seen, sub, code = asyncio.run(run())
    assert code == 0
    # Drained, not cut: the first interruption is the guardian ending the stream with OK.
    assert sub.stats.interruptions[0] == "the guardian ended the stream"
    assert g.terminate() == 0
    assert_exactly_the_outbox(g, seen, sub.cursor)


# --- (b) disconnect, reconnect with the cursor ---------------------------------------------------


def test_a_new_subscriber_resumes_from_the_saved_cursor(
    pki: Pki, finite: GuardianProcess, tmp_path: Path
) -> None:
    store = FileCursorStore(tmp_path / "cursor.json")

    async def first() -> list[int]:
        sub = GuardianSubscriber(
            sub_config(pki, finite.port, max_batch_events=64), cursor_store=store
        )
        seen = []
        async with contextlib.aclosing(sub.events()) as events:
            async for event in events:
                seen.append(event.seq)
                if len(seen) == 250:
                    break
        await sub.commit()
        return seen

    async def second() -> list[int]:
        sub = GuardianSubscriber(sub_config(pki, finite.port), cursor_store=store)
        seen: list[event_pb2.Event] = []
        task = asyncio.create_task(consume(sub, seen))
        await caught_up(sub, task, quiet=0.5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return [e.seq for e in seen]

    one = asyncio.run(first())
    saved = store.read()
    assert saved is not None
    assert (saved.guardian, saved.seq) == (f"spiffe://{TD}/alpha/web-01", 250)
    two = asyncio.run(second())
    assert one == list(range(1, 251))
    assert two[0] == 251
    assert one + two == list(range(1, len(one) + len(two) + 1))
    assert len(one) + len(two) >= FINITE_TOTAL


# --- (e) the wrong guardian is refused ---------------------------------------------------------


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        ({"expected_role": "beta"}, "role 'alpha', expected 'beta'"),
        ({"expected_host": "web-02"}, "host 'web-01', expected 'web-02'"),
    ],
)
def test_a_guardian_of_the_wrong_role_or_host_is_refused(
    pki: Pki, finite: GuardianProcess, expect: dict[str, str], message: str
) -> None:
    sub = GuardianSubscriber(sub_config(pki, finite.port, **expect))

    async def run() -> None:
        async for _ in sub.events():
            raise AssertionError("an event was delivered from an unverified guardian")

    with pytest.raises(GuardianIdentityError, match=message):
        asyncio.run(run())
    assert sub.stats.connects == 0  # refused, never retried


def test_unsealed_is_refused_for_the_cortex_and_allowed_for_operators(
    pki: Pki, finite: GuardianProcess
) -> None:
    cortex = GuardianSubscriber(sub_config(pki, finite.port, sealed=False))

    async def first(sub: GuardianSubscriber) -> int:
        async with contextlib.aclosing(sub.events()) as events:
            async for event in events:
                return event.seq
        raise AssertionError("no event")

    with pytest.raises(SubscriptionRefusedError, match="PERMISSION_DENIED"):
        asyncio.run(first(cortex))
    operator = GuardianSubscriber(sub_config(pki, finite.port, "operator-ops-1", sealed=False))
    assert asyncio.run(first(operator)) == 1
    assert operator.guardian == f"spiffe://{TD}/alpha/web-01"


# --- (c) outbox overflow: a gap event with the exact count --------------------------------------


def test_outbox_overflow_is_reported_by_gap_events_with_exact_counts(
    pki: Pki, guardians: Callable[..., GuardianProcess], tmp_path: Path
) -> None:
    # Four 4 KiB segments hold ~55 synthetic events. 80 events force a drop or two, and too
    # few more segments follow for a gap event to be dropped in turn: every loss is reported.
    total = 80
    g = guardians(outbox={"segment_bytes": 4096, "disk_budget_bytes": 16384})

    async def run() -> tuple[list[event_pb2.Event], GuardianSubscriber, pb.GetStatusResponse]:
        port = await g.start(rate=20_000, total=total, batch=8)
        status = await wait_produced(pki, port, total)
        # Subscribing only now: what was dropped can only be learnt from the gap events.
        sub = GuardianSubscriber(sub_config(pki, port))
        seen: list[event_pb2.Event] = []
        task = asyncio.create_task(consume(sub, seen))
        await caught_up(sub, task, quiet=0.5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return seen, sub, status

    seen, sub, status = asyncio.run(run())
    oldest = status.outbox.first_seq
    tail_from_a_lost_cursor(pki, g, tmp_path, oldest)
    assert g.terminate() == 0
    gaps = [e for e in seen if e.WhichOneof("detail") == "gap"]
    assert gaps, "no gap event was delivered"
    lost: set[int] = set()
    for e in gaps:
        gap = e.gap
        assert gap.reason == pipeline_details_pb2.GAP_REASON_DISK_BUDGET
        assert gap.count == gap.last_seq - gap.first_seq + 1
        span = set(range(gap.first_seq, gap.last_seq + 1))
        assert not span & lost, "two gap events report the same seq"
        lost |= span
    delivered = {e.seq for e in seen}
    assert not delivered & lost
    # Every seq up to the end is delivered or reported lost, and the counts add up exactly.
    assert delivered | lost == set(range(1, sub.cursor + 1))
    # The gaps report exactly what the outbox no longer holds: everything before its oldest.
    assert lost == set(range(1, status.outbox.first_seq))
    assert sum(e.gap.count for e in gaps) == status.outbox.dropped == len(lost)
    assert sub.stats.gap_events == len(gaps)


def tail_from_a_lost_cursor(pki: Pki, g: GuardianProcess, tmp_path: Path, oldest: int) -> None:
    """`qsc tail` with a cursor older than the outbox: an error, or with --from-oldest a jump
    that names the lost range."""
    cursor = tmp_path / "old.cursor"
    FileCursorStore(cursor).write(StoredCursor(f"spiffe://{TD}/alpha/web-01", 5))
    refused = _qsc(*_tail_args(pki, g.port, "--cursor-file", cursor, "--count", "2"), check=False)
    assert refused.returncode == 1
    assert f"events 6 to {oldest - 1} are no longer available" in refused.stderr
    jumped = _qsc(
        *_tail_args(pki, g.port, "--cursor-file", cursor, "--count", "2", "--from-oldest")
    )
    assert f"LOST EVENTS: {oldest - 6} events, seq 6 to {oldest - 1}" in jumped.stderr
    assert [int(line.split()[0]) for line in jumped.stdout.splitlines()] == [oldest, oldest + 1]
    assert json.loads(cursor.read_text())["seq"] == oldest + 1


async def wait_produced(pki: Pki, port: int, total: int) -> pb.GetStatusResponse:
    """GetStatus until the synthetic sensor has produced `total` events."""
    channel = open_channel(ChannelConfig(f"127.0.0.1:{port}", pki.files("cortex-c1")))
    try:
        stub = pb_grpc.GuardianServiceStub(channel)
        deadline = time.monotonic() + 20
        while True:
            status = await stub.GetStatus(pb.GetStatusRequest())
            produced = sum(s.events for s in status.sensors if s.name == "synthetic")
            if produced >= total:
                return status
            assert time.monotonic() < deadline, f"synthetic source produced {produced}"
            await asyncio.sleep(0.05)
    finally:
        await channel.close(None)


# --- (d) a tampered, replayed or reordered sealed batch is rejected ------------------------------


class _NoSensors:
    def statuses(self) -> list[pb.SensorStatus]:
        return []

    def loss_totals(self) -> pipeline_details_pb2.LossCounters:
        return pipeline_details_pb2.LossCounters()


class MisbehavingServicer(GuardianServicer):
    """The real servicer, with its `nth` sealed batch altered on the way out."""

    mode = "flip"
    nth = 3
    calls = 0

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Any
    ) -> AsyncIterator[pb.SubscribeResponse]:
        self.calls += 1
        n = 0
        held: pb.SubscribeResponse | None = None
        async for response in super().Subscribe(request, context):
            if response.HasField("sealed_batch"):
                n += 1
                if n == self.nth and self.mode == "flip":
                    data = bytearray(response.sealed_batch.ciphertext)
                    data[len(data) // 2] ^= 0x01
                    response.sealed_batch.ciphertext = bytes(data)
                elif n == self.nth and self.mode == "replay":
                    yield response
                    copy = pb.SubscribeResponse()
                    copy.CopyFrom(response)
                    response = copy
                elif n == self.nth and self.mode == "reorder":
                    held = response
                    continue
                elif n == self.nth + 1 and held is not None:
                    yield response
                    response = held
            yield response


@pytest.mark.parametrize(
    ("mode", "nth", "reported", "delivered"),
    [
        ("flip", 3, "sealed batch 3 (seq 21-30)", 20),
        ("replay", 2, "sealed batch 2 (seq 11-20)", 20),
        ("reorder", 2, "sealed batch 3 (seq 21-30)", 10),
    ],
)
def test_an_altered_sealed_batch_aborts_the_stream(
    pki: Pki, tmp_path: Path, mode: str, nth: int, reported: str, delivered: int
) -> None:
    async def run() -> tuple[list[int], GuardianSubscriber, int]:
        files = pki.files("alpha-web-01")
        server = ComponentServer(ServerConfig(tls=files), component="alpha")
        outbox = Outbox.open(tmp_path / "outbox", OutboxConfig(), guardian=REF)
        servicer = MisbehavingServicer(
            outbox=outbox,
            guardian=REF,
            settings=StreamSettings(),
            sealing=SealingIdentity.from_tls(load_tls(files)),
            draining=server.draining,
            status=_NoSensors(),
            retention=timedelta(days=1),
        )
        servicer.mode, servicer.nth = mode, nth
        server.add_service(servicer.binding())
        for i in range(50):
            event = event_pb2.Event(summary=f"event {i}")
            event.time.GetCurrentTime()
            outbox.append(event)
        port = await server.start()
        sub = GuardianSubscriber(sub_config(pki, port, max_batch_events=10))
        seen: list[int] = []
        try:
            with pytest.raises(SealedBatchRejectedError, match=re.escape(reported)) as info:
                await collect(sub, seen)
            assert "failed its integrity check" in str(info.value)
            assert f"spiffe://{TD}/alpha/web-01" in str(info.value)
        finally:
            await server.stop()
            outbox.close()
        return seen, sub, servicer.calls

    seen, sub, calls = asyncio.run(run())
    assert seen == list(range(1, delivered + 1))  # nothing of the bad batch, nothing after it
    assert sub.cursor == delivered
    assert calls == 1  # stopped, not retried


# --- (f) qsc tail as a process ------------------------------------------------------------------


def _tail_args(pki: Pki, port: int, *extra: str | Path) -> list[str | Path]:
    files = pki.files("cortex-c1")
    return [
        "tail",
        f"127.0.0.1:{port}",
        "--cert",
        files.cert,
        "--key",
        files.key,
        "--ca",
        files.ca,
        *extra,
    ]


def test_qsc_tail_count_json_and_cursor_file_resume(
    pki: Pki, finite: GuardianProcess, tmp_path: Path
) -> None:
    cursor = tmp_path / "tail.cursor"
    first = _qsc(
        *_tail_args(pki, finite.port, "--from-oldest", "--count", "5", "--json"),
        "--cursor-file",
        cursor,
        "--guardian-role",
        "alpha",
        "--guardian-host",
        "web-01",
        "--timeout",
        "20",
    )
    events = [json.loads(line) for line in first.stdout.splitlines()]
    assert [int(e["seq"]) for e in events] == [1, 2, 3, 4, 5]
    assert all(e["guardian"]["host"] == "web-01" for e in events)
    assert json.loads(cursor.read_text())["seq"] == 5

    second = _qsc(*_tail_args(pki, finite.port, "--count", "5", "--cursor-file", cursor))
    lines = second.stdout.splitlines()
    assert [int(line.split()[0]) for line in lines] == [6, 7, 8, 9, 10]
    # Readable: seq, time, severity, category, rule, process, detail kind and fields.
    assert any("synthetic." in line and "event-generator[" in line for line in lines)
    assert json.loads(cursor.read_text())["seq"] == 10


def test_qsc_tail_ctrl_c_saves_the_cursor_and_exits_0(
    pki: Pki, finite: GuardianProcess, tmp_path: Path
) -> None:
    cursor = tmp_path / "tail.cursor"
    args = _tail_args(pki, finite.port, "--from", "100", "--cursor-file", cursor)
    # Unbuffered: a buffered readline() would read ahead what communicate() then never sees.
    proc = subprocess.Popen(
        [*QSC, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        bufsize=0,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "qsc tail printed nothing"
        first = proc.stdout.readline()  # the tail is streaming
        assert int(first.split()[0]) == 100
        time.sleep(0.5)  # caught up with the finite guardian: now following
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    printed = [int(first.split()[0])] + [int(line.split()[0]) for line in out.splitlines()]
    assert printed == list(range(100, printed[-1] + 1))
    assert json.loads(cursor.read_text())["seq"] == printed[-1]


def test_qsc_tail_refuses_the_wrong_guardian(pki: Pki, finite: GuardianProcess) -> None:
    out = _qsc(
        *_tail_args(pki, finite.port, "--guardian-role", "beta", "--count", "1"), check=False
    )
    assert out.returncode == 1
    assert "qsc: error: guardian at 127.0.0.1:" in out.stderr
    assert "role 'alpha', expected 'beta'" in out.stderr
    assert out.stdout == ""
