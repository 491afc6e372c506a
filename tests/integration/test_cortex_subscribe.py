"""SubscribeAssessments on a real Cortex over mTLS: snapshot, live changes, heartbeats, resume.

A real guardian's sealed stream carries a credential-stuffing attack as Alpha reports it; the
Cortex raises one assessment. A SOAR subscriber sees it created and resolved, a client that was
away (and a Cortex restarted meanwhile) resumes with its token and gets exactly what it missed,
a token older than what retention left is OUT_OF_RANGE naming the oldest token, and bad
arguments are refused before the first message.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from cortex.app import Cortex
from crypto.keyring import KeyManager
from mesh.channel import ChannelConfig, open_channel
from qsc.cortex.v1 import assessment_pb2
from qsc.cortex.v1 import cortex_service_pb2 as pb
from qsc.cortex.v1 import cortex_service_pb2_grpc as pb_grpc
from tests.integration.test_cortex_assessment_api import RULE, alpha_event, client_leaf
from tests.integration.test_cortex_ingest import HOST, Node, cortex_config, pki
from tests.integration.test_cortex_read_api import error_info

__all__ = ["pki"]
READ_TIMEOUT = 20.0


def attack(web: Node, user: str, source: str) -> None:
    web.emit_one(alpha_event("alpha.credential_stuffing", "auth_event", user=user, source=source))
    web.emit_one(alpha_event("alpha.login_new_source", "auth_event", user=user, source=source))
    web.emit_one(alpha_event("alpha.large_outbound_transfer", "transfer_volume"))


async def read(call: Any) -> pb.SubscribeAssessmentsResponse:
    message = await call.read()
    assert isinstance(message, pb.SubscribeAssessmentsResponse), "the stream ended"
    return message


async def next_of(call: Any, payload: str) -> Any:
    """The next `payload` ("change" or "progress") on the stream, within READ_TIMEOUT overall
    (heartbeats keep coming: a deadline per read would never expire)."""
    async with asyncio.timeout(READ_TIMEOUT):
        while True:
            message = await read(call)
            if message.WhichOneof("payload") == payload:
                return getattr(message, payload)


async def next_change(call: Any) -> pb.AssessmentChange:
    change: pb.AssessmentChange = await next_of(call, "change")
    return change


async def next_progress(call: Any) -> pb.AssessmentStreamProgress:
    progress: pb.AssessmentStreamProgress = await next_of(call, "progress")
    return progress


def heartbeat(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(dt.timedelta(seconds=seconds))
    return d


async def refusal(api: Any, request: pb.SubscribeAssessmentsRequest) -> tuple[Any, Any]:
    call = api.SubscribeAssessments(request)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call.read(), READ_TIMEOUT)
    return caught.value.code(), error_info(caught.value.trailing_metadata() or ())


def test_a_subscriber_sees_the_snapshot_then_changes_and_resumes_across_a_restart(
    pki: Path, tmp_path: Path
) -> None:
    soar = client_leaf(pki, "soar", "s1")

    async def body() -> None:
        web = Node(pki, "web-01", tmp_path / "web-01")
        db = Node(pki, "db-01", tmp_path / "db-01")
        KeyManager.create(tmp_path / "keys", "cortex")
        await web.start()
        await db.start()
        config = cortex_config(pki, tmp_path, [web, db])
        cortex = Cortex(config)
        port = await cortex.start()
        try:
            async with open_channel(ChannelConfig(f"{HOST}:{port}", soar)) as channel:
                api = pb_grpc.CortexServiceStub(channel)
                live = api.SubscribeAssessments(
                    pb.SubscribeAssessmentsRequest(
                        include_existing=True, heartbeat_interval=heartbeat(0.2)
                    )
                )
                # Nothing exists yet: the snapshot is empty and says it is complete.
                first = await asyncio.wait_for(read(live), READ_TIMEOUT)
                assert first.WhichOneof("payload") == "progress"
                assert first.progress.snapshot_complete
                # Idle: heartbeats keep coming, each with a token.
                beat = await next_progress(live)
                assert beat.resume_token
                assert not beat.snapshot_complete

                attack(web, "alice", "127.0.0.2")
                created = await next_change(live)
                assert created.type == pb.CHANGE_TYPE_CREATED
                a = created.assessment
                assert a.state == assessment_pb2.ASSESSMENT_STATE_OPEN
                assert a.revision == 1
                assert a.confidence >= 0.7
                assert {f.name for f in a.factors} >= {"failed_login_burst"}
                assert created.resume_token
                assert created.change_time.ToNanoseconds() > 0

                # A second subscriber joining now sees it as EXISTING, then complete.
                late = api.SubscribeAssessments(
                    pb.SubscribeAssessmentsRequest(include_existing=True, filter=f'rule = "{RULE}"')
                )
                existing = await next_change(late)
                assert existing.type == pb.CHANGE_TYPE_EXISTING
                assert existing.assessment.name == a.name
                assert (await next_progress(late)).snapshot_complete
                late.cancel()

                # The client goes away holding the token of the CREATED change ...
                token = created.resume_token
                live.cancel()
                await api.SubmitVerdict(
                    pb.SubmitVerdictRequest(
                        name=a.name, verdict=assessment_pb2.VERDICT_TRUE_POSITIVE, comment="seen"
                    )
                )
        finally:
            await cortex.stop()

        # ... and the Cortex restarts while it is away.
        cortex = Cortex(config)
        port = await cortex.start()
        try:
            async with open_channel(ChannelConfig(f"{HOST}:{port}", soar)) as channel:
                api = pb_grpc.CortexServiceStub(channel)
                resumed = api.SubscribeAssessments(
                    pb.SubscribeAssessmentsRequest(
                        resume_token=token, heartbeat_interval=heartbeat(0.2)
                    )
                )
                missed = await next_change(resumed)
                assert missed.type == pb.CHANGE_TYPE_UPDATED
                assert missed.assessment.name == a.name
                assert missed.assessment.revision == 2
                assert missed.assessment.state == assessment_pb2.ASSESSMENT_STATE_RESOLVED
                assert missed.assessment.verdict.actor.endswith("/soar/s1")
                # Then nothing else: a heartbeat, not a repeat.
                after = await asyncio.wait_for(read(resumed), READ_TIMEOUT)
                assert after.WhichOneof("payload") == "progress"

                # A filtered subscriber resuming from the same token: only what matches.
                narrow = api.SubscribeAssessments(
                    pb.SubscribeAssessmentsRequest(
                        resume_token=token, filter="state = OPEN", heartbeat_interval=heartbeat(0.2)
                    )
                )
                beat = await next_progress(narrow)  # the resolved change is filtered out
                # ... and its heartbeat moved past it: resuming from there repeats nothing.
                again = api.SubscribeAssessments(
                    pb.SubscribeAssessmentsRequest(
                        resume_token=beat.resume_token, heartbeat_interval=heartbeat(0.2)
                    )
                )
                quiet = await asyncio.wait_for(read(again), READ_TIMEOUT)
                assert quiet.WhichOneof("payload") == "progress"

                # An attack on another host arrives live on the resumed stream (on web-01 the
                # window's assessment is resolved: more evidence there does not reopen it).
                attack(db, "bob", "127.0.0.3")
                fresh = await next_change(resumed)
                assert fresh.type == pb.CHANGE_TYPE_CREATED
                assert fresh.assessment.name != a.name
                assert (await next_change(narrow)).assessment.name == fresh.assessment.name
                for call in (resumed, narrow, again):
                    call.cancel()

                # Retention removes the change log before now: the old token is out of range,
                # and the token the refusal names resumes.
                result = await asyncio.to_thread(cortex.store.retain, dt.timedelta(0))
                assert result.deleted > 0
                code, info = await refusal(api, pb.SubscribeAssessmentsRequest(resume_token=token))
                assert code == grpc.StatusCode.OUT_OF_RANGE
                assert info is not None
                assert info.reason == "RESUME_TOKEN_EXPIRED"
                oldest = info.metadata["oldest_token"]
                ok = api.SubscribeAssessments(
                    pb.SubscribeAssessmentsRequest(
                        resume_token=oldest, heartbeat_interval=heartbeat(0.2)
                    )
                )
                assert (await asyncio.wait_for(read(ok), READ_TIMEOUT)).WhichOneof(
                    "payload"
                ) == "progress"
                ok.cancel()
        finally:
            await cortex.stop()
            await web.stop()
            await db.stop()

    asyncio.run(body())


def test_bad_subscriptions_are_refused_before_the_first_message(pki: Path, tmp_path: Path) -> None:
    soar = client_leaf(pki, "soar", "s1")
    alpha_client = client_leaf(pki, "alpha", "intruder")

    async def body() -> None:
        KeyManager.create(tmp_path / "keys", "cortex")
        cortex = Cortex(cortex_config(pki, tmp_path, []))
        port = await cortex.start()
        try:
            async with open_channel(ChannelConfig(f"{HOST}:{port}", soar)) as channel:
                api = pb_grpc.CortexServiceStub(channel)
                cases = [
                    (pb.SubscribeAssessmentsRequest(filter="confidence >= high"), "INVALID_FILTER"),
                    (
                        pb.SubscribeAssessmentsRequest(resume_token="bm90LWEtdG9rZW4"),
                        "INVALID_RESUME_TOKEN",
                    ),
                    (
                        pb.SubscribeAssessmentsRequest(heartbeat_interval=heartbeat(-1)),
                        "INVALID_ARGUMENT",
                    ),
                    (
                        pb.SubscribeAssessmentsRequest(heartbeat_interval=heartbeat(0.001)),
                        "INVALID_ARGUMENT",
                    ),
                ]
                for request, reason in cases:
                    code, info = await refusal(api, request)
                    assert code == grpc.StatusCode.INVALID_ARGUMENT, request
                    assert info is not None, request
                    assert info.reason == reason, request
                # A token from the future of this log (another store's is not even valid).
                assert cortex.changes is not None
                ahead = cortex.changes.token(cortex.changes.latest + 5)
                code, info = await refusal(api, pb.SubscribeAssessmentsRequest(resume_token=ahead))
                assert code == grpc.StatusCode.INVALID_ARGUMENT
                assert info is not None
                assert info.reason == "INVALID_RESUME_TOKEN"
            async with open_channel(ChannelConfig(f"{HOST}:{port}", alpha_client)) as channel:
                code, _ = await refusal(
                    pb_grpc.CortexServiceStub(channel), pb.SubscribeAssessmentsRequest()
                )
                assert code == grpc.StatusCode.PERMISSION_DENIED
        finally:
            await cortex.stop()

    asyncio.run(body())


def test_a_subscriber_too_far_behind_catches_up_from_the_store(
    pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past QUEUE_LIMIT queued changes a subscriber is not cut off: it reads what it missed
    from the stored change log. With a limit of 0 every live change takes that path."""
    from cortex import assessment_stream

    monkeypatch.setattr(assessment_stream, "QUEUE_LIMIT", 0)
    soar = client_leaf(pki, "soar", "s1")

    async def body() -> None:
        web = Node(pki, "web-01", tmp_path / "web-01")
        KeyManager.create(tmp_path / "keys", "cortex")
        await web.start()
        cortex = Cortex(cortex_config(pki, tmp_path, [web]))
        port = await cortex.start()
        try:
            async with open_channel(ChannelConfig(f"{HOST}:{port}", soar)) as channel:
                api = pb_grpc.CortexServiceStub(channel)
                call = api.SubscribeAssessments(
                    pb.SubscribeAssessmentsRequest(heartbeat_interval=heartbeat(0.2))
                )
                await next_progress(call)  # subscribed
                attack(web, "alice", "127.0.0.2")
                created = await next_change(call)
                assert created.type == pb.CHANGE_TYPE_CREATED
                await api.SubmitVerdict(
                    pb.SubmitVerdictRequest(
                        name=created.assessment.name, verdict=assessment_pb2.VERDICT_BENIGN
                    )
                )
                updated = await next_change(call)
                assert updated.type == pb.CHANGE_TYPE_UPDATED
                assert updated.assessment.revision == 2
                assert updated.assessment.state == assessment_pb2.ASSESSMENT_STATE_RESOLVED
                call.cancel()
        finally:
            await cortex.stop()
            await web.stop()

    asyncio.run(body())
