"""A synthetic event source, like Falco's event-generator: realistic detections at a set rate.

For demos, tests and benchmarks of the stream (`[synthetic] rate > 0`). It runs in its own thread
so that producing never waits on the event loop that serves subscribers, registers itself as the
sensor `synthetic` (mode `generator`), and appends `batch` events per `emit_many`. With `total`
set it stops after exactly that many events. Every event carries the label `synthetic=true` and a
rule id starting with `synthetic.`, so nobody mistakes them for real detections.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

from mesh.logs import log_event
from qsc.common.v1 import (
    classification_pb2 as cls,
)
from qsc.common.v1 import (
    event_pb2,
    file_details_pb2,
    network_details_pb2,
    process_details_pb2,
    process_pb2,
)

from .config import SyntheticSection
from .sensors import SensorHandle, SensorRegistry

__all__ = ["SENSOR_NAME", "SyntheticSource", "templates"]

SENSOR_NAME: Final = "synthetic"
_log = logging.getLogger("qsc.guardian.synthetic")
# Longest sleep between checks, so stop() and a low rate both stay responsive.
_MAX_SLEEP: Final = 0.02


def _rule(rule_id: str, name: str, technique: str) -> cls.RuleRef:
    return cls.RuleRef(
        id=rule_id,
        name=name,
        techniques=[cls.MitreTechnique(id=technique)],
        ruleset_version="synthetic",
    )


def _event(
    severity: int, category: int, summary: str, rule: cls.RuleRef | None, **detail: object
) -> event_pb2.Event:
    event = event_pb2.Event(
        severity=severity,  # type: ignore[arg-type]
        category=category,  # type: ignore[arg-type]
        summary=summary,
        labels={"synthetic": "true"},
        process=process_pb2.Process(pid=4242, ppid=1, uid=1000, comm="event-generator"),
        **detail,  # type: ignore[arg-type]
    )
    if rule is not None:
        event.rule.CopyFrom(rule)
    return event


def templates() -> list[event_pb2.Event]:
    """One event per simulated action, cycled through in order."""
    return [
        _event(
            cls.SEVERITY_HIGH,
            cls.CATEGORY_FILE,
            "event-generator read /etc/shadow",
            _rule("synthetic.read_sensitive_file", "Read sensitive file untrusted", "T1003.008"),
            file_access=file_details_pb2.FileAccess(
                path="/etc/shadow", access=file_details_pb2.ACCESS_MODE_READ
            ),
        ),
        _event(
            cls.SEVERITY_MEDIUM,
            cls.CATEGORY_PROCESS,
            "event-generator executed /dev/shm/payload",
            _rule("synthetic.exec_from_dev_shm", "Execution from /dev/shm", "T1059"),
            process_exec=process_details_pb2.ProcessExec(filename="/dev/shm/payload"),  # noqa: S108 (simulated)
        ),
        _event(
            cls.SEVERITY_HIGH,
            cls.CATEGORY_PROCESS,
            "event-generator attached to a process with ptrace",
            _rule("synthetic.ptrace_attach", "PTRACE attached to process", "T1055.008"),
            ptrace=process_details_pb2.Ptrace(raw_request=16),
        ),
        _event(
            cls.SEVERITY_HIGH,
            cls.CATEGORY_MEMORY,
            "event-generator created a memfd",
            _rule("synthetic.fileless_exec", "Fileless execution via memfd_create", "T1620"),
            memfd_create=process_details_pb2.MemfdCreate(name="payload"),
        ),
        _event(
            cls.SEVERITY_LOW,
            cls.CATEGORY_NETWORK,
            "event-generator connected to 203.0.113.7:4444",
            _rule("synthetic.outbound_connection", "Unexpected outbound connection", "T1071"),
            network_connection=network_details_pb2.NetworkConnection(
                remote=network_details_pb2.Endpoint(address="203.0.113.7", port=4444)
            ),
        ),
        _event(
            cls.SEVERITY_MEDIUM,
            cls.CATEGORY_PRIVILEGE,
            "event-generator set the setuid bit on /tmp/suid",
            _rule("synthetic.set_setuid_bit", "Set Setuid or Setgid bit", "T1548.001"),
            permission_change=file_details_pb2.PermissionChange(
                path="/tmp/suid",  # noqa: S108 (simulated)
                new_mode=0o4755,
                setuid_added=True,
            ),
        ),
        _event(
            cls.SEVERITY_INFO,
            cls.CATEGORY_PROCESS,
            "event-generator executed /usr/bin/ls",
            None,  # raw telemetry: no rule fired
            process_exec=process_details_pb2.ProcessExec(filename="/usr/bin/ls"),
        ),
    ]


class SyntheticSource:
    """A guardian worker producing `config.rate` events/s until `config.total` (or stop)."""

    name: Final = SENSOR_NAME

    def __init__(
        self,
        emit_many: Callable[[Sequence[event_pb2.Event]], tuple[int, int]],
        sensors: SensorRegistry,
        config: SyntheticSection,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not config.enabled:
            raise ValueError("the synthetic source needs rate > 0")
        self._emit_many = emit_many
        self._sensors = sensors
        self._config = config
        self._clock = clock
        self._templates = [t.SerializeToString() for t in templates()]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: SensorHandle | None = None
        self.produced = 0
        self.finished = threading.Event()

    async def start(self) -> None:
        self._handle = self._sensors.register(SENSOR_NAME, "generator")
        self._thread = threading.Thread(target=self._run, name="qsc-synthetic", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def _make(self, first: int, n: int) -> list[event_pb2.Event]:
        parse, count = event_pb2.Event.FromString, len(self._templates)
        events = []
        for i in range(first, first + n):
            event = parse(self._templates[i % count])
            event.process.pid = 1000 + i % 30000
            events.append(event)
        return events

    def _run(self) -> None:
        assert self._handle is not None
        rate, total, batch = self._config.rate, self._config.total, self._config.batch
        start = self._clock()
        try:
            while not self._stop.is_set() and not (total and self.produced >= total):
                # Events due by now (the first at once); produce them a batch at a time.
                due = int((self._clock() - start) * rate) + 1
                if total:
                    due = min(due, total)
                n = min(batch, due - self.produced)
                if n > 0:
                    self._emit_many(self._make(self.produced, n))
                    self.produced += n
                    self._handle.count_event(n)
                    continue
                # Sleep until a full batch is due, but keep checking for stop.
                goal = self.produced + batch
                wait = goal / rate - (self._clock() - start)
                self._stop.wait(min(max(wait, 0.001), _MAX_SLEEP))
        except Exception as exc:
            log_event(_log, "synthetic source failed", level=logging.ERROR, exc_info=exc)
            self._handle.failed(f"synthetic source failed: {type(exc).__name__}")
        else:
            log_event(_log, "synthetic source stopped", produced=self.produced)
        finally:
            self.finished.set()
