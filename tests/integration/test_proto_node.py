"""A non-Python client can consume the whole v1 API.

Runs `load_protos.js` under Node.js: it loads every .proto below proto/ with @grpc/proto-loader
and @grpc/grpc-js, as a SOAR vendor's integration would, and reports the services it found. The
services and RPCs (with their streaming flags and message types) must match what protoc compiled
for Python, and a stream message encoded by Python must decode in Node.js and come back unchanged.
Node.js and the npm modules are part of the test toolchain: when missing the test fails, it does
not skip.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import pkgutil
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

import qsc
from qsc.common.v1 import (
    auth_details_pb2,
    classification_pb2,
    event_pb2,
    identity_pb2,
    network_details_pb2,
    pipeline_details_pb2,
    process_details_pb2,
    process_pb2,
)
from qsc.guardian.v1 import guardian_service_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"
NODE_MODULES = ROOT / "tools" / "npm" / "node_modules"
SCRIPT = Path(__file__).with_name("load_protos.js")
HOW_TO_FIX = "run `make test`, or `npm ci --prefix tools/npm` with Node.js installed"

SERVICES = {
    "qsc.guardian.v1.GuardianService",
    "qsc.alpha.v1.AlphaService",
    "qsc.beta.v1.BetaService",
    "qsc.ml.v1.AnomalyService",
    "qsc.cortex.v1.CortexService",
}
SUBSCRIBE = "/qsc.guardian.v1.GuardianService/Subscribe"


def _python_view() -> dict[str, dict[str, dict[str, Any]]]:
    """Every service compiled into the generated package, in the shape the script reports."""
    services: dict[str, dict[str, dict[str, Any]]] = {}
    for module_info in pkgutil.walk_packages(qsc.__path__, "qsc."):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(module_info.name)
        for service in module.DESCRIPTOR.services_by_name.values():
            services[service.full_name] = {
                method.name: {
                    "path": f"/{service.full_name}/{method.name}",
                    "requestStream": method.client_streaming,
                    "responseStream": method.server_streaming,
                    "requestType": method.input_type.name,
                    "responseType": method.output_type.name,
                }
                for method in service.methods
            }
    return services


def _sample_stream_message() -> guardian_service_pb2.SubscribeResponse:
    """A batch as the Cortex would receive it: several detail kinds, 64-bit numbers, a map."""
    guardian = identity_pb2.GuardianRef(
        id="alpha-web-1", role=identity_pb2.ROLE_ALPHA, host="web-1"
    )
    ptrace = event_pb2.Event(
        id="01935c3e-7a2b-7c4d-8e9f-0123456789ab",
        guardian=guardian,
        seq=2**33 + 1,
        severity=classification_pb2.SEVERITY_HIGH,
        category=classification_pb2.CATEGORY_PROCESS,
        rule=classification_pb2.RuleRef(
            id="alpha.ptrace_attach",
            techniques=[
                classification_pb2.MitreTechnique(
                    id="T1055.008", tactics=[classification_pb2.MITRE_TACTIC_DEFENSE_EVASION]
                )
            ],
        ),
        process=process_pb2.Process(
            pid=4242,
            comm="gdb",
            args=["gdb", "-p", "1"],
            exec_id="ZXhlYzoxOjQyNDI=",
            ancestry=[process_pb2.ProcessRef(pid=1, comm="systemd")],
        ),
        labels={"env": "prod"},
        ptrace=process_details_pb2.Ptrace(
            request=process_details_pb2.PTRACE_REQUEST_ATTACH,
            target=process_pb2.ProcessRef(pid=1, comm="sshd"),
            result=-1,
        ),
    )
    ptrace.time.FromNanoseconds(1_700_000_000_123_456_789)
    auth = event_pb2.Event(
        id="01935c3e-7a2b-7c4d-8e9f-0123456789ac",
        guardian=guardian,
        seq=2**33 + 2,
        category=classification_pb2.CATEGORY_AUTHENTICATION,
        auth_event=auth_details_pb2.AuthEvent(
            service="sshd",
            outcome=auth_details_pb2.AUTH_OUTCOME_FAILED,
            user="root",
            source=network_details_pb2.Endpoint(address="2001:db8::7", port=50022),
            failures_in_window=17,
        ),
    )
    gap = event_pb2.Event(
        guardian=guardian,
        seq=2**33 + 3,
        category=classification_pb2.CATEGORY_SYSTEM,
        gap=pipeline_details_pb2.Gap(
            first_seq=100,
            last_seq=199,
            count=100,
            reason=pipeline_details_pb2.GAP_REASON_DISK_BUDGET,
        ),
    )
    batch = event_pb2.EventBatch(events=[ptrace, auth, gap], first_seq=2**33, last_seq=2**33 + 3)
    return guardian_service_pb2.SubscribeResponse(batch=batch)


@pytest.fixture(scope="module")
def node_report() -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"Node.js (`node`) is not on PATH; {HOW_TO_FIX}")
    for package in ("@grpc/proto-loader", "@grpc/grpc-js"):
        if not (NODE_MODULES / package / "package.json").is_file():
            pytest.fail(f"npm package {package} is missing from {NODE_MODULES}; {HOW_TO_FIX}")
    request = {
        "decode": [
            {
                "method": SUBSCRIBE,
                "response": base64.b64encode(_sample_stream_message().SerializeToString()).decode(),
            }
        ]
    }
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    result = subprocess.run(
        [node, str(SCRIPT), str(PROTO_ROOT)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"load_protos.js failed ({result.returncode}):\n{result.stderr}")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_node_loads_every_proto_file_without_warnings(node_report: dict[str, Any]) -> None:
    on_disk = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    assert node_report["files"] == on_disk
    assert node_report["warnings"] == []


def test_node_sees_every_service_and_rpc_with_its_streaming_shape(
    node_report: dict[str, Any],
) -> None:
    python = _python_view()
    assert set(python) == SERVICES
    assert node_report["services"] == python


def test_a_python_encoded_batch_decodes_in_node_and_round_trips(
    node_report: dict[str, Any],
) -> None:
    original = _sample_stream_message()
    (decoded,) = node_report["decoded"]
    obj = decoded["object"]
    assert obj["payload"] == "batch"
    events = obj["batch"]["events"]
    assert [e["detail"] for e in events] == ["ptrace", "auth_event", "gap"]
    assert events[0]["seq"] == str(2**33 + 1)  # 64-bit values survive as strings in JS
    assert events[0]["ptrace"]["request"] == "PTRACE_REQUEST_ATTACH"
    assert events[0]["rule"]["techniques"][0]["id"] == "T1055.008"
    assert events[0]["labels"] == {"env": "prod"}
    assert events[1]["auth_event"]["source"]["address"] == "2001:db8::7"
    assert events[2]["gap"]["count"] == "100"

    reencoded = guardian_service_pb2.SubscribeResponse.FromString(
        base64.b64decode(decoded["reencoded"])
    )
    assert reencoded == original, json_format.MessageToJson(reencoded)
