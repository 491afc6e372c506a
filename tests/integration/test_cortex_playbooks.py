"""Playbooks on a real Cortex: assessments delivered to a real HTTPS receiver, signed, retried,
dead-lettered, replayed, approved, suppressed; runs read back over mTLS.

A real guardian's sealed stream carries a credential-stuffing attack; the Cortex raises the
assessment and its playbooks POST it to `demo/webhook_receiver.py` (its own certificate, the
Standard Webhooks signature checked with the `standardwebhooks` package, scripted answers).
Retries use a schedule shortened to tenths of a second; everything else is the real path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from cortex.app import Cortex
from cortex.errors import PlaybookDefinitionError, PlaybookSecretError
from crypto.keyring import KeyManager
from demo.webhook_receiver import Reply, WebhookReceiver, receiver_leaf
from mesh.channel import ChannelConfig, open_channel
from qsc.cortex.v1 import assessment_pb2
from qsc.cortex.v1 import cortex_service_pb2 as pb
from qsc.cortex.v1 import cortex_service_pb2_grpc as pb_grpc
from qsc.cortex.v1 import playbook_run_pb2 as rpb
from tests.integration.playbook_harness import (
    playbook_file,
    secret_file,
    settled,
    wait_runs,
    with_playbooks,
)
from tests.integration.test_cortex_assessment_api import RULE, client_leaf
from tests.integration.test_cortex_ingest import HOST, Node, cortex_config, pki
from tests.integration.test_cortex_read_api import error_info
from tests.integration.test_cortex_subscribe import attack

__all__ = ["pki"]
TP = assessment_pb2.VERDICT_TRUE_POSITIVE

NOTIFY = """
- playbook: Tell the SOAR
  id: notify
  trigger:
    filter: 'rule = "{rule}"'
  steps:
    - webhook: soar
"""


def endpoint(name: str, rx: WebhookReceiver, ca: Path, secret_files: list[Path], **kw: Any) -> Any:
    return {
        "name": name,
        "url": rx.url(),
        "secret_files": [str(p) for p in secret_files],
        "ca_file": str(ca),
        "timeout": "2s",
        **kw,
    }


def reason(exc: grpc.aio.AioRpcError) -> str:
    info = error_info(exc.trailing_metadata())
    assert info is not None, exc
    return info.reason


class Mesh:
    """One guardian, one Cortex with playbooks, a SOAR client: started in `__aenter__`."""

    def __init__(self, pki: Path, base: Path, endpoints: list[Any], playbooks: str, **kw: Any):
        self.pki, self.base = pki, base
        self.endpoints, self.text, self.kw = endpoints, playbooks, kw

    async def __aenter__(self) -> Mesh:
        self.web = Node(self.pki, "web-01", self.base / "web-01")
        self.db = Node(self.pki, "db-01", self.base / "db-01")
        KeyManager.create(self.base / "keys", "cortex")
        await self.web.start()
        await self.db.start()
        files = [playbook_file(self.base / "playbooks", self.text.format(rule=RULE))]
        config = with_playbooks(
            cortex_config(self.pki, self.base, [self.web, self.db]),
            self.endpoints,
            files,
            **self.kw,
        )
        self.cortex = Cortex(config)
        port = await self.cortex.start()
        soar = client_leaf(self.pki, "soar", "s1")
        self._channel = open_channel(ChannelConfig(f"{HOST}:{port}", soar))
        channel = await self._channel.__aenter__()
        self.api = pb_grpc.CortexServiceStub(channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._channel.__aexit__(None, None, None)
        await self.cortex.stop()
        await self.web.stop()
        await self.db.stop()


def test_an_assessment_is_delivered_signed_retried_with_one_webhook_id(
    pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cert, key, ca = receiver_leaf(tmp_path / "rx-pki")
    old, _ = secret_file(tmp_path / "secrets", "old.whsec")
    new, new_value = secret_file(tmp_path / "secrets", "new.whsec")
    # The receiver has moved to the new secret; the Cortex signs with both during the rollover.
    with WebhookReceiver(cert, key, secrets=[new_value], script=[Reply(500), Reply(503)]) as rx:

        async def body() -> None:
            async with Mesh(pki, tmp_path, [endpoint("soar", rx, ca, [new, old])], NOTIFY) as m:
                attack(m.web, "alice", "127.0.0.2")
                (run,) = await wait_runs(m.api, settled(1))
                assert run.state == rpb.RUN_STATE_SUCCEEDED, run
                assert run.playbook == "notify"
                assert run.assessment_revision == 1
                assert run.trigger.startswith("created: ")
                (step,) = run.steps
                assert step.state == rpb.RUN_STATE_SUCCEEDED
                assert step.attempts == 3
                assert step.kind == "webhook"
                assert step.target == "soar"
                assert step.message == "HTTP 200"
                assert step.end_time.ToNanoseconds() >= step.start_time.ToNanoseconds() > 0
                # Each attempt carried the same id; the receiver processed it once.
                ids = [r.webhook_id for r in rx.verified()]
                assert ids == [step.webhook_id] * 3
                assert rx.processed == {step.webhook_id: 1}
                sig = rx.requests[-1].headers["webhook-signature"].split()
                assert len(sig) == 2
                assert all(s.startswith("v1,") for s in sig)
                doc = rx.bodies_json()[-1]
                assert doc["type"] == "assessment.created"
                assert doc["data"]["name"] == run.assessment
                got = await m.api.GetPlaybookRun(pb.GetPlaybookRunRequest(name=run.name))
                assert got.playbook_run == run
                listed = await m.api.ListPlaybookRuns(
                    pb.ListPlaybookRunsRequest(filter=f'assessment = "{run.assessment}"')
                )
                assert [r.name for r in listed.playbook_runs] == [run.name]
                assert listed.total_size == 1
                none = await m.api.ListPlaybookRuns(
                    pb.ListPlaybookRunsRequest(filter="dead_letter = true")
                )
                assert not none.playbook_runs

        asyncio.run(body())
    # The secrets are in no log line (the retries and the delivery were logged).
    assert "playbook step will retry" in caplog.text
    key_b64 = new_value.removeprefix("whsec_")
    assert key_b64 not in caplog.text
    assert old.read_text().strip().removeprefix("whsec_") not in caplog.text


def test_429_retry_after_410_disables_4xx_fails_and_a_dead_letter_is_replayed(
    pki: Path, tmp_path: Path
) -> None:
    cert, key, ca = receiver_leaf(tmp_path / "rx-pki")
    s, value = secret_file(tmp_path / "secrets", "s.whsec")
    slow = WebhookReceiver(cert, key, secrets=[value], script=[Reply(429, retry_after="1")])
    gone = WebhookReceiver(cert, key, secrets=[value], script=[Reply(410)])
    refuses = WebhookReceiver(cert, key, secrets=[value], script=[Reply(422), Reply(302)])
    text = "".join(
        f"""
- playbook: to {n}
  id: to-{n}
  trigger:
    filter: 'rule = "{{rule}}"'
    on: [created, updated]
  steps:
    - webhook: {n}
"""
        for n in ("slow", "gone", "refuses")
    )
    endpoints = [
        endpoint("slow", slow, ca, [s]),
        endpoint("gone", gone, ca, [s]),
        endpoint("refuses", refuses, ca, [s]),
    ]
    with slow, gone, refuses:

        async def body() -> None:
            async with Mesh(pki, tmp_path, endpoints, text) as m:
                attack(m.web, "bob", "127.0.0.3")
                found = await wait_runs(m.api, settled(3), flt="assessment_revision = 1")
                by = {r.playbook: r for r in found}
                # 429 with Retry-After: 1 waited at least the second asked (the schedule's
                # own delay is 100 ms), then delivered.
                assert by["to-slow"].state == rpb.RUN_STATE_SUCCEEDED
                first, second = slow.requests[0], slow.requests[1]
                assert int(second.timestamp or 0) - int(first.timestamp or 0) >= 1
                assert by["to-slow"].steps[0].attempts == 2
                # 410: a dead letter at once, and the endpoint disabled.
                g = by["to-gone"]
                assert g.state == rpb.RUN_STATE_FAILED
                assert g.dead_letter
                assert g.steps[0].attempts == 1
                assert "410" in g.error
                # 422: refused, failed after one attempt, not retried.
                r = by["to-refuses"]
                assert r.state == rpb.RUN_STATE_FAILED
                assert r.steps[0].attempts == 1
                assert "422" in r.steps[0].message

                # The assessment changes (a verdict): new runs; the disabled endpoint is not
                # called again, a 302 is not followed.
                await m.api.SubmitVerdict(
                    pb.SubmitVerdictRequest(
                        name=found[0].assessment, verdict=TP, comment="confirmed"
                    )
                )
                later = await wait_runs(m.api, settled(3), flt="assessment_revision > 1")
                by2 = {x.playbook: x for x in later}
                assert len(gone.requests) == 1
                assert "disabled" in by2["to-gone"].steps[0].message
                assert by2["to-gone"].steps[0].attempts == 0 or "410" in by2["to-gone"].error
                assert "redirects are not followed" in by2["to-refuses"].steps[0].message

                dead = await wait_runs(
                    m.api, lambda rs: len(rs) == 4, flt="state = FAILED AND dead_letter = true"
                )
                assert {d.playbook for d in dead} == {"to-gone", "to-refuses"}

                # The receiver is fixed: replaying the first dead letter re-enables the
                # endpoint and delivers with the same webhook-id.
                replayed = await m.api.ReplayPlaybookRun(pb.ReplayPlaybookRunRequest(name=g.name))
                assert replayed.playbook_run.state == rpb.RUN_STATE_RUNNING
                done = await wait_runs(
                    m.api,
                    lambda rs: rs[0].state == rpb.RUN_STATE_SUCCEEDED,
                    flt=f'name = "{g.name}"',
                )
                assert gone.processed == {done[0].steps[0].webhook_id: 1}
                # A run that did not fail is not replayed.
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await m.api.ReplayPlaybookRun(pb.ReplayPlaybookRunRequest(name=g.name))
                assert reason(caught.value) == "PLAYBOOK_RUN_STATE"

        asyncio.run(body())


def test_a_hang_times_out_and_a_receiver_down_then_up_gets_it_once(
    pki: Path, tmp_path: Path
) -> None:
    from demo.webhook_receiver import Hang

    cert, key, ca = receiver_leaf(tmp_path / "rx-pki")
    s, value = secret_file(tmp_path / "secrets", "s.whsec")
    rx = WebhookReceiver(cert, key, secrets=[value], script=[Hang(3.0)])
    with rx:

        async def body() -> None:
            ep = endpoint("soar", rx, ca, [s], timeout="300ms", failures_to_open=50)
            retries = ["200ms"] * 20  # outlasts the second the receiver is down
            async with Mesh(pki, tmp_path, [ep], NOTIFY, retry_delays=retries) as m:
                rx.down()
                attack(m.web, "carol", "127.0.0.4")
                await asyncio.sleep(1.0)  # refused meanwhile: retried on the schedule
                rx.up()
                (run,) = await wait_runs(m.api, settled(1))
                assert run.state == rpb.RUN_STATE_SUCCEEDED, run
                wid = run.steps[0].webhook_id
                assert rx.processed == {wid: 1}
                # The hang (first answered request) timed out and was tried again.
                assert run.steps[0].attempts >= 3

        asyncio.run(body())


def test_approval_holds_a_run_until_approved_and_rejection_cancels(
    pki: Path, tmp_path: Path
) -> None:
    cert, key, ca = receiver_leaf(tmp_path / "rx-pki")
    s, value = secret_file(tmp_path / "secrets", "s.whsec")
    text = """
- playbook: Needs a human
  id: gated
  approval: true
  trigger:
    filter: 'rule = "{rule}"'
    on: [created, updated]
  steps:
    - webhook: soar
"""
    with WebhookReceiver(cert, key, secrets=[value]) as rx:

        async def body() -> None:
            async with Mesh(pki, tmp_path, [endpoint("soar", rx, ca, [s])], text) as m:
                attack(m.web, "dave", "127.0.0.5")
                (first,) = await wait_runs(
                    m.api, lambda rs: len(rs) == 1, flt="state = AWAITING_APPROVAL"
                )
                await m.api.SubmitVerdict(
                    pb.SubmitVerdictRequest(name=first.assessment, verdict=TP, comment="tp")
                )
                held = await wait_runs(
                    m.api, lambda rs: len(rs) == 2, flt="state = AWAITING_APPROVAL"
                )
                held.sort(key=lambda r: r.assessment_revision)
                await asyncio.sleep(0.5)
                assert not rx.requests  # nothing goes out before a decision
                a = await m.api.ApprovePlaybookRun(pb.ApprovePlaybookRunRequest(name=held[0].name))
                assert a.playbook_run.decided_by.startswith("spiffe://")
                r = await m.api.RejectPlaybookRun(pb.RejectPlaybookRunRequest(name=held[1].name))
                assert r.playbook_run.state == rpb.RUN_STATE_CANCELLED
                done = await wait_runs(m.api, settled(2))
                states = {x.name: x.state for x in done}
                assert states[held[0].name] == rpb.RUN_STATE_SUCCEEDED
                assert states[held[1].name] == rpb.RUN_STATE_CANCELLED
                assert len(rx.processed) == 1
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await m.api.ApprovePlaybookRun(pb.ApprovePlaybookRunRequest(name=held[1].name))
                assert reason(caught.value) == "PLAYBOOK_RUN_STATE"
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await m.api.GetPlaybookRun(pb.GetPlaybookRunRequest(name="playbookRuns/x"))
                assert reason(caught.value) == "INVALID_NAME"

        asyncio.run(body())


def test_suppression_runs_a_playbook_once_per_key_and_window(pki: Path, tmp_path: Path) -> None:
    cert, key, ca = receiver_leaf(tmp_path / "rx-pki")
    s, value = secret_file(tmp_path / "secrets", "s.whsec")
    text = """
- playbook: Once an hour per key
  id: hourly
  suppress_for: 1h
  trigger:
    filter: 'rule = "{rule}"'
    on: [created, updated]
  steps:
    - webhook: soar
"""
    with WebhookReceiver(cert, key, secrets=[value]) as rx:

        async def body() -> None:
            async with Mesh(pki, tmp_path, [endpoint("soar", rx, ca, [s])], text) as m:
                attack(m.web, "frank", "127.0.0.7")
                (first,) = await wait_runs(m.api, settled(1))
                # The same key again (more evidence: an update), and a verdict: suppressed.
                attack(m.web, "frank", "127.0.0.7")
                await m.api.SubmitVerdict(
                    pb.SubmitVerdictRequest(name=first.assessment, verdict=TP, comment="tp")
                )
                # Another key (another host) is not.
                attack(m.db, "grace", "127.0.0.8")
                found = await wait_runs(m.api, settled(2))
                await asyncio.sleep(0.5)
                found = await wait_runs(m.api, settled(2))
                assert len(found) == 2
                assert {r.assessment for r in found} != {first.assessment}
                assert m.cortex.playbooks is not None
                assert m.cortex.playbooks.planner.suppressed >= 1

        asyncio.run(body())


def test_a_secret_readable_by_others_or_a_bad_playbook_refuses_the_start(
    pki: Path, tmp_path: Path
) -> None:
    cert, key, ca = receiver_leaf(tmp_path / "rx-pki")
    s, value = secret_file(tmp_path / "secrets", "s.whsec")
    with WebhookReceiver(cert, key, secrets=[value]) as rx:
        KeyManager.create(tmp_path / "keys", "cortex")
        base = cortex_config(pki, tmp_path, [])
        files = [playbook_file(tmp_path / "pb", NOTIFY.format(rule=RULE))]
        s.chmod(0o644)
        with pytest.raises(PlaybookSecretError) as caught:
            Cortex(with_playbooks(base, [endpoint("soar", rx, ca, [s])], files))
        assert str(s) in str(caught.value)
        assert value not in str(caught.value)
        s.chmod(0o600)
        bad = [
            playbook_file(
                tmp_path / "pb", NOTIFY.replace("soar", "elsewhere").format(rule=RULE), "bad.yaml"
            )
        ]
        with pytest.raises(
            PlaybookDefinitionError, match=r"bad.yaml:\d+: .*not in the configuration"
        ):
            Cortex(with_playbooks(base, [endpoint("soar", rx, ca, [s])], bad))
        # The store is closed again after a refused start: a good config starts.
        cortex = Cortex(with_playbooks(base, [endpoint("soar", rx, ca, [s])], files))
        asyncio.run(cortex.stop())


def test_thehive_gets_an_alert_with_its_api_key_and_a_down_endpoint_opens_its_breaker(
    pki: Path, tmp_path: Path
) -> None:
    from tests.integration.playbook_harness import token_file

    cert, key, ca = receiver_leaf(tmp_path / "rx-pki")
    s, value = secret_file(tmp_path / "secrets", "s.whsec")
    api_key = "Bearer " + "k" * 32
    hive = WebhookReceiver(cert, key, header=("Authorization", api_key))
    down = WebhookReceiver(cert, key, secrets=[value])
    text = """
- playbook: Alert TheHive
  id: hive
  trigger:
    filter: 'rule = "{rule}"'
  steps:
    - thehive: hive
      tlp: red
- playbook: To a receiver that is down
  id: down
  trigger:
    filter: 'rule = "{rule}"'
  steps:
    - webhook: down
"""
    token = token_file(tmp_path / "secrets", "hive.token", api_key)
    endpoints = [
        {
            "name": "hive",
            "url": hive.url("/api/v1/alert"),
            "auth": "header",
            "header": "Authorization",
            "token_file": str(token),
            "ca_file": str(ca),
        },
        endpoint("down", down, ca, [s], failures_to_open=2, open_for="30s"),
    ]
    with hive, down:
        down.down()

        async def body() -> None:
            async with Mesh(pki, tmp_path, endpoints, text, retry_delays=["100ms"] * 50) as m:
                attack(m.web, "hana", "127.0.0.9")
                (done,) = await wait_runs(m.api, settled(1), flt='playbook = "hive"')
                assert done.state == rpb.RUN_STATE_SUCCEEDED, done
                (alert,) = hive.bodies_json()
                assert alert["sourceRef"] == done.assessment.removeprefix("assessments/")
                assert (alert["type"], alert["source"], alert["tlp"]) == (
                    "qsc-assessment",
                    "qsc-cortex",
                    4,
                )
                seen = {(o["dataType"], o["data"]) for o in alert["observables"]}
                assert seen == {("hostname", "web-01"), ("other", "hana"), ("ip", "127.0.0.9")}
                assert api_key not in done.steps[0].message
                # Two refused connections open the breaker: no further attempt is made (or
                # counted) while it is open, and the step says why.
                await asyncio.sleep(1.5)
                (waiting,) = await wait_runs(
                    m.api, lambda rs: len(rs) == 1, flt='playbook = "down"'
                )
                assert waiting.state in (rpb.RUN_STATE_PENDING, rpb.RUN_STATE_RUNNING)
                assert waiting.steps[0].attempts == 2
                assert "circuit open" in waiting.steps[0].message
                assert waiting.steps[0].next_attempt_time.ToNanoseconds() > time.time_ns()

        asyncio.run(body())
