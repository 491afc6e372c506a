"""SubscribeAssessments from a Node.js @grpc/grpc-js client: disconnected, resumed, judging.

A real Cortex and a real guardian run on this test's event loop, as in test_cortex_subscribe; the
client is `subscribe_assessments.js`, a process driven by commands on its stdin that prints what
it receives as JSON lines, read here in order. It subscribes with include_existing, sees the
attack's assessment CREATED, cancels its call and, while it is away, the assessment is resolved
and another host is attacked. Resuming with the token of the last change it received, it gets
exactly those two changes (what a Python subscriber that never left saw), then resolves the new
assessment itself and sees the change carrying its own SPIFFE ID. A tampered token is refused
with INVALID_ARGUMENT, the ErrorInfo decoded in JavaScript.

Every wait is bounded in total (heartbeats keep coming, so a bound per read would never
expire), the script exits by itself after a lifetime, and it is killed when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from cortex.app import Cortex
from crypto.keyring import KeyManager
from mesh.channel import ChannelConfig, open_channel
from mesh.config import TlsFiles
from qsc.cortex.v1 import assessment_pb2
from qsc.cortex.v1 import cortex_service_pb2 as pb
from qsc.cortex.v1 import cortex_service_pb2_grpc as pb_grpc
from tests.integration.clients import HOW_TO_FIX, NODE_MODULES, PROTO_ROOT, tls_args
from tests.integration.test_cortex_assessment_api import client_leaf
from tests.integration.test_cortex_ingest import HOST, TD, Node, cortex_config, pki, until
from tests.integration.test_cortex_read_api import GOOGLE_PROTOS
from tests.integration.test_cortex_subscribe import (
    attack,
    heartbeat,
    next_change,
    next_progress,
)

__all__ = ["pki"]
SCRIPT = Path(__file__).with_name("subscribe_assessments.js")
PACKAGES = ("@grpc/grpc-js", "@grpc/proto-loader", "protobufjs")
READ_TIMEOUT = 20.0  # the most any one expectation waits, over all the lines it reads
LIFETIME_MS = 120_000  # the script exits by itself after this, whatever happens
OPEN, RESOLVED = "ASSESSMENT_STATE_OPEN", "ASSESSMENT_STATE_RESOLVED"
Line = dict[str, Any]


def no_line(line: Line) -> bool:
    return False


class NodeSubscriber:
    """The running script: commands to its stdin, its JSON lines read in order. A line read
    while looking for another is kept, so lines of concurrent calls may come in any order."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr
        self.pending: list[Line] = []
        self.seen: list[Line] = []

    def diagnosis(self) -> str:
        err = self.stderr.read_text(errors="replace") if self.stderr.exists() else ""
        return f"last lines {self.seen[-15:]}; stderr {err[-2000:]!r}"

    async def send(self, *words: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((" ".join(words) + "\n").encode())
        await self.proc.stdin.drain()

    async def _read(self) -> Line:
        assert self.proc.stdout is not None
        raw = await self.proc.stdout.readline()
        if not raw:
            code = await self.proc.wait()
            raise AssertionError(f"the Node.js client exited ({code}); {self.diagnosis()}")
        line: Line = json.loads(raw)
        self.seen.append(line)
        return line

    async def expect(
        self, what: str, match: Callable[[Line], bool], skip: Callable[[Line], bool] = no_line
    ) -> Line:
        """The first line (kept or new) that matches, within READ_TIMEOUT in all; lines that
        `skip` matches on the way are dropped, the others kept."""
        self.pending = [line for line in self.pending if not skip(line)]
        for i, line in enumerate(self.pending):
            if match(line):
                return self.pending.pop(i)
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                while True:
                    line = await self._read()
                    if match(line):
                        return line
                    if not skip(line):
                        self.pending.append(line)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; {self.diagnosis()}") from None

    async def on_call(self, call: int) -> Line:
        """The next thing call `call` received: a change, a progress, its error or its end."""
        return await self.expect(f"a message on call {call}", lambda m: m.get("call") == call)

    async def subscribe(self, *words: str) -> tuple[int, Line]:
        await self.send(*words)
        line = await self.expect(f"{words[0]} acknowledged", lambda m: m["type"] == "subscribed")
        return line["call"], line

    async def past_heartbeats(self, call: int) -> Line:
        """The next thing but a heartbeat on call `call`: a change, its error or its end (one
        bound for the whole wait: the heartbeats would satisfy a bound per line)."""
        return await self.expect(
            f"a change or the end of call {call}",
            lambda m: m.get("call") == call and m["type"] != "progress",
            skip=lambda m: m.get("call") == call and m["type"] == "progress",
        )

    async def next_change(self, call: int) -> Line:
        line = await self.past_heartbeats(call)
        assert line["type"] == "change", line
        return line


@contextlib.asynccontextmanager
async def node_subscriber(
    port: int, files: TlsFiles, stderr: Path
) -> AsyncIterator[NodeSubscriber]:
    exe = shutil.which("node")
    if exe is None:
        pytest.fail(f"Node.js (`node`) is not on PATH; {HOW_TO_FIX}")
    for package in PACKAGES:
        if not (NODE_MODULES / package / "package.json").is_file():
            pytest.fail(f"npm package {package} is missing from {NODE_MODULES}; {HOW_TO_FIX}")
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *(exe, str(SCRIPT), str(PROTO_ROOT), str(GOOGLE_PROTOS), f"{HOST}:{port}"),
            *(*tls_args(files), str(LIFETIME_MS)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
        )
    try:
        yield NodeSubscriber(proc, stderr)
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 10)


def change_of(line: Line) -> tuple[str, str, int, str]:
    return line["change_type"], line["name"], line["revision"], line["state"]


def python_change(change: pb.AssessmentChange) -> tuple[str, str, int, str]:
    a = change.assessment
    return (
        pb.ChangeType.Name(change.type),
        a.name,
        a.revision,
        assessment_pb2.AssessmentState.Name(a.state),
    )


def tampered(token: str) -> str:
    """`token` with one character in its middle changed (the last one may only carry padding
    bits of base64, so it is left alone)."""
    i = len(token) // 2
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]


def test_a_node_client_resumes_after_a_disconnect_and_submits_a_verdict(
    pki: Path, tmp_path: Path
) -> None:
    soar = client_leaf(pki, "soar", "s1")  # the Python side
    js = client_leaf(pki, "soar", "node1")  # the Node.js client
    js_spiffe = f"spiffe://{TD}/soar/node1"

    async def body() -> None:
        web = Node(pki, "web-01", tmp_path / "web-01")
        db = Node(pki, "db-01", tmp_path / "db-01")
        KeyManager.create(tmp_path / "keys", "cortex")
        await web.start()
        await db.start()
        cortex = Cortex(cortex_config(pki, tmp_path, [web, db]))
        port = await cortex.start()
        changes = cortex.changes
        assert changes is not None
        try:
            async with (
                open_channel(ChannelConfig(f"{HOST}:{port}", soar)) as channel,
                node_subscriber(port, js, tmp_path / "node.stderr") as client,
            ):
                api = pb_grpc.CortexServiceStub(channel)
                # A Python subscriber that never leaves: what the Node.js client must catch up on.
                witness = api.SubscribeAssessments(
                    pb.SubscribeAssessmentsRequest(
                        include_existing=True, heartbeat_interval=heartbeat(0.2)
                    )
                )
                assert (await next_progress(witness)).snapshot_complete

                first, ack = await client.subscribe("subscribe")
                assert ack["resume_token"] == ""
                # Nothing exists yet: the snapshot is empty, then heartbeats with tokens.
                snapshot = await client.on_call(first)
                assert snapshot["type"] == "progress", snapshot
                assert snapshot["snapshot_complete"]
                beat = await client.on_call(first)
                assert beat["type"] == "progress", beat
                assert beat["resume_token"]
                assert not beat["snapshot_complete"]
                await until(lambda: changes.subscribers == 2, "both subscriptions registered")

                attack(web, "alice", "127.0.0.2")
                created = await client.next_change(first)
                assert (created["change_type"], created["revision"]) == ("CHANGE_TYPE_CREATED", 1)
                assert created["state"] == OPEN
                assert created["verdict"] is None
                assert created["resume_token"]
                a = created["name"]
                assert python_change(await next_change(witness)) == change_of(created)

                # The client disconnects; the Cortex sees its subscription go.
                await client.send("cancel", str(first))
                ended = await client.past_heartbeats(first)  # some came before the cancel
                assert (ended["type"], ended["code"]) == ("error", "CANCELLED"), ended
                await until(lambda: changes.subscribers == 1, "the Node.js subscription gone")

                # While it is away: the assessment is resolved, and another host is attacked.
                resolved = await api.SubmitVerdict(
                    pb.SubmitVerdictRequest(
                        name=a, verdict=assessment_pb2.VERDICT_TRUE_POSITIVE, comment="seen"
                    )
                )
                assert resolved.assessment.state == assessment_pb2.ASSESSMENT_STATE_RESOLVED
                attack(db, "bob", "127.0.0.3")
                missed = [await next_change(witness), await next_change(witness)]
                await next_progress(witness)  # and then nothing more for now
                assert [python_change(c) for c in missed] == [
                    ("CHANGE_TYPE_UPDATED", a, 2, RESOLVED),
                    ("CHANGE_TYPE_CREATED", missed[1].assessment.name, 1, OPEN),
                ]
                b = missed[1].assessment.name
                assert b != a

                # It resumes with the token of the last change it received: exactly what it
                # missed, in order, no repeat of CREATED, then a heartbeat.
                second, ack = await client.subscribe("resume")
                assert ack["resume_token"] == created["resume_token"]
                caught_up = [await client.on_call(second), await client.on_call(second)]
                assert [c["type"] for c in caught_up] == ["change", "change"], caught_up
                assert [change_of(c) for c in caught_up] == [python_change(c) for c in missed]
                assert caught_up[0]["verdict"]["actor"] == f"spiffe://{TD}/soar/s1"
                assert caught_up[0]["verdict"]["verdict"] == "VERDICT_TRUE_POSITIVE"
                assert [c["resume_token"] for c in caught_up] == [c.resume_token for c in missed]
                after = await client.on_call(second)
                assert after["type"] == "progress", after

                # It judges the open assessment itself and sees the change, with its identity.
                await client.send("verdict", b, "VERDICT_BENIGN", "pen", "test")
                answer = await client.expect("its answer", lambda m: m["type"] == "verdict")
                assert answer["ok"], answer
                assert (answer["name"], answer["revision"], answer["state"]) == (b, 2, RESOLVED)
                assert answer["actor"] == js_spiffe
                judged = await client.next_change(second)
                assert change_of(judged) == ("CHANGE_TYPE_UPDATED", b, 2, RESOLVED)
                assert judged["verdict"] == {
                    "verdict": "VERDICT_BENIGN",
                    "actor": js_spiffe,
                    "comment": "pen test",
                }
                seen_here = await next_change(witness)
                assert python_change(seen_here) == change_of(judged)
                assert seen_here.assessment.verdict.actor == js_spiffe

                # A tampered token is refused before the first message, the reason decoded in JS.
                third, _ = await client.subscribe("resume", tampered(created["resume_token"]))
                refused = await client.on_call(third)
                assert refused["type"] == "error", refused
                assert (refused["code"], refused["reason"], refused["domain"]) == (
                    "INVALID_ARGUMENT",
                    "INVALID_RESUME_TOKEN",
                    "cortex.qsc",
                )
                assert refused["metadata"].get("argument") == "resume_token", refused
                assert changes.subscribers == 2  # the witness and the resumed call, no more

                await client.send("exit")
                assert await asyncio.wait_for(client.proc.wait(), READ_TIMEOUT) == 0
                witness.cancel()
        finally:
            await cortex.stop()
            await web.stop()
            await db.stop()

    asyncio.run(body())
