"""A damaged outbox under a real guardian and a real subscriber: loss is reported, never silent.

The guardian runs as `python -m mesh.guardian` (synthetic source) on 127.0.0.1 over mTLS with
certificates from `qsc pki`, as in `test_guardian_stream.py`, whose harness this reuses; the
subscriber is the library, in this process. Between two runs of the guardian its outbox is
damaged as bit rot, a disk that lied about fsync or a snapshot restore would: the last segment
loses a few bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from mesh.stream.subscriber import GuardianSubscriber
from qsc.common.v1 import event_pb2, pipeline_details_pb2
from tests.e2e.test_guardian_stream import (  # the shared harness: fixtures and helpers
    GuardianProcess,
    Pki,
    caught_up,
    consume,
    guardians,
    pki,
    sub_config,
    until,
    wait_produced,
)

__all__ = ["guardians", "pki"]  # fixtures, used by name


def _last_segment(outbox: Path) -> Path:
    return sorted(outbox.glob("*.seg"))[-1]


def test_a_truncated_tail_is_reported_and_no_seq_is_reused(
    pki: Pki, guardians: Callable[..., GuardianProcess]
) -> None:
    g = guardians()
    first_run, second_run = 300, 200

    async def run() -> tuple[list[event_pb2.Event], int, list[int]]:
        port = await g.start(rate=3000, total=first_run, batch=16)
        sub = GuardianSubscriber(sub_config(pki, port))
        seen: list[event_pb2.Event] = []
        task = asyncio.create_task(consume(sub, seen))
        await wait_produced(pki, port, first_run)
        await caught_up(sub, task)
        committed = sub.cursor
        assert await asyncio.to_thread(g.terminate) == 0
        await until(lambda: sub.stats.reconnects >= 1, "the stream to end", task)
        # Down: every record the outbox held, then the damage.
        before = [s for s, _ in g.stored_seqs()]
        segment = _last_segment(g.outbox_dir)
        os.truncate(segment, segment.stat().st_size - 3)
        await g.start(rate=3000, total=second_run, batch=16)
        await until(lambda: sub.stats.gap_events >= 1, "the gap event", task)
        await caught_up(sub, task)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return seen, committed, before

    seen, committed, before = asyncio.run(run())
    assert g.terminate() == 0
    assert committed >= before[-1] - 5  # the subscriber held (nearly) everything
    lost = before[-1]  # the record the missing bytes belonged to

    seqs = [e.seq for e in seen]
    assert seqs == sorted(set(seqs)), "a seq was delivered twice or out of order"
    gaps = [e for e in seen if e.HasField("gap")]
    assert [(e.gap.first_seq, e.gap.last_seq, e.gap.count) for e in gaps] == [(lost, lost, 1)]
    assert gaps[0].gap.reason == pipeline_details_pb2.GAP_REASON_MISSING_RECORDS

    stored = g.stored_seqs()
    # Everything the guardian numbered after the restart got a number never issued before...
    new = [s for s, _ in stored if s > lost]
    assert len(new) >= second_run
    # ...and reached the subscriber: nothing skipped, nothing the outbox does not hold.
    assert [s for s in seqs if s > committed] == [s for s, _ in stored if s > committed]
    assert len([e for e in seen if e.seq > lost]) == len(new)


def test_the_lifetime_dropped_count_survives_a_restart(
    pki: Pki, guardians: Callable[..., GuardianProcess]
) -> None:
    g = guardians(outbox={"segment_bytes": 4096, "disk_budget_bytes": 16384})

    async def run() -> tuple[int, int]:
        port = await g.start(rate=20_000, total=80, batch=8)
        dropped = (await wait_produced(pki, port, 80)).outbox.dropped
        assert await asyncio.to_thread(g.terminate) == 0
        port = await g.start(rate=20_000, total=1, batch=1)
        return dropped, (await wait_produced(pki, port, 1)).outbox.dropped

    before, after = asyncio.run(run())
    assert before > 0
    assert after >= before  # documented as a lifetime count: it never goes back
