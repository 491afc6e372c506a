"""The correlation engine with every default rule: cost per event, throughput, memory.

Run: ``.venv/bin/python tests/bench/bench_cortex_correlate.py`` (``make bench``). Not a test: it
prints figures and asserts nothing. One process, one core, the engine alone (no store, no
streams):

* **max**: events/s through `Correlator.observe` for a mix shaped like a fleet's alert stream
  (about one event in three matches some step of a default rule; hosts, users, addresses and
  process trees drawn from pools, so keys repeat and states live).
* **steady**: 10,000 events/s paced for a few seconds; per-event latency of `observe` p50/p99.
* **memory**: RSS growth with 100,000 open correlation keys (distinct hosts opening the
  fileless sequence, which waits for its second step).
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cortex.correlate import Correlator, load_files
from tests.unit.correlate_events import ev

MAX_EVENTS = 200_000
STEADY_RATE = 10_000
STEADY_SECONDS = 3.0
OPEN_KEYS = 100_000
PAGE = os.sysconf("SC_PAGE_SIZE")

MIX = [  # (weight, rule id, kind, extra)
    (20, "alpha.exec_from_tmp", "process_exec", {}),
    (15, "beta.fim.content_changed", "file_integrity", {"path": "/srv/data/f"}),
    (10, "alpha.credential_stuffing", "auth_event", {}),
    (8, "alpha.outbound_port_scan", "port_scan", {}),
    (8, "alpha.sensitive_file_read", "file_access", {"path": "/etc/shadow"}),
    (6, "", "network_connection", {}),
    (5, "alpha.login_new_source", "auth_event", {}),
    (5, "alpha.large_outbound_transfer", "transfer_volume", {}),
    (4, "alpha.memfd_exec", "process_exec", {}),
    (4, "alpha.rwx_memory", "memory_threat", {}),
    (3, "", "process_exit", {}),
    (3, "alpha.log_clearing", "file_access", {"path": "/var/log/auth.log"}),
    (3, "", "backup_integrity", {}),
    (2, "", "anomaly_score", {}),
    (2, "cortex.guardian_lost", "", {}),
    (2, "alpha.sudoers_modified", "file_access", {"path": "/etc/sudoers"}),
]


def make_events(n: int, rng: random.Random) -> list:  # type: ignore[type-arg]
    weights = [m[0] for m in MIX]
    out = []
    for i in range(n):
        _, rule, kind, extra = rng.choices(MIX, weights)[0]
        host = f"host-{rng.randrange(200)}"
        tree = f"x{rng.randrange(2000)}"
        out.append(
            ev(
                rule,
                kind,
                host=host,
                at=i / 10_000,
                severity=rng.choice(["low", "medium", "high"]),
                user=f"user{rng.randrange(50)}",
                source=f"203.0.113.{rng.randrange(250)}",
                exec_id=f"{tree}-{i % 7}",
                ancestry=(tree, "init"),
                labels={"guardian.host": host} if rule.startswith("cortex.") else None,
                **extra,
            )
        )
    return out


def rss_mib() -> float:
    """This process's resident set now (not the peak)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * PAGE / 2**20


def pct(values: list[float], p: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * p))]


def main() -> None:
    rules = load_files()
    rng = random.Random(12)
    print(f"== {len(rules.enabled)} default correlations; events shaped by a fleet's alert mix")
    events = make_events(MAX_EVENTS, rng)

    engine = Correlator(rules)
    hits = 0
    gc.collect()
    t = time.process_time()
    for e in events:
        hits += len(engine.observe(e))
    cpu = time.process_time() - t
    print(
        f"  max: {MAX_EVENTS / cpu:,.0f} events/s on one core ({cpu / MAX_EVENTS * 1e6:.1f} us "
        f"CPU/event), {hits:,} hits (opened/updated)"
    )

    engine = Correlator(rules)
    steady = events[: int(STEADY_RATE * STEADY_SECONDS)]
    latencies: list[float] = []
    start = time.perf_counter()
    for i, e in enumerate(steady):
        due = start + i / STEADY_RATE
        while time.perf_counter() < due:
            pass
        t = time.perf_counter()
        engine.observe(e)
        latencies.append((time.perf_counter() - t) * 1e6)
    print(
        f"  steady {STEADY_RATE:,}/s for {STEADY_SECONDS:g} s: observe p50 "
        f"{statistics.median(latencies):.1f} us, p99 {pct(latencies, 0.99):.1f} us, "
        f"max {max(latencies):.0f} us"
    )

    del events, steady, engine
    gc.collect()
    rss0 = rss_mib()
    engine = Correlator(rules, max_keys=OPEN_KEYS)
    for i in range(OPEN_KEYS):
        # A memfd exec opens a key in the fileless sequence (and in the rules that count any
        # exec or any alert of a host): each host is a new key.
        e = ev("alpha.memfd_exec", "process_exec", host=f"h{i}", at=i / 1e4, exec_id=f"m{i}")
        engine.observe(e)
    gc.collect()
    rss1 = rss_mib()
    states = {rule: s.states for rule, s in engine.stats().items() if s.states}
    total = sum(states.values())
    print(
        f"  memory: {total:,} open keys over {len(states)} rules "
        f"({states.get('cortex.fileless_chain', 0):,} in cortex.fileless_chain): RSS "
        f"+{rss1 - rss0:.0f} MiB, {(rss1 - rss0) / total * 100_000:.0f} MiB per 100,000 keys; "
        f"process RSS {rss1:.0f} MiB"
    )


if __name__ == "__main__":
    main()
