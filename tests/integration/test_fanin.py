"""The fan-in against real guardians: `mesh.guardian.Guardian` servers on 127.0.0.1:0 over mTLS
with PKI certificates, sealed streams, events emitted into their real outboxes.

Guardians run on the test's event loop beside the fan-in (grpc.aio serves and dials in one
loop). A guardian "killed" is stopped with no shutdown grace, so its streams are cut, and comes
back on the same port with the same outbox. Every wait observes what it waits for (the
fan-in's per-guardian state, the consumer's records), with a deadline.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from mesh.channel import ChannelConfig
from mesh.config import TlsFiles
from mesh.stream.cursor import MemoryCursorStore, StoredCursor
from mesh.stream.fanin import (
    ConsumerError,
    FanIn,
    FanInFailedError,
    FanInSource,
    GuardianPhase,
    GuardianState,
)
from mesh.stream.subscriber import (
    DeliveredBatch,
    GuardianIdentityError,
    ReconnectPolicy,
    SubscriberConfig,
)
from tests.integration.guardian_node import HOST, GuardianNode, issue_guardian_pki

TD = "fanin.test"
GUARDIANS = {"web-01": "alpha", "web-02": "alpha", "db-01": "beta"}
DEADLINE = 30.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return issue_guardian_pki(tmp_path_factory.mktemp("pki"), TD, GUARDIANS)


# --- guardians --------------------------------------------------------------------------------


class Node(GuardianNode):
    """One guardian of GUARDIANS with its outbox; start() may run it again on the same port."""

    trust_domain = TD
    roles = GUARDIANS


def source(
    pki: Path, node: Node, *, expected_role: str | None = None, **kwargs: Any
) -> FanInSource:
    config = SubscriberConfig(
        channel=ChannelConfig(f"{HOST}:{node.port}", TlsFiles.in_dir(pki, "cortex-c1")),
        expected_role=expected_role or node.role,
        expected_host=node.host,
        max_batch_events=50,
        heartbeat_interval=timedelta(milliseconds=200),
        idle_timeout=timedelta(seconds=5),
        reconnect=ReconnectPolicy(
            initial_backoff=timedelta(milliseconds=50), max_backoff=timedelta(milliseconds=300)
        ),
    )
    return FanInSource(node.host, config, **kwargs)


async def with_nodes(
    pki: Path, tmp_path: Path, hosts: list[str], body: Callable[..., Coroutine[Any, Any, None]]
) -> None:
    nodes = [Node(pki, h, tmp_path / h) for h in hosts]
    try:
        for node in nodes:
            await node.start()
        await body(*nodes)
    finally:
        for node in nodes:
            await node.stop()


# --- the consumer and waiting ---------------------------------------------------------------


@dataclass
class Recorder:
    """A consumer that records what it accepted, per source, and checks it is never re-entered
    and that no subscriber reads ahead of it."""

    fanin: FanIn | None = None
    delay: float = 0.0
    seqs: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    summaries: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    guardians: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    inside: int = 0
    most_inside: int = 0
    most_read_ahead: int = 0

    async def __call__(self, name: str, batch: DeliveredBatch) -> None:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            if self.fanin is not None:
                for state in self.fanin.states().values():
                    ahead = state.received_batches - state.batches
                    self.most_read_ahead = max(self.most_read_ahead, ahead)
            if self.delay:
                await asyncio.sleep(self.delay)
            self.seqs[name].extend(e.seq for e in batch.events)
            self.summaries[name].extend(e.summary for e in batch.events)
            self.guardians[name].add(batch.guardian)
        finally:
            self.inside -= 1


async def until(cond: Callable[[], bool], what: str, run: asyncio.Task[None]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not cond():
        if run.done():
            run.result()
            raise AssertionError(f"the fan-in stopped before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def caught_up(fanin: FanIn, *nodes: Node) -> Callable[[], bool]:
    def check() -> bool:
        states = fanin.states()
        return all(states[n.host].cursor == n.last_seq for n in nodes)

    return check


async def shut(fanin: FanIn, run: asyncio.Task[None]) -> None:
    fanin.stop()
    await asyncio.wait_for(run, 10)


def assert_exactly_once(recorder: Recorder, node: Node) -> None:
    seqs = recorder.seqs[node.host]
    assert seqs == list(range(1, node.last_seq + 1)), f"{node.host}: not each seq once, in order"
    assert recorder.summaries[node.host] == [f"{node.host} {i}" for i in range(node.emitted)]
    assert recorder.guardians[node.host] == {node.spiffe_id}


# --- every event of every guardian, once ------------------------------------------------------


def test_every_event_of_every_guardian_arrives_exactly_once(pki: Path, tmp_path: Path) -> None:
    async def body(*nodes: Node) -> None:
        for i, node in enumerate(nodes):
            node.emit(300 - 100 * i)
        stores = {n.host: MemoryCursorStore() for n in nodes}
        recorder = Recorder(delay=0.002)  # slower than the guardians: back-pressure
        fanin = FanIn([source(pki, n, cursor_store=stores[n.host]) for n in nodes], recorder)
        recorder.fanin = fanin
        run = asyncio.create_task(fanin.run())
        await until(caught_up(fanin, *nodes), "the first events", run)
        for node in nodes:  # and more while streaming
            node.emit(250)
        await until(caught_up(fanin, *nodes), "every event", run)
        states = fanin.states()
        await shut(fanin, run)

        assert list(states) == [n.host for n in nodes]
        for node in nodes:
            assert_exactly_once(recorder, node)
            state = states[node.host]
            assert state.phase is GuardianPhase.CONNECTED
            assert state.guardian == node.spiffe_id
            assert state.events == node.last_seq
            assert state.batches >= node.last_seq // 50
            assert state.last_batch_at is not None
            assert state.error is None
            # Committed through the store once accepted: a restart resumes after the last one.
            assert stores[node.host].cursor == StoredCursor(node.spiffe_id, node.last_seq)
        assert recorder.most_inside == 1  # one consumer call at a time
        assert recorder.most_read_ahead <= 1  # no subscriber reads past its unaccepted batch
        assert all(s.phase is GuardianPhase.STOPPED for s in fanin.states().values())

    asyncio.run(with_nodes(pki, tmp_path, list(GUARDIANS), body))


# --- a guardian killed and restarted resumes; the others go on -------------------------------


def test_a_killed_guardian_resumes_after_its_restart_while_the_others_go_on(
    pki: Path, tmp_path: Path
) -> None:
    async def body(a: Node, b: Node) -> None:
        a.emit(200)
        b.emit(200)
        recorder = Recorder()
        fanin = FanIn([source(pki, a), source(pki, b)], recorder)
        run = asyncio.create_task(fanin.run())
        await until(caught_up(fanin, a, b), "both guardians' first events", run)

        await a.stop()  # its streams are cut
        down = fanin.states()
        await until(
            lambda: fanin.states()[a.host].phase is GuardianPhase.RECONNECTING,
            "the fan-in to see the guardian gone",
            run,
        )
        b.emit(150)  # b goes on while a is down
        await until(caught_up(fanin, b), "b's events while a is down", run)
        assert fanin.states()[a.host].phase is GuardianPhase.RECONNECTING
        assert fanin.states()[a.host].cursor == down[a.host].cursor

        await a.start()  # same port, same outbox
        a.emit(180)
        await until(caught_up(fanin, a, b), "a's events after its restart", run)
        states = fanin.states()
        await shut(fanin, run)

        assert_exactly_once(recorder, a)
        assert_exactly_once(recorder, b)
        assert states[a.host].phase is GuardianPhase.CONNECTED
        assert states[a.host].reconnects >= 1
        assert states[a.host].connects >= 2
        assert states[a.host].last_error
        assert states[b.host].reconnects == 0

    asyncio.run(with_nodes(pki, tmp_path, ["web-01", "web-02"], body))


# --- a guardian of the wrong role fails alone ---------------------------------------------------


def test_a_guardian_of_the_wrong_role_is_reported_failed_and_the_others_go_on(
    pki: Path, tmp_path: Path
) -> None:
    async def body(good: Node, wrong: Node) -> None:
        good.emit(120)
        wrong.emit(50)
        recorder = Recorder()
        fanin = FanIn([source(pki, wrong, expected_role="beta"), source(pki, good)], recorder)
        run = asyncio.create_task(fanin.run())
        await until(
            lambda: fanin.states()[wrong.host].phase is GuardianPhase.FAILED,
            "the wrong guardian to be reported failed",
            run,
        )
        await until(caught_up(fanin, good), "the good guardian's events", run)
        good.emit(80)  # still streaming after the other's failure
        await until(caught_up(fanin, good), "the good guardian's later events", run)
        failed: GuardianState = fanin.states()[wrong.host]
        await shut(fanin, run)

        assert isinstance(failed.error, GuardianIdentityError)
        assert "role 'alpha'" in failed.last_error
        assert failed.connects == 0
        assert failed.batches == 0
        assert wrong.host not in recorder.seqs  # nothing of it was delivered
        assert_exactly_once(recorder, good)
        assert fanin.states()[wrong.host].phase is GuardianPhase.FAILED

        # A fan-in whose every guardian failed says so instead of idling.
        alone = FanIn([source(pki, wrong, expected_role="beta")], Recorder())
        with pytest.raises(FanInFailedError, match=r"web-02: guardian at .* failed verification"):
            await asyncio.wait_for(alone.run(), 10)

    asyncio.run(with_nodes(pki, tmp_path, ["web-01", "web-02"], body))


# --- the cursor committed by the consumer, in its own transaction ------------------------------


class SqliteCursorStore:
    """The cursor of one source, in a row of the consumer's own database."""

    def __init__(self, db: sqlite3.Connection, source: str) -> None:
        self.db = db
        self.source = source

    def __str__(self) -> str:
        return f"cursor row {self.source!r}"

    async def load(self) -> StoredCursor | None:
        row = self.db.execute(
            "SELECT guardian, seq FROM cursors WHERE source = ?", (self.source,)
        ).fetchone()
        return None if row is None else StoredCursor(row[0], row[1])

    async def commit(self, cursor: StoredCursor) -> None:
        with self.db:
            upsert_cursor(self.db, self.source, cursor)


def upsert_cursor(db: sqlite3.Connection, source: str, cursor: StoredCursor) -> None:
    db.execute(
        "INSERT INTO cursors (source, guardian, seq) VALUES (?, ?, ?) "
        "ON CONFLICT (source) DO UPDATE SET guardian = excluded.guardian, seq = excluded.seq",
        (source, cursor.guardian, cursor.seq),
    )


def open_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    with db:
        # No OR IGNORE: an event stored twice fails the consumer, and so the test.
        db.execute(
            "CREATE TABLE IF NOT EXISTS events "
            "(source TEXT, seq INTEGER, summary TEXT, PRIMARY KEY (source, seq))"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS cursors "
            "(source TEXT PRIMARY KEY, guardian TEXT, seq INTEGER)"
        )
    return db


@dataclass
class SqliteConsumer:
    """Stores each batch and its cursor in one transaction; can be made to crash mid-way."""

    db: sqlite3.Connection
    crash_on_call: int | None = None
    calls: int = 0
    first_seqs: dict[str, int] = field(default_factory=dict)

    async def __call__(self, name: str, batch: DeliveredBatch) -> None:
        self.calls += 1
        self.first_seqs.setdefault(name, batch.first_seq)
        with self.db:  # one transaction: the events and the cursor, or neither
            self.db.executemany(
                "INSERT INTO events (source, seq, summary) VALUES (?, ?, ?)",
                [(name, e.seq, e.summary) for e in batch.events],
            )
            if self.calls == self.crash_on_call:
                raise RuntimeError("the consumer crashed mid-transaction")
            upsert_cursor(self.db, name, batch.cursor)


def test_a_cursor_committed_with_the_events_gives_exactly_once_across_a_consumer_restart(
    pki: Path, tmp_path: Path
) -> None:
    path = tmp_path / "cortex.db"

    def sources(db: sqlite3.Connection, *nodes: Node) -> list[FanInSource]:
        return [
            source(pki, n, cursor_store=SqliteCursorStore(db, n.host), consumer_commits=True)
            for n in nodes
        ]

    async def body(a: Node, b: Node) -> None:
        a.emit(400)
        b.emit(300)
        # First run: the consumer crashes on its 5th batch, inside its transaction.
        db = open_db(path)
        crashing = SqliteConsumer(db, crash_on_call=5)
        first = FanIn(sources(db, a, b), crashing)
        with pytest.raises(ConsumerError, match="consumer failed on the batch") as info:
            await asyncio.wait_for(first.run(), DEADLINE)
        assert isinstance(info.value.__cause__, RuntimeError)
        stored = dict(db.execute("SELECT source, seq FROM cursors").fetchall())
        counted = dict(db.execute("SELECT source, count(*) FROM events GROUP BY source"))
        db.close()
        assert sum(stored.values()) == 4 * 50  # four whole batches of 50, not the fifth
        assert counted == stored  # the cursor says exactly what is stored

        # The restarted consumer: a new connection, new stores, a new fan-in.
        db = open_db(path)
        consumer = SqliteConsumer(db)
        second = FanIn(sources(db, a, b), consumer)
        run = asyncio.create_task(second.run())
        a.emit(100)
        await until(caught_up(second, a, b), "every event after the restart", run)
        await shut(second, run)

        for node in (a, b):
            # Resumed right after what the first run committed: nothing replayed, nothing lost.
            assert consumer.first_seqs[node.host] == stored.get(node.host, 0) + 1
            rows = db.execute(
                "SELECT seq, summary FROM events WHERE source = ? ORDER BY seq", (node.host,)
            ).fetchall()
            assert [r[0] for r in rows] == list(range(1, node.last_seq + 1))
            assert [r[1] for r in rows] == [f"{node.host} {i}" for i in range(node.emitted)]
            cursor = await SqliteCursorStore(db, node.host).load()
            assert cursor == StoredCursor(node.spiffe_id, node.last_seq)
        db.close()

    asyncio.run(with_nodes(pki, tmp_path, ["web-01", "db-01"], body))
