"""Events shaped as Alpha, Beta, the ML path and the Cortex emit them, for correlation tests."""

from __future__ import annotations

import itertools
from typing import Any

from mesh.ids import uuid7
from qsc.common.v1 import classification_pb2, event_pb2

T0 = 1_800_000_000 * 10**9
_SEQ = itertools.count(1)
SEVERITY = {
    "info": classification_pb2.SEVERITY_INFO,
    "low": classification_pb2.SEVERITY_LOW,
    "medium": classification_pb2.SEVERITY_MEDIUM,
    "high": classification_pb2.SEVERITY_HIGH,
    "critical": classification_pb2.SEVERITY_CRITICAL,
}


def ev(
    rule: str = "",
    kind: str = "",
    *,
    host: str = "web-1",
    at: float = 0.0,
    severity: str = "medium",
    user: str = "",
    source: str = "",
    remote: str = "",
    path: str = "",
    exec_id: str = "",
    ancestry: tuple[str, ...] = (),
    labels: dict[str, str] | None = None,
    role: str = "alpha",
    **_: Any,
) -> event_pb2.Event:
    """One event `at` seconds after T0 on `host`, with the detail `kind` (its oneof name)."""
    e = event_pb2.Event(id=uuid7(), seq=next(_SEQ), severity=SEVERITY[severity])
    e.guardian.id = f"{role}-{host}"
    e.guardian.host = host
    e.time.FromNanoseconds(T0 + int(at * 1e9))
    if rule:
        e.rule.id = rule
    if exec_id:
        e.process.exec_id = exec_id
        e.process.pid = 1000 + len(exec_id)
    for a in ancestry:
        e.process.ancestry.add(exec_id=a)
    if kind:
        detail = getattr(e, kind)
        detail.SetInParent()
        if kind == "auth_event":
            detail.user = user
            detail.source.address = source
        elif kind == "network_connection":
            detail.remote.address = remote or "198.51.100.7"
        elif kind == "transfer_volume":
            detail.bytes = 50 * 2**20
        elif kind in ("file_integrity", "file_access"):
            detail.path = path
        elif kind == "backup_integrity":
            detail.backup_set = "db"
            detail.passed = False
        elif kind == "anomaly_score":
            detail.host = host
            detail.is_anomaly = True
    for k, v in (labels or {}).items():
        e.labels[k] = v
    return e
