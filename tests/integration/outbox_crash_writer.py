"""A guardian-like outbox writer for the kill -9 test: appends forever, acknowledging each event.

    python tests/integration/outbox_crash_writer.py DIR FSYNC SEED

On start it prints ``# opened last=N truncated=B``. Then it appends events of random sizes, alone
or in batches, and only after ``append``/``append_many`` returned prints one line per event,
``<seq> <hex of the serialized event>``, flushed. A line on stdout is therefore an
acknowledgement: the test kills this process at random moments and checks every acknowledged event
survived exactly.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mesh.stream.outbox import Outbox, OutboxConfig
from qsc.common.v1 import classification_pb2, event_pb2, identity_pb2

GUARDIAN = identity_pb2.GuardianRef(id="alpha-crash", role=identity_pb2.ROLE_ALPHA, host="crash")


def config(fsync: str) -> OutboxConfig:
    """Small segments so kills land around rollovers too; a budget that never drops."""
    return OutboxConfig(
        segment_bytes=64 * 1024,
        disk_budget_bytes=1 << 30,
        fsync="always" if fsync == "always" else "interval",
    )


def make_event(rng: random.Random, n: int) -> event_pb2.Event:
    event = event_pb2.Event(
        id=f"{rng.getrandbits(64):016x}-{n}",
        severity=classification_pb2.SEVERITY_HIGH,
        category=classification_pb2.CATEGORY_FILE,
        summary="cat read /etc/shadow " + "z" * rng.randrange(0, 600),
    )
    event.process.pid = rng.randrange(1, 1 << 22)
    event.process.args.extend(["cat", "/etc/shadow"])
    event.time.FromNanoseconds(rng.getrandbits(62))
    return event


def main(argv: list[str]) -> None:
    directory, fsync, seed = Path(argv[0]), argv[1], int(argv[2])
    rng = random.Random(seed)
    box = Outbox.open(directory, config(fsync), guardian=GUARDIAN)
    print(f"# opened last={box.last_seq} truncated={box.status().truncated_bytes}", flush=True)
    n = 0
    while True:
        size = 1 if rng.random() < 0.4 else rng.randrange(2, 65)
        batch = [make_event(rng, n + i) for i in range(size)]
        n += size
        if size == 1:
            box.append(batch[0])
        else:
            box.append_many(batch)
        sys.stdout.write("".join(f"{e.seq} {e.SerializeToString().hex()}\n" for e in batch))
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
