"""Assessments as OCSF Detection Findings (class 2004, schema `OCSF_VERSION`). Pure mapping.

    finding = detection_finding(assessment, contributing_events)   # a JSON-ready dict

One finding per assessment revision, the latest one when exported (`qsc-cortex assessments
export --format ocsf`):

* `activity_id`: Create (1) for the revision that raised it, Update (2) for later open ones,
  Close (3) once resolved or expired; `type_uid` = 2004 * 100 + activity_id.
* `status_id`: New (1) open, Resolved (4) with a verdict, Other (99, `status` "Expired") for a
  window that ended without one. The verdict itself is in `status_detail` and `comment`.
* `severity_id` from the rule's severity (info 1, low 2, medium 3, high 4, critical 5);
  `confidence_score` the posterior in percent (0-100), `confidence_id` its band (1 low,
  2 medium, 3 high, as `cortex.correlate.score` sets it).
* `finding_info`: the assessment id as `uid`, the rule's title and description, created /
  modified / first seen / last seen times, the correlation rule as `analytic` (type Rule), and
  one `attacks` entry per ATT&CK technique and tactic the rule names (names from
  `mesh.mitre`; a sub-technique as `sub_technique` under its parent technique).
* `evidences`: one per contributing event still in the store (the most recent
  `MAX_CONTRIBUTING`), with its guardian's host as `device`, its process, user and addresses
  where it has them, and where to find it (`data`: `events/{id}`, guardian, seq, rule).
  `observables` lists the hosts, users, addresses and executables they name.
* `unmapped`: what OCSF has no place for, so "why 0.87?" survives the export: the prior and
  every factor (step, source, count, likelihood ratio, its seed, weight, log-odds), the
  correlation key, the revision and state, and the verdict as given.

Times are OCSF timestamps: milliseconds since the epoch. `metadata.version` is the OCSF schema
version the shape follows (tests/unit/test_cortex_ocsf.py validates it against that schema).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Final

from cortex._convert import MAX_CONTRIBUTING
from cortex.assessments import Assessment
from cortex.filter.literals import format_time
from mesh.mitre import TECHNIQUES
from qsc.common.v1 import classification_pb2, event_pb2

__all__ = ["CLASS_UID", "MAX_CONTRIBUTING", "OCSF_VERSION", "detection_finding"]

OCSF_VERSION: Final = "1.5.0"
PRODUCT: Final = {"name": "QSC Cortex", "vendor_name": "QSC"}
CLASS_UID: Final = 2004
CLASS_NAME: Final = "Detection Finding"
CATEGORY_UID: Final = 2
CATEGORY_NAME: Final = "Findings"
_ACTIVITIES: Final = {1: "Create", 2: "Update", 3: "Close"}
_SEVERITIES: Final = {  # rule severity -> (severity_id, caption)
    "info": (1, "Informational"),
    "low": (2, "Low"),
    "medium": (3, "Medium"),
    "high": (4, "High"),
    "critical": (5, "Critical"),
}
_CONFIDENCES: Final = {1: "Low", 2: "Medium", 3: "High"}
STATUS_NEW, STATUS_RESOLVED, STATUS_OTHER = 1, 4, 99
ANALYTIC_RULE: Final = 1
DEVICE_UNKNOWN: Final = 0
FILE_REGULAR: Final = 1
# observable type_id
OBS_HOSTNAME, OBS_IP, OBS_USER_NAME, OBS_PROCESS_NAME, OBS_FILE_PATH = 1, 2, 4, 9, 45


def _ms(ns: int) -> int:
    return ns // 1_000_000


def activity_of(a: Assessment) -> int:
    if a.state != "open":
        return 3
    return 1 if a.revision <= 1 else 2


def _tactic_name(number: int) -> str:
    """`Credential Access` for 6 (TA0006), `Command and Control` for 11."""
    tactic = classification_pb2.MitreTactic.ValueType(number)
    words = classification_pb2.MitreTactic.Name(tactic).removeprefix("MITRE_TACTIC_").split("_")
    return " ".join(w.lower() if w == "AND" else w.capitalize() for w in words)


def attacks(techniques: Iterable[str]) -> list[dict[str, Any]]:
    """One OCSF `attack` per (technique, tactic) the ATT&CK ids name; a technique unknown to
    `mesh.mitre` goes out with its id alone."""
    out: list[dict[str, Any]] = []
    for tid in techniques:
        name, tactics = TECHNIQUES.get(tid, ("", ()))
        parent_id, dot, _ = tid.partition(".")
        entry: dict[str, Any] = {}
        if dot:
            parent_name = TECHNIQUES.get(parent_id, ("", ()))[0]
            entry["technique"] = _named(parent_id, parent_name)
            entry["sub_technique"] = _named(tid, name)
        else:
            entry["technique"] = _named(tid, name)
        if not tactics:
            out.append(entry)
        for number in tactics:
            out.append({**entry, "tactic": _named(f"TA{number:04d}", _tactic_name(number))})
    return out


def _named(uid: str, name: str) -> dict[str, str]:
    return {"uid": uid, "name": name} if name else {"uid": uid}


def _factors(a: Assessment) -> list[dict[str, Any]]:
    return [
        {
            "step": f.step,
            "source": f.source,
            "count": f.count,
            "likelihood_ratio": f.lr,
            "seed_likelihood_ratio": f.seed_lr,
            "weight": f.weight,
            "log_odds": f.contribution,
        }
        for f in a.factors
    ]


def _status(a: Assessment) -> dict[str, Any]:
    if a.state == "open":
        return {"status_id": STATUS_NEW, "status": "New"}
    if a.state == "expired":
        return {
            "status_id": STATUS_OTHER,
            "status": "Expired",
            "status_detail": "the correlation window ended without a verdict",
        }
    out: dict[str, Any] = {"status_id": STATUS_RESOLVED, "status": "Resolved"}
    if a.verdict is not None:
        out["status_detail"] = f"verdict {a.verdict.verdict} by {a.verdict.actor}"
        if a.verdict.comment:
            out["comment"] = a.verdict.comment
    return out


class _Observables:
    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], int] = {}

    def add(self, name: str, type_id: int, value: str) -> None:
        if value:
            self.seen.setdefault((name, value), type_id)

    def listed(self) -> list[dict[str, Any]]:
        return [
            {"name": name, "type_id": type_id, "value": value}
            for (name, value), type_id in self.seen.items()
        ]


def _device(host: str) -> dict[str, Any]:
    return {"hostname": host, "type_id": DEVICE_UNKNOWN}


def evidence(event: event_pb2.Event, seen: _Observables) -> dict[str, Any]:
    """One contributing event as an OCSF `evidences` entry (it always has `data`)."""
    data: dict[str, Any] = {
        "event": f"events/{event.id}",
        "guardian": event.guardian.id,
        "seq": event.seq,
        "rule_id": event.rule.id,
        "kind": event.WhichOneof("detail") or "",
        "summary": event.summary,
    }
    if event.HasField("time"):
        data["time"] = format_time(event.time.ToNanoseconds())
    out: dict[str, Any] = {"uid": event.id, "name": event.rule.id or event.summary, "data": data}
    if event.guardian.host:
        out["device"] = _device(event.guardian.host)
        seen.add("evidences.device.hostname", OBS_HOSTNAME, event.guardian.host)
    p = event.process
    if p.pid:
        process: dict[str, Any] = {"pid": p.pid}
        if p.comm:
            process["name"] = p.comm
            seen.add("evidences.process.name", OBS_PROCESS_NAME, p.comm)
        if p.exec_id:
            process["uid"] = p.exec_id
        if p.args:
            process["cmd_line"] = " ".join(p.args)
        if p.exe:
            process["file"] = {
                "name": os.path.basename(p.exe) or p.exe,
                "path": p.exe,
                "type_id": FILE_REGULAR,
            }
            seen.add("evidences.process.file.path", OBS_FILE_PATH, p.exe)
        out["process"] = process
    kind = event.WhichOneof("detail")
    if kind == "auth_event":
        auth = event.auth_event
        if auth.user:
            out["user"] = {"name": auth.user}
            seen.add("evidences.user.name", OBS_USER_NAME, auth.user)
        if auth.source.address:
            out["src_endpoint"] = {"ip": auth.source.address}
            seen.add("evidences.src_endpoint.ip", OBS_IP, auth.source.address)
    elif kind == "network_connection":
        conn = event.network_connection
        if conn.local.address:
            out["src_endpoint"] = {"ip": conn.local.address}
            seen.add("evidences.src_endpoint.ip", OBS_IP, conn.local.address)
        if conn.remote.address:
            out["dst_endpoint"] = {"ip": conn.remote.address}
            seen.add("evidences.dst_endpoint.ip", OBS_IP, conn.remote.address)
    return out


def detection_finding(
    a: Assessment, contributing: Iterable[event_pb2.Event] = ()
) -> dict[str, Any]:
    """`a` as an OCSF Detection Finding; `contributing` are its stored events (the caller
    reads at most MAX_CONTRIBUTING of them, the most recent)."""
    activity = activity_of(a)
    severity_id, severity = _SEVERITIES[a.severity]
    seen = _Observables()
    hosts = a.hosts
    for host in hosts:
        seen.add("device.hostname" if len(hosts) == 1 else "unmapped.hosts", OBS_HOSTNAME, host)
    evidences = [evidence(e, seen) for e in contributing]
    info: dict[str, Any] = {
        "uid": a.id,
        "title": a.title,
        "created_time": _ms(a.create_ns),
        "modified_time": _ms(a.update_ns),
        "first_seen_time": _ms(a.first_event_ns),
        "last_seen_time": _ms(a.last_event_ns),
        "analytic": {
            "uid": a.rule_id,
            "name": a.title,
            "type_id": ANALYTIC_RULE,
            "type": "Rule",
        },
        "related_events_count": a.event_count,
    }
    if a.description:
        info["desc"] = a.description
    found_attacks = attacks(a.mitre)
    if found_attacks:
        info["attacks"] = found_attacks
    unmapped: dict[str, Any] = {
        "assessment": a.name,
        "state": a.state,
        "revision": a.revision,
        "correlation_key": a.correlation_key,
        "key": {k: v for k, v in a.key},
        "hosts": list(hosts),
        "confidence": a.confidence,
        "prior": a.prior,
        "factors": _factors(a),
        "steps_present": sorted(a.steps_present),
        "event_ids": list(a.event_ids),
    }
    if a.close_ns:
        unmapped["close_time"] = format_time(a.close_ns)
    if a.verdict is not None:
        unmapped["verdict"] = {
            "verdict": a.verdict.verdict,
            "comment": a.verdict.comment,
            "actor": a.verdict.actor,
            "time": format_time(a.verdict.time_ns),
        }
    finding: dict[str, Any] = {
        "class_uid": CLASS_UID,
        "class_name": CLASS_NAME,
        "category_uid": CATEGORY_UID,
        "category_name": CATEGORY_NAME,
        "activity_id": activity,
        "activity_name": _ACTIVITIES[activity],
        "type_uid": CLASS_UID * 100 + activity,
        "type_name": f"{CLASS_NAME}: {_ACTIVITIES[activity]}",
        "severity_id": severity_id,
        "severity": severity,
        "confidence_score": max(0, min(100, round(a.confidence * 100))),
        "time": _ms(a.update_ns),
        "start_time": _ms(a.first_event_ns),
        "end_time": _ms(a.last_event_ns),
        "count": a.event_count,
        "message": f"{a.title} (confidence {a.confidence:.2f})",
        "is_alert": a.state == "open",
        **_status(a),
        "finding_info": info,
        "metadata": {
            "product": dict(PRODUCT),
            "version": OCSF_VERSION,
            "correlation_uid": a.correlation_key,
            "uid": f"{a.id}/{a.revision}",
        },
        "unmapped": unmapped,
    }
    if a.confidence_id in _CONFIDENCES:
        finding["confidence_id"] = a.confidence_id
        finding["confidence"] = _CONFIDENCES[a.confidence_id]
    if len(hosts) == 1:
        finding["device"] = _device(hosts[0])
    if evidences:
        finding["evidences"] = evidences
    observables = seen.listed()
    if observables:
        finding["observables"] = observables
    return finding
