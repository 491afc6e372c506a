"""kill -9 a real outbox writer at random moments: nothing acknowledged is ever lost.

The writer (outbox_crash_writer.py) prints each event only after its append returned. Between
rounds the outbox is reopened, by the next writer (its own crash recovery) or by this test, which
then checks every acknowledged seq is stored with exactly the event acknowledged and the numbering
has no hole.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mesh.stream.outbox import Outbox, OutboxConfig
from qsc.common.v1 import event_pb2, identity_pb2

HERE = Path(__file__).resolve().parent
WRITER = HERE / "outbox_crash_writer.py"
REPO = HERE.parents[1]
ROUNDS = 6
GUARDIAN = identity_pb2.GuardianRef(id="alpha-crash", role=identity_pb2.ROLE_ALPHA, host="crash")
CONFIG = OutboxConfig(segment_bytes=64 * 1024, disk_budget_bytes=1 << 30)


def parse(payload: bytes) -> event_pb2.Event:
    event = event_pb2.Event()
    event.ParseFromString(payload)
    return event


def run_and_kill(directory: Path, fsync: str, seed: int, delay: float) -> list[str]:
    """Start a writer, let it acknowledge for about ``delay`` s, SIGKILL it; its stdout lines."""
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(directory), fsync, str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    lines: list[str] = []
    first_ack = threading.Event()

    def drain() -> None:  # keep the pipe empty so the writer never blocks on stdout
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if not line.startswith("#"):
                first_ack.set()

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        if not first_ack.wait(60):
            proc.kill()
            pytest.fail(f"writer acknowledged nothing: {proc.stderr.read()}")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
        reader.join(30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    proc.stderr.close()
    return lines


def verify(directory: Path, acknowledged: dict[int, bytes]) -> int:
    """Every acknowledged event stored exactly, numbering without holes; returns the last seq."""
    with Outbox.open(directory, CONFIG, guardian=GUARDIAN) as box:
        records = box.read_after(0, 1 << 40, 1 << 40)
        assert [r.seq for r in records] == list(range(1, box.last_seq + 1))
        assert box.status().corrupted_total == 0
        stored = {r.seq: r.payload for r in records}
        missing = sorted(set(acknowledged) - set(stored))
        assert not missing, f"acknowledged but lost: {missing[:10]}"
        for seq, payload in acknowledged.items():
            assert parse(stored[seq]) == parse(payload), seq
        return box.last_seq


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    directory = tmp_path / "outbox"
    acknowledged: dict[int, bytes] = {}
    cut = 0
    for round_ in range(ROUNDS):
        fsync = "always" if round_ % 3 == 2 else "interval"
        lines = run_and_kill(directory, fsync, seed + round_, rng.uniform(0.0, 0.4))
        header, *events = lines
        opened_last = int(header.split()[2].removeprefix("last="))
        cut += int(header.split()[3].removeprefix("truncated="))
        # The writer resumed right after everything acknowledged before.
        assert opened_last >= max(acknowledged, default=0), f"seed {seed}"
        complete = [line.split() for line in events if line.endswith("\n")]
        assert complete, f"seed {seed}: round {round_} acknowledged nothing"
        assert int(complete[0][0]) == opened_last + 1
        for seq, payload in complete:
            acknowledged[int(seq)] = bytes.fromhex(payload)
        if round_ % 2:  # otherwise the next writer recovers from the kill itself
            verify(directory, acknowledged)
    last = verify(directory, acknowledged)
    with Outbox.open(directory, CONFIG, guardian=GUARDIAN) as box:
        assert box.append(event_pb2.Event(summary="after the last kill")) == last + 1
    print(f"seed {seed}: {len(acknowledged)} acknowledged of {last}; {cut} torn bytes cut")
