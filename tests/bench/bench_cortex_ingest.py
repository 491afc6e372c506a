"""Cortex ingest, end to end: 10 guardians -> sealed Subscribe streams -> the Cortex's store.

Run: ``.venv/bin/python tests/bench/bench_cortex_ingest.py [--events N] [--synchronous S]``
(``make bench``). Not a test: it prints figures and asserts nothing.

Ten real guardian processes (``python -m mesh.guardian``, synthetic source, mTLS on 127.0.0.1,
one certificate each) first fill their outboxes with N/10 events each. Then a real Cortex
(``cortex.app.Cortex``, in this process so its time can be split) starts with the ten in its
guardian list and catches up over sealed streams: every event opened, checked, sealed again under
the store key, chained, blind-indexed and stored with its cursor in one transaction. Events/s is
N over the time from the Cortex's start to the moment every cursor is at its outbox's end.

CPU seconds come from /proc/PID/stat for the guardians and from ``time.process_time`` for the
Cortex; "the store" is the CPU time of the thread inside ``append_batch``, the rest of the
Cortex's CPU is the streams (TLS, unsealing, protobuf) and the event loop. The guardians
only serve their outboxes during the measured window (their producing is over).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cortex.app import Cortex
from cortex.config import load_cortex_config
from crypto.keyring import KeyManager
from crypto.pki import init_ca, issue_leaf, write_leaf
from mesh.config import TlsFiles
from tests.bench.guardian_proc import GuardianProcess

GUARDIANS = 10


def host(i: int) -> str:
    return f"bench-{i:02d}"


def cortex_toml(
    base: Path, pki: Path, guardians: Sequence[tuple[str, int]], sync: str, extra: str = ""
) -> str:
    """A Cortex config following alpha guardians (id, port), id `alpha-<host>`; `extra` adds
    sections (the latency bench's [correlation])."""
    tls = TlsFiles.in_dir(pki, "cortex-c1")
    text = f"""
[server]
listen = "127.0.0.1:0"
shutdown_grace = "0s"
tls = {{ cert = "{tls.cert}", key = "{tls.key}", ca = "{tls.ca}" }}
[store]
directory = "{base / "store"}"
synchronous = "{sync}"
[keyring]
directory = "{base / "keys"}"
{extra}
[log]
level = "warning"
"""
    for gid, port in guardians:
        text += f"""
[[guardians]]
id = "{gid}"
address = "127.0.0.1:{port}"
role = "alpha"
host = "{gid.removeprefix("alpha-")}"
"""
    return text


class Timed:
    """Wraps the store's append_batch to add up the CPU time of the thread inside it (the
    wall time would count waiting for the GIL too)."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *args: Any) -> Any:
        t = time.thread_time()
        try:
            return self.fn(*args)
        finally:
            self.seconds += time.thread_time() - t
            self.calls += 1


async def run(events: int, sync: str) -> None:
    per = events // GUARDIANS
    with tempfile.TemporaryDirectory(prefix="qsc-bench-ingest-") as tmp:
        base = Path(tmp)
        pki = base / "pki"
        pki.mkdir()
        ca = init_ca(pki, "bench.test")
        for i in range(GUARDIANS):
            write_leaf(issue_leaf(ca, "alpha", host(i), ips=["127.0.0.1"]), pki, ca.cert)
        write_leaf(issue_leaf(ca, "cortex", "c1"), pki, ca.cert)
        KeyManager.create(base / "keys", "cortex")

        print(f"== filling {GUARDIANS} guardian outboxes with {per:,} events each")
        guardians = [
            GuardianProcess(
                pki, base / host(i), host=host(i), rate=1e6, total=per, batch=512, log_level="info"
            )
            for i in range(GUARDIANS)
        ]
        try:
            ports = [await g.port() for g in guardians]
            t = time.perf_counter()
            for g in guardians:
                await g.produced()
            print(f"  produced {per * GUARDIANS:,} events in {time.perf_counter() - t:.1f} s")

            config_path = base / "cortex.toml"
            config_path.write_text(
                cortex_toml(
                    base, pki, [(g.id, p) for g, p in zip(guardians, ports, strict=True)], sync
                )
            )
            config = load_cortex_config(config_path, env={})
            cortex = Cortex(config, config_path=config_path)
            timed = Timed(cortex.store.append_batch)
            cortex.store.append_batch = timed  # type: ignore[method-assign,assignment]
            g_cpu0 = [g.cpu() for g in guardians]
            c_cpu0 = time.process_time()
            started = time.perf_counter()
            await cortex.start()
            print(f"== Cortex catching up over {GUARDIANS} sealed streams (synchronous={sync})")
            next_report = started + 2
            while True:
                cursors = [cortex.store.cursor(g.id) for g in guardians]
                done = sum(c.seq for c in cursors if c is not None)
                now = time.perf_counter()
                if done >= per * GUARDIANS:
                    break
                if now >= next_report:
                    print(f"  {done:>10,} stored, {done / (now - started):,.0f} events/s so far")
                    next_report = now + 2
                await asyncio.sleep(0.02)
            wall = time.perf_counter() - started
            c_cpu = time.process_time() - c_cpu0
            g_cpu = sum(g.cpu() - c0 for g, c0 in zip(guardians, g_cpu0, strict=True))
            await cortex.stop()
        finally:
            for g in guardians:
                g.stop()
        n = per * GUARDIANS
        print(f"  {n:,} events stored in {wall:.2f} s: {n / wall:,.0f} events/s")
        print(
            f"  CPU: Cortex {c_cpu:.2f} s ({c_cpu / wall:.0%} of a core), "
            f"10 guardians {g_cpu:.2f} s ({g_cpu / wall:.0%}), machine has {os.cpu_count()} cores"
        )
        print(
            f"  where the Cortex's CPU goes: the store (append_batch) {timed.seconds:.2f} s over "
            f"{timed.calls:,} batches ({timed.seconds / n * 1e6:.1f} us/event, "
            f"{n / max(timed.calls, 1):.0f} events/batch); streams, unsealing and the loop "
            f"{max(c_cpu - timed.seconds, 0):.2f} s ({max(c_cpu - timed.seconds, 0) / n * 1e6:.1f}"
            " us/event)"
        )
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  peak RSS of the Cortex process: {rss:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    args = ap.parse_args()
    asyncio.run(run(args.events, args.synchronous))


if __name__ == "__main__":
    main()
