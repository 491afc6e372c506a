"""Assessments as OCSF Detection Findings, validated against the OCSF schema (offline).

The assessments come from the default rules' engine and book, as a Cortex makes them; each
state (raised, updated, resolved with a verdict, expired) maps to a finding that
tests/ocsf_validation.py finds conforming, and the mapping keeps what "why 0.87" needs.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from cortex.assessments import Assessment, AssessmentBook
from cortex.correlate import Correlator, VerdictModel, load_files
from cortex.ocsf import OCSF_VERSION, attacks, detection_finding
from qsc.common.v1 import event_pb2
from tests.ocsf_validation import caption, class_schema, ocsf_errors
from tests.unit.correlate_events import T0, ev

RULE = "cortex.credential_stuffing_exfiltration"


def attack_events(host: str = "web-01") -> list[event_pb2.Event]:
    burst = ev(
        "alpha.credential_stuffing", "auth_event", host=host, user="alice", source="203.0.113.9"
    )
    login = ev(
        "alpha.login_new_source", "auth_event", host=host, at=60, user="alice", source="203.0.113.9"
    )
    login.process.pid = 812
    login.process.comm = "sshd"
    login.process.exe = "/usr/sbin/sshd"
    login.process.exec_id = "exec-812"
    login.process.args.extend(["sshd:", "alice"])
    out = ev(
        "alpha.large_outbound_transfer",
        "network_connection",
        host=host,
        at=120,
        remote="198.51.100.7",
    )
    out.network_connection.local.address = "10.0.0.5"
    return [burst, login, out]


def raised(events: list[event_pb2.Event]) -> tuple[list[Assessment], AssessmentBook]:
    ticks = itertools.count(T0, 10**9)
    book = AssessmentBook(VerdictModel(), clock=lambda: next(ticks))
    engine = Correlator(load_files())
    changes = []
    for e in events:
        for hit in engine.observe(e):
            changed = book.apply(hit)
            if changed is not None:
                changes.append(changed)
    return changes, book


def test_the_schema_is_the_one_targeted() -> None:
    schema = class_schema()
    assert schema["$id"].endswith(f"/{OCSF_VERSION}/classes/detection_finding")
    assert set(schema["required"]) >= {"class_uid", "finding_info", "metadata", "time"}


def test_every_state_maps_to_a_conforming_finding() -> None:
    events = attack_events()
    changes, book = raised(events)
    (first,) = [a for a in changes if a.revision == 1]
    assert first.rule_id == RULE
    judged = book.verdict(first.id, "false_positive", "pen test", "spiffe://t/soar/s1")
    expired = replace(first, state="expired", revision=first.revision + 1, close_ns=T0 + 10**12)
    updated = replace(first, revision=2)
    for a, activity, status in (
        (first, 1, 1),
        (updated, 2, 1),
        (judged, 3, 4),
        (expired, 3, 99),
    ):
        finding = detection_finding(a, events)
        assert ocsf_errors(finding) == [], (a.state, a.revision)
        assert (finding["activity_id"], finding["status_id"]) == (activity, status)
        assert finding["type_uid"] == 200400 + activity
    finding = detection_finding(judged, events)
    assert finding["comment"] == "pen test"
    assert "false_positive" in finding["status_detail"]
    assert finding["unmapped"]["verdict"]["actor"] == "spiffe://t/soar/s1"
    # Without contributing events (aged out of the store) it still conforms.
    assert ocsf_errors(detection_finding(first)) == []


def test_the_finding_keeps_the_why() -> None:
    events = attack_events()
    changes, _ = raised(events)
    a = changes[-1]
    f = detection_finding(a, events)
    assert f["class_uid"] == 2004
    assert f["category_uid"] == 2
    assert f["metadata"]["product"] == {"name": "QSC Cortex", "vendor_name": "QSC"}
    assert f["metadata"]["version"] == OCSF_VERSION
    assert f["severity_id"] == 4
    assert f["severity"] == caption("severity_id", 4) == "High"
    assert f["confidence_score"] == round(a.confidence * 100)
    assert f["confidence_id"] == a.confidence_id
    info = f["finding_info"]
    assert info["uid"] == a.id
    assert info["analytic"] == {"uid": RULE, "name": a.title, "type_id": 1, "type": "Rule"}
    assert info["created_time"] == a.create_ns // 10**6
    assert info["first_seen_time"] == a.first_event_ns // 10**6
    assert info["last_seen_time"] == a.last_event_ns // 10**6
    stuffing = [x for x in info["attacks"] if x.get("sub_technique", {}).get("uid") == "T1110.004"]
    assert stuffing == [
        {
            "technique": {"uid": "T1110", "name": "Brute Force"},
            "sub_technique": {"uid": "T1110.004", "name": "Credential Stuffing"},
            "tactic": {"uid": "TA0006", "name": "Credential Access"},
        }
    ]
    # "why 0.87": the prior and every factor, with its seed, survive in `unmapped`.
    factors = f["unmapped"]["factors"]
    assert {x["step"] for x in factors} == {
        "failed_login_burst",
        "login_from_new_address",
        "large_outbound_transfer",
    }
    assert all(x["seed_likelihood_ratio"] > 0 and "log_odds" in x for x in factors)
    assert f["unmapped"]["prior"] == a.prior
    assert f["unmapped"]["confidence"] == a.confidence
    # Evidences: one per contributing event, with what it names.
    assert [e["uid"] for e in f["evidences"]] == [e.id for e in events]
    login = f["evidences"][1]
    assert login["user"] == {"name": "alice"}
    assert login["src_endpoint"] == {"ip": "203.0.113.9"}
    assert login["process"]["file"]["path"] == "/usr/sbin/sshd"
    assert login["data"]["event"] == f"events/{events[1].id}"
    observed = {(o["type_id"], o["value"]) for o in f["observables"]}
    assert {(1, "web-01"), (4, "alice"), (2, "203.0.113.9"), (2, "198.51.100.7")} <= observed
    assert (45, "/usr/sbin/sshd") in observed
    assert f["device"] == {"hostname": "web-01", "type_id": 0}


@pytest.mark.parametrize(
    ("broken", "why"),
    [
        (lambda f: f.pop("finding_info"), "finding_info"),
        (lambda f: f.update(activity_id=7), "activity_id"),
        (lambda f: f.update(severity="Severe"), "severity"),
        (lambda f: f["finding_info"].update(created_time="yesterday"), "created_time"),
        (lambda f: f["finding_info"]["analytic"].pop("type_id"), "type_id"),
        (lambda f: f["metadata"].update(colour="red"), "colour"),
        (lambda f: f.update(confidence_score=187), "confidence_score"),
        (lambda f: f["observables"][0].update(type_id=1234), "type_id"),
    ],
)
def test_the_validator_refuses_what_the_schema_refuses(broken: object, why: str) -> None:
    events = attack_events()
    changes, _ = raised(events)
    finding = detection_finding(changes[-1], events)
    assert callable(broken)
    broken(finding)
    errors = ocsf_errors(finding)
    assert errors
    assert any(why in e for e in errors), errors


def test_unknown_techniques_keep_their_id() -> None:
    assert attacks(["T9999.001"]) == [
        {"technique": {"uid": "T9999"}, "sub_technique": {"uid": "T9999.001"}}
    ]
    (c2,) = attacks(["T1071"])
    assert c2["tactic"] == {"uid": "TA0011", "name": "Command and Control"}
