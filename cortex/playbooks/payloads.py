"""What a delivery's body is: the assessment as the API's JSON, as OCSF, or as a TheHive alert.

    body = render("json", assessment, "created", contributing_events)   # bytes, UTF-8 JSON

* `json`: a Standard Webhooks payload, `{"type": "assessment.created", "timestamp": ...,
  "data": <qsc.cortex.v1.Assessment in proto3 JSON>}`; the timestamp is the revision's
  update time, so every retry of a delivery carries the same bytes.
* `ocsf`: the OCSF Detection Finding of `cortex.ocsf` (what `assessments export --format
  ocsf` writes), itself: OCSF consumers take the finding as it is.
* `thehive`: a TheHive 5 alert (`POST /api/v1/alert`): `type`/`source`/`sourceRef` (the
  assessment id, so TheHive deduplicates a revision it already has), title, a Markdown
  description with the confidence and its factors, severity 1-4, TLP and PAP, ATT&CK tags and
  the observables the contributing events name (hosts, addresses, users, executables, paths).

Rendering is deterministic (sorted keys, no spaces) for one assessment revision and the same
stored events; nothing secret is in it beyond what the API itself shows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

from google.protobuf import json_format

from cortex import _convert, ocsf
from cortex.assessments import Assessment
from cortex.filter.literals import format_time
from qsc.common.v1 import event_pb2

__all__ = ["CONTENT_TYPE", "Format", "render", "thehive_alert"]

Format = Literal["json", "ocsf", "thehive"]
CONTENT_TYPE: Final = "application/json"
_HIVE_SEVERITY: Final = {"info": 1, "low": 1, "medium": 2, "high": 3, "critical": 4}
_HIVE_TLP: Final = {"white": 0, "green": 1, "amber": 2, "red": 4}
_HIVE_PAP_AMBER: Final = 2
# OCSF observable type -> TheHive dataType
_HIVE_TYPES: Final = {
    ocsf.OBS_HOSTNAME: "hostname",
    ocsf.OBS_IP: "ip",
    ocsf.OBS_USER_NAME: "other",
    ocsf.OBS_PROCESS_NAME: "filename",
    ocsf.OBS_FILE_PATH: "filename",
}


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def render(
    fmt: Format,
    a: Assessment,
    change: str,
    events: Sequence[event_pb2.Event],
    *,
    tlp: str = "amber",
) -> bytes:
    """The body of a delivery of `a` (`change`: created or updated), `events` its contributing
    events still in the store, most recent last."""
    if fmt == "ocsf":
        return _dump(ocsf.detection_finding(a, events))
    if fmt == "thehive":
        return _dump(thehive_alert(a, events, tlp))
    by_id = {e.id: e for e in events}
    message = _convert.assessment(a, by_id.get)
    return _dump(
        {
            "type": f"assessment.{change}",
            "timestamp": format_time(a.update_ns),
            "data": json_format.MessageToDict(message),
        }
    )


def thehive_alert(a: Assessment, events: Sequence[event_pb2.Event], tlp: str) -> dict[str, Any]:
    """`a` as a TheHive 5 alert (see the module docstring)."""
    finding = ocsf.detection_finding(a, events)
    merged: dict[tuple[str, str], list[str]] = {}  # one observable per (type, value)
    for o in finding.get("observables", []):
        tags = merged.setdefault((_HIVE_TYPES.get(o["type_id"], "other"), o["value"]), [])
        if o["name"] not in tags:
            tags.append(o["name"])
    observables = [{"dataType": t, "data": v, "tags": tags} for (t, v), tags in merged.items()]
    factors = "\n".join(
        f"| {f.step} | {f.source} | {f.count} | {f.lr:.2f} | {f.contribution:+.2f} |"
        for f in a.factors
    )
    description = (
        f"{a.description}\n\n"
        f"**Confidence** {a.confidence:.2f} (prior {a.prior:.2f}), revision {a.revision}, "
        f"state {a.state}.\n\n"
        f"**Correlation key** `{a.correlation_key}`\n\n"
        "| factor | source | events | likelihood ratio | log-odds |\n|---|---|---|---|---|\n"
        f"{factors}\n\n"
        f"QSC Cortex `{a.name}`, {a.event_count} contributing event(s)."
    )
    return {
        "type": "qsc-assessment",
        "source": "qsc-cortex",
        "sourceRef": a.id,
        "title": a.title,
        "description": description,
        "severity": _HIVE_SEVERITY.get(a.severity, 2),
        "date": a.create_ns // 1_000_000,
        "tags": ["qsc", f"qsc:rule={a.rule_id}", *(f"attack:{t}" for t in a.mitre)],
        "tlp": _HIVE_TLP.get(tlp, 2),
        "pap": _HIVE_PAP_AMBER,
        "observables": observables,
    }


def contributing(
    a: Assessment, lookup: Callable[[str], event_pb2.Event | None]
) -> list[event_pb2.Event]:
    """The most recent contributing events of `a` still in the store, oldest first."""
    found = (lookup(i) for i in a.event_ids[-_convert.MAX_CONTRIBUTING :])
    return [e for e in found if e is not None]
