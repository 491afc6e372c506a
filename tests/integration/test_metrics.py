"""Every component's Prometheus endpoint (`[metrics]`, mesh.metrics), scraped over HTTP from
real processes: `python -m alpha|beta|cortex|ml` on 127.0.0.1 with metrics on 127.0.0.1:0 (the
bound port is read from the `metrics serving` log line). Each test asserts the families the
component promises and that a counter moves after real activity: a GetStatus or Score call
over mTLS, processes exec'ed on the host (Alpha), a file changed under FIM (Beta), events
streamed from Alpha and stored (Cortex).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from crypto.keyring import KeyManager
from crypto.pki import init_ca, issue_leaf, write_leaf
from mesh.channel import ChannelConfig, open_channel
from mesh.config import TlsFiles
from qsc.guardian.v1 import guardian_service_pb2 as gpb
from qsc.guardian.v1 import guardian_service_pb2_grpc as gpb_grpc

HOST = "127.0.0.1"
TD = "metrics.test"
ROOT = Path(__file__).resolve().parents[2]
CHILD_ENV = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'proto'}"}
T = TypeVar("T")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

COMMON = """
[server]
listen = "127.0.0.1:0"
shutdown_grace = "1s"
[server.tls]
cert = "{pki}/{role}-{host}.crt"
key = "{pki}/{role}-{host}.key"
ca = "{pki}/ca.crt"
[log]
level = "info"
format = "json"
[metrics]
listen = "127.0.0.1:0"
"""
GUARDIAN = """
[outbox]
directory = "{base}/outbox"
[stream]
heartbeat_interval = "200ms"
"""
ALPHA = """
[sensor]
disable_ebpf = true
[rules]
emit_unmatched = true
[memscan]
interval = "1h"
initial_delay = "1h"
[network]
enabled = false
[auth]
enabled = false
[telemetry]
enabled = false
"""
BETA = """
[keys]
directory = "{base}/keys"
[state]
directory = "{base}/state"
[fim]
baseline = "{base}/state/fim-baseline.qsc"
[[fim.paths]]
path = "{base}/etc"
[heal]
vault_directory = "{base}/vault"
"""
CORTEX = """
[store]
directory = "{base}/store"
synchronous = "NORMAL"
[keyring]
directory = "{base}/keys"
[ingest]
heartbeat_interval = "200ms"
idle_timeout = "2s"
reconnect_initial = "50ms"
reconnect_max = "300ms"
[[guardians]]
id = "alpha-{host}"
address = "{host}:{alpha_port}"
role = "alpha"
host = "{host}"
"""
ML = """
[model]
directory = "{models}"
keyring = "{keys}"
"""

SHARED_FAMILIES = {
    "qsc_build_info",
    "qsc_grpc_server_handled_total",
    "qsc_grpc_server_handling_seconds",
    "qsc_transport_calls_total",
    "qsc_transport_classical_connections_total",
    "qsc_grpc_server_open_streams",
    "process_cpu_seconds_total",
}
GUARDIAN_FAMILIES = {
    "qsc_guardian_events_total",
    "qsc_guardian_outbox_depth",
    "qsc_guardian_outbox_bytes",
    "qsc_guardian_outbox_lost_events_total",
    "qsc_guardian_sensor_lost_events_total",
    "qsc_guardian_sensor_events_total",
    "qsc_guardian_sensor_state",
}


def until(condition: Callable[[], T | None], timeout: float = 15.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.05)


class Component:
    """`python -m MODULE ARGS --config C --port-file P` with metrics on; its JSON log lines."""

    def __init__(self, name: str, argv: list[str], config: Path, base: Path) -> None:
        self.name = name
        self.port_file = base / f"{name}.port"
        self.lines: list[str] = []
        argv = [*argv, "--config", str(config), "--port-file", str(self.port_file)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *argv],
            env=CHILD_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def _log(self) -> str:
        return f"{self.name} said:\n" + "\n".join(self.lines[-40:])

    def ports(self, timeout: float = 45.0) -> tuple[int, int]:
        """(gRPC port, metrics port), once the component listens on both."""

        def ready() -> tuple[int, int] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}; {self._log()}")
            if not self.port_file.exists():
                return None
            for line in list(self.lines):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("message") == "metrics serving":
                    return int(self.port_file.read_text()), int(record["port"])
            return None

        try:
            return until(ready, timeout, f"{self.name} to listen")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {self._log()}") from None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
        finally:
            self._reader.join(5)


def scrape(port: int) -> tuple[set[str], Samples]:
    """The sample names and values of `http://127.0.0.1:port/metrics`."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    names: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        # A family without samples yet (no labels seen) still counts as exported.
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
        for s in family.samples:
            names.add(s.name)
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return names, samples


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= set(lbl))


def tls(pki: Path, role: str) -> TlsFiles:
    return TlsFiles(pki / f"{role}-{HOST}.crt", pki / f"{role}-{HOST}.key", pki / "ca.crt")


async def _get_status(pki: Path, port: int) -> gpb.GetStatusResponse:
    channel = open_channel(ChannelConfig(target=f"{HOST}:{port}", tls=tls(pki, "cortex")))
    try:
        stub = gpb_grpc.GuardianServiceStub(channel)
        return await stub.GetStatus(gpb.GetStatusRequest(), timeout=10)
    finally:
        await channel.close(None)


def get_status(pki: Path, port: int) -> gpb.GetStatusResponse:
    return asyncio.run(_get_status(pki, port))


@dataclass
class Mesh:
    pki: Path
    base: Path
    alpha: Component
    beta: Component
    ml: Component
    cortex: Component
    ports: dict[str, tuple[int, int]]


def _write(base: Path, name: str, text: str) -> Path:
    path = base / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    from tests.integration.ml_harness import train_models

    base = tmp_path_factory.mktemp("metrics")
    pki = base / "pki"
    ca = init_ca(pki, TD)
    for role in ("alpha", "beta", "cortex", "ml"):
        write_leaf(issue_leaf(ca, role, HOST, ips=[HOST]), pki, ca.cert)
    dirs = {name: base / name for name in ("alpha", "beta", "cortex", "ml")}
    for d in dirs.values():
        d.mkdir(mode=0o700)
    common = {"pki": pki, "host": HOST}

    # Beta: a keyring, a watched directory and its sealed baseline.
    (dirs["beta"] / "etc").mkdir()
    (dirs["beta"] / "etc" / "app.conf").write_text("listen = 443\n")
    KeyManager.create(dirs["beta"] / "keys", "beta")
    beta_cfg = _write(
        dirs["beta"],
        "beta",
        (COMMON + GUARDIAN + BETA).format(role="beta", base=dirs["beta"], **common),
    )
    subprocess.run(
        [sys.executable, "-m", "beta", "baseline", "init", "--config", str(beta_cfg)],
        env=CHILD_ENV,
        check=True,
        capture_output=True,
    )
    alpha_cfg = _write(
        dirs["alpha"],
        "alpha",
        (COMMON + GUARDIAN + ALPHA).format(role="alpha", base=dirs["alpha"], **common),
    )
    started: list[Component] = []
    try:
        alpha = Component("alpha", ["alpha"], alpha_cfg, dirs["alpha"])
        started.append(alpha)
        beta = Component("beta", ["beta", "run"], beta_cfg, dirs["beta"])
        started.append(beta)
        models = train_models(dirs["ml"])  # while the guardians start
        ml_cfg = _write(
            dirs["ml"],
            "ml",
            (COMMON + ML).format(role="ml", models=models.directory, keys=models.keyring, **common),
        )
        ml = Component("ml", ["ml", "serve"], ml_cfg, dirs["ml"])
        started.append(ml)
        ports = {"alpha": alpha.ports()}
        KeyManager.create(dirs["cortex"] / "keys", "cortex")
        cortex_cfg = _write(
            dirs["cortex"],
            "cortex",
            (COMMON + CORTEX).format(
                role="cortex", base=dirs["cortex"], alpha_port=ports["alpha"][0], **common
            ),
        )
        cortex = Component("cortex", ["cortex", "run"], cortex_cfg, dirs["cortex"])
        started.append(cortex)
        ports.update(beta=beta.ports(), ml=ml.ports(), cortex=cortex.ports())
        yield Mesh(pki, base, alpha, beta, ml, cortex, ports)
    finally:
        for component in reversed(started):
            component.stop()


def test_alpha_exports_events_losses_outbox_and_rpcs(mesh: Mesh) -> None:
    grpc_port, port = mesh.ports["alpha"]
    names, before = scrape(port)
    assert names >= SHARED_FAMILIES | GUARDIAN_FAMILIES
    assert before[("qsc_build_info", (("component", "alpha"), ("version", "0.1.0")))] == 1
    # The stages the sensor registry counts losses in, for the syscall sensor.
    stages = {
        dict(lbl)["stage"] for n, lbl in before if n == "qsc_guardian_sensor_lost_events_total"
    }
    assert {"ring_buffer", "kernel_queue", "decode", "user_queue", "outbox"} <= stages

    get_status(mesh.pki, grpc_port)
    true = shutil.which("true") or "/bin/true"
    method = {"grpc_service": "qsc.guardian.v1.GuardianService", "grpc_method": "GetStatus"}

    def moved() -> Samples | None:
        subprocess.run([true], check=True)  # an exec the sensor sees; emitted (emit_unmatched)
        _, after = scrape(port)
        events = total(after, "qsc_guardian_events_total")
        if events > total(before, "qsc_guardian_events_total") and total(
            after, "qsc_grpc_server_handled_total", grpc_code="OK", **method
        ) > total(before, "qsc_grpc_server_handled_total", grpc_code="OK", **method):
            return after
        return None

    after = until(moved, what="Alpha's event and RPC counters to move")
    assert total(after, "qsc_grpc_server_handling_seconds_count", **method) >= 1
    # The Cortex and this test dialled with the hybrid group: counted as accepted.
    assert (
        total(
            after,
            "qsc_transport_calls_total",
            role="cortex",
            kex_group="X25519MLKEM768",
            outcome="accepted",
        )
        >= 1
    )
    assert total(after, "qsc_guardian_outbox_depth") >= 1


def test_beta_counts_integrity_events(mesh: Mesh) -> None:
    grpc_port, port = mesh.ports["beta"]
    names, before = scrape(port)
    assert names >= SHARED_FAMILIES | GUARDIAN_FAMILIES
    assert total(before, "qsc_build_info", component="beta") == 1
    watched = mesh.base / "beta" / "etc" / "app.conf"
    get_status(mesh.pki, grpc_port)  # also: FIM is running once GetStatus answers

    def moved() -> Samples | None:
        watched.write_text(f"listen = 443\nchanged = {time.monotonic()}\n")
        _, after = scrape(port)
        if total(after, "qsc_guardian_events_total") > total(before, "qsc_guardian_events_total"):
            return after
        return None

    after = until(moved, what="Beta's event counter to move")
    assert total(after, "qsc_grpc_server_handled_total", grpc_method="GetStatus") >= 1


def test_cortex_exports_ingest_and_lag_per_guardian(mesh: Mesh) -> None:
    _, port = mesh.ports["cortex"]
    names, _ = scrape(port)
    assert names >= SHARED_FAMILIES
    assert {
        "qsc_cortex_ingested_events_total",
        "qsc_cortex_assessment_changes_total",
        "qsc_cortex_guardian_lag_events",
        "qsc_cortex_guardian_lag_seconds",
        "qsc_cortex_guardian_committed_seq",
        "qsc_cortex_guardian_connection_state",
        "qsc_cortex_correlation_failures_total",
        "qsc_cortex_playbook_deliveries_total",
        "qsc_cortex_anomaly_scoring_up",
    } <= names
    gid = f"alpha-{HOST}"
    true = shutil.which("true") or "/bin/true"

    def stored() -> Samples | None:
        subprocess.run([true], check=True)  # more for Alpha to emit and the Cortex to store
        _, after = scrape(port)
        connected = total(
            after, "qsc_cortex_guardian_connection_state", guardian=gid, state="connected"
        )
        if connected == 1 and total(after, "qsc_cortex_ingested_events_total", guardian=gid) > 0:
            return after
        return None

    after = until(stored, what="the Cortex to store Alpha's events")
    assert total(after, "qsc_cortex_guardian_committed_seq", guardian=gid) > 0
    assert ("qsc_cortex_guardian_lag_events", (("guardian", gid),)) in after


def test_ml_exports_scoring_latency(mesh: Mesh) -> None:
    from ml.api import ScoreBatch
    from ml.client import AnomalyClient, AnomalyClientConfig
    from ml.schema import FEATURES, SCHEMA_VERSION
    from tests.integration.ml_harness import NORMAL, WEIRD

    grpc_port, port = mesh.ports["ml"]
    names, before = scrape(port)
    assert SHARED_FAMILIES | {"qsc_ml_score_seconds", "qsc_ml_model_serving"} <= names
    assert total(before, "qsc_ml_model_serving") == 1

    async def score() -> None:
        channel = ChannelConfig(target=f"{HOST}:{grpc_port}", tls=tls(mesh.pki, "cortex"))
        config = AnomalyClientConfig(channel, score_timeout=timedelta(seconds=10))
        async with AnomalyClient(config) as client:
            await client.score(
                ScoreBatch(SCHEMA_VERSION, FEATURES, ["a", "b"], [tuple(NORMAL), tuple(WEIRD)])
            )

    asyncio.run(score())
    _, after = scrape(port)
    ok: dict[str, Any] = {"outcome": "ok"}
    assert (
        total(after, "qsc_ml_score_seconds_count", **ok)
        == total(before, "qsc_ml_score_seconds_count", **ok) + 1
    )
    assert total(after, "qsc_ml_scored_rows_total") == total(before, "qsc_ml_scored_rows_total") + 2
    assert total(after, "qsc_grpc_server_handled_total", grpc_method="Score", grpc_code="OK") >= 1
