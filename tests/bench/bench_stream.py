"""Guardian stream benchmark, end to end: produce -> outbox -> Subscribe -> client decode.

Run: ``.venv/bin/python tests/bench/bench_stream.py`` (``make bench``). Not a test: it prints
figures and asserts nothing. A real guardian process (``python -m mesh.guardian``, synthetic event
source, mTLS on 127.0.0.1) produces; this process subscribes with ``mesh.stream.subscriber``,
sealed (cortex certificate) and unsealed (operator certificate), and decodes every batch.

Scenarios:

* **max**: the synthetic source appends as fast as it can (batches of 512) while the subscriber
  follows live; events/s is produced events over the time from the first event's ``time`` to the
  moment the client holds the last one. Then **replay**: a second subscription reads the same
  events back from the outbox, no production (Subscribe -> decode alone).
* **steady**: 10,000 events/s for a few seconds; latency is the client's wall clock when it holds
  the decoded event minus the event's ``time`` (stamped by the guardian at produce, same host
  clock). The guardian may hold a partial batch up to ``max_batch_delay`` (its own default) waiting
  for more events; a latency-sensitive subscriber lowers it with its hint: both are shown.

CPU seconds: the guardian's from /proc/PID/stat, the client's from ``time.process_time``, both
over the measured window only. About 25 seconds on 2 vCPUs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from crypto.pki import init_ca, issue_leaf, write_leaf
from mesh.channel import ChannelConfig
from mesh.config import TlsFiles
from mesh.stream.subscriber import GuardianSubscriber, ReconnectPolicy, SubscriberConfig
from tests.bench.guardian_proc import GuardianProcess

MAX_TOTAL = 300_000
STEADY_RATE = 10_000
STEADY_SECONDS = 5.0
LATENCY_SAMPLE = 4  # every 4th event: enough for p99, cheap for the client


@dataclass
class Result:
    name: str
    events: int
    seconds: float
    guardian_cpu: float | None
    client_cpu: float
    latencies_ms: list[float]

    def row(self) -> str:
        rate = self.events / self.seconds if self.seconds > 0 else 0.0
        gcpu = "-" if self.guardian_cpu is None else f"{self.guardian_cpu:.2f}"
        if self.latencies_ms:
            qs = statistics.quantiles(self.latencies_ms, n=100, method="inclusive")
            lat = f"{qs[49]:>8.1f}{qs[89]:>8.1f}{qs[98]:>8.1f}"
        else:
            lat = f"{'-':>8}{'-':>8}{'-':>8}"
        return (
            f"{self.name:<40}{self.events:>9,}{self.seconds:>8.2f}{rate:>11,.0f}"
            f"{gcpu:>8}{self.client_cpu:>8.2f}{lat}"
        )


HEADER = (
    f"{'scenario':<40}{'events':>9}{'secs':>8}{'events/s':>11}{'g.CPU':>8}{'c.CPU':>8}"
    f"{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}"
)


def make_pki(base: Path) -> None:
    ca = init_ca(base, "bench.test")
    write_leaf(issue_leaf(ca, "alpha", "bench-01", ips=["127.0.0.1"]), base, ca.cert)
    write_leaf(issue_leaf(ca, "cortex", "c1"), base, ca.cert)
    write_leaf(issue_leaf(ca, "operator", "ops-1"), base, ca.cert)


def subscriber(pki: Path, port: int, *, sealed: bool, delay_ms: int | None) -> GuardianSubscriber:
    stem = "cortex-c1" if sealed else "operator-ops-1"
    config = SubscriberConfig(
        channel=ChannelConfig(f"127.0.0.1:{port}", TlsFiles.in_dir(pki, stem)),
        expected_role="alpha",
        expected_host="bench-01",
        sealed=sealed,
        max_batch_delay=None if delay_ms is None else timedelta(milliseconds=delay_ms),
        reconnect=ReconnectPolicy(give_up_after=timedelta(seconds=30)),
    )
    return GuardianSubscriber(config)


async def receive(
    sub: GuardianSubscriber, total: int, guardian: GuardianProcess | None, name: str
) -> Result:
    """Consume until `total` events; the window starts at the first event's produce time."""
    latencies: list[float] = []
    count = 0
    first_time: float | None = None
    cpu0 = time.process_time()
    g0 = guardian.cpu() if guardian is not None else None
    start = time.time()
    async with contextlib.aclosing(sub.batches()) as batches:
        async for batch in batches:
            now = time.time()
            events = batch.events
            if first_time is None:
                t = events[0].time
                first_time = t.seconds + t.nanos / 1e9
            for event in events[::LATENCY_SAMPLE]:
                t = event.time
                latencies.append((now - (t.seconds + t.nanos / 1e9)) * 1000)
            count += len(events)
            if count >= total:
                break
    end = time.time()
    client_cpu = time.process_time() - cpu0
    gcpu = guardian.cpu() - g0 if guardian is not None and g0 is not None else None
    # Live: from the first event's production; replay: from the subscription's start.
    began = start if guardian is None or first_time is None else min(start, first_time)
    return Result(name, count, end - began, gcpu, client_cpu, latencies)


async def live(
    pki: Path,
    work: Path,
    name: str,
    *,
    sealed: bool,
    rate: float,
    total: int,
    batch: int,
    delay_ms: int | None,
    replay: bool,
) -> list[Result]:
    guardian = GuardianProcess(pki, work, rate=rate, total=total, batch=batch)
    try:
        port = await guardian.port()
        sub = subscriber(pki, port, sealed=sealed, delay_ms=delay_ms)
        results = [await receive(sub, total, guardian, name)]
        if replay:
            again = subscriber(pki, port, sealed=sealed, delay_ms=delay_ms)
            g0 = guardian.cpu()
            result = await receive(again, total, None, name.replace("live", "replay"))
            result.guardian_cpu = guardian.cpu() - g0
            result.latencies_ms = []  # stored events are old: latency means nothing here
            results.append(result)
        return results
    finally:
        guardian.stop()


async def main() -> None:
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; guardian and client are "
        "separate processes on this host"
    )
    print(HEADER)
    with tempfile.TemporaryDirectory(prefix="qsc-bench-stream-") as tmp:
        base = Path(tmp)
        pki = base / "pki"
        make_pki(pki)
        runs: list[Result] = []
        for sealed in (True, False):
            kind = "sealed" if sealed else "unsealed"
            for result in await live(
                pki,
                base / f"max-{kind}",
                f"max {kind} (live)",
                sealed=sealed,
                rate=1e9,
                total=MAX_TOTAL,
                batch=512,
                delay_ms=None,
                replay=True,
            ):
                print(result.row(), flush=True)
                runs.append(result)
        steady_total = int(STEADY_RATE * STEADY_SECONDS)
        for sealed, delay in ((True, 10), (False, 10), (True, None)):
            kind = "sealed" if sealed else "unsealed"
            hint = "no delay hint" if delay is None else f"delay hint {delay} ms"
            name = f"steady 10k/s {kind} ({hint})"
            work = base / f"steady-{kind}-{delay}"
            for result in await live(
                pki,
                work,
                name,
                sealed=sealed,
                rate=STEADY_RATE,
                total=steady_total,
                batch=64,
                delay_ms=delay,
                replay=False,
            ):
                print(result.row(), flush=True)
                runs.append(result)
    rate = {r.name: r.events / r.seconds for r in runs}
    steady = next(r for r in runs if r.name.startswith("steady 10k/s sealed (delay"))
    p99 = statistics.quantiles(steady.latencies_ms, n=100, method="inclusive")[98]
    print()
    print(
        f"goal >= 100,000 events/s sealed: {rate['max sealed (live)']:,.0f} live end to end "
        f"(bounded by the guardian producing), {rate['max sealed (replay)']:,.0f} from the outbox"
    )
    print(f"goal p99 < 50 ms at a steady 10,000 events/s (sealed, 10 ms hint): p99 {p99:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
