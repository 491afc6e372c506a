"""The Cortex event store on its own: append rate, query latency, verify speed, memory.

Run: ``.venv/bin/python tests/bench/bench_cortex_store.py [--events N]`` (``make bench``). Not a
test: it prints figures and asserts nothing. A real store in a temporary directory (real
keyring, a checkpoint signer from a test CA), synchronous=FULL as deployed:

* **append**: N events from 10 guardians in batches of 500 (sealed, chained, blind-indexed,
  cursor committed per batch): events/s, and where one batch's time goes (protobuf, sealing,
  index terms, chain, SQLite).
* **query**: ListEvents-shaped queries (first page of 100, and a page deep in the result) with
  a selective filter (one user and severity >= HIGH) and with none: p50/p99 over 200 runs; and
  the count behind `total_size`, which a listing's first page adds.
* **verify**: `store verify` MB/s of database bytes, against bare BLAKE3 and SHA-256 over the
  same number of bytes.
* **RSS** of this process after all that (the store lives on disk).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import mesh  # noqa: E402, F401  (the grpc environment, as every component)
from cortex import fields  # noqa: E402
from cortex.filter import parse  # noqa: E402
from cortex.store import (  # noqa: E402
    CheckpointSigner,
    Position,
    SqliteEventStore,
    StoreConfig,
    codec,
)
from crypto import pki  # noqa: E402
from crypto.hashing import blake3_256  # noqa: E402
from crypto.keyring import KeyManager  # noqa: E402
from mesh.ids import uuid7  # noqa: E402
from mesh.stream.cursor import StoredCursor  # noqa: E402
from qsc.common.v1 import classification_pb2, event_pb2  # noqa: E402

GUARDIANS = 10
BATCH = 500
T0 = 1_800_000_000 * 10**9
USERS = [f"user{i}" for i in range(50)]
RULES = ["alpha.shadow_read", "alpha.ptrace_attach", "alpha.ssh_brute_force", "beta.fim.changed"]


def make_event(guardian: int, seq: int, rng: random.Random) -> event_pb2.Event:
    e = event_pb2.Event(
        id=uuid7(),
        seq=seq,
        severity=classification_pb2.Severity.ValueType(rng.randint(1, 5)),
        category=classification_pb2.Category.ValueType(rng.randint(1, 5)),
        summary=f"synthetic event {seq} of guardian {guardian}",
    )
    e.guardian.id = f"alpha-host-{guardian}"
    e.guardian.host = f"host-{guardian}"
    e.time.FromNanoseconds(T0 + seq * 1_000_000 + guardian)
    e.rule.id = rng.choice(RULES)
    e.rule.techniques.add(id="T1003.008")
    e.process.exe = rng.choice(["/usr/bin/cat", "/usr/bin/ssh", "/tmp/x"])
    e.process.args.extend(["cat", "/etc/shadow"])
    e.process.pid = rng.randint(100, 60_000)
    if rng.random() < 0.5:
        e.auth_event.user = rng.choice(USERS)
        e.auth_event.source.address = f"192.0.2.{rng.randint(1, 254)}"
    else:
        e.file_access.path = rng.choice(["/etc/shadow", "/etc/passwd", "/var/log/auth.log"])
    return e


def pct(values: list[float], p: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * p))]


def profile_batch(store: SqliteEventStore, events: list[event_pb2.Event]) -> None:
    """Where one batch's time goes, by redoing each step of `_insert` on its own."""
    from crypto.aead import RawAead
    from crypto.subkeys import gcm_key

    key = gcm_key(store._keys.active_key("event-store"), "event-store-aes-256-gcm", store.store_id)
    aead, nonce = RawAead(key), os.urandom(12)
    steps: dict[str, float] = {}
    t = time.perf_counter()
    blobs = [e.SerializeToString(deterministic=True) for e in events]
    steps["protobuf serialize"] = time.perf_counter() - t
    t = time.perf_counter()
    for b in blobs:
        aead.encrypt(nonce, b, b"aad-of-the-right-size-roughly-80-bytes" * 2)
    steps["AES-256-GCM seal"] = time.perf_counter() - t
    t = time.perf_counter()
    terms = [fields.index_terms(e, store.blind) for e in events]
    steps["blind + MITRE terms"] = time.perf_counter() - t
    t = time.perf_counter()
    for e in events:
        fields.clear_columns(e)
    steps["clear columns"] = time.perf_counter() - t
    t = time.perf_counter()
    prev = b"\x00" * 32
    for e, b, ts in zip(events, blobs, terms, strict=True):
        row = (1, 2, e.guardian.id, "h", e.seq, 1, 2, "r", "k", e.id, 3, "kid", nonce, b)
        prev = codec.chain_hash(prev, codec.encode_row(row, ts))
    steps["row encoding + BLAKE3 chain"] = time.perf_counter() - t
    total = sum(steps.values())
    for name, s in steps.items():
        print(f"    {name:30s} {s / len(events) * 1e6:7.2f} us/event")
    print(f"    {'(sum of the above)':30s} {total / len(events) * 1e6:7.2f} us/event")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    args = ap.parse_args()
    n = args.events - args.events % (GUARDIANS * BATCH) or GUARDIANS * BATCH
    with tempfile.TemporaryDirectory(prefix="qsc-bench-store-") as tmp:
        base = Path(tmp)
        ca = pki.create_ca("example.org")
        leaf = pki.issue_leaf(ca, "cortex", "bench")
        keys = KeyManager.create(base / "keys", "cortex")
        store = SqliteEventStore.open(
            StoreConfig(base / "store"),
            keys,
            signer=CheckpointSigner(leaf.key, leaf.cert),
            create=True,
        )
        rng = random.Random(7)
        print(f"== append: {n:,} events, {GUARDIANS} guardians, batches of {BATCH}")
        per_guardian = n // GUARDIANS
        gen = 0.0
        spent = 0.0
        seqs = [0] * GUARDIANS
        rounds = per_guardian // BATCH
        sample: list[event_pb2.Event] = []
        for r in range(rounds):
            for g in range(GUARDIANS):
                t = time.perf_counter()
                events = [make_event(g, seqs[g] + i + 1, rng) for i in range(BATCH)]
                gen += time.perf_counter() - t
                seqs[g] += BATCH
                t = time.perf_counter()
                store.append_batch(
                    f"alpha-host-{g}",
                    events,
                    StoredCursor(f"spiffe://example.org/alpha/host-{g}", seqs[g]),
                )
                spent += time.perf_counter() - t
                if not sample:
                    sample = events
            if (r + 1) % max(1, rounds // 5) == 0:
                done = (r + 1) * GUARDIANS * BATCH
                print(f"  {done:>10,} stored, {done / spent:,.0f} events/s so far")
        print(f"  append_batch: {n / spent:,.0f} events/s ({spent / n * 1e6:.1f} us/event)")
        print(f"  (generating the synthetic events took {gen:.1f} s, not counted)")
        print("  where one event's time goes (same steps, timed alone):")
        profile_batch(store, sample)

        user = USERS[3]
        selective = parse(f'user = "{user}" AND severity >= HIGH').to_sql(store.blind)
        matching = len(store.query(selective, limit=10_000).events)
        print(f"== query over {n:,} events (selective filter matches {matching:,})")
        for label, where in (("no filter", None), ("selective", selective)):
            for depth_label, depth in (("first page", 0), ("deep page", 50)):
                after: Position | None = None
                for _ in range(depth):  # walk to the deep page once, keep its position
                    page = store.query(where, limit=100, after=after)
                    if page.next is None:
                        break
                    after = page.next
                times: list[float] = []
                for _ in range(200):
                    t = time.perf_counter()
                    store.query(where, limit=100, after=after, descending=False)
                    times.append((time.perf_counter() - t) * 1e3)
                print(
                    f"  {label:10s} {depth_label:10s} p50 {statistics.median(times):6.2f} ms"
                    f"  p99 {pct(times, 0.99):6.2f} ms"
                )
            counts: list[float] = []
            for _ in range(20):
                t = time.perf_counter()
                store.count(where)
                counts.append((time.perf_counter() - t) * 1e3)
            print(
                f"  {label:10s} {'count':10s} p50 {statistics.median(counts):6.2f} ms"
                f"  p99 {pct(counts, 0.99):6.2f} ms  (total_size, once per listing: its first page)"
            )

        db_bytes = sum(p.stat().st_size for p in (base / "store").glob("events.db*"))
        t = time.perf_counter()
        report = store.verify()
        verify_s = time.perf_counter() - t
        blob = os.urandom(64 * 2**20)
        t = time.perf_counter()
        for _ in range(max(1, db_bytes // len(blob))):
            blake3_256(blob)
        b3 = max(1, db_bytes // len(blob)) * len(blob) / (time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(max(1, db_bytes // len(blob))):
            hashlib.sha256(blob).digest()
        sha = max(1, db_bytes // len(blob)) * len(blob) / (time.perf_counter() - t)
        print(f"== verify: {report.records:,} records, ok={report.ok}, {db_bytes / 2**20:.0f} MiB")
        print(
            f"  {db_bytes / verify_s / 1e6:,.0f} MB/s ({verify_s:.1f} s); bare BLAKE3 "
            f"{b3 / 1e6:,.0f} MB/s, SHA-256 {sha / 1e6:,.0f} MB/s over as many bytes"
        )
        store.close()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"== peak RSS of this process: {rss:.0f} MiB (synthetic events included)")


if __name__ == "__main__":
    main()
