"""kill -9 the Cortex mid-correlation: open correlations resume, nothing raised is lost or twice.

The Cortex is a real `python -m cortex run` process; eight guardians (`mesh.guardian.Guardian`
on this loop, hosts h1..h8) report credential-stuffing attacks as Alpha does, each attack split
in its three steps (failed-login burst, login from a new address, large transfer). The Cortex
is killed with SIGKILL between steps (after step 1 stored on some hosts, after step 2 on
others), right after the emit of a third step (not yet streamed), as soon as a third step is
stored (its assessment most likely not yet), and a random instant after one (streamed, stored,
correlated or persisted: whichever it reached), then restarted on the same store. A SOAR
subscriber follows SubscribeAssessments with a short heartbeat, keeps the latest token it saw
and resumes with it after every restart.

At the end every host whose three steps were all emitted has exactly one assessment of the
rule, a host with only part of an attack has none, each stored revision was written once, the
subscriber saw each assessment's CREATED change and every revision up to the stored one (the
stream is at least once: repeats of a (name, revision) are allowed, gaps are not), and
`qsc-cortex store verify` passes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2

from crypto.keyring import KeyManager
from mesh.channel import ChannelConfig, open_channel
from mesh.config import TlsFiles
from qsc.common.v1 import event_pb2
from qsc.cortex.v1 import assessment_pb2
from qsc.cortex.v1 import cortex_service_pb2 as pb
from qsc.cortex.v1 import cortex_service_pb2_grpc as pb_grpc
from tests.integration.guardian_node import GuardianNode, issue_guardian_pki
from tests.integration.test_cortex_assessment_api import RULE, alpha_event, client_leaf
from tests.integration.test_cortex_crash import CONFIG, GUARDIAN, start_cortex
from tests.integration.test_cortex_ingest import HOST, TD, rows

pytestmark = pytest.mark.slow

HOSTS = {f"h{i}": "alpha" for i in range(1, 9)}
WAIT = 20.0  # bound of every wait (heartbeats never end a stream by themselves)
HEARTBEAT = 0.2


class Host(GuardianNode):
    trust_domain = TD
    roles = HOSTS

    def step(self, n: int) -> None:
        """Step `n` (1, 2, 3) of the attack on this host, as Alpha reports it."""
        user, source = f"user-{self.host}", f"127.0.0.{10 + int(self.host[1:])}"
        if n == 1:
            self.emit_one(
                alpha_event("alpha.credential_stuffing", "auth_event", user=user, source=source)
            )
        elif n == 2:
            self.emit_one(
                alpha_event("alpha.login_new_source", "auth_event", user=user, source=source)
            )
        else:
            self.emit_one(alpha_event("alpha.large_outbound_transfer", "transfer_volume"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return issue_guardian_pki(tmp_path_factory.mktemp("pki"), TD, HOSTS, cortex_ips=[HOST])


def heartbeat(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(dt.timedelta(seconds=seconds))
    return d


async def within(
    cond: Callable[[], bool], what: str, timeout: float = WAIT, poll: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(poll)


@dataclass
class Subscriber:
    """A SOAR following SubscribeAssessments across the Cortex's lives with the latest token."""

    tls: TlsFiles
    token: str = ""
    changes: list[pb.AssessmentChange] = field(default_factory=list)
    beats: int = 0  # progress messages, over all streams
    streams: int = 0  # streams that sent their first message
    task: asyncio.Task[None] | None = None

    def follow(self, port: int) -> None:
        assert self.task is None or self.task.done()
        self.task = asyncio.create_task(self._run(port))

    async def _run(self, port: int) -> None:
        async with open_channel(ChannelConfig(f"{HOST}:{port}", self.tls)) as channel:
            api = pb_grpc.CortexServiceStub(channel)
            call = api.SubscribeAssessments(
                pb.SubscribeAssessmentsRequest(
                    filter=f'rule = "{RULE}"',
                    resume_token=self.token,
                    include_existing=not self.token,
                    heartbeat_interval=heartbeat(HEARTBEAT),
                )
            )
            first = True
            while True:
                message = await call.read()
                assert isinstance(message, pb.SubscribeAssessmentsResponse), "the stream ended"
                if first:
                    self.streams += 1
                    first = False
                if message.WhichOneof("payload") == "change":
                    self.changes.append(message.change)
                    self.token = message.change.resume_token
                else:
                    self.beats += 1
                    self.token = message.progress.resume_token

    async def live(self) -> None:
        """Until the current stream sent its first message (it is registered for changes)."""
        streams = self.streams
        await within(lambda: self.streams > streams or self._died(), "the subscription")
        self._check_alive()

    async def cut(self) -> None:
        """The Cortex was killed: the stream ends UNAVAILABLE, the token stays."""
        assert self.task is not None
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async with asyncio.timeout(WAIT):
                await self.task
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def _died(self) -> bool:
        return self.task is not None and self.task.done()

    def _check_alive(self) -> None:
        if self.task is not None and self.task.done():
            self.task.result()  # raises what ended it
            raise AssertionError("the subscription ended")

    def created_hosts(self) -> list[str]:
        return [
            h for c in self.changes if c.type == pb.CHANGE_TYPE_CREATED for h in c.assessment.hosts
        ]

    async def sees_created(self, *hosts: str) -> None:
        def seen() -> bool:
            self._check_alive()
            return set(hosts) <= set(self.created_hosts())

        await within(seen, f"the assessments of {hosts} on the subscription")

    async def beats_more(self, n: int) -> None:
        beats = self.beats

        def seen() -> bool:
            self._check_alive()
            return self.beats >= beats + n

        await within(seen, f"{n} heartbeats")


def stored(base: Path, *hosts: Host) -> Callable[[], bool]:
    """Every event these guardians emitted is in the store (up to the last seq of each outbox)."""

    def check() -> bool:
        if not (base / "store" / "events.db").exists():
            return False
        for h in hosts:
            got = rows(base, "SELECT max(seq) FROM events WHERE guardian_id = ?", h.id)
            if got != [(h.last_seq,)]:
                return False
        return True

    return check


async def listed_and_stored(
    port: int, tls: TlsFiles
) -> tuple[list[assessment_pb2.Assessment], list[event_pb2.Event]]:
    """The rule's assessments (ListAssessments) and every stored assessment record (ListEvents),
    all pages."""
    async with open_channel(ChannelConfig(f"{HOST}:{port}", tls)) as channel:
        api = pb_grpc.CortexServiceStub(channel)
        assessments: list[assessment_pb2.Assessment] = []
        token = ""
        while True:
            page = await asyncio.wait_for(
                api.ListAssessments(
                    pb.ListAssessmentsRequest(filter=f'rule = "{RULE}"', page_token=token)
                ),
                WAIT,
            )
            assessments.extend(page.assessments)
            token = page.next_page_token
            if not token:
                break
        records: list[event_pb2.Event] = []
        while True:
            events = await asyncio.wait_for(
                api.ListEvents(
                    pb.ListEventsRequest(filter="kind = assessment_change", page_token=token)
                ),
                WAIT,
            )
            records.extend(events.events)
            token = events.next_page_token
            if not token:
                return assessments, records


def test_kill_9_mid_correlation_loses_and_duplicates_no_assessment(
    pki: Path, tmp_path: Path
) -> None:
    rng = random.Random(20261207)
    soar = client_leaf(pki, "soar", "s1")

    async def body() -> None:
        hosts = {h: Host(pki, h, tmp_path / h) for h in HOSTS}
        h1, h2, h3, h4, h5, h6, h7, h8 = hosts.values()
        KeyManager.create(tmp_path / "keys", "cortex")
        for node in hosts.values():
            await node.start()
        config = tmp_path / "cortex.toml"
        config.write_text(
            CONFIG.format(pki=pki, base=tmp_path)
            + "".join(
                GUARDIAN.format(id=n.id, port=n.port, role=n.role, host=n.host)
                for n in hosts.values()
            )
        )
        sub = Subscriber(soar)
        lives = 0
        proc: asyncio.subprocess.Process | None = None

        async def start() -> int:
            nonlocal proc, lives
            proc = await start_cortex(config, tmp_path, lives)
            lives += 1
            port = int((tmp_path / "port").read_text().strip())
            sub.follow(port)
            await sub.live()
            return port

        async def kill() -> None:
            assert proc is not None
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
            await sub.cut()

        def emitted(*steps: tuple[Host, int]) -> None:
            for node, n in steps:
                node.step(n)

        try:
            await start()
            # h7's attack completes before any kill: its assessment must survive every replay.
            emitted((h7, 1), (h7, 2), (h7, 3))
            emitted(*((h, 1) for h in (h1, h2, h3, h4, h5, h6, h8)))
            await within(stored(tmp_path, *hosts.values()), "step 1 stored")
            await sub.sees_created("h7")
            await kill()  # after step 1 on h1..h6, h8

            await start()
            emitted((h1, 2), (h2, 2), (h4, 2), (h6, 2))
            await within(stored(tmp_path, *hosts.values()), "step 2 stored")
            await kill()  # after step 2 on h1, h2, h4, h6 (the windows live only in memory)

            await start()
            emitted((h3, 2), (h3, 3))
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            await kill()  # somewhere in h3's steps 2 and 3

            await start()
            emitted((h1, 3))
            await sub.sees_created("h1")
            emitted((h2, 3))
            await kill()  # right after the emit of h2's step 3, before it is streamed

            await start()
            emitted((h4, 3))
            await within(stored(tmp_path, h4), "h4's step 3 stored", poll=0.001)
            await kill()  # as soon as h4's step 3 is stored: most likely before its assessment

            port = await start()
            await within(stored(tmp_path, *hosts.values()), "every step stored", timeout=30)
            complete = {"h1", "h2", "h3", "h4", "h7"}
            await sub.sees_created(*complete)
            await sub.beats_more(5)  # a duplicate raised late would have arrived by now

            listed, records = await listed_and_stored(port, soar)
            by_host = Counter(h for a in listed for h in a.hosts)
            assert by_host == Counter(complete), by_host  # once each; none for h5, h6, h8
            assert all(len(a.hosts) == 1 for a in listed)
            # Stored: each revision of each assessment once, none lost, none written twice.
            stored_revisions = Counter(
                (r.assessment_change.assessment_id, r.assessment_change.revision) for r in records
            )
            for a in listed:
                aid = a.name.removeprefix("assessments/")
                revs = sorted(
                    r for (i, r), n in stored_revisions.items() if i == aid for _ in range(n)
                )
                assert revs == list(range(1, a.revision + 1)), (a.name, revs)
            assert len({a.name for a in listed}) == len(listed)
            assert all(a.state == assessment_pb2.ASSESSMENT_STATE_OPEN for a in listed)
            # No evidence came after the third step: the replays after the restarts took the
            # windows back without a new revision (a revision per restart would be a duplicate).
            assert [a.revision for a in listed] == [1] * len(listed)
            for a in listed:
                assert {f.name for f in a.factors} >= {
                    "failed_login_burst",
                    "login_from_new_address",
                    "large_outbound_transfer",
                }, a

            # At least once: dedupe by (name, revision), then no gaps and one CREATED each.
            unique = {(c.assessment.name, c.assessment.revision): c for c in sub.changes}
            revisions: dict[str, set[int]] = {}
            for name, revision in unique:
                revisions.setdefault(name, set()).add(revision)
            final = {a.name: a.revision for a in listed}
            assert set(revisions) == set(final)  # nothing seen that is not stored, and back
            for name, revision in final.items():
                assert revisions[name] == set(range(1, revision + 1)), (name, revisions[name])
            created = [c for c in unique.values() if c.type == pb.CHANGE_TYPE_CREATED]
            assert sorted(c.assessment.name for c in created) == sorted(final)
            assert all(c.assessment.revision == 1 for c in created)
            assert Counter(h for c in created for h in c.assessment.hosts) == Counter(complete)

            await sub.stop()
            assert proc is not None
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), WAIT) == 0
            verify = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "cortex", "store", "verify", "--config", str(config)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(verify.communicate(), 60)
            assert verify.returncode == 0, (out + err).decode()
        finally:
            await sub.stop()
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
            for node in hosts.values():
                await node.stop()

    asyncio.run(body())
