"""Alpha's host telemetry, as root with real eBPF: the real `python -m alpha` process with a 2 s
`[telemetry] window`, a sealed Subscribe, and real actions in child processes (plain execs no rule
fires on, a file written and removed below the watched /dev/shm, a setuid call, a UDP connect to a
TEST-NET address, a loopback listener). The `host_telemetry` windows that cover them carry all 12
features of the ML schema, inside its domains, with the actions counted.

Ordering, not time, says when the actions have been counted: the sensor thread hands events to
the window counter in ring-buffer order, so once a later marker (a memfd exec, which a default
rule reports) is in the stream every earlier action is counted, and the first window that ends
after the marker was stored covers them all (alpha.sources.telemetry closes a window's counts
after taking its end time). With the fallback sensor (no eBPF), the windows name the features
nobody can count (`unmeasured`), and the `telemetry` sensor reports degraded.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto.pki import init_ca, issue_leaf, write_leaf
from ml import schema
from qsc.common.v1 import classification_pb2, event_pb2, network_details_pb2, pipeline_details_pb2
from tests.bpf.actions import MEMFD_CODE, SERVER_CODE, finish, killing, py
from tests.bpf.test_alpha_e2e import HOST, TD, SealedStream, start_alpha, stop_alpha

pytestmark = pytest.mark.root

Event = event_pb2.Event
EXECS = 5

SETUID_CODE = """
import os
os.setuid(os.getuid())    # root to root: a successful call of the setuid family
"""
UDP_CONNECT_CODE = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("192.0.2.77", 9))   # TEST-NET-1: a remote destination, and UDP sends nothing
s.close()
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("pki")
    ca = init_ca(base, TD)
    for role, host in [("alpha", HOST), ("cortex", "c1")]:
        write_leaf(issue_leaf(ca, role, host), base, ca.cert)
    return base


def is_window(e: Event) -> bool:
    return e.WhichOneof("detail") == "host_telemetry"


def features(e: Event) -> dict[str, float]:
    return {f.name: f.value for f in e.host_telemetry.features}


def duration_s(e: Event) -> float:
    t = e.host_telemetry
    return (t.window_end.ToNanoseconds() - t.window_start.ToNanoseconds()) / 1e9


@contextlib.contextmanager
def running_alpha(pki: Path, base: Path, **env: str) -> Iterator[SealedStream]:
    """A real Alpha with 2 s windows (and `env`), and a sealed stream of its events."""
    alpha = start_alpha(pki, base, env={"QSC_ALPHA_TELEMETRY__WINDOW": "2s", **env})
    stream: SealedStream | None = None
    try:
        stream = SealedStream(pki, alpha.port)
        yield stream
    finally:
        if stream is not None:
            stream.close()
        stop_alpha(alpha.proc)
        shutil.rmtree(base / "outbox", ignore_errors=True)
    assert alpha.proc.returncode == 0, alpha.output()


@pytest.fixture
def alpha_stream(pki: Path, tmp_path: Path) -> Iterator[SealedStream]:
    with running_alpha(pki, tmp_path / "alpha") as stream:
        yield stream


def test_host_telemetry_windows_count_what_the_sensors_saw(alpha_stream: SealedStream) -> None:
    stream = alpha_stream
    # A first window: the sensors are attached and windows are being closed.
    first = stream.wait_for(is_window, "a first host_telemetry window", timeout=30)
    started_ns = first.host_telemetry.window_end.ToNanoseconds()

    for _ in range(EXECS):
        subprocess.run(["/bin/true"], check=True)  # no rule fires on these
    scratch = Path("/dev/shm") / f"qsc-telemetry-{uuid.uuid4().hex}"
    try:
        finish(py(f"open({str(scratch)!r}, 'w').write('qsc')"))
    finally:
        scratch.unlink(missing_ok=True)  # a second change of a watched path
    finish(py(SETUID_CODE))
    finish(py(UDP_CONNECT_CODE))
    listener = py(SERVER_CODE, 20)
    with killing(listener):
        assert listener.stdout is not None
        port = int(listener.stdout.readline())
        listen = stream.wait_for(
            lambda e: (
                e.WhichOneof("detail") == "network_connection"
                and e.network_connection.operation
                == network_details_pb2.CONNECTION_OPERATION_LISTEN
                and e.network_connection.local.port == port
            ),
            "the listener's event from the sockets source",
        )
    marker = py(MEMFD_CODE)
    with killing(marker):
        seen = stream.wait_for(
            lambda e: e.process.pid == marker.pid and e.rule.id == "alpha.memfd_exec",
            "the memfd exec marker",
        )
    counted_by_ns = max(seen.observed_time.ToNanoseconds(), listen.observed_time.ToNanoseconds())
    last = stream.wait_for(
        lambda e: is_window(e) and e.host_telemetry.window_end.ToNanoseconds() > counted_by_ns,
        "a window ending after the marker",
        timeout=30,
    )

    windows = [e for e in stream.events if is_window(e)]
    covering = [
        e
        for e in windows
        if started_ns <= e.host_telemetry.window_start.ToNanoseconds()
        and e.host_telemetry.window_end.ToNanoseconds()
        <= last.host_telemetry.window_end.ToNanoseconds()
    ]
    assert covering
    assert covering[-1].id == last.id

    # Every window: the 12 features of the schema, in order, each inside its domain.
    for e in windows:
        t = e.host_telemetry
        assert [f.name for f in t.features] == list(schema.FEATURES)
        assert len(t.features) == 12
        for name, value in features(e).items():
            assert schema.DOMAINS[name].allows(value), (name, value)
        assert t.feature_schema_version == schema.SCHEMA_VERSION
        assert t.host == HOST == e.guardian.host
        assert list(t.unmeasured) == []  # eBPF, sockets and sshd log all run
        assert e.severity == classification_pb2.SEVERITY_INFO
        assert e.category == classification_pb2.CATEGORY_ANOMALY
        assert not e.rule.id
        assert features(e)["process_count"] > 0
        assert 0 < features(e)["memory_percent"] <= 100
        assert duration_s(e) > 0
    # Windows follow one another without a gap.
    for before, after in itertools.pairwise(windows):
        assert after.host_telemetry.window_start == before.host_telemetry.window_end

    def total(name: str) -> float:
        return sum(features(e)[name] for e in covering)

    execs = sum(round(features(e)["exec_rate"] * duration_s(e)) for e in covering)
    assert execs >= EXECS + 5 + 1  # the five, five python children, the marker's memfd exec
    assert total("file_changes") >= 2  # created, then removed
    assert total("privilege_changes") >= 1
    assert total("distinct_destination_addresses") >= 1
    assert total("new_listening_ports") >= 1
    assert sum(e.host_telemetry.events_counted for e in covering) >= execs


def test_fallback_sensor_windows_name_what_they_cannot_count(pki: Path, tmp_path: Path) -> None:
    with running_alpha(pki, tmp_path / "alpha", QSC_ALPHA_SENSOR__DISABLE_EBPF="1") as stream:
        first = stream.wait_for(is_window, "a first host_telemetry window", timeout=30)
        started_ns = first.host_telemetry.window_end.ToNanoseconds()
        sleepers = [subprocess.Popen(["sleep", "1"]) for _ in range(3)]  # seen by either fallback
        with killing(*sleepers):
            for p in sleepers:
                p.wait(timeout=20)
        window = stream.wait_for(
            lambda e: (
                is_window(e)
                and e.host_telemetry.window_start.ToNanoseconds() >= started_ns
                and features(e)["exec_rate"] > 0
            ),
            "a window counting the fallback's execs",
            timeout=30,
        )
        health = stream.wait_for(
            lambda e: (
                e.WhichOneof("detail") == "sensor_health"
                and e.sensor_health.sensor == "telemetry"
                and e.sensor_health.state == pipeline_details_pb2.SENSOR_STATE_DEGRADED
            ),
            "the telemetry sensor degraded",
        )
    t = window.host_telemetry
    assert [f.name for f in t.features] == list(schema.FEATURES)
    for name, value in features(window).items():
        assert schema.DOMAINS[name].allows(value), (name, value)
    # No eBPF: the watched-path changes are nobody's to count; execs still are.
    assert "file_changes" in t.unmeasured
    assert "exec_rate" not in t.unmeasured
    assert features(window)["file_changes"] == 0.0
    assert any("file_changes" in r for r in health.sensor_health.reasons)
