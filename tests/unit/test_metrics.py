"""mesh.metrics without component processes: the `[metrics]` section's errors, the exporter on
loopback, the collectors, and the Grafana dashboard and docs/metrics.md against the families
the code really exports (tests/integration/test_metrics.py scrapes the real components)."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from cortex.metrics import CortexCollector, IngestCounts
from mesh.config import ConfigLoadError, ListenAddress, config_from_dict, load_config
from mesh.errors import ConfigError
from mesh.metrics import (
    RPC_HANDLED,
    RPC_SECONDS,
    EventCounts,
    GuardianCollector,
    MetricsConfig,
    MetricsExporter,
    TransportCollector,
    _BuildInfo,
    callback_collector,
    observe_rpc,
)
from mesh.policy import PolicyStats, PqPolicy
from mesh.stream.outbox import OutboxStatus
from qsc.common.v1 import classification_pb2, event_pb2

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "qsc-dashboard.json"
DOCS = ROOT / "docs" / "metrics.md"


@dataclass(frozen=True)
class _Cfg:
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


def _load(env: dict[str, str]) -> _Cfg:
    return load_config(_Cfg, component="metricstest", path=None, env=env)


# --- configuration --------------------------------------------------------------------------


def test_off_by_default() -> None:
    assert not MetricsConfig().enabled
    assert not _load({}).metrics.enabled
    assert MetricsExporter(MetricsConfig(), component="alpha").start() == 0


@pytest.mark.parametrize("listen", ["127.0.0.1:9464", "127.0.0.2:0", "[::1]:9464", "localhost:1"])
def test_loopback_accepted(listen: str) -> None:
    config = config_from_dict(MetricsConfig, {"listen": listen})
    assert config.enabled
    assert str(config.listen) == listen


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:9464", "[::]:9464", "10.1.2.3:9464", "metrics.example.org:9464"]
)
def test_remote_refused_with_the_reason(listen: str) -> None:
    with pytest.raises(ConfigLoadError) as err:
        config_from_dict(MetricsConfig, {"listen": listen})
    message = str(err.value)
    assert message.startswith("<dict>: listen: ")
    assert "not a loopback address" in message
    assert "without authentication" in message
    assert "allow_remote = true" in message


def test_allow_remote_accepts_any_address() -> None:
    config = config_from_dict(MetricsConfig, {"listen": "0.0.0.0:9464", "allow_remote": True})
    assert config.listen == ListenAddress("0.0.0.0", 9464)


def test_env_errors_name_the_variable() -> None:
    with pytest.raises(ConfigLoadError) as err:
        _load({"QSC_METRICSTEST_METRICS__LISTEN": "0.0.0.0:9464"})
    assert str(err.value).startswith("QSC_METRICSTEST_METRICS__LISTEN: metrics.listen: ")
    with pytest.raises(ConfigLoadError, match=r"metrics.listen: expected HOST:PORT"):
        _load({"QSC_METRICSTEST_METRICS__LISTEN": "9464"})
    with pytest.raises(ConfigLoadError, match=r"metrics.allow_remote: expected true or false"):
        _load({"QSC_METRICSTEST_METRICS__ALLOW_REMOTE": "maybe"})
    assert _load({"QSC_METRICSTEST_METRICS__LISTEN": "127.0.0.1:0"}).metrics.enabled
    on = {
        "QSC_METRICSTEST_METRICS__LISTEN": "0.0.0.0:1",
        "QSC_METRICSTEST_METRICS__ALLOW_REMOTE": "1",
    }
    assert _load(on).metrics.allow_remote


def test_unknown_key_refused() -> None:
    with pytest.raises(ConfigLoadError, match=r"metrics.port"):
        config_from_dict(_Cfg, {"metrics": {"port": 9464}})


def test_components_have_the_section() -> None:
    from alpha.config import AlphaConfig
    from beta.config import BetaConfig
    from cortex.config import CortexConfig
    from ml.config import MlConfig

    for cls in (AlphaConfig, BetaConfig, CortexConfig, MlConfig):
        assert cls.__dataclass_fields__["metrics"].type in ("MetricsConfig", MetricsConfig)


# --- the exporter ---------------------------------------------------------------------------


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_exporter_serves_and_stops() -> None:
    counts = EventCounts()
    exporter = MetricsExporter(
        config_from_dict(MetricsConfig, {"listen": "127.0.0.1:0"}), component="beta"
    )
    port = exporter.start([counts])
    try:
        assert port == exporter.port > 0
        emit = counts.wrap(lambda batch: (1, len(batch)))
        event = event_pb2.Event(severity=classification_pb2.SEVERITY_HIGH)
        event.rule.id = "beta.tamper"
        assert emit(iter([event, event_pb2.Event()])) == (1, 2)
        observe_rpc("/qsc.x.v1.S/M", "OK", 0.002)
        text = _scrape(port)
        assert 'qsc_guardian_events_total{rule="beta.tamper",severity="high"} 1.0' in text
        assert 'qsc_guardian_events_total{rule="",severity="unspecified"} 1.0' in text
        assert 'qsc_build_info{component="beta"' in text
        assert 'qsc_grpc_server_handled_total{grpc_code="OK",grpc_method="M"' in text
        assert "process_cpu_seconds_total" in text
        # A second exporter in the same process: its own registry, no duplicate families.
        other = MetricsExporter(
            config_from_dict(MetricsConfig, {"listen": "127.0.0.1:0"}), component="ml"
        )
        assert other.start() > 0
        other.stop()
    finally:
        exporter.stop()
        exporter.stop()  # idempotent
    assert exporter.port == 0


def test_a_failing_emit_counts_nothing() -> None:
    counts = EventCounts()

    def refuse(batch: list[event_pb2.Event]) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        counts.wrap(refuse)([event_pb2.Event()])
    assert [s for m in counts.collect() for s in m.samples] == []


def test_unknown_methods_share_one_label() -> None:
    observe_rpc("/made.up/Name1", "UNIMPLEMENTED", 0.001, known=False)
    observe_rpc("/made.up/Name2", "UNIMPLEMENTED", 0.001, known=False)
    labels = {tuple(sorted(s.labels.items())) for m in RPC_HANDLED.collect() for s in m.samples}
    assert all(dict(lbl).get("grpc_service") != "made.up" for lbl in labels)
    assert (
        ("grpc_code", "UNIMPLEMENTED"),
        ("grpc_method", "other"),
        ("grpc_service", "other"),
    ) in labels


def test_bind_failure_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        exporter = MetricsExporter(
            config_from_dict(MetricsConfig, {"listen": f"127.0.0.1:{port}"}), component="ml"
        )
        with pytest.raises(ConfigError, match=rf"metrics.listen: cannot bind 127.0.0.1:{port}"):
            exporter.start()


# --- the families the code exports, against the dashboard and the docs -----------------------


def _fake_server() -> Any:
    stats = PolicyStats(
        calls={"cortex": {"X25519MLKEM768": 3}}, refused={"soar": {"X25519": 1}},
        classical_connections={"soar": 1},
    )  # fmt: skip
    return SimpleNamespace(
        policy_stats=lambda: stats,
        config=SimpleNamespace(pq_policy=PqPolicy()),
        open_streams=lambda: {"spiffe://t/cortex/c1": 1},
    )


def _fake_guardian() -> Any:
    status = OutboxStatus(1, 5, 5, 5, 100, 1000, 1, 0, 0, 0, 0)
    return SimpleNamespace(
        outbox=SimpleNamespace(status=lambda: status),
        sensors=SimpleNamespace(snapshots=lambda: []),
        server=_fake_server(),
    )


def _fake_cortex() -> Any:
    tracker = SimpleNamespace(guardians=lambda: (), ids=lambda: ())
    return SimpleNamespace(
        ingest=SimpleNamespace(tracker=tracker), correlation=None, playbooks=None, scorer=None
    )


def _all_collectors() -> Iterator[Collector]:
    from ml.app import SCORE_SECONDS, SCORED_ROWS, MlService

    yield from (RPC_HANDLED, RPC_SECONDS, _BuildInfo("alpha"), EventCounts())
    yield GuardianCollector(_fake_guardian())
    yield TransportCollector(_fake_server())
    yield CortexCollector(_fake_cortex(), IngestCounts())
    yield from (SCORE_SECONDS, SCORED_ROWS)
    registry = SimpleNamespace(current=None, refused=None)
    ml = cast(MlService, SimpleNamespace(registry=registry))
    yield callback_collector(lambda: MlService._model_metrics(ml))


def _families() -> dict[str, str]:
    """qsc_* family name -> type, from every collector the components register."""
    out: dict[str, str] = {}
    for collector in _all_collectors():
        registry = CollectorRegistry()
        registry.register(collector)
        for metric in registry.collect():
            out[metric.name] = metric.type
    return out


_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def _sample_names(families: dict[str, str]) -> set[str]:
    return {name + s for name, kind in families.items() for s in _SUFFIXES.get(kind, ("",))}


def test_dashboard_names_only_real_families() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"]
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 30
    real = _sample_names(_families()) | {
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    }
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 20
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    used: set[str] = set()
    for expr in exprs:
        names = set(re.findall(r"\b((?:qsc|process)_[a-z0-9_]+)\b", expr))
        assert names, expr
        unknown = names - real
        assert not unknown, f"{expr}: no such family {unknown}"
        used |= names
    # The headline families of the issue each have a panel.
    for name in (
        "qsc_guardian_events_total",
        "qsc_guardian_sensor_lost_events_total",
        "qsc_guardian_outbox_depth",
        "qsc_cortex_guardian_lag_events",
        "qsc_transport_calls_total",
        "qsc_grpc_server_handling_seconds_bucket",
        "qsc_cortex_ingested_events_total",
        "qsc_cortex_playbook_deliveries_total",
        "qsc_ml_score_seconds_bucket",
    ):
        assert name in used, name


def test_docs_list_every_family() -> None:
    documented = set(re.findall(r"^\| `(qsc_[a-z0-9_]+)`", DOCS.read_text(), re.MULTILINE))
    exported = {
        name + ("_total" if kind == "counter" else "") for name, kind in _families().items()
    }
    assert documented == exported
