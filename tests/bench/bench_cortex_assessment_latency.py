"""Event-to-assessment latency: a guardian's append -> the change on SubscribeAssessments.

Run: ``.venv/bin/python tests/bench/bench_cortex_assessment_latency.py [--rate R] [--seconds S]``
(``make bench``). Not a test: it prints figures and asserts nothing.

A real `qsc-cortex run` process, with every default correlation rule loaded plus one bench rule,
follows two real guardian processes that stream synthetic events at R/2 events/s each (the
background load) and one guardian in this process that appends two trigger events every 20 ms
for a user of their own. The bench rule raises an assessment on a user's second trigger (an
event count of 2), so every pair is one CREATED change. A soar client in this process
subscribes to assessments; the latency of a pair is from the moment just before its second
append to the guardian's outbox to the moment its change arrives on the subscription (one clock:
both ends are in this process). So it spans the guardian's stream, the Cortex's unsealing, store
transaction, correlation, the assessment's own stored record and the subscription.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from crypto.keyring import KeyManager
from crypto.pki import init_ca, issue_leaf, write_leaf
from mesh.channel import ChannelConfig, open_channel
from mesh.config import TlsFiles
from qsc.common.v1 import classification_pb2, event_pb2
from qsc.cortex.v1 import cortex_service_pb2 as pb
from qsc.cortex.v1 import cortex_service_pb2_grpc as pb_grpc
from tests.bench.bench_cortex_ingest import cortex_toml
from tests.bench.guardian_proc import ROOT, GuardianProcess
from tests.integration.guardian_node import GuardianNode

TD = "bench.test"
TRIGGER_EVERY = 0.02  # seconds between trigger events
RULE = """
- correlation: Bench trigger
  id: bench.trigger
  type: event_count
  group_by: [user]
  timespan: 10m
  severity: medium
  prior: 0.5
  threshold: 0.7
  steps:
    - step: trigger
      source: alpha.auth
      filter: 'rule.id = "bench.trigger"'
      count: 2
      lr: 100
"""


class Trigger(GuardianNode):
    trust_domain = TD
    roles: ClassVar[Mapping[str, str]] = {"trigger": "alpha"}


def correlation_section(base: Path) -> str:
    return f"""
[correlation]
rules = ["{ROOT / "cortex/correlate/default/10_intrusion.yaml"}",
         "{ROOT / "cortex/correlate/default/20_persistence_evasion.yaml"}",
         "{base / "bench.yaml"}"]
"""


def trigger_event(user: str) -> event_pb2.Event:
    e = event_pb2.Event(summary=f"trigger {user}", severity=classification_pb2.SEVERITY_MEDIUM)
    e.rule.id = "bench.trigger"
    e.auth_event.user = user
    return e


async def wait_port(path: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 60
    while not path.exists() or not path.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"qsc-cortex did not start (exit {proc.poll()})")
        await asyncio.sleep(0.05)
    return int(path.read_text())


async def run(rate: float, seconds: float, sync: str) -> None:
    with tempfile.TemporaryDirectory(prefix="qsc-bench-latency-") as tmp:
        base = Path(tmp)
        pki = base / "pki"
        pki.mkdir()
        ca = init_ca(pki, TD)
        hosts = ["load-00", "load-01"]
        for h in [*hosts, "trigger"]:
            write_leaf(issue_leaf(ca, "alpha", h, ips=["127.0.0.1"]), pki, ca.cert)
        write_leaf(issue_leaf(ca, "cortex", "c1", ips=["127.0.0.1"]), pki, ca.cert)
        write_leaf(issue_leaf(ca, "soar", "s1"), pki, ca.cert)
        KeyManager.create(base / "keys", "cortex")
        (base / "bench.yaml").write_text(RULE)
        per = rate / len(hosts)
        total = int(per * (seconds + 30))
        load = [
            GuardianProcess(pki, base / h, host=h, rate=per, total=total, batch=64) for h in hosts
        ]
        trigger = Trigger(pki, "trigger", base / "trigger")
        cortex: subprocess.Popen[bytes] | None = None
        try:
            ports = [await g.port() for g in load]
            await trigger.start()
            guardians = [(g.id, p) for g, p in zip(load, ports, strict=True)]
            guardians.append((trigger.id, trigger.port))
            (base / "cortex.toml").write_text(
                cortex_toml(base, pki, guardians, sync, correlation_section(base))
            )
            cortex = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cortex",
                    "run",
                    "--config",
                    str(base / "cortex.toml"),
                    "--port-file",
                    str(base / "cortex.port"),
                ],
                cwd=ROOT,
            )
            port = await wait_port(base / "cortex.port", cortex)
            soar = TlsFiles.in_dir(pki, "soar-s1")
            sent: dict[str, float] = {}
            latencies: list[float] = []
            async with open_channel(ChannelConfig(f"127.0.0.1:{port}", soar)) as channel:
                api = pb_grpc.CortexServiceStub(channel)
                call: Any = api.SubscribeAssessments(pb.SubscribeAssessmentsRequest())

                async def receive() -> None:
                    async for message in call:
                        if message.WhichOneof("payload") != "change":
                            continue
                        key = message.change.assessment.correlation_key
                        user = key.rsplit("user=", 1)[-1]
                        if message.change.type == pb.CHANGE_TYPE_CREATED and user in sent:
                            latencies.append(time.perf_counter() - sent[user])

                receiver = asyncio.create_task(receive())
                await asyncio.sleep(3)  # the streams are up and the load flows
                print(
                    f"== {rate:,.0f} events/s of background load from {len(hosts)} guardian "
                    f"processes, a trigger pair every {TRIGGER_EVERY * 1000:.0f} ms, "
                    f"{seconds:.0f} s, store synchronous={sync}"
                )
                end = time.perf_counter() + seconds
                i = 0
                while time.perf_counter() < end:
                    user = f"u{i}"
                    trigger.emit_one(trigger_event(user))
                    sent[user] = time.perf_counter()
                    trigger.emit_one(trigger_event(user))
                    i += 1
                    await asyncio.sleep(TRIGGER_EVERY)
                await asyncio.sleep(3)  # the last changes arrive
                receiver.cancel()
            stored = sum(g.cpu() for g in load)
            lat = sorted(latencies)
            if len(lat) < 20:
                print(f"  only {len(lat)} of {i} triggers arrived: no figures")
                return
            q = statistics.quantiles(lat, n=100)
            print(
                f"  {len(lat)} of {i} triggers became assessments on the subscription; latency "
                f"p50 {q[49] * 1000:.1f} ms, p90 {q[89] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms,"
                f" max {lat[-1] * 1000:.1f} ms (goal p99 < 100 ms)"
            )
            print(f"  guardian processes' CPU {stored:.1f} s")
        finally:
            if cortex is not None:
                cortex.terminate()
                cortex.wait(30)
            await trigger.stop()
            for g in load:
                g.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=10_000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    args = ap.parse_args()
    asyncio.run(run(args.rate, args.seconds, args.synchronous))


if __name__ == "__main__":
    main()
