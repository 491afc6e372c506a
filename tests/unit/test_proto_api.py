"""The v1 API as integrators rely on it.

SOAR vendors generate clients from proto/, and every component codes against the generated
package `qsc`. These tests pin what they depend on: the services and the streaming shape of each
RPC, the event detail kinds and their filter enum, lossless round trips of every detail through
the binary and JSON encodings, oneof exclusivity, and the generated stubs carrying a real stream.
Comment coverage is not tested here: `buf lint` (COMMENTS) enforces it.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any, cast

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from qsc.alpha.v1 import alpha_service_pb2
from qsc.beta.v1 import beta_service_pb2
from qsc.common.v1 import (
    classification_pb2,
    event_pb2,
    identity_pb2,
    process_details_pb2,
)
from qsc.cortex.v1 import cortex_service_pb2
from qsc.guardian.v1 import guardian_service_pb2, guardian_service_pb2_grpc
from qsc.ml.v1 import anomaly_service_pb2, host_features_pb2

# Imported for their side effect: registering the services in the default descriptor pool.
_SERVICE_MODULES = (
    alpha_service_pb2,
    beta_service_pb2,
    cortex_service_pb2,
    guardian_service_pb2,
    anomaly_service_pb2,
)

UNARY = (False, False)
SERVER_STREAM = (False, True)

# The contract: service -> RPC -> (client streaming, server streaming).
EXPECTED_RPCS: dict[str, dict[str, tuple[bool, bool]]] = {
    "qsc.guardian.v1.GuardianService": {
        "Subscribe": SERVER_STREAM,
        "GetStatus": UNARY,
    },
    "qsc.alpha.v1.AlphaService": {
        "ScanMemory": UNARY,
        "ListRules": UNARY,
        "ValidateRules": UNARY,
    },
    "qsc.beta.v1.BetaService": {
        "ScanIntegrity": SERVER_STREAM,
        "VerifyBackup": UNARY,
        "CheckCertificate": UNARY,
        "ListHealProposals": UNARY,
        "ApproveHeal": UNARY,
        "RejectHeal": UNARY,
    },
    "qsc.ml.v1.AnomalyService": {
        "Score": UNARY,
        "GetModel": UNARY,
    },
    "qsc.cortex.v1.CortexService": {
        "GetAssessment": UNARY,
        "ListAssessments": UNARY,
        "SubscribeAssessments": SERVER_STREAM,
        "SubmitVerdict": UNARY,
        "GetGuardian": UNARY,
        "ListGuardians": UNARY,
        "GetEvent": UNARY,
        "ListEvents": UNARY,
        "GetPlaybookRun": UNARY,
        "ListPlaybookRuns": UNARY,
        "ReplayPlaybookRun": UNARY,
        "ApprovePlaybookRun": UNARY,
        "RejectPlaybookRun": UNARY,
    },
}

# Every detail kind DESIGN.md and the component issues promise, by oneof field name.
EXPECTED_DETAIL_KINDS = {
    "process_exec",
    "process_exit",
    "ptrace",
    "privilege_change",
    "memfd_create",
    "process_memory_write",
    "namespace_change",
    "enforcement",
    "descriptor_redirect",
    "file_access",
    "permission_change",
    "ownership_change",
    "file_delete",
    "file_rename",
    "file_link",
    "file_attribute_change",
    "file_timestamp_change",
    "network_connection",
    "socket_create",
    "port_scan",
    "transfer_volume",
    "memory_threat",
    "module_load",
    "bpf_program_load",
    "auth_event",
    "file_integrity",
    "backup_integrity",
    "certificate_status",
    "heal_action",
    "anomaly_score",
    "host_telemetry",
    "assessment_change",
    "gap",
    "sensor_health",
}

DETAIL_FIELDS = event_pb2.Event.DESCRIPTOR.oneofs_by_name["detail"].fields


# --- services ---------------------------------------------------------------------------------


@pytest.mark.parametrize("service_name", sorted(EXPECTED_RPCS))
def test_service_has_exactly_the_expected_rpcs_and_streaming_shape(service_name: str) -> None:
    service = descriptor_pool.Default().FindServiceByName(service_name)
    found = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert found == EXPECTED_RPCS[service_name]


@pytest.mark.parametrize("service_name", sorted(EXPECTED_RPCS))
def test_each_rpc_has_its_own_request_and_response_messages(service_name: str) -> None:
    # Generated clients (and buf's RPC_REQUEST_RESPONSE_UNIQUE) rely on one pair per RPC, so a
    # field can later be added to one RPC without changing another.
    service = descriptor_pool.Default().FindServiceByName(service_name)
    package = service.full_name.rsplit(".", 1)[0]
    for method in service.methods:
        assert method.input_type.full_name == f"{package}.{method.name}Request"
        assert method.output_type.full_name == f"{package}.{method.name}Response"


def test_list_rpcs_follow_aip_pagination() -> None:
    service = descriptor_pool.Default().FindServiceByName("qsc.cortex.v1.CortexService")
    lists = [m for m in service.methods if m.name.startswith("List")]
    assert len(lists) == 4
    for method in lists:
        request = method.input_type.fields_by_name
        response = method.output_type.fields_by_name
        assert {"page_size", "page_token", "filter", "order_by"} <= set(request), method.name
        assert {"next_page_token", "total_size"} <= set(response), method.name


# --- events -----------------------------------------------------------------------------------


def test_event_offers_every_promised_detail_kind() -> None:
    assert {f.name for f in DETAIL_FIELDS} == EXPECTED_DETAIL_KINDS


def test_detail_kind_enum_mirrors_the_detail_oneof() -> None:
    # Subscription filters name kinds with DetailKind; a server maps them to oneof fields by number.
    kind_enum = event_pb2.DetailKind.DESCRIPTOR
    by_number = {v.number: v.name for v in kind_enum.values if v.number != 0}
    by_field = {f.number: f"DETAIL_KIND_{f.name.upper()}" for f in DETAIL_FIELDS}
    assert by_number == by_field


def _scalar(field: FieldDescriptor, index: int) -> Any:
    """A distinctive, non-default value for a scalar field (64-bit ints exceed 2**32)."""
    t = field.type
    if t == FieldDescriptor.TYPE_BOOL:
        return True
    if t == FieldDescriptor.TYPE_STRING:
        return f"{field.name}-{index}-ü"
    if t == FieldDescriptor.TYPE_BYTES:
        return bytes([field.number % 256, index, 0xFF]) * 11
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 0.25 + index
    if field.enum_type is not None:
        return field.enum_type.values[-1].number
    owner = field.containing_type
    if owner is not None and owner.full_name in (
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
    ):
        # Keep well-known types within their JSON-representable ranges.
        return 1_700_000_000 + index if field.name == "seconds" else 123_000 + index
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64):
        return 2**40 + field.number * 10 + index
    if t == FieldDescriptor.TYPE_INT32:
        return -(field.number * 10 + index)
    return field.number * 10 + index + 1


def _fill(message: Message, depth: int = 0) -> None:
    """Set every field of `message` (recursively, two elements per repeated field)."""
    message.SetInParent()
    # The stubs type DESCRIPTOR as the pure-Python or the upb class; both behave the same.
    descriptor = cast(Descriptor, message.DESCRIPTOR)
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and len(oneof.fields) > 1 and field is not oneof.fields[0]:
            continue  # a real oneof: set only its first member
        value = getattr(message, field.name)
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            key = _scalar(entry.fields_by_name["key"], 0)
            value_field = entry.fields_by_name["value"]
            if value_field.message_type is not None:
                _fill(value[key], depth + 1)
            else:
                value[key] = _scalar(value_field, 0)
        elif field.is_repeated:
            for index in range(2):
                if entry is not None:
                    if depth < 4:
                        _fill(value.add(), depth + 1)
                else:
                    value.append(_scalar(field, index))
        elif entry is not None:
            if depth < 4:
                _fill(value, depth + 1)
        else:
            setattr(message, field.name, _scalar(field, 0))


def _envelope() -> event_pb2.Event:
    event = event_pb2.Event(
        id="01935c3e-7a2b-7c4d-8e9f-0123456789ab",
        guardian=identity_pb2.GuardianRef(
            id="alpha-web-1", role=identity_pb2.ROLE_ALPHA, host="web-1"
        ),
        seq=2**40 + 7,
        severity=classification_pb2.SEVERITY_HIGH,
        category=classification_pb2.CATEGORY_PROCESS,
        rule=classification_pb2.RuleRef(
            id="alpha.ptrace_attach",
            name="Ptrace attach to another process",
            techniques=[
                classification_pb2.MitreTechnique(
                    id="T1055.008",
                    name="Ptrace System Calls",
                    tactics=[
                        classification_pb2.MITRE_TACTIC_DEFENSE_EVASION,
                        classification_pb2.MITRE_TACTIC_PRIVILEGE_ESCALATION,
                    ],
                )
            ],
        ),
        labels={"env": "prod"},
        summary="gdb attached to sshd",
    )
    event.time.FromNanoseconds(1_700_000_000_123_456_789)
    event.observed_time.FromNanoseconds(1_700_000_000_124_000_000)
    _fill(event.process)
    return event


@pytest.mark.parametrize("kind", [f.name for f in DETAIL_FIELDS])
def test_event_with_each_detail_kind_round_trips(kind: str) -> None:
    event = _envelope()
    _fill(getattr(event, kind))
    assert event.WhichOneof("detail") == kind

    parsed = event_pb2.Event.FromString(event.SerializeToString())
    assert parsed == event
    assert parsed.WhichOneof("detail") == kind

    # The JSON mapping is what `qsc tail --json`, grpcurl and webhook consumers see.
    from_json = json_format.Parse(json_format.MessageToJson(event), event_pb2.Event())
    assert from_json == event


def test_setting_a_second_detail_replaces_the_first() -> None:
    event = _envelope()
    event.ptrace.request = process_details_pb2.PTRACE_REQUEST_ATTACH
    event.gap.count = 3
    assert event.WhichOneof("detail") == "gap"
    assert not event.HasField("ptrace")


def test_on_the_wire_the_last_detail_wins() -> None:
    # Two encoded events concatenated parse as one message: the oneof keeps exactly one kind.
    first = _envelope()
    first.ptrace.request = process_details_pb2.PTRACE_REQUEST_ATTACH
    second = event_pb2.Event()
    second.gap.first_seq = 10
    merged = event_pb2.Event.FromString(first.SerializeToString() + second.SerializeToString())
    assert merged.WhichOneof("detail") == "gap"
    assert merged.gap.first_seq == 10
    assert merged.seq == first.seq  # envelope fields merge as usual


def test_severity_order_supports_minimum_severity_filters() -> None:
    names = ["INFO", "LOW", "MEDIUM", "HIGH", "CRITICAL"]
    numbers = [classification_pb2.Severity.Value(f"SEVERITY_{n}") for n in names]
    assert numbers == sorted(numbers)
    assert classification_pb2.SEVERITY_UNSPECIFIED == 0 < numbers[0]


def test_mitre_tactic_numbers_equal_attack_tactic_ids() -> None:
    attack = {
        "TA0001": "INITIAL_ACCESS",
        "TA0002": "EXECUTION",
        "TA0003": "PERSISTENCE",
        "TA0004": "PRIVILEGE_ESCALATION",
        "TA0005": "DEFENSE_EVASION",
        "TA0006": "CREDENTIAL_ACCESS",
        "TA0007": "DISCOVERY",
        "TA0008": "LATERAL_MOVEMENT",
        "TA0009": "COLLECTION",
        "TA0010": "EXFILTRATION",
        "TA0011": "COMMAND_AND_CONTROL",
        "TA0040": "IMPACT",
        "TA0042": "RESOURCE_DEVELOPMENT",
        "TA0043": "RECONNAISSANCE",
    }
    for tactic_id, name in attack.items():
        assert classification_pb2.MitreTactic.Value(f"MITRE_TACTIC_{name}") == int(tactic_id[2:])
    assert len(classification_pb2.MitreTactic.values()) == len(attack) + 1


def test_feature_schema_names_the_original_five_and_the_new_features() -> None:
    names = {
        v.name.removeprefix("HOST_FEATURE_").lower()
        for v in host_features_pb2.HostFeature.DESCRIPTOR.values
        if v.number != 0
    }
    assert {
        "cpu_percent",
        "memory_percent",
        "network_bytes_out",
        "network_bytes_in",
        "failed_logins",
        "process_count",
        "exec_rate",
        "distinct_destination_addresses",
        "file_changes",
    } <= names


def test_subscribe_stream_carries_each_message_kind() -> None:
    kinds = {
        f.name
        for f in guardian_service_pb2.SubscribeResponse.DESCRIPTOR.oneofs_by_name["payload"].fields
    }
    assert kinds == {"session_accept", "batch", "sealed_batch", "progress"}


# --- generated stubs carry a real stream -------------------------------------------------------


class _Guardian(guardian_service_pb2_grpc.GuardianServiceServicer):
    def Subscribe(
        self, request: guardian_service_pb2.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[guardian_service_pb2.SubscribeResponse]:
        event = _envelope()
        event.seq = request.start_after_seq + 1
        event.gap.first_seq = 3
        batch = event_pb2.EventBatch(events=[event], first_seq=event.seq, last_seq=event.seq)
        yield guardian_service_pb2.SubscribeResponse(batch=batch)
        progress = event_pb2.Progress(latest_seq=event.seq, delivered_through_seq=event.seq)
        yield guardian_service_pb2.SubscribeResponse(progress=progress)

    def GetStatus(
        self, request: guardian_service_pb2.GetStatusRequest, context: grpc.ServicerContext
    ) -> guardian_service_pb2.GetStatusResponse:
        return guardian_service_pb2.GetStatusResponse(version="test", subscriber_count=1)


def test_generated_stubs_stream_batches_and_progress() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    guardian_service_pb2_grpc.add_GuardianServiceServicer_to_server(_Guardian(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = guardian_service_pb2_grpc.GuardianServiceStub(channel)
            request = guardian_service_pb2.SubscribeRequest(start_after_seq=41)
            responses = list(stub.Subscribe(request, timeout=10))
            status = stub.GetStatus(guardian_service_pb2.GetStatusRequest(), timeout=10)
    finally:
        server.stop(grace=None)
    assert [r.WhichOneof("payload") for r in responses] == ["batch", "progress"]
    (event,) = responses[0].batch.events
    assert event.seq == 42
    assert event.WhichOneof("detail") == "gap"
    assert responses[1].progress.delivered_through_seq == 42
    assert status.version == "test"
