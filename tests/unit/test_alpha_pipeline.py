"""alpha.pipeline with the real default ruleset: hand-made observations in, the events the
outbox would receive out (rule, MITRE, severity, category); losses counted; SIGHUP reloads that
keep the old rules on a bad file. Also the auth source's wiring over a temp log file."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from alpha.config import AuthSection
from alpha.counters import STAGES, PipelineCounters
from alpha.pipeline import ALSO_MATCHED_LABEL, Event, Pipeline, best_match
from alpha.rules import RuleEngine
from alpha.sensors.model import (
    ChmodDetail,
    ExecDetail,
    ForkDetail,
    Kind,
    LinkDetail,
    MemfdDetail,
    ModuleDetail,
    Observation,
    OpenDetail,
    ProcessInfo,
    PtraceDetail,
    SocketDetail,
    Stdio,
)
from alpha.sources.auth import AuthSource
from mesh.guardian.sensors import LossStage, SensorRegistry, SensorState
from qsc.common.v1 import classification_pb2 as cls
from qsc.common.v1 import event_pb2, memory_details_pb2, pipeline_details_pb2

INFO = ProcessInfo(
    pid=4242,
    ppid=100,
    exec_id="e-self",
    parent_exec_id="e-parent",
    comm="python3",
    exe="/usr/bin/python3.11",
    args=("python3", "x.py"),
    cwd="/root",
    uid=0,
    gid=0,
    euid=0,
    start_boot_ns=1,
    cgroup="/user.slice",
    container_id="",
    container_runtime="",
)
SOCK = Stdio("inet_socket", "", "127.0.0.1", 4444)


def obs(kind: Kind, detail: object, *, info: ProcessInfo = INFO, **over: object) -> Observation:
    base = Observation(
        kind=kind,
        time_ns=1_700_000_000_000_000_000,
        boot_ns=2,
        pid=info.pid,
        tid=info.pid,
        ppid=info.ppid,
        uid=info.uid,
        gid=info.gid,
        euid=info.euid,
        comm=info.comm,
        syscall="",
        ret=0,
        process=info,
        detail=detail,  # type: ignore[arg-type]
        source="ebpf",
    )
    return replace(base, **over)  # type: ignore[arg-type]


def exec_obs(
    exe: str, comm: str, stdio: tuple[Stdio, Stdio, Stdio], memfd: bool = False
) -> Observation:
    info = replace(INFO, exe=exe, comm=comm, args=(comm,))
    detail = ExecDetail(
        exe, exe, (comm,), False, "/", -100, 0, memfd, memfd, False, stdio, info.pid
    )
    return obs(Kind.EXEC, detail, info=info, syscall="execve", ret=None)


@dataclass
class Sink:
    """Guardian.emit_many and SensorHandle.count_loss stand-ins."""

    events: list[Event] = field(default_factory=list)
    losses: list[tuple[LossStage, int]] = field(default_factory=list)
    refuse: str = ""  # summary substring of events the outbox refuses

    def emit_many(self, events: list[Event]) -> tuple[int, int]:
        if self.refuse and any(self.refuse in e.summary for e in events):
            raise ValueError("too large")
        self.events.extend(events)
        return (1, len(events))

    def loss(self, stage: LossStage, n: int) -> None:
        self.losses.append((stage, n))

    def by_rule(self, rule_id: str) -> Event:
        found = [e for e in self.events if e.rule.id == rule_id]
        assert len(found) == 1, [e.rule.id for e in self.events]
        return found[0]


@pytest.fixture(scope="module")
def engine() -> RuleEngine:
    return RuleEngine.default()


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def pipeline(engine: RuleEngine, sink: Sink) -> Pipeline:
    return Pipeline(engine, sink.emit_many, losses=sink.loss)


# --- detections -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("observation", "rule_id", "technique", "severity", "category", "detail"),
    [
        (
            obs(Kind.PTRACE, PtraceDetail(16, "PTRACE_ATTACH", 99, 0, 0), syscall="ptrace"),
            "alpha.ptrace_attach",
            "T1055.008",
            cls.SEVERITY_MEDIUM,
            cls.CATEGORY_PROCESS,
            "ptrace",
        ),
        (
            exec_obs("/memfd:x (deleted)", "x", (Stdio("pipe"),) * 3, True),
            "alpha.memfd_exec",
            "T1620",
            cls.SEVERITY_CRITICAL,
            cls.CATEGORY_PROCESS,
            "process_exec",
        ),
        (
            obs(Kind.CHMOD, ChmodDetail("f", "/tmp/f", 0o4755, -100, True, False, False)),
            "alpha.setuid_bit_set",
            "T1548.001",
            cls.SEVERITY_MEDIUM,
            cls.CATEGORY_FILE,
            "permission_change",
        ),
        (
            obs(
                Kind.OPEN,
                OpenDetail("/etc/shadow", "/etc/shadow", 0, 0, -100, False),
                info=replace(INFO, comm="cat", exe="/tmp/q/cat"),
                ret=3,
            ),
            "alpha.sensitive_file_read",
            "T1003.008",
            cls.SEVERITY_MEDIUM,
            cls.CATEGORY_FILE,
            "file_access",
        ),
        (
            obs(Kind.OPEN, OpenDetail("/etc/qsc-x", "/etc/qsc-x", 0o101, 0o644, -100, True), ret=3),
            "alpha.write_below_etc",
            "T1098",
            cls.SEVERITY_MEDIUM,
            cls.CATEGORY_FILE,
            "file_access",
        ),
        (
            exec_obs("/usr/bin/bash", "bash", (SOCK, SOCK, SOCK)),
            "alpha.reverse_shell",
            "T1059.004",
            cls.SEVERITY_CRITICAL,
            cls.CATEGORY_PROCESS,
            "process_exec",
        ),
        (
            obs(Kind.MODULE_LOAD, ModuleDetail(3, "/tmp/x.ko", "", 0, 0), syscall="finit_module"),
            "alpha.kernel_module_load",
            "T1547.006",
            cls.SEVERITY_MEDIUM,
            cls.CATEGORY_KERNEL,
            "module_load",
        ),
        (
            obs(Kind.SOCKET, SocketDetail(17, 3, 0x0300), syscall="socket", ret=4),
            "alpha.packet_socket",
            "T1040",
            cls.SEVERITY_LOW,
            cls.CATEGORY_NETWORK,
            "socket_create",
        ),
        (
            obs(
                Kind.LINK,
                LinkDetail("/etc/shadow", "/tmp/x", "/etc/shadow", "/tmp/x", True, 0),
                syscall="symlinkat",
            ),
            "alpha.sensitive_file_link",
            "T1003.008",
            cls.SEVERITY_MEDIUM,
            cls.CATEGORY_FILE,
            "file_link",
        ),
        (
            obs(
                Kind.LINK,
                LinkDetail("/dev/null", "auth.log", "/dev/null", "/var/log/auth.log", True, 0),
                syscall="symlinkat",
            ),
            "alpha.log_clearing",
            "T1070.002",
            cls.SEVERITY_MEDIUM,
            cls.CATEGORY_FILE,
            "file_link",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and v.startswith("alpha.") else "",
)
def test_observation_to_alert(
    pipeline: Pipeline,
    sink: Sink,
    observation: Observation,
    rule_id: str,
    technique: str,
    severity: int,
    category: int,
    detail: str,
) -> None:
    assert pipeline.handle_observations([observation]) == 1
    (event,) = sink.events
    assert event.WhichOneof("detail") == detail
    assert event.rule.id == rule_id
    assert technique in [t.id for t in event.rule.techniques]
    assert event.rule.name
    assert event.rule.ruleset_version.startswith("sha256:")
    assert (event.severity, event.category) == (severity, category)
    assert event.summary  # the rule's rendered output
    assert event.process.pid == observation.pid


def test_highest_priority_names_the_event_and_others_are_labels(
    pipeline: Pipeline, sink: Sink
) -> None:
    # A shell dropped in /tmp with its stdio on a socket: reverse shell (critical) and
    # execution from /tmp (notice).
    pipeline.handle_observations([exec_obs("/tmp/bash", "bash", (SOCK, SOCK, SOCK))])
    (event,) = sink.events
    assert event.rule.id == "alpha.reverse_shell"
    assert event.severity == cls.SEVERITY_CRITICAL
    assert event.labels[ALSO_MATCHED_LABEL] == "alpha.exec_from_tmp"
    matches = pipeline.engine.evaluate(event)
    assert best_match(matches).rule_id == "alpha.reverse_shell"


def test_unmatched_events_are_dropped_and_counted(engine: RuleEngine, sink: Sink) -> None:
    pipeline = Pipeline(engine, sink.emit_many)
    benign = [
        obs(Kind.MEMFD_CREATE, MemfdDetail("jit", 1), ret=3),
        exec_obs("/usr/bin/ls", "ls", (Stdio("tty", "/dev/pts/0"),) * 3),
        obs(Kind.FORK, ForkDetail(5, 0, "e-child")),
    ]
    assert pipeline.handle_observations(benign) == 0
    assert sink.events == []
    stats = pipeline.stats()
    assert (stats.observations, stats.candidates, stats.no_detail) == (3, 2, 1)
    assert (stats.unmatched_dropped, stats.emitted, stats.matched) == (2, 0, 0)


def test_stage_counts_show_in_the_registry_as_get_status_reads_it(
    engine: RuleEngine, sink: Sink
) -> None:
    health: list[Event] = []
    registry = SensorRegistry(health.append)
    pipeline = Pipeline(engine, sink.emit_many, counts=PipelineCounters(registry).add)
    batch = [
        obs(Kind.MEMFD_CREATE, MemfdDetail("jit", 1), ret=3),
        exec_obs("/usr/bin/ls", "ls", (Stdio("tty", "/dev/pts/0"),) * 3),
        obs(Kind.FORK, ForkDetail(5, 0, "e-child")),
        exec_obs("/usr/bin/bash", "bash", (SOCK, SOCK, SOCK)),  # a reverse shell
    ]
    assert pipeline.handle_observations(batch) == 1
    pipeline.handle_observations(batch[:1])
    statuses = {s.name: s for s in registry.statuses()}  # what GetStatus sends
    counts = {name: s.events for name, s in statuses.items()}
    assert counts == {
        "pipeline.observations": 5,
        "pipeline.no_detail": 1,
        "pipeline.candidates": 4,
        "pipeline.findings": 0,
        "pipeline.matched": 1,
        "pipeline.unmatched_dropped": 3,
        "pipeline.emitted": 1,
    }
    assert {s.mode for s in statuses.values()} == {"pipeline"}
    assert {s.state for s in statuses.values()} == {pipeline_details_pb2.SENSOR_STATE_HEALTHY}
    assert statuses["pipeline.unmatched_dropped"].HasField("last_event_time")
    assert not statuses["pipeline.findings"].HasField("last_event_time")
    # They are counts, not losses.
    assert all(not s.loss.ListFields() for s in statuses.values())
    assert len(health) == len(STAGES)  # one announcement each, nothing per batch
    assert pipeline.stats().unmatched_dropped == 3


def test_emit_unmatched_keeps_raw_telemetry(engine: RuleEngine, sink: Sink) -> None:
    pipeline = Pipeline(engine, sink.emit_many, emit_unmatched=True)
    pipeline.handle_observations([obs(Kind.MEMFD_CREATE, MemfdDetail("jit", 1), ret=3)])
    (event,) = sink.events
    assert not event.HasField("rule")
    assert (event.severity, event.category) == (cls.SEVERITY_INFO, cls.CATEGORY_PROCESS)
    assert pipeline.stats().unmatched_dropped == 0


def test_findings_go_through_rules_and_are_always_emitted(pipeline: Pipeline, sink: Sink) -> None:
    rwx = event_pb2.Event(severity=cls.SEVERITY_HIGH, category=cls.CATEGORY_MEMORY)
    rwx.process.pid, rwx.process.exe, rwx.process.comm = 7, "/tmp/stager", "stager"
    rwx.memory_threat.kind = memory_details_pb2.MEMORY_THREAT_KIND_WRITABLE_EXECUTABLE
    rwx.memory_threat.trigger = memory_details_pb2.MEMORY_SCAN_TRIGGER_SYSCALL
    rwx.memory_threat.regions.add(start=0x1000, end=0x2000, permissions="rwxp")
    jit = event_pb2.Event()
    jit.CopyFrom(rwx)
    jit.process.exe = "/usr/lib/jvm/java-17/bin/java"  # allowlisted by the rule: no match
    assert pipeline.handle_findings([rwx, jit]) == 2
    first, second = sink.events
    assert first.rule.id == "alpha.rwx_memory"
    assert [t.id for t in first.rule.techniques] == ["T1055", "T1620"]
    assert first.severity == cls.SEVERITY_HIGH  # the rule's ERROR priority
    assert not second.HasField("rule")
    assert second.severity == cls.SEVERITY_HIGH  # the detector's own judgement stays


# --- losses ---------------------------------------------------------------------------------------


def test_a_conversion_failure_is_a_decode_loss_not_a_lost_batch(
    pipeline: Pipeline, sink: Sink
) -> None:
    broken = exec_obs("/usr/bin/bash", "bash", (SOCK, SOCK, SOCK))
    assert isinstance(broken.detail, ExecDetail)
    broken.detail.stdio = ()  # type: ignore[assignment]
    good = obs(Kind.PTRACE, PtraceDetail(16, "PTRACE_ATTACH", 99, 0, 0))
    assert pipeline.handle_observations([broken, good]) == 1
    assert sink.losses == [(LossStage.DECODE, 1)]
    assert sink.events[0].rule.id == "alpha.ptrace_attach"


def test_an_event_the_outbox_refuses_is_an_outbox_loss(pipeline: Pipeline, sink: Sink) -> None:
    sink.refuse = "ptrace attach"  # the rendered output of the ptrace rule
    batch = [
        obs(Kind.PTRACE, PtraceDetail(16, "PTRACE_ATTACH", 99, 0, 0)),
        obs(Kind.CHMOD, ChmodDetail("f", "/tmp/f", 0o4755, -100, True, False, False)),
    ]
    assert pipeline.handle_observations(batch) == 1
    assert [e.rule.id for e in sink.events] == ["alpha.setuid_bit_set"]
    assert sink.losses == [(LossStage.OUTBOX, 1)]
    assert pipeline.stats().emit_errors == 1


def test_hooks_see_every_batch_and_cannot_lose_it(pipeline: Pipeline, sink: Sink) -> None:
    seen: list[int] = []

    def failing(batch: list[Observation]) -> None:
        raise RuntimeError("memscan bug")

    pipeline.add_hook(lambda batch: seen.append(len(batch)))
    pipeline.add_hook(failing)
    pipeline.handle_observations([obs(Kind.PTRACE, PtraceDetail(16, "PTRACE_ATTACH", 99, 0, 0))])
    assert seen == [1]
    assert len(sink.events) == 1


# --- reload ---------------------------------------------------------------------------------------

EXTRA_RULE = """
- rule: Memfd named payload
  id: site.memfd_payload
  desc: a memfd whose name says what it is
  condition: evt.kind = memfd_create and memfd.name startswith "payload"
  output: memfd %memfd.name by %proc.name
  priority: ERROR
  tags: [host, T1620]
"""
BROKEN_RULE = """
- rule: Broken
  id: site.broken
  desc: refers to a field that does not exist
  condition: evt.kind = memfd_create and memfd.nmae = x
  output: o
  priority: ERROR
"""


@dataclass
class Health:
    registry: SensorRegistry
    events: list[Event]


@pytest.fixture
def health() -> Health:
    events: list[Event] = []
    return Health(SensorRegistry(events.append), events)


def test_reload_adds_rules_and_a_bad_file_keeps_the_old_ones(
    tmp_path: Path, sink: Sink, health: Health
) -> None:
    extra = tmp_path / "site.yaml"
    extra.write_text("[]\n")
    engine = RuleEngine.default([extra])
    handle = health.registry.register("rules", mode="yaml")
    pipeline = Pipeline(engine, sink.emit_many, rules_health=handle)
    memfd = obs(Kind.MEMFD_CREATE, MemfdDetail("payload-1", 0), ret=3)
    assert pipeline.handle_observations([memfd]) == 0  # no rule yet

    extra.write_text(EXTRA_RULE)
    loaded_before = pipeline.rules_loaded_ns
    assert pipeline.reload_rules()
    assert pipeline.rules_loaded_ns >= loaded_before
    assert pipeline.handle_observations([memfd]) == 1
    assert sink.events[-1].rule.id == "site.memfd_payload"
    assert [t.id for t in sink.events[-1].rule.techniques] == ["T1620"]
    version = engine.ruleset.version

    extra.write_text(EXTRA_RULE + BROKEN_RULE)
    assert not pipeline.reload_rules()
    assert engine.ruleset.version == version  # the old rules stay in force
    assert pipeline.handle_observations([memfd]) == 1
    assert sink.events[-1].rule.id == "site.memfd_payload"
    snap = health.registry.snapshot("rules")
    assert snap.state is SensorState.DEGRADED
    (reason,) = snap.reasons
    assert "rules reload failed" in reason
    assert f"{extra}:" in reason
    assert "memfd.nmae" in reason
    degraded = health.events[-1].sensor_health
    assert degraded.sensor == "rules"
    assert degraded.state == int(SensorState.DEGRADED)

    extra.write_text(EXTRA_RULE)  # fixed: the next reload clears the note
    assert pipeline.reload_rules()
    assert health.registry.snapshot("rules").state is SensorState.HEALTHY
    assert pipeline.stats().reloads == 2
    assert pipeline.stats().reload_failures == 1


def test_reload_in_a_thread_does_not_stop_events(tmp_path: Path, sink: Sink) -> None:
    extra = tmp_path / "site.yaml"
    extra.write_text(EXTRA_RULE)
    engine = RuleEngine.default([extra])
    pipeline = Pipeline(engine, sink.emit_many)
    ptrace = obs(Kind.PTRACE, PtraceDetail(16, "PTRACE_ATTACH", 99, 0, 0))
    reloads = [threading.Thread(target=pipeline.reload_rules) for _ in range(3)]
    for t in reloads:
        t.start()
    for _ in range(200):
        pipeline.handle_observations([ptrace])
    for t in reloads:
        t.join(30)
    assert len(sink.events) == 200
    assert {e.rule.id for e in sink.events} == {"alpha.ptrace_attach"}
    assert pipeline.stats().reloads == 3


# --- the auth source's wiring ---------------------------------------------------------------------


def test_auth_source_follows_the_log_into_credential_stuffing(
    tmp_path: Path, engine: RuleEngine, sink: Sink, health: Health
) -> None:
    log = tmp_path / "auth.log"
    log.write_text("")
    config = AuthSection(
        source="file", log_path=log, state_directory=tmp_path / "state", window=timedelta(minutes=5)
    )
    source = AuthSource(config, Pipeline(engine, sink.emit_many), health.registry)
    asyncio.run(source.start())
    try:
        now = datetime.now(UTC).isoformat()
        with log.open("a") as f:
            for i in range(10):
                f.write(
                    f"{now} web-1 sshd[{900 + i}]: Failed password for invalid user u{i % 3}"
                    f" from 198.51.100.7 port {40000 + i} ssh2\n"
                )
        source.poll_once()
    finally:
        asyncio.run(source.stop())
    assert len(sink.events) == 10  # every failure is a finding; the 10th is the burst
    burst = sink.by_rule("alpha.credential_stuffing")
    assert burst.auth_event.failures_in_window == 10
    assert burst.auth_event.source.address == "198.51.100.7"
    assert {"T1110.001", "T1110.004"} <= {t.id for t in burst.rule.techniques}
    assert health.registry.snapshot("auth_log").state is SensorState.HEALTHY
    assert (tmp_path / "state" / "auth.follow.json").exists()
