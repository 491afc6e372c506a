"""Guardians' detections become an assessment in a real Cortex, read and judged over mTLS.

A real guardian (mesh.guardian on this loop, sealed stream) emits what Alpha emits for a
credential-stuffing attack on its host; the Cortex stores the events, correlates them and raises
one assessment, which ListAssessments and GetAssessment show with its factors and contributing
events, and SubmitVerdict resolves with the caller's identity. The refusals carry ErrorInfo.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from cortex.app import Cortex
from cortex.config import load_cortex_config
from crypto.keyring import KeyManager
from crypto.pki import issue_leaf, load_ca, write_leaf
from mesh.channel import ChannelConfig, open_channel
from mesh.config import TlsFiles
from qsc.common.v1 import classification_pb2, event_pb2
from qsc.cortex.v1 import assessment_pb2
from qsc.cortex.v1 import cortex_service_pb2 as pb
from qsc.cortex.v1 import cortex_service_pb2_grpc as pb_grpc
from tests.integration.test_cortex_ingest import HOST, Node, config_toml, cortex_config, pki
from tests.integration.test_cortex_read_api import error_info
from tests.unit.test_cortex_correlate import COUNT_RULE as BURST_RULE

__all__ = ["pki"]  # the module fixture, shared with test_cortex_ingest
RULE = "cortex.credential_stuffing_exfiltration"


def client_leaf(pki: Path, role: str, host: str) -> TlsFiles:
    stem = pki / f"{role}-{host}"
    if not stem.with_suffix(".crt").exists():
        ca = load_ca(pki)
        write_leaf(issue_leaf(ca, role, host), pki, ca.cert)
    return TlsFiles(stem.with_suffix(".crt"), stem.with_suffix(".key"), pki / "ca.crt")


def alpha_event(rule: str, kind: str, **detail: Any) -> event_pb2.Event:
    e = event_pb2.Event(summary=rule, severity=classification_pb2.SEVERITY_MEDIUM)
    e.rule.id = rule
    getattr(e, kind).SetInParent()
    if kind == "auth_event":
        e.auth_event.user = detail["user"]
        e.auth_event.source.address = detail["source"]
    if kind == "transfer_volume":
        e.transfer_volume.bytes = 80 * 2**20
    return e


def test_an_attack_becomes_one_assessment_that_a_soar_reads_and_judges(
    pki: Path, tmp_path: Path
) -> None:
    soar = client_leaf(pki, "soar", "s1")
    alpha_client = client_leaf(pki, "alpha", "intruder")

    async def body() -> None:
        web = Node(pki, "web-01", tmp_path / "web-01")
        KeyManager.create(tmp_path / "keys", "cortex")
        await web.start()
        cortex = Cortex(cortex_config(pki, tmp_path, [web]))
        port = await cortex.start()
        try:
            async with open_channel(ChannelConfig(f"{HOST}:{port}", soar)) as channel:
                api = pb_grpc.CortexServiceStub(channel)
                # The attack, as Alpha reports it: failed burst, new-address login, transfer.
                web.emit_one(
                    alpha_event(
                        "alpha.credential_stuffing", "auth_event", user="alice", source="127.0.0.2"
                    )
                )
                web.emit_one(
                    alpha_event(
                        "alpha.login_new_source", "auth_event", user="alice", source="127.0.0.2"
                    )
                )
                web.emit_one(alpha_event("alpha.large_outbound_transfer", "transfer_volume"))

                listed: list[Any] = []

                async def raised() -> bool:
                    resp = await api.ListAssessments(
                        pb.ListAssessmentsRequest(filter=f'rule = "{RULE}" AND state = OPEN')
                    )
                    listed[:] = list(resp.assessments)
                    return bool(listed)

                await until_async(raised, "the assessment")
                (a,) = listed
                assert a.confidence >= 0.7
                assert a.state == assessment_pb2.ASSESSMENT_STATE_OPEN
                assert list(a.hosts) == ["web-01"]
                assert {f.name for f in a.factors} == {
                    "failed_login_burst",
                    "login_from_new_address",
                    "large_outbound_transfer",
                }
                assert sum(f.log_odds for f in a.factors) > 0
                assert [c.rule_id for c in a.contributing_events] == [
                    "alpha.credential_stuffing",
                    "alpha.login_new_source",
                    "alpha.large_outbound_transfer",
                ]
                assert all(c.guardian == f"guardians/{web.id}" for c in a.contributing_events)
                assert list(a.guardians) == [f"guardians/{web.id}"]
                assert {t.id for t in a.techniques} >= {"T1110.004"}

                got = await api.GetAssessment(pb.GetAssessmentRequest(name=a.name))
                assert got.assessment.correlation_key == a.correlation_key

                judged = await api.SubmitVerdict(
                    pb.SubmitVerdictRequest(
                        name=a.name,
                        verdict=assessment_pb2.VERDICT_TRUE_POSITIVE,
                        comment="confirmed",
                    )
                )
                v = judged.assessment
                assert v.state == assessment_pb2.ASSESSMENT_STATE_RESOLVED
                assert v.verdict.actor.endswith("/soar/s1")
                assert v.verdict.comment == "confirmed"
                assert v.revision == a.revision + 1
                none_open = await api.ListAssessments(
                    pb.ListAssessmentsRequest(filter="state = OPEN")
                )
                assert list(none_open.assessments) == []

                async def refused(call: Any, request: Any) -> tuple[grpc.StatusCode, str]:
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await call(request)
                    info = error_info(caught.value.trailing_metadata() or ())
                    return caught.value.code(), info.reason if info else ""

                assert await refused(
                    api.SubmitVerdict,
                    pb.SubmitVerdictRequest(name=a.name, verdict=assessment_pb2.VERDICT_BENIGN),
                ) == (grpc.StatusCode.FAILED_PRECONDITION, "ASSESSMENT_RESOLVED")
                assert await refused(api.SubmitVerdict, pb.SubmitVerdictRequest(name=a.name)) == (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "INVALID_VERDICT",
                )
                assert await refused(
                    api.GetAssessment,
                    pb.GetAssessmentRequest(
                        name="assessments/0190f000-0000-7000-8000-000000000000"
                    ),
                ) == (grpc.StatusCode.NOT_FOUND, "ASSESSMENT_NOT_FOUND")
                assert await refused(
                    api.GetAssessment, pb.GetAssessmentRequest(name="events/x")
                ) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME")
                assert await refused(
                    api.ListAssessments, pb.ListAssessmentsRequest(filter="confidence >= high")
                ) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FILTER")
                assert await refused(
                    api.ListAssessments, pb.ListAssessmentsRequest(order_by="colour")
                ) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ORDER_BY")
            async with open_channel(ChannelConfig(f"{HOST}:{port}", alpha_client)) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await pb_grpc.CortexServiceStub(channel).ListAssessments(
                        pb.ListAssessmentsRequest()
                    )
                assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        finally:
            await cortex.stop()
            await web.stop()

    asyncio.run(body())


async def until_async(cond: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 30
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def test_a_restart_resumes_open_correlations_and_keeps_assessments_and_verdicts(
    pki: Path, tmp_path: Path
) -> None:
    soar = client_leaf(pki, "soar", "s1")

    async def body() -> None:
        web = Node(pki, "web-01", tmp_path / "web-01")
        KeyManager.create(tmp_path / "keys", "cortex")
        await web.start()
        config = cortex_config(pki, tmp_path, [web])

        async def listed(port: int, flt: str) -> list[Any]:
            async with open_channel(ChannelConfig(f"{HOST}:{port}", soar)) as channel:
                api = pb_grpc.CortexServiceStub(channel)
                resp = await api.ListAssessments(pb.ListAssessmentsRequest(filter=flt))
                return list(resp.assessments)

        cortex = Cortex(config)
        port = await cortex.start()
        try:
            # Two of the three steps, then the Cortex goes away mid-correlation.
            web.emit_one(
                alpha_event(
                    "alpha.credential_stuffing", "auth_event", user="bob", source="127.0.0.3"
                )
            )
            web.emit_one(
                alpha_event("alpha.login_new_source", "auth_event", user="bob", source="127.0.0.3")
            )
            stored = web.last_seq

            async def caught_up() -> bool:
                cursor = await asyncio.to_thread(cortex.store.cursor, web.id)
                return cursor is not None and cursor.seq >= stored

            await until_async(caught_up, "the first two steps stored")
            assert await listed(port, "") == []
        finally:
            await cortex.stop()

        cortex = Cortex(config)
        port = await cortex.start()
        try:
            # The window was rebuilt from the store: the third step completes it.
            web.emit_one(alpha_event("alpha.large_outbound_transfer", "transfer_volume"))

            async def raised() -> bool:
                return bool(await listed(port, f'rule = "{RULE}"'))

            await until_async(raised, "the assessment after the restart")
            (a,) = await listed(port, f'rule = "{RULE}"')
            assert {f.name for f in a.factors} >= {"failed_login_burst", "login_from_new_address"}
            async with open_channel(ChannelConfig(f"{HOST}:{port}", soar)) as channel:
                api = pb_grpc.CortexServiceStub(channel)
                await api.SubmitVerdict(
                    pb.SubmitVerdictRequest(
                        name=a.name, verdict=assessment_pb2.VERDICT_FALSE_POSITIVE
                    )
                )
                records = await api.ListEvents(
                    pb.ListEventsRequest(filter="kind = assessment_change")
                )
                assert {e.assessment_change.assessment_id for e in records.events} == {
                    a.name.removeprefix("assessments/")
                }
                assert {e.assessment_change.state for e in records.events} == {"open", "resolved"}
        finally:
            await cortex.stop()

        cortex = Cortex(config)
        port = await cortex.start()
        try:
            (again,) = await listed(port, "")  # one assessment, not a second one from the replay
            assert again.name == a.name
            assert again.state == assessment_pb2.ASSESSMENT_STATE_RESOLVED
            assert again.verdict.verdict == assessment_pb2.VERDICT_FALSE_POSITIVE
            runtime = cortex.correlation
            assert runtime is not None
            rule = runtime.ruleset.get(RULE)
            assert rule is not None
            step = rule.steps[0]
            learned = await runtime.call(lambda: runtime.book.model.lr(RULE, step))
            assert learned < step.lr  # the verdict came back with the records
        finally:
            await cortex.stop()
            await web.stop()

    asyncio.run(body())


def test_sighup_reloads_the_rule_files_and_keeps_them_on_a_bad_one(
    pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rules = tmp_path / "site.yaml"
    rules.write_text(BURST_RULE)
    config = tmp_path / "cortex.toml"
    config.write_text(config_toml(pki, tmp_path, []) + f'\n[correlation]\nrules = ["{rules}"]\n')
    KeyManager.create(tmp_path / "keys", "cortex")

    async def body() -> None:
        cortex = Cortex(load_cortex_config(config, env={}), config_path=config)
        await cortex.start()
        runtime = cortex.correlation
        assert runtime is not None
        try:
            assert [r.id for r in runtime.ruleset.rules] == ["test.burst"]
            rules.write_text(
                BURST_RULE.replace("test.burst", "test.broken").replace("lr: 30", "lr: 0")
            )
            cortex.reload()
            assert cortex._rules_reload is not None
            await cortex._rules_reload
            assert [r.id for r in runtime.ruleset.rules] == ["test.burst"]  # kept
            rules.write_text(BURST_RULE.replace("test.burst", "test.burst2"))
            cortex.reload()
            await cortex._rules_reload
            assert [r.id for r in runtime.ruleset.rules] == ["test.burst2"]
        finally:
            await cortex.stop()

    asyncio.run(body())
    refused = [r for r in caplog.records if "correlation rules refused" in r.getMessage()]
    assert refused
    assert f"{rules}:" in str(refused[0].__dict__)


@pytest.mark.parametrize("forgery", ["assessment_change", "model_reset"])
def test_a_guardian_cannot_forge_what_only_the_cortex_writes(
    pki: Path, tmp_path: Path, forgery: str
) -> None:
    """Assessment records and model resets are trusted at restore: a guardian that sends one
    is refused, and nothing of it is stored."""

    async def body() -> None:
        from cortex.guardian_view import ConnectionState

        web = Node(pki, "web-01", tmp_path / "web-01")
        KeyManager.create(tmp_path / "keys", "cortex")
        await web.start()
        cortex = Cortex(cortex_config(pki, tmp_path, [web]))
        await cortex.start()
        try:
            forged = event_pb2.Event(summary="forged", severity=classification_pb2.SEVERITY_INFO)
            if forgery == "assessment_change":
                forged.assessment_change.assessment_id = "0190f000-0000-7000-8000-000000000000"
                forged.assessment_change.state = "resolved"
            else:
                forged.rule.id = "cortex.model_reset"
            web.emit_one(forged)

            async def refused() -> bool:
                return cortex.directory.guardians()[0].state is ConnectionState.REFUSED

            await until_async(refused, "the forging guardian refused")
            assert "only the Cortex writes" in cortex.directory.guardians()[0].last_error
            assert await asyncio.to_thread(cortex.store.cursor, web.id) is None
        finally:
            await cortex.stop()
            await web.stop()

    asyncio.run(body())
