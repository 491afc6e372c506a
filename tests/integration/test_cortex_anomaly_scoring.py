"""Host windows scored through a real ML service; ML down means assessments still form.

A real guardian sends host telemetry windows as Alpha does (`host_telemetry`); a real Cortex
stores them and scores them through a real `AnomalyService` (a model trained on synthetic
history, mTLS, the Cortex's own certificate). A normal window is stored as an INFO score, an
anomalous one as a MEDIUM-or-worse anomaly that, with an alert on that host, raises the
anomaly-led assessment. With the ML service stopped, windows stay unscored and are counted,
ListGuardians says DOWN with the error, an `cortex.ml_unavailable` event is stored, and an attack
still becomes an assessment; once the service is back the breaker closes on its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from pathlib import Path
from typing import Any

from cortex.app import Cortex
from cortex.config import MlSection
from crypto.keyring import KeyManager
from mesh.channel import ChannelConfig, open_channel
from mesh.config import config_from_dict
from ml.config import MlConfig
from ml.schema import FEATURES, SCHEMA_VERSION
from qsc.common.v1 import classification_pb2, event_pb2
from qsc.cortex.v1 import cortex_service_pb2 as pb
from qsc.cortex.v1 import cortex_service_pb2_grpc as pb_grpc
from qsc.cortex.v1 import guardian_pb2
from tests.integration.ml_harness import NORMAL, WEIRD, ServiceThread, service_config, train_models
from tests.integration.test_cortex_assessment_api import (
    RULE,
    alpha_event,
    client_leaf,
    until_async,
)
from tests.integration.test_cortex_ingest import HOST, Node, cortex_config, pki

__all__ = ["pki"]


def window(values: list[float], start_s: float) -> event_pb2.Event:
    e = event_pb2.Event(summary="host window", severity=classification_pb2.SEVERITY_INFO)
    t = e.host_telemetry
    t.host = "web-01"
    t.window_start.FromNanoseconds(int(start_s * 1e9))
    t.window_end.FromNanoseconds(int((start_s + 60) * 1e9))
    t.feature_schema_version = SCHEMA_VERSION
    for name, value in zip(FEATURES, values, strict=True):
        t.features.add(name=name, value=value)
    return e


def test_windows_are_scored_and_ml_down_leaves_assessments_forming(
    pki: Path, tmp_path: Path
) -> None:
    soar = client_leaf(pki, "soar", "s1")
    client_leaf(pki, "ml", HOST)  # the ML service's certificate, from the Cortex's CA
    models = train_models(tmp_path / "ml")

    async def body() -> None:
        ml_doc = service_config(pki, models)
        ml = await asyncio.to_thread(ServiceThread, config_from_dict(MlConfig, ml_doc))
        web = Node(pki, "web-01", tmp_path / "web-01")
        KeyManager.create(tmp_path / "keys", "cortex")
        await web.start()
        config = dataclasses.replace(
            cortex_config(pki, tmp_path, [web]),
            ml=MlSection(
                address=f"{HOST}:{ml.port}",
                batch_delay=dt.timedelta(milliseconds=20),
                score_timeout=dt.timedelta(seconds=1),
                failures_to_open=1,
                open_for=dt.timedelta(milliseconds=300),
            ),
        )
        cortex = Cortex(config)
        port = await cortex.start()
        try:
            async with open_channel(ChannelConfig(f"{HOST}:{port}", soar)) as channel:
                api = pb_grpc.CortexServiceStub(channel)

                async def events(flt: str) -> list[Any]:
                    resp = await api.ListEvents(pb.ListEventsRequest(filter=flt, page_size=100))
                    return list(resp.events)

                async def scoring() -> Any:
                    resp = await api.ListGuardians(pb.ListGuardiansRequest())
                    return resp.guardians[0].anomaly_scoring

                now = time.time()
                web.emit_one(window(NORMAL, now - 120))
                web.emit_one(window(WEIRD, now - 60))

                async def two_scores() -> bool:
                    return len(await events('rule.id = "cortex.anomaly_score"')) == 2

                await until_async(two_scores, "two windows scored")
                normal, weird = sorted(
                    await events('rule.id = "cortex.anomaly_score"'),
                    key=lambda e: e.anomaly_score.window_start.ToNanoseconds(),
                )
                assert not normal.anomaly_score.is_anomaly
                assert normal.severity == classification_pb2.SEVERITY_INFO
                assert weird.anomaly_score.is_anomaly
                assert weird.severity >= classification_pb2.SEVERITY_MEDIUM
                assert weird.anomaly_score.host == "web-01"
                assert weird.anomaly_score.model_version == models.version
                assert [f.name for f in weird.anomaly_score.features] == list(FEATURES)
                assert weird.labels["guardian.id"] == web.id
                s = await scoring()
                assert s.state == guardian_pb2.SCORING_STATE_UP
                assert s.windows_scored == 2
                assert s.windows_unscored == 0
                assert s.model_version == models.version

                # The anomaly and an alert on that host: the anomaly-led assessment.
                alert = alpha_event("alpha.shadow_read", "file_access")
                web.emit_one(alert)

                async def anomaly_assessment() -> bool:
                    resp = await api.ListAssessments(
                        pb.ListAssessmentsRequest(filter='rule = "cortex.anomaly_with_alert"')
                    )
                    return len(resp.assessments) == 1

                await until_async(anomaly_assessment, "the anomaly-led assessment")
                resp = await api.ListAssessments(
                    pb.ListAssessmentsRequest(filter='rule = "cortex.anomaly_with_alert"')
                )
                assert {f.name for f in resp.assessments[0].factors} == {"anomaly", "medium_alert"}
                assert list(resp.assessments[0].hosts) == ["web-01"]

                # The ML service goes away: windows unscored, DOWN with the error, an event.
                await asyncio.to_thread(ml.close)
                web.emit_one(window(NORMAL, now))

                async def down() -> bool:
                    s = await scoring()
                    return bool(s.state == guardian_pb2.SCORING_STATE_DOWN and s.windows_unscored)

                await until_async(down, "scoring down")
                assert (await scoring()).last_error
                assert await events('rule.id = "cortex.ml_unavailable"')
                # ... and an attack still becomes an assessment, without the anomaly factor.
                for e in (
                    alpha_event(
                        "alpha.credential_stuffing", "auth_event", user="eve", source="127.0.0.9"
                    ),
                    alpha_event(
                        "alpha.login_new_source", "auth_event", user="eve", source="127.0.0.9"
                    ),
                    alpha_event("alpha.large_outbound_transfer", "transfer_volume"),
                ):
                    web.emit_one(e)

                async def attack_raised() -> bool:
                    resp = await api.ListAssessments(
                        pb.ListAssessmentsRequest(filter=f'rule = "{RULE}"')
                    )
                    return len(resp.assessments) == 1

                await until_async(attack_raised, "the assessment with ML down")

                # The service comes back on its port: the breaker's trial closes it.
                ml_doc["server"]["listen"] = f"{HOST}:{config.ml.address.rsplit(':', 1)[1]}"
                ml = await asyncio.to_thread(ServiceThread, config_from_dict(MlConfig, ml_doc))
                later = [now + 60]

                async def up_again() -> bool:
                    s = await scoring()
                    if s.state == guardian_pb2.SCORING_STATE_UP and s.windows_scored >= 3:
                        return True
                    later[0] += 60  # windows keep coming, as Alpha sends one per minute
                    web.emit_one(window(NORMAL, later[0]))
                    await asyncio.sleep(0.2)
                    return False

                await until_async(up_again, "scoring up again")
                assert await events('rule.id = "cortex.ml_restored"')
        finally:
            await cortex.stop()
            await web.stop()
            if ml.loop.is_running():
                await asyncio.to_thread(ml.close)

    asyncio.run(body())
