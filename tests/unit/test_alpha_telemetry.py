"""alpha.telemetry and its source: each feature counted from the right event kinds, distinct
destinations and listeners counted once, windows reset, /proc gauges from a fake /proc, every
value inside the ML service's domains (ml.schema, which Alpha may not import), the event a window
becomes, the pipeline's observer and measurement paths, and the `[telemetry]` configuration."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from alpha.config import load_alpha_config
from alpha.pipeline import Pipeline
from alpha.rules import RuleEngine
from alpha.sensors.model import UNKNOWN_STDIO, ExecDetail, Kind, Observation, SetIdDetail
from alpha.sources.telemetry import (
    TelemetrySource,
    switched_off_features,
    unobserved_features,
    window_to_event,
)
from alpha.telemetry import (
    FEATURE_SCHEMA_VERSION,
    Gauges,
    GaugeSampler,
    TelemetryConfig,
    WindowCounter,
    WindowCounts,
    fit,
    measure,
    parse_cpu_times,
    parse_memory_percent,
    parse_net_dev,
)
from mesh.errors import ConfigError
from mesh.guardian.sensors import SensorRegistry, SensorState
from mesh.host_features import FEATURES, FLOAT32_MAX
from ml import schema
from qsc.common.v1 import auth_details_pb2 as auth
from qsc.common.v1 import classification_pb2 as cls
from qsc.common.v1 import event_pb2, file_details_pb2, process_details_pb2
from qsc.common.v1 import network_details_pb2 as net

Event = event_pb2.Event

# --- event builders ---------------------------------------------------------------------------


def exec_(*, setuid: bool = False) -> Event:
    e = Event()
    e.process_exec.filename = "/usr/bin/true"
    e.process_exec.setuid_exec = setuid
    return e


def privilege(result: int = 0) -> Event:
    e = Event()
    e.privilege_change.call = process_details_pb2.PRIVILEGE_CALL_SETUID
    e.privilege_change.result = result
    return e


def opened(
    access: int = file_details_pb2.ACCESS_MODE_WRITE,
    *,
    result: int = 3,
    created: bool = False,
    truncated: bool = False,
) -> Event:
    e = Event()
    e.file_access.path = "/etc/passwd"
    e.file_access.access = access  # type: ignore[assignment]
    e.file_access.result = result
    e.file_access.created = created
    e.file_access.truncated = truncated
    return e


def changed(kind: str, result: int = 0) -> Event:
    e = Event()
    detail = getattr(e, kind)
    detail.result = result
    return e


def connection(op: int, address: str = "", port: int = 0, *, proto: int = 1) -> Event:
    e = Event()
    c = e.network_connection
    c.operation = op  # type: ignore[assignment]
    c.protocol = proto  # type: ignore[assignment]
    if op == net.CONNECTION_OPERATION_LISTEN:
        c.local.address, c.local.port = address, port
    else:
        c.local.address, c.local.port = "10.0.0.5", 40000
        c.remote.address, c.remote.port = address, port
    return e


def connect(address: str, port: int = 443) -> Event:
    return connection(net.CONNECTION_OPERATION_CONNECT, address, port)


def listen(address: str, port: int, proto: int = 1) -> Event:
    return connection(net.CONNECTION_OPERATION_LISTEN, address, port, proto=proto)


def login(outcome: int) -> Event:
    e = Event()
    e.auth_event.service = "sshd"
    e.auth_event.outcome = outcome  # type: ignore[assignment]
    return e


def counted(*events: Event) -> WindowCounts:
    counter = WindowCounter()
    counter.observe(events)
    return counter.close()


# --- the feature list against the ML service's schema -------------------------------------------


def test_features_and_version_are_the_ml_schemas() -> None:
    assert FEATURES == schema.FEATURES
    assert FEATURE_SCHEMA_VERSION == schema.SCHEMA_VERSION
    assert FLOAT32_MAX == schema.FLOAT32_MAX
    assert len(FEATURES) == 12


# --- counting, kind by kind --------------------------------------------------------------------


def test_execs_count_every_exec_and_setuid_execs_are_privilege_changes() -> None:
    c = counted(exec_(), exec_(), exec_(setuid=True))
    assert (c.execs, c.privilege_changes, c.events) == (3, 1, 3)


def test_privilege_changes_count_successful_setid_calls_only() -> None:
    c = counted(privilege(0), privilege(0), privilege(-1))  # -EPERM: nothing changed
    assert c.privilege_changes == 2
    assert c.execs == 0


def test_file_changes_count_writes_and_successful_changes_not_reads() -> None:
    c = counted(
        opened(file_details_pb2.ACCESS_MODE_WRITE),
        opened(file_details_pb2.ACCESS_MODE_READ_WRITE),
        opened(file_details_pb2.ACCESS_MODE_READ, created=True),  # O_RDONLY|O_CREAT creates
        opened(file_details_pb2.ACCESS_MODE_READ, truncated=True),
        opened(file_details_pb2.ACCESS_MODE_READ),  # a read of /etc/shadow changes nothing
        opened(file_details_pb2.ACCESS_MODE_WRITE, result=-13),  # EACCES: nothing written
        changed("permission_change"),
        changed("ownership_change"),
        changed("file_delete"),
        changed("file_rename"),
        changed("file_link"),
        changed("file_delete", result=-2),  # ENOENT
        changed("permission_change", result=-1),
    )
    assert c.file_changes == 4 + 5
    assert c.events == 13


def test_distinct_destinations_are_distinct_remote_addresses() -> None:
    c = counted(
        connect("203.0.113.9", 443),
        connect("203.0.113.9", 80),  # same host, another port
        connect("::ffff:203.0.113.9", 22),  # the same address, IPv4-mapped
        connect("198.51.100.7"),
        connect("2001:db8::1"),
        connect("127.0.0.1"),  # not remote
        connect("::1"),
        connect("0.0.0.0"),
        connect(""),  # no address
        connect("/run/dbus/system_bus_socket"),  # a unix socket (`net_unix`): no host
        connect("fe80::1%eth0"),  # link-local: another host on the link
        connection(net.CONNECTION_OPERATION_ACCEPT, "192.0.2.1"),  # inbound: not a destination
    )
    assert c.destinations == 4
    assert c.listeners == 0


def test_new_listening_ports_count_each_listener_once() -> None:
    c = counted(
        listen("0.0.0.0", 8080),
        listen("0.0.0.0", 8080),
        listen("::", 8080),  # another socket on the same port
        listen("0.0.0.0", 8080, proto=2),
        listen("127.0.0.1", 9000),
    )
    assert c.listeners == 4
    assert c.destinations == 0


def test_logins_by_outcome() -> None:
    c = counted(
        login(auth.AUTH_OUTCOME_FAILED),
        login(auth.AUTH_OUTCOME_FAILED),
        login(auth.AUTH_OUTCOME_FAILED),
        login(auth.AUTH_OUTCOME_ACCEPTED),
        login(auth.AUTH_OUTCOME_UNSPECIFIED),
    )
    assert (c.failed_logins, c.successful_logins) == (3, 1)


def test_other_kinds_are_counted_as_events_only() -> None:
    e1, e2, e3 = Event(), Event(), Event()
    e1.ptrace.result = 0
    e2.memfd_create.name = "x"
    e3.port_scan.distinct_ports = 100
    assert counted(e1, e2, e3) == WindowCounts(events=3)


def test_close_resets_the_window() -> None:
    counter = WindowCounter()
    counter.observe([exec_(), connect("203.0.113.9"), listen("0.0.0.0", 22)])
    first = counter.close()
    assert (first.execs, first.destinations, first.listeners) == (1, 1, 1)
    assert counter.close() == WindowCounts()
    counter.observe([connect("203.0.113.9"), listen("0.0.0.0", 22)])
    again = counter.close()
    assert (again.destinations, again.listeners, again.events) == (1, 1, 2)  # counted anew


# --- gauges from a fake /proc ------------------------------------------------------------------

NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo ...
    lo: {lo} 10 0 0 0 0 0 0 {lo} 10 0 0 0 0 0 0
  eth0: {rx0} 100 0 0 0 0 0 0 {tx0} 90 0 0 0 0 0 0
  eth1: {rx1} 100 0 0 0 0 0 0 {tx1} 90 0 0 0 0 0 0
"""


@dataclass
class FakeProc:
    root: Path
    processes: int = 3
    cpu: list[int] = field(default_factory=lambda: [100, 0, 50, 850, 0, 0, 0, 0, 0, 0])

    def write(
        self,
        *,
        available_kb: int = 600,
        lo: int = 0,
        eth0: tuple[int, int] = (0, 0),
        eth1: tuple[int, int] = (0, 0),
    ) -> None:
        self.root.mkdir(exist_ok=True)
        (self.root / "stat").write_text(
            "cpu  " + " ".join(map(str, self.cpu)) + "\ncpu0 1 2 3 4\nintr 5\n"
        )
        (self.root / "meminfo").write_text(
            f"MemTotal:        1000 kB\nMemFree:  100 kB\nMemAvailable:    {available_kb} kB\n"
        )
        (self.root / "net").mkdir(exist_ok=True)
        (self.root / "net" / "dev").write_text(
            NET_DEV.format(lo=lo, rx0=eth0[0], tx0=eth0[1], rx1=eth1[0], tx1=eth1[1])
        )
        for pid in range(1, self.processes + 1):
            (self.root / str(pid)).mkdir(exist_ok=True)
        (self.root / "self").mkdir(exist_ok=True)  # not a process directory


def test_parsers_read_proc_formats() -> None:
    assert parse_cpu_times("cpu  10 0 10 70 10 0 0 0 5 0\n") == (20, 100)  # iowait is not busy
    assert parse_cpu_times("intr 1\n") is None
    assert parse_memory_percent("MemTotal: 200 kB\nMemAvailable: 50 kB\n") == 75.0
    assert parse_memory_percent("MemTotal: 200 kB\n") is None  # before Linux 3.14
    dev = parse_net_dev(NET_DEV.format(lo=9, rx0=1, tx0=2, rx1=3, tx1=4))
    assert dev == {"eth0": (1, 2), "eth1": (3, 4)}


def test_gauges_over_a_window(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path / "proc")
    proc.write(available_kb=600, lo=1000, eth0=(5000, 7000), eth1=(100, 100))
    sampler = GaugeSampler(proc.root)
    # Over the window: 300 jiffies, 75 of them busy; memory 40% then 60% then 80%.
    proc.cpu = [150, 0, 75, 1075, 0, 0, 0, 0, 0, 0]
    proc.write(available_kb=400, lo=99999, eth0=(5600, 7300), eth1=(40, 60))  # eth1 reset
    sampler.sample_memory()
    proc.processes = 5
    proc.write(available_kb=200, lo=99999, eth0=(5600, 7300), eth1=(40, 60))
    g = sampler.close()
    assert g.cpu_percent == pytest.approx(25.0)
    assert g.memory_percent == pytest.approx(60.0)  # the mean of 40, 60 and 80
    assert g.process_count == 5
    assert (g.bytes_in, g.bytes_out) == (600 + 40, 300 + 60)  # loopback left out
    # The next window starts from these readings.
    proc.cpu = [150, 0, 75, 1175, 0, 0, 0, 0, 0, 0]
    proc.write(available_kb=200, eth0=(5600, 7300), eth1=(40, 60))
    g2 = sampler.close()
    assert (g2.cpu_percent, g2.bytes_in, g2.bytes_out) == (0.0, 0, 0)
    assert g2.memory_percent == pytest.approx(80.0)


def test_unreadable_proc_gives_no_gauges(tmp_path: Path) -> None:
    g = GaugeSampler(tmp_path / "missing").close()
    assert g == Gauges()
    window = measure(WindowCounts(), g, start_ns=0, end_ns=1, duration_s=1.0)
    assert set(window.unmeasured) == {
        "cpu_percent",
        "memory_percent",
        "process_count",
        "network_bytes_out",
        "network_bytes_in",
    }
    assert all(v == 0.0 for _, v in window.features)


# --- the window: every feature, in its domain ----------------------------------------------------


def test_measure_names_every_feature_in_schema_order() -> None:
    counts = WindowCounts(
        events=40,
        execs=30,
        privilege_changes=2,
        file_changes=5,
        failed_logins=7,
        successful_logins=1,
        destinations=4,
        listeners=1,
    )
    gauges = Gauges(
        cpu_percent=12.5, memory_percent=40.0, process_count=150, bytes_out=10, bytes_in=20
    )
    window = measure(counts, gauges, start_ns=1, end_ns=2, duration_s=60.0)
    assert [n for n, _ in window.features] == list(schema.FEATURES)
    assert dict(window.features) == {
        "cpu_percent": 12.5,
        "memory_percent": 40.0,
        "network_bytes_out": 10.0,
        "network_bytes_in": 20.0,
        "failed_logins": 7.0,
        "process_count": 150.0,
        "exec_rate": 0.5,
        "distinct_destination_addresses": 4.0,
        "file_changes": 5.0,
        "successful_logins": 1.0,
        "new_listening_ports": 1.0,
        "privilege_changes": 2.0,
    }
    assert window.unmeasured == ()
    assert window.events == 40


@pytest.mark.parametrize(
    "value", [-5.0, -0.0, 0.0, 1e-300, 99.999, 100.0, 100.0001, 1e39, math.inf, -math.inf, math.nan]
)
@pytest.mark.parametrize("name", FEATURES)
def test_fit_keeps_every_value_in_the_ml_domain(name: str, value: float) -> None:
    fitted = fit(name, value)
    assert schema.DOMAINS[name].allows(fitted), (name, value, fitted)
    if schema.DOMAINS[name].allows(value):
        assert fitted == value  # an in-domain value is kept as it is


def test_extreme_windows_stay_in_domain() -> None:
    huge = 10**40
    counts = WindowCounts(
        events=huge, execs=huge, file_changes=huge, destinations=huge, failed_logins=huge
    )
    gauges = Gauges(
        cpu_percent=100.00000001,
        memory_percent=-1e-9,
        process_count=huge,
        bytes_out=huge,
        bytes_in=0,
    )
    for duration in (1e-9, 0.0):
        window = measure(counts, gauges, start_ns=0, end_ns=1, duration_s=duration)
        for name, value in window.features:
            assert schema.DOMAINS[name].allows(value), (name, value)
    assert "exec_rate" in window.unmeasured  # a window of no length has no rate


def test_unobserved_features_are_zero_and_named() -> None:
    counts = WindowCounts(failed_logins=3, successful_logins=1)
    window = measure(
        counts,
        Gauges(1.0, 2.0, 3, 4, 5),
        start_ns=0,
        end_ns=1,
        duration_s=1.0,
        unobserved=("failed_logins", "successful_logins"),
    )
    assert window.unmeasured == ("failed_logins", "successful_logins")
    assert window.value("failed_logins") == 0.0


# --- the event ---------------------------------------------------------------------------------


def test_window_to_event() -> None:
    window = measure(
        WindowCounts(events=9, execs=6),
        Gauges(12.0, 40.0, 150, 10, 20),
        start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_060_000_000_000,
        duration_s=60.0,
        unobserved=("new_listening_ports",),
    )
    event = window_to_event(window, "web-1")
    t = event.host_telemetry
    assert event.WhichOneof("detail") == "host_telemetry"
    assert t.host == "web-1"
    assert t.window_start.ToNanoseconds() == 1_700_000_000_000_000_000
    assert t.window_end.ToNanoseconds() == event.time.ToNanoseconds() == 1_700_000_060_000_000_000
    assert t.feature_schema_version == schema.SCHEMA_VERSION
    assert [f.name for f in t.features] == list(schema.FEATURES)
    assert {f.name: f.value for f in t.features}["exec_rate"] == pytest.approx(0.1)
    assert t.events_counted == 9
    assert list(t.unmeasured) == ["new_listening_ports"]
    assert "9 events" in event.summary
    # What the ML service is asked with: names and values in its own order and domains.
    names = [f.name for f in t.features]
    values = [f.value for f in t.features]
    order = schema.column_order(schema.FEATURES, names)
    assert all(
        schema.DOMAINS[n].allows(values[i]) for n, i in zip(schema.FEATURES, order, strict=True)
    )


# --- the pipeline's observer and measurement paths ---------------------------------------------


class Outbox:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, events: list[Event]) -> object:
        self.events.extend(events)
        return None


def observation(kind: Kind, detail: object, pid: int = 4242) -> Observation:
    return Observation(
        kind=kind,
        time_ns=1_700_000_000_000_000_000,
        boot_ns=1,
        pid=pid,
        tid=pid,
        ppid=1,
        uid=1000,
        gid=1000,
        euid=1000,
        comm="true",
        syscall="execve" if kind is Kind.EXEC else "setuid",
        ret=0,
        process=None,
        detail=detail,  # type: ignore[arg-type]
        source="ebpf",
    )


def harmless_exec(pid: int) -> Observation:
    detail = ExecDetail(
        filename="/usr/bin/true",
        exe="/usr/bin/true",
        args=("true",),
        args_truncated=False,
        cwd="/",
        dirfd=-100,
        at_flags=0,
        from_memfd=False,
        exe_deleted=False,
        setuid_exec=False,
        stdio=UNKNOWN_STDIO,
        old_pid=pid,
    )
    return observation(Kind.EXEC, detail, pid)


def test_the_pipeline_hands_unmatched_events_and_findings_to_observers() -> None:
    outbox = Outbox()
    pipeline = Pipeline(RuleEngine.default(), outbox)  # unmatched sensor events are dropped
    counter = WindowCounter()
    pipeline.add_observer(counter.observe)
    pipeline.handle_observations([harmless_exec(10), harmless_exec(11)])
    pipeline.handle_observations([observation(Kind.SETID, SetIdDetail(ids=(0,)))])
    pipeline.handle_findings([login(auth.AUTH_OUTCOME_FAILED)])
    assert pipeline.stats().unmatched_dropped >= 2  # no rule fired on the plain execs
    counts = counter.close()
    assert counts.execs == 2
    assert counts.privilege_changes == 1
    assert counts.failed_logins == 1
    assert counts.events == 4


def test_a_failing_observer_costs_no_event() -> None:
    outbox = Outbox()
    pipeline = Pipeline(RuleEngine.default(), outbox)

    def broken(_events: object) -> None:
        raise RuntimeError("observer bug")

    pipeline.add_observer(broken)
    assert pipeline.handle_findings([login(auth.AUTH_OUTCOME_FAILED)]) == 1
    assert len(outbox.events) == 1


def test_measurements_skip_rules_and_observers() -> None:
    outbox = Outbox()
    pipeline = Pipeline(RuleEngine.default(), outbox)
    counter = WindowCounter()
    pipeline.add_observer(counter.observe)
    window = measure(WindowCounts(), Gauges(1.0, 2.0, 3, 4, 5), start_ns=0, end_ns=1, duration_s=1)
    assert pipeline.handle_measurements([window_to_event(window, "h")]) == 1
    (event,) = outbox.events
    assert event.severity == cls.SEVERITY_INFO
    assert event.category == cls.CATEGORY_ANOMALY
    assert not event.HasField("rule")
    assert counter.close() == WindowCounts()  # a window does not count itself
    assert pipeline.stats().measurements == 1
    assert pipeline.stats().emitted == 1


# --- the source --------------------------------------------------------------------------------


def test_source_emits_windows_and_reports_unmeasured_features() -> None:
    outbox = Outbox()
    health: list[Event] = []
    registry = SensorRegistry(health.append)
    pipeline = Pipeline(RuleEngine.default(), outbox)
    unobserved: tuple[str, ...] = ()
    source = TelemetrySource(
        TelemetryConfig(), pipeline, registry, "web-1", unobserved=lambda: unobserved
    )
    source.handle = registry.register(source.name, mode="window")
    pipeline.handle_findings([login(auth.AUTH_OUTCOME_ACCEPTED)])
    gauges = Gauges(1.0, 2.0, 3, 4, 5)
    source.emit(measure(source.counter.close(), gauges, start_ns=0, end_ns=1, duration_s=1.0))
    assert registry.snapshot("telemetry").state is SensorState.HEALTHY
    assert registry.snapshot("telemetry").events == 1
    window_event = outbox.events[-1]
    assert {f.name: f.value for f in window_event.host_telemetry.features}[
        "successful_logins"
    ] == 1.0
    unobserved = ("failed_logins", "successful_logins")
    source.emit(
        measure(
            source.counter.close(),
            gauges,
            start_ns=1,
            end_ns=2,
            duration_s=1.0,
            unobserved=unobserved,
        )
    )
    snap = registry.snapshot("telemetry")
    assert snap.state is SensorState.DEGRADED
    assert snap.reasons == ("not measured: failed_logins, successful_logins",)
    assert source.windows == 2

    # The same features with [auth] switched off by configuration: unmeasured, not degraded.
    source.switched_off = switched_off_features(network=True, auth=False)
    source.emit(
        measure(
            source.counter.close(),
            gauges,
            start_ns=2,
            end_ns=3,
            duration_s=1.0,
            unobserved=unobserved,
        )
    )
    assert registry.snapshot("telemetry").state is SensorState.HEALTHY
    assert list(outbox.events[-1].host_telemetry.unmeasured) == list(unobserved)
    assert switched_off_features(network=False, auth=True) == {"new_listening_ports"}


def test_unobserved_features_follow_the_sources() -> None:
    # No syscall sensor at all (a pinned fallback refused): nothing it counts is measured.
    assert unobserved_features(None, network=False, auth=False) == (
        "exec_rate",
        "file_changes",
        "distinct_destination_addresses",
        "new_listening_ports",
        "privilege_changes",
        "failed_logins",
        "successful_logins",
    )
    # The socket poller sees connects and listeners without the eBPF sensor.
    assert unobserved_features(None, network=True, auth=True) == (
        "exec_rate",
        "file_changes",
        "privilege_changes",
    )


# --- configuration -----------------------------------------------------------------------------


def test_telemetry_config_defaults_and_overrides(tmp_path: Path) -> None:
    assert TelemetryConfig().enabled is True
    assert TelemetryConfig().window.total_seconds() == 60
    with pytest.raises(ConfigError):
        TelemetryConfig(window=TelemetryConfig().window * 0)
    with pytest.raises(ConfigError):
        TelemetryConfig(window=TelemetryConfig().window * 60 * 25)
    toml = tmp_path / "alpha.toml"
    toml.write_text(
        '[server.tls]\ncert = "a.crt"\nkey = "a.key"\nca = "ca.crt"\n\n'
        f'[outbox]\ndirectory = "{tmp_path}/outbox"\n\n'
        '[telemetry]\nwindow = "2s"\n'
    )
    assert load_alpha_config(toml, env={}).telemetry.window.total_seconds() == 2
    env = {"QSC_ALPHA_TELEMETRY__ENABLED": "false"}
    assert load_alpha_config(toml, env=env).telemetry.enabled is False
