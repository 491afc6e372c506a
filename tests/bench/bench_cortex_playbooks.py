"""Playbook deliveries: assessment-to-POST latency, deliveries/s to 100 endpoints, the run outbox.

Run: ``.venv/bin/python tests/bench/bench_cortex_playbooks.py [--assessments N] [--runs N]
[--reps R] [--only latency|endpoints|outbox]`` (``make bench``). Not a test: it prints figures
and asserts nothing. About two minutes on 2 vCPUs (1m50s here).

* **latency**: a real `qsc-cortex run` process (every default correlation rule plus the bench
  rule of ``bench_cortex_assessment_latency``, store synchronous=FULL, the deployed
  [playbooks] defaults) follows a guardian in this process that appends a pair of trigger
  events for a fresh user every ``--every`` seconds; each pair raises one CREATED assessment
  and one playbook run whose single step POSTs it (json, Standard Webhooks signed) to an
  HTTPS ``demo/webhook_receiver.py`` in this process, which verifies the signature. Latency
  of a delivery is to the moment the receiver has the verified POST, from: the assessment's
  update_time (the `timestamp` of the body: the revision as the correlation made it, just
  before its transaction), the run's create_time (planned inside that transaction, read back
  with ListPlaybookRuns), and the guardian's append of the second trigger event (end to end).
  One wall clock: every process is on this machine. Optionally under background load from two
  guardian processes (``--load-rate``).
* **endpoints**: the delivery worker (`cortex.playbooks.runner.Runner`, deployed defaults:
  64 in flight overall, 4 per endpoint, breaker open after 5 failures for 60 s) over a real
  SqliteEventStore (FULL) with N runs planned by the real `Planner` (100 playbooks, one
  webhook step each, to endpoints ep000..ep099) and written with their assessment records
  through ``append_batch(new_runs=...)``; each assessment has 4 contributing guardian events
  in the store (each attempt loads and unseals them and renders the json body). The 100
  receivers are plain-HTTP ``WebhookReceiver``s in a child process (so their CPU is not this
  process's), accepting without verifying; the Cortex side still signs every delivery.
  Delivered/s is the healthy endpoints' deliveries over the time to deliver them all; with
  ep000 pointing at a closed port (connection refused), then the same with its breaker
  effectively off. Where the worker's time goes: wall time inside RunTable.due / finish and
  the record load (worker threads).
* **outbox**: ``append_batch`` of 64 assessment records with 0, 1 or 8 runs each (runs/s and
  the marginal cost of a run), then ``RunTable.due(limit=256)`` + ``finish`` (delivered) over
  every pending step: steps/s, and ``due`` / ``next_due_ns`` (both queried on every worker
  pass) at that table size.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import contextlib
import functools
import importlib.util
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import mesh  # noqa: F401  (the grpc environment, as every component)
from cortex import assessment_records
from cortex.assessments import Assessment
from cortex.config import PlaybooksSection
from cortex.correlate import Factor
from cortex.playbooks.definitions import endpoint_refs, load_playbook_texts
from cortex.playbooks.endpoints import Endpoint
from cortex.playbooks.payloads import contributing
from cortex.playbooks.planner import Planner
from cortex.playbooks.runner import Loaded, Runner
from cortex.store import CheckpointSigner, SqliteEventStore, StoreConfig
from cortex.store.runs import NewRun, StepResult
from crypto import pki as cpki
from crypto.keyring import KeyManager
from demo.webhook_receiver import Received, WebhookReceiver
from mesh.config import config_from_dict
from mesh.ids import uuid7
from mesh.stream.cursor import StoredCursor
from qsc.common.v1 import classification_pb2, event_pb2, identity_pb2

OWN = "cortex-bench"  # the guardian id of the Cortex's own records (outbox and endpoints)
ENDPOINTS = 100
CONTRIBUTING = 4


def quantiles_ms(values_ns: Sequence[int]) -> str:
    lat = sorted(v / 1e6 for v in values_ns)
    if len(lat) < 20:
        return f"only {len(lat)} samples"
    q = statistics.quantiles(lat, n=100)
    return (
        f"p50 {q[49]:6.1f} ms  p90 {q[89]:6.1f} ms  p99 {q[98]:6.1f} ms  max {lat[-1]:6.1f} ms"
        f"  (n={len(lat)})"
    )


def parse_time_ns(text: str) -> int:
    """RFC 3339 as `format_time` writes it (UTC, `Z`, up to nanoseconds)."""
    base, _, fraction = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").timetuple())
    return seconds * 10**9 + int((fraction or "0").ljust(9, "0")[:9])


class Timed:
    """Wraps a function run in worker threads: calls, wall and CPU seconds inside it."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.calls, self.wall, self.cpu = fn, 0, 0.0, 0.0

    def __call__(self, *args: Any, **kw: Any) -> Any:
        w, c = time.perf_counter(), time.thread_time()
        try:
            return self.fn(*args, **kw)
        finally:
            self.wall += time.perf_counter() - w
            self.cpu += time.thread_time() - c
            self.calls += 1


# --- stores, assessments, runs ------------------------------------------------------------


def open_store(directory: Path, signer: CheckpointSigner) -> SqliteEventStore:
    keys = KeyManager.create(directory / "keys", "cortex")
    return SqliteEventStore.open(StoreConfig(directory / "store"), keys, signer=signer, create=True)


def bench_signer() -> CheckpointSigner:
    ca = cpki.create_ca("bench.test")
    leaf = cpki.issue_leaf(ca, "cortex", "bench")
    return CheckpointSigner(leaf.key, leaf.cert)


def guardian_event(seq: int, user: str, now: int) -> event_pb2.Event:
    e = event_pb2.Event(
        id=uuid7(), seq=seq, summary=f"failed login for {user}",
        severity=classification_pb2.SEVERITY_MEDIUM,
    )  # fmt: skip
    e.guardian.id, e.guardian.host = "alpha-web-01", "web-01"
    e.guardian.role = identity_pb2.ROLE_ALPHA
    e.time.FromNanoseconds(now)
    e.observed_time.FromNanoseconds(now)
    e.rule.id = "alpha.auth.failed"
    e.rule.techniques.add(id="T1110")
    e.auth_event.user = user
    e.auth_event.source.address = "192.0.2.7"
    e.process.exe = "/usr/sbin/sshd"
    e.process.pid = 4242
    return e


def make_assessment(user: str, event_ids: Sequence[str], now: int) -> Assessment:
    return Assessment(
        id=uuid7(now / 1e9),
        rule_id="bench.trigger",
        title="Bench trigger",
        description="two trigger events for one user",
        severity="high",
        mitre=("T1110",),
        correlation_key=f"bench.trigger/user={user}",
        key=(("user", user),),
        state="open",
        revision=1,
        confidence=0.93,
        prior=0.5,
        confidence_id=3,
        factors=(Factor("trigger", "alpha.auth", len(event_ids), 100.0, 1.0, 4.6, 100.0),),
        steps_present=frozenset({"trigger"}),
        event_ids=tuple(event_ids),
        event_count=len(event_ids),
        first_event_ns=now,
        last_event_ns=now,
        create_ns=now,
        update_ns=now,
    )


class Writer:
    """Stores contributing guardian events and assessment records (with their runs) as the
    Cortex's ingest does: the records numbered in the Cortex's own sequence, runs planned for
    them, all in one append_batch."""

    def __init__(self, store: SqliteEventStore, planner: Planner | None) -> None:
        self.store, self.planner = store, planner
        self.own_seq = self.guardian_seq = 0
        self.users = 0

    def assessments(self, count: int) -> list[Assessment]:
        """`count` fresh assessments, their contributing events stored first."""
        now = time.time_ns()
        events, made = [], []
        for _ in range(count):
            user = f"u{self.users}"
            self.users += 1
            mine = []
            for _ in range(CONTRIBUTING):
                self.guardian_seq += 1
                mine.append(guardian_event(self.guardian_seq, user, now))
            events += mine
            made.append(make_assessment(user, [e.id for e in mine], now))
        cursor = StoredCursor("spiffe://bench.test/alpha/web-01", self.guardian_seq)
        self.store.append_batch("alpha-web-01", events, cursor)
        return made

    def records(self, assessments: Sequence[Assessment]) -> list[event_pb2.Event]:
        now = time.time_ns()
        out = []
        for a in assessments:
            event = assessment_records.to_event(a)
            event.id = uuid7(now / 1e9)
            event.guardian.CopyFrom(
                identity_pb2.GuardianRef(id=OWN, role=identity_pb2.ROLE_CORTEX, host="bench")
            )
            event.time.FromNanoseconds(now)
            event.observed_time.FromNanoseconds(now)
            self.own_seq += 1
            event.seq = self.own_seq
            out.append(event)
        return out

    def append(self, events: Sequence[event_pb2.Event], runs: Sequence[NewRun]) -> None:
        cursor = StoredCursor("spiffe://bench.test/cortex/bench", self.own_seq)
        self.store.append_batch(OWN, events, cursor, new_runs=runs)

    def plan(
        self, assessments: Sequence[Assessment], events: Sequence[event_pb2.Event]
    ) -> list[NewRun]:
        if self.planner is None:
            return []
        return self.planner.plan([(a, e.id) for a, e in zip(assessments, events, strict=True)])


def load_record(store: SqliteEventStore, record_id: str) -> Loaded:
    """What PlaybookRuntime._load_record does."""
    event = store.get(record_id)
    if event is None:
        return None
    a = assessment_records.from_event(event)
    if a is None:
        return None
    return a, contributing(a, store.get)


def playbook_texts(names: Sequence[str]) -> list[tuple[str, str]]:
    text = "".join(
        f"""
- playbook: Bench {n}
  id: bench-{n}
  trigger:
    filter: 'severity >= HIGH'
  steps:
    - webhook: {n}
"""
        for n in names
    )
    return [("bench.yaml", text)]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- (1) latency through a real Cortex ------------------------------------------------------


class TimedReceiver(WebhookReceiver):
    """The receiver, noting the wall time each verified POST arrived."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.arrived: dict[str, int] = {}
        super().__init__(*args, **kw)

    def _record(self, received: Received) -> int:
        if received.verified and received.webhook_id is not None:
            self.arrived.setdefault(received.webhook_id, time.time_ns())
        return super()._record(received)


async def latency(n: int, every: float, load_rate: float) -> None:
    from demo.webhook_receiver import receiver_leaf
    from mesh.channel import ChannelConfig, open_channel
    from mesh.config import TlsFiles
    from qsc.cortex.v1 import cortex_service_pb2 as pb
    from qsc.cortex.v1 import cortex_service_pb2_grpc as pb_grpc
    from tests.bench.bench_cortex_assessment_latency import (
        RULE,
        TD,
        Trigger,
        correlation_section,
        trigger_event,
        wait_port,
    )
    from tests.bench.bench_cortex_ingest import cortex_toml
    from tests.bench.guardian_proc import ROOT, GuardianProcess
    from tests.integration.playbook_harness import playbook_file, secret_file

    with tempfile.TemporaryDirectory(prefix="qsc-bench-playbooks-") as tmp:
        base = Path(tmp)
        pki = base / "pki"
        pki.mkdir()
        ca = cpki.init_ca(pki, TD)
        hosts = ["load-00", "load-01"] if load_rate > 0 else []
        for h in [*hosts, "trigger"]:
            cpki.write_leaf(cpki.issue_leaf(ca, "alpha", h, ips=["127.0.0.1"]), pki, ca.cert)
        cpki.write_leaf(cpki.issue_leaf(ca, "cortex", "c1", ips=["127.0.0.1"]), pki, ca.cert)
        cpki.write_leaf(cpki.issue_leaf(ca, "soar", "s1"), pki, ca.cert)
        KeyManager.create(base / "keys", "cortex")
        (base / "bench.yaml").write_text(RULE)
        cert, key, ca_file = receiver_leaf(pki)
        secret_path, secret = secret_file(base / "secrets", "soar.whsec")
        books = playbook_file(
            base,
            """
- playbook: Tell the SOAR
  id: notify
  trigger:
    filter: 'rule = "bench.trigger"'
  steps:
    - webhook: soar
""",
        )
        per = load_rate / max(len(hosts), 1)
        seconds = n * every
        load = [
            GuardianProcess(pki, base / h, host=h, rate=per, total=int(per * (seconds + 40)),
                            batch=64)
            for h in hosts
        ]  # fmt: skip
        trigger = Trigger(pki, "trigger", base / "trigger")
        cortex: subprocess.Popen[bytes] | None = None
        # The Cortex logs every assessment at WARNING: to a file, not over the figures.
        rx = TimedReceiver(cert, key, secrets=[secret])
        with rx, open(base / "cortex.log", "wb") as log:
            try:
                ports = [await g.port() for g in load]
                await trigger.start()
                guardians = [(g.id, p) for g, p in zip(load, ports, strict=True)]
                guardians.append((trigger.id, trigger.port))
                extra = (
                    correlation_section(base)
                    + f"""
[playbooks]
files = ["{books}"]
[[playbooks.endpoints]]
name = "soar"
url = "{rx.url()}"
secret_files = ["{secret_path}"]
ca_file = "{ca_file}"
"""
                )
                (base / "cortex.toml").write_text(cortex_toml(base, pki, guardians, "FULL", extra))
                cortex = subprocess.Popen(
                    [sys.executable, "-m", "cortex", "run", "--config", str(base / "cortex.toml"),
                     "--port-file", str(base / "cortex.port")],
                    cwd=ROOT,
                    stdout=log,
                    stderr=log,
                )  # fmt: skip
                try:
                    port = await wait_port(base / "cortex.port", cortex)
                except SystemExit:
                    print((base / "cortex.log").read_text()[-3000:])
                    raise
                await asyncio.sleep(3 if load else 1)  # the streams are up (and the load flows)
                what = f"{load_rate:,.0f} events/s of background load" if load else "no load"
                print(
                    f"== latency: {n} assessments, one every {every * 1000:.0f} ms, each one "
                    f"playbook run POSTed to an HTTPS receiver; {what}"
                )
                sent: dict[str, int] = {}
                for i in range(n):
                    user = f"u{i}"
                    trigger.emit_one(trigger_event(user))
                    sent[user] = time.time_ns()
                    trigger.emit_one(trigger_event(user))
                    await asyncio.sleep(every)
                deadline = time.monotonic() + 20
                while len(rx.arrived) < n and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                created: dict[str, int] = {}
                attempted: dict[str, int] = {}
                soar = TlsFiles.in_dir(pki, "soar-s1")
                async with open_channel(ChannelConfig(f"127.0.0.1:{port}", soar)) as channel:
                    api = pb_grpc.CortexServiceStub(channel)
                    token = ""
                    while True:
                        page = await api.ListPlaybookRuns(
                            pb.ListPlaybookRunsRequest(page_size=1000, page_token=token)
                        )
                        for run in page.playbook_runs:
                            for s in run.steps:
                                created[s.webhook_id] = run.create_time.ToNanoseconds()
                                attempted[s.webhook_id] = s.start_time.ToNanoseconds()
                        token = page.next_page_token
                        if not token:
                            break
                cpu = sum(g.cpu() for g in load)
            finally:
                if cortex is not None:
                    cortex.terminate()
                    cortex.wait(30)
                await trigger.stop()
                for g in load:
                    g.stop()
            from_update, from_create, from_append = [], [], []
            to_attempt, from_attempt = [], []
            for r in rx.requests:
                if not r.verified or r.webhook_id not in rx.arrived:
                    continue
                got = rx.arrived[r.webhook_id]
                body = r.json()
                from_update.append(got - parse_time_ns(body["timestamp"]))
                if r.webhook_id in created:
                    from_create.append(got - created[r.webhook_id])
                    to_attempt.append(attempted[r.webhook_id] - created[r.webhook_id])
                    from_attempt.append(got - attempted[r.webhook_id])
                user = body["data"]["correlationKey"].rsplit("user=", 1)[-1]
                if user in sent:
                    from_append.append(got - sent[user])
            dups = sum(rx.duplicates.values())
            print(
                f"  {len(rx.arrived)} of {n} assessments delivered ({dups} duplicates), "
                f"{len(created)} runs listed"
            )
            print(f"  update_time -> POST   {quantiles_ms(from_update)}")
            print(f"  run created -> POST   {quantiles_ms(from_create)}")
            print(f"    of which: created -> attempt started {quantiles_ms(to_attempt)}")
            print(f"              attempt started -> POST {quantiles_ms(from_attempt)}")
            print(f"  guardian append -> POST {quantiles_ms(from_append)}  (end to end)")
            if load:
                print(f"  load guardian processes' CPU {cpu:.1f} s")


# --- (2) deliveries/s to 100 endpoints --------------------------------------------------------


def serve_receivers(count: int) -> None:
    """The child process: `count` plain-HTTP receivers; prints their ports, then answers
    `count` on stdin with the POSTs they processed and this process's CPU seconds."""
    receivers = [WebhookReceiver(None, None) for _ in range(count)]
    print(json.dumps([r.port for r in receivers]), flush=True)
    for line in sys.stdin:
        if line.strip() == "count":
            done = sum(len(r.processed) for r in receivers)
            print(json.dumps({"processed": done, "cpu": time.process_time()}), flush=True)
    for r in receivers:
        r.close()


class Receivers:
    def __init__(self, count: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-receivers", str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.ports: list[int] = json.loads(self.proc.stdout.readline())

    def count(self) -> tuple[int, float]:
        assert self.proc.stdout is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        got = json.loads(self.proc.stdout.readline())
        return int(got["processed"]), float(got["cpu"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def deliver_once(
    base: Path, receivers: Receivers, secret: Path, runs: int, *, down: bool, breaker: bool
) -> dict[str, Any]:
    names = [f"ep{i:03d}" for i in range(ENDPOINTS)]
    ports = list(receivers.ports)
    if down:
        ports[0] = closed_port()
    section = config_from_dict(
        PlaybooksSection,
        {
            "endpoints": [
                {
                    "name": name,
                    "url": f"http://127.0.0.1:{port}/hook",
                    "secret_files": [str(secret)],
                    **({} if breaker else {"failures_to_open": 1_000_000}),
                }
                for name, port in zip(names, ports, strict=True)
            ]
        },
    )
    store = open_store(base, bench_signer())
    try:
        pset = load_playbook_texts(
            playbook_texts(names), endpoints=endpoint_refs(section.endpoints), guardians={}
        )
        writer = Writer(store, Planner(pset, key_term=store.run_key_term))
        left = max(1, runs // ENDPOINTS)  # assessments, each one run per endpoint
        planned = 0
        while left > 0:
            made = writer.assessments(min(left, 16))  # 1,600 runs per append_batch
            left -= len(made)
            records = writer.records(made)
            new = writer.plan(made, records)
            writer.append(records, new)
            planned += len(new)
        expected = planned - (planned // ENDPOINTS if down else 0)
        endpoints = {e.name: Endpoint.of(e) for e in section.endpoints}
        table = store.runs
        due, finish = Timed(table.due), Timed(table.finish)
        table.due = due  # type: ignore[method-assign]
        table.finish = finish  # type: ignore[method-assign]
        load = Timed(functools.partial(load_record, store))
        runner = Runner(table, endpoints, None, load=load, settings=section)
        before, rx_cpu0 = receivers.count()
        cpu0 = time.process_time()
        await runner.start()
        started = time.perf_counter()
        deadline = started + 120
        while runner.stats.delivered < expected and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        await runner.stop()
        after, rx_cpu1 = receivers.count()
        stats = runner.stats
        return {
            "planned": planned,
            "delivered": stats.delivered,
            "rate": stats.delivered / wall,
            "wall": wall,
            "cpu": cpu,
            "rx": after - before,
            "rx_cpu": rx_cpu1 - rx_cpu0,
            "retried": stats.retried,
            "postponed": stats.postponed,
            "attempts": stats.attempts,
            "due": (due.calls, due.wall),
            "finish": (finish.calls, finish.wall),
            "load": (load.calls, load.wall),
            "down_open": endpoints["ep000"].breaker.remaining_ns() > 0 if down else None,
        }
    finally:
        store.close()


async def endpoints_bench(runs: int, reps: int) -> None:
    from tests.integration.playbook_harness import secret_file

    # Every step logs (done, will retry); the deployed Cortex logs them, not to the terminal.
    logging.getLogger("qsc.cortex.playbooks").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="qsc-bench-playbooks-") as tmp:
        base = Path(tmp)
        secret, _ = secret_file(base / "secrets", "ep.whsec")
        receivers = Receivers(ENDPOINTS)
        print(
            f"== deliveries: {runs:,} runs (one webhook step each, json, signed) over "
            f"{ENDPOINTS} endpoints, plain-HTTP receivers in a child process; median of {reps}"
        )
        try:
            variants = [
                ("all 100 up", False, True),
                ("ep000 refused, breaker on", True, True),
                ("ep000 refused, breaker off", True, False),
            ]
            every: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in variants}
            for rep in range(reps):  # interleaved, so a drift of the machine hits all alike
                for label, down, breaker in variants:
                    d = base / f"rep-{rep}-{down}-{breaker}"
                    every[label].append(
                        await deliver_once(d, receivers, secret, runs, down=down, breaker=breaker)
                    )
                    shutil.rmtree(d, ignore_errors=True)
            up_rate = 0.0
            for label, down, _ in variants:
                results = every[label]
                m = sorted(results, key=lambda r: r["rate"])[len(results) // 2]
                rates = ", ".join(f"{r['rate']:,.0f}" for r in results)
                versus = ""
                if down:
                    versus = f"; {m['rate'] / up_rate:.0%} of all up"
                else:
                    up_rate = m["rate"]
                print(
                    f"  {label:27s} {m['rate']:6,.0f} delivered/s  ({rates}{versus}; "
                    f"{m['delivered']:,} in {m['wall']:.2f} s, receivers got {m['rx']:,})"
                )
                n = max(m["delivered"], 1)
                print(
                    f"    CPU: this process {m['cpu'] / m['wall']:.0%} of a core "
                    f"({m['cpu'] / n * 1e6:,.0f} us/delivery), "
                    f"receivers {m['rx_cpu'] / m['wall']:.0%}"
                )
                dc, dw = m["due"]
                fc, fw = m["finish"]
                lc, lw = m["load"]
                print(
                    f"    worker threads: due {dc:,} calls {dw / max(dc, 1) * 1e3:.2f} ms each; "
                    f"finish {fc:,} calls {fw / max(fc, 1) * 1e3:.2f} ms each ({fw:.2f} s); "
                    f"record load {lc:,} calls {lw / max(lc, 1) * 1e3:.2f} ms each"
                )
                if down:
                    print(
                        f"    ep000: {m['retried']} attempts failed and will retry, "
                        f"{m['postponed']} steps postponed by its open breaker "
                        f"(breaker open at the end: {m['down_open']})"
                    )
        finally:
            receivers.close()
        sniffio_note()


def sniffio_note() -> None:
    """httpcore asks `sniffio` which async library runs, with `import sniffio` inside the
    call, several times per request; without sniffio installed every call is a failed
    import (a sys.path search)."""
    from httpcore._synchronization import current_async_library

    if importlib.util.find_spec("sniffio") is None:
        n = 2000
        t = time.perf_counter()
        for _ in range(n):
            current_async_library()
        each = (time.perf_counter() - t) / n * 1e6
        print(
            f"  note: sniffio is not installed: each of httpcore's current_async_library() "
            f"calls (several per delivery) is a failed import, {each:.0f} us"
        )


# --- (3) the run outbox -------------------------------------------------------------------


def outbox_bench(reps: int) -> None:
    batch, batches = 64, 40
    print(
        f"== outbox: append_batch of {batch} assessment records with k runs each (1 step), "
        f"{batches} batches, synchronous=FULL; median of {reps}"
    )
    names = [f"ep{i:03d}" for i in range(8)]
    section = config_from_dict(
        PlaybooksSection,
        {"endpoints": [{"name": n, "url": f"http://127.0.0.1:1/{n}", "auth": "none"}
                       for n in names]},
    )  # fmt: skip
    signer = bench_signer()
    per_record: dict[int, float] = {}
    for k in (0, 1, 8):
        rates, plans, walls = [], [], []
        due_ms, next_ms, steps_s, finish_ms = [], [], [], []
        for _ in range(reps):
            d = Path(tempfile.mkdtemp(prefix="qsc-bench-playbooks-"))
            store = open_store(d, signer)
            try:
                planner = None
                if k:
                    pset = load_playbook_texts(
                        playbook_texts(names[:k]),
                        endpoints=endpoint_refs(section.endpoints),
                        guardians={},
                    )
                    planner = Planner(pset, key_term=store.run_key_term)
                writer = Writer(store, planner)
                work = []
                for _ in range(batches):
                    made = writer.assessments(batch)
                    work.append((made, writer.records(made)))
                spent = planning = 0.0
                total = 0
                for made, records in work:
                    t = time.perf_counter()
                    new = writer.plan(made, records)
                    planning += time.perf_counter() - t
                    t = time.perf_counter()
                    writer.append(records, new)
                    spent += time.perf_counter() - t
                    total += len(new)
                walls.append(spent)
                rates.append(total / spent if total else batch * batches / spent)
                plans.append(planning / max(total, 1))
                if k == 8:  # due + finish over every pending step
                    pending = total
                    t = time.perf_counter()
                    store.runs.next_due_ns()
                    next_ms.append((time.perf_counter() - t) * 1e3)
                    t = time.perf_counter()
                    store.runs.due(time.time_ns(), limit=256, exclude=frozenset())
                    due_ms.append((time.perf_counter() - t) * 1e3)
                    done = 0
                    finishing = 0.0
                    t0 = time.perf_counter()
                    while True:
                        due = store.runs.due(time.time_ns(), limit=256, exclude=frozenset())
                        if not due:
                            break
                        for step in due:
                            now = time.time_ns()
                            t = time.perf_counter()
                            store.runs.finish(step, StepResult(now, now, True, "HTTP 200"))
                            finishing += time.perf_counter() - t
                            done += 1
                    steps_s.append(done / (time.perf_counter() - t0))
                    finish_ms.append(finishing / max(done, 1) * 1e3)
            finally:
                store.close()
                shutil.rmtree(d, ignore_errors=True)
        wall = statistics.median(walls)
        per_record[k] = wall / (batch * batches)
        if k == 0:
            print(
                f"  k=0: {batch * batches / wall:,.0f} records/s "
                f"({per_record[0] * 1e6:,.0f} us/record, {wall / batches * 1e3:.1f} ms/batch)"
            )
        else:
            extra = (per_record[k] - per_record[0]) / k
            print(
                f"  k={k}: {statistics.median(rates):,.0f} runs/s written "
                f"({batch * batches / wall:,.0f} records/s, {wall / batches * 1e3:.1f} ms/batch;"
                f" a run adds {extra * 1e6:,.0f} us; planning {statistics.median(plans) * 1e6:,.0f}"
                " us/run, not counted)"
            )
    pending = batch * batches * 8
    print(
        f"  with {pending:,} pending steps: next_due_ns {statistics.median(next_ms):.2f} ms, "
        f"due(limit=256) {statistics.median(due_ms):.2f} ms"
    )
    print(
        f"  due + finish (delivered) draining them: {statistics.median(steps_s):,.0f} steps/s "
        f"(finish {statistics.median(finish_ms):.2f} ms each, one transaction)"
    )


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--assessments", type=int, default=400)
    ap.add_argument("--every", type=float, default=0.025, help="seconds between assessments")
    ap.add_argument("--load-rate", type=float, default=2_000, help="0: no background pass")
    ap.add_argument("--runs", type=int, default=2_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", choices=["latency", "endpoints", "outbox"])
    ap.add_argument("--serve-receivers", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_receivers:
        serve_receivers(args.serve_receivers)
        return
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, load average {load:.2f} at the start")
    if args.only in (None, "latency"):
        asyncio.run(latency(args.assessments, args.every, 0))
        if args.load_rate > 0:
            asyncio.run(latency(args.assessments, args.every, args.load_rate))
    if args.only in (None, "endpoints"):
        asyncio.run(endpoints_bench(args.runs, args.reps))
    if args.only in (None, "outbox"):
        outbox_bench(args.reps)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
