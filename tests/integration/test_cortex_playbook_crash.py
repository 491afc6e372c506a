"""kill -9 the Cortex with deliveries in flight: after restart each is delivered, once per id.

The Cortex is a real `python -m cortex run` process with a `[playbooks]` section: two playbooks
(`notify`, one webhook step; `ticket`, two) trigger on every created and updated revision of
the credential-stuffing correlation and POST to `demo/webhook_receiver.py` over HTTPS
(Standard Webhooks signatures checked). Six guardians (hosts h1..h6, in this loop) report the
attack's three steps.

Life 0: four attacks, two verdicts (revision 2 of two assessments); the receiver holds its
first requests (`Hang`) and answers one 503 (a retry pending); the Cortex is SIGKILLed while
it holds them. Life 1: the fifth attack, and a SIGKILL at a random instant right after its
third step is emitted (its change may or may not be stored). Life 2: the sixth attack, and
everything settles.

At the end each stored (assessment, revision) has exactly one run per playbook and nothing
else has any, every run SUCCEEDED, every step's webhook-id was processed by the receiver
exactly once (redeliveries of the held requests show as duplicates: idempotency at work) and
the receiver saw no id that is not a step's.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from pathlib import Path

import pytest

from crypto.keyring import KeyManager
from demo.webhook_receiver import Action, Hang, Reply, WebhookReceiver, receiver_leaf
from mesh.channel import ChannelConfig, open_channel
from mesh.config import TlsFiles
from qsc.cortex.v1 import assessment_pb2
from qsc.cortex.v1 import cortex_service_pb2 as pb
from qsc.cortex.v1 import cortex_service_pb2_grpc as pb_grpc
from qsc.cortex.v1 import playbook_run_pb2 as rpb
from tests.integration.guardian_node import issue_guardian_pki
from tests.integration.playbook_harness import playbook_file, secret_file
from tests.integration.test_cortex_assessment_api import RULE, client_leaf
from tests.integration.test_cortex_correlation_crash import (
    HOSTS,
    Host,
    listed_and_stored,
    stored,
    within,
)
from tests.integration.test_cortex_crash import CONFIG, GUARDIAN, start_cortex
from tests.integration.test_cortex_ingest import HOST, TD

pytestmark = pytest.mark.slow

USED = ["h1", "h2", "h3", "h4", "h5", "h6"]
HANG = 4.0  # the receiver holds a request this long (the endpoint's timeout is longer)
HELD = 4  # requests held when the Cortex is killed
WAIT = 30.0
TP = assessment_pb2.VERDICT_TRUE_POSITIVE

PLAYBOOKS = """
- playbook: Tell the SOAR
  id: notify
  trigger:
    filter: 'rule = "{rule}"'
    on: [created, updated]
  steps:
    - webhook: soar
- playbook: Open a ticket
  id: ticket
  trigger:
    filter: 'rule = "{rule}"'
    on: [created, updated]
  steps:
    - webhook: soar
    - webhook: soar
"""
PLAYBOOK_IDS = ("notify", "ticket")

SECTION = """
[playbooks]
files = ["{file}"]
retry_delays = ["100ms", "200ms", "300ms", "400ms", "500ms", "500ms", "500ms", "500ms"]
jitter = 0.0
poll_interval = "100ms"
[[playbooks.endpoints]]
name = "soar"
url = "{url}"
secret_files = ["{secret}"]
ca_file = "{ca}"
timeout = "10s"
max_in_flight = 8
failures_to_open = 50
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return issue_guardian_pki(tmp_path_factory.mktemp("pki"), TD, HOSTS, cortex_ips=[HOST])


async def all_runs(port: int, tls: TlsFiles) -> list[rpb.PlaybookRun]:
    async with open_channel(ChannelConfig(f"{HOST}:{port}", tls)) as channel:
        api = pb_grpc.CortexServiceStub(channel)
        found: list[rpb.PlaybookRun] = []
        token = ""
        while True:
            page = await asyncio.wait_for(
                api.ListPlaybookRuns(pb.ListPlaybookRunsRequest(page_size=100, page_token=token)),
                WAIT,
            )
            found.extend(page.playbook_runs)
            token = page.next_page_token
            if not token:
                return found


async def verdict(port: int, tls: TlsFiles, name: str) -> None:
    async with open_channel(ChannelConfig(f"{HOST}:{port}", tls)) as channel:
        api = pb_grpc.CortexServiceStub(channel)
        await asyncio.wait_for(
            api.SubmitVerdict(pb.SubmitVerdictRequest(name=name, verdict=TP, comment="confirmed")),
            WAIT,
        )


def held(rx: WebhookReceiver) -> list[str]:
    """The webhook-ids of verified requests not answered (yet)."""
    return [r.webhook_id for r in rx.requests if r.verified and r.status is None and r.webhook_id]


def test_kill_9_with_deliveries_in_flight_delivers_each_once(pki: Path, tmp_path: Path) -> None:
    rng = random.Random(20261207)
    soar = client_leaf(pki, "soar", "s1")
    cert, key, ca = receiver_leaf(tmp_path / "rx-pki")
    secret, value = secret_file(tmp_path / "secrets", "soar.whsec")
    script: list[Action] = [Hang(HANG), Hang(HANG), Reply(503), Hang(HANG), Hang(HANG)]

    async def body(rx: WebhookReceiver) -> None:
        hosts = {h: Host(pki, h, tmp_path / h) for h in USED}
        KeyManager.create(tmp_path / "keys", "cortex")
        for node in hosts.values():
            await node.start()
        file = playbook_file(tmp_path / "playbooks", PLAYBOOKS.format(rule=RULE))
        config = tmp_path / "cortex.toml"
        config.write_text(
            CONFIG.format(pki=pki, base=tmp_path)
            + SECTION.format(file=file, url=rx.url(), secret=secret, ca=ca)
            + "".join(
                GUARDIAN.format(id=n.id, port=n.port, role=n.role, host=n.host)
                for n in hosts.values()
            )
        )
        lives = 0
        proc: asyncio.subprocess.Process | None = None

        async def start() -> int:
            nonlocal proc, lives
            proc = await start_cortex(config, tmp_path, lives)
            lives += 1
            return int((tmp_path / "port").read_text().strip())

        async def kill() -> None:
            assert proc is not None
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL

        def attack(*names: str) -> None:
            for n in (1, 2, 3):
                for h in names:
                    hosts[h].step(n)

        try:
            # Life 0: deliveries held by the receiver when the Cortex dies.
            port = await start()
            attack("h1", "h2", "h3", "h4")
            listed: list[assessment_pb2.Assessment] = []

            async def raised(n: int) -> None:
                nonlocal listed
                deadline = asyncio.get_running_loop().time() + WAIT
                while True:
                    listed, _ = await listed_and_stored(port, soar)
                    if len(listed) >= n:
                        return
                    assert asyncio.get_running_loop().time() < deadline, listed
                    await asyncio.sleep(0.05)

            await raised(4)
            by_host = {a.hosts[0]: a for a in listed}
            for h in ("h1", "h2"):
                await verdict(port, soar, by_host[h].name)

            async def revisions_have_runs(n: int) -> None:
                deadline = asyncio.get_running_loop().time() + WAIT
                while len(await all_runs(port, soar)) < n:
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.05)

            await revisions_have_runs(6 * len(PLAYBOOK_IDS))  # 4 created + 2 verdicts
            await within(lambda: len(held(rx)) >= HELD, f"{HELD} requests held", timeout=WAIT)
            at_kill = held(rx)
            await kill()  # the held attempts are not written: pending, same webhook-id

            # Life 1: a kill at a random instant right after the third step's emit.
            await start()
            rx.set_script([Hang(HANG / 2), Hang(HANG / 2)])
            attack("h5")
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            await kill()

            # Life 2: the last attack, then everything settles.
            port = await start()
            attack("h6")
            await within(stored(tmp_path, *hosts.values()), "every step stored", timeout=WAIT)
            await raised(len(USED))
            ended = {rpb.RUN_STATE_SUCCEEDED, rpb.RUN_STATE_FAILED, rpb.RUN_STATE_CANCELLED}

            async def settled() -> tuple[list[assessment_pb2.Assessment], list[rpb.PlaybookRun]]:
                deadline = asyncio.get_running_loop().time() + WAIT
                while True:
                    listed, _ = await listed_and_stored(port, soar)
                    expected = sum(a.revision for a in listed) * len(PLAYBOOK_IDS)
                    found = await all_runs(port, soar)
                    if (
                        len(found) >= expected
                        and all(r.state in ended for r in found)
                        and set(at_kill) <= set(rx.duplicates) | set(rx.processed)
                    ):
                        return listed, found
                    if asyncio.get_running_loop().time() > deadline:
                        raise AssertionError(f"never settled: {found}\n{rx.summary()}")
                    await asyncio.sleep(0.1)

            listed, found = await settled()
            await asyncio.sleep(HANG)  # a late duplicate delivery or run would show by now
            listed, records = await listed_and_stored(port, soar)
            found = await all_runs(port, soar)

            # One assessment per attacked host, revisions 1 (and 2 after a verdict).
            assert Counter(h for a in listed for h in a.hosts) == Counter(USED), listed
            revision = {a.hosts[0]: a.revision for a in listed}
            assert revision["h1"] >= 2, revision
            assert revision["h2"] >= 2, revision
            # Every stored revision, and only those, has exactly one run per playbook.
            stored_revisions = Counter(
                (f"assessments/{r.assessment_change.assessment_id}", r.assessment_change.revision)
                for r in records
            )
            assert all(n == 1 for n in stored_revisions.values()), stored_revisions
            assert set(stored_revisions) == {
                (a.name, rev) for a in listed for rev in range(1, a.revision + 1)
            }
            per_run = Counter((r.assessment, r.assessment_revision, r.playbook) for r in found)
            assert per_run == Counter(
                {(a, rev, p): 1 for (a, rev) in stored_revisions for p in PLAYBOOK_IDS}
            ), per_run
            assert len(found) == len(stored_revisions) * len(PLAYBOOK_IDS)
            for r in found:
                assert r.state == rpb.RUN_STATE_SUCCEEDED, r
                assert r.trigger.startswith(
                    "created: " if r.assessment_revision == 1 else "updated: "
                )
                assert len(r.steps) == (1 if r.playbook == "notify" else 2), r
                assert all(s.state == rpb.RUN_STATE_SUCCEEDED for s in r.steps), r
            # The receiver processed each step's webhook-id once and nothing else.
            ids = [s.webhook_id for r in found for s in r.steps]
            assert len(set(ids)) == len(ids)
            processed = rx.processed
            assert set(processed) == set(ids), rx.summary()
            assert all(n == 1 for n in processed.values())
            assert set(rx.duplicates) <= set(processed)
            # The requests held at the kill were delivered again after the restart.
            assert len(at_kill) >= HELD
            assert set(at_kill) <= set(rx.duplicates), rx.summary()
        finally:
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
            for node in hosts.values():
                await node.stop()

    with WebhookReceiver(cert, key, secrets=[value], script=script) as rx:
        asyncio.run(body(rx))
