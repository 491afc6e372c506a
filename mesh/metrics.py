"""Prometheus metrics, the way Falco and Tetragon operators scrape them (`prometheus_client`).

    [metrics]
    listen = "127.0.0.1:9464"     # off unless set; port 0 lets the OS choose (logged)
    allow_remote = false          # a non-loopback address is refused unless true

    exporter = MetricsExporter(config.metrics, component="alpha")
    port = exporter.start([GuardianCollector(guardian), TransportCollector(server)])
    exporter.stop()

What every component shares lives here: the config section, the HTTP endpoint (its own
`CollectorRegistry`, so two exporters in one process never clash), the gRPC server families
the mesh interceptor feeds (`observe_rpc`), and collectors over counters the mesh already keeps:
`TransportCollector` (calls by key-exchange group and policy outcome, `mesh.policy`),
`GuardianCollector` (outbox and sensor losses of `mesh.guardian`) and `EventCounts` (events by
rule and severity, counted where a guardian's producers hand them to the outbox). Existing
counters are read at scrape time (custom collectors), never counted twice. docs/metrics.md
lists every family.

The endpoint is plain HTTP without authentication: rule names, peer roles and activity rates
are reconnaissance for an intruder, so it binds to loopback unless `allow_remote = true` (then
put a firewall or an authenticating proxy in front of it).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mesh.config import ListenAddress
from mesh.errors import ConfigError
from mesh.logs import log_event
from qsc.common.v1 import classification_pb2, event_pb2

if TYPE_CHECKING:
    from mesh.guardian.runtime import Guardian
    from mesh.server import ComponentServer

__all__ = [
    "RPC_HANDLED",
    "RPC_SECONDS",
    "EventCounts",
    "GuardianCollector",
    "MetricsConfig",
    "MetricsExporter",
    "TransportCollector",
    "callback_collector",
    "observe_rpc",
    "severity_name",
]

_log = logging.getLogger("qsc.mesh.metrics")
T = TypeVar("T")

PREFIX: Final = "qsc_"
OTHER_METHOD: Final = "other"  # RPCs no authz rule names (unknown methods): one bounded label
# Calls last from well under a millisecond (a Health/Check) to a whole Subscribe stream.
RPC_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
    300.0, 3600.0,
)  # fmt: skip
REMOTE_REFUSED: Final = (
    "is not a loopback address: the metrics endpoint is plain HTTP without authentication and "
    "shows rule names, peer roles and activity; bind it to 127.0.0.1 or ::1 and scrape through "
    "a local agent, or set allow_remote = true behind a firewall or an authenticating proxy"
)


# --- configuration --------------------------------------------------------------------------


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: what it resolves to is not known here, so not loopback


@dataclass(frozen=True)
class MetricsConfig:
    """`[metrics]`: where the Prometheus endpoint listens; unset `listen` (default) is off."""

    listen: ListenAddress | None = None
    allow_remote: bool = False

    def __post_init__(self) -> None:
        if self.listen is None:
            return
        if not isinstance(self.listen, ListenAddress):
            raise ConfigError("listen", "expected HOST:PORT")
        if not self.allow_remote and not _loopback(self.listen.host):
            raise ConfigError("listen", f"{self.listen} {REMOTE_REFUSED}")

    @property
    def enabled(self) -> bool:
        return self.listen is not None


# --- families fed directly ------------------------------------------------------------------

# Created outside any registry: each exporter registers them into its own.
RPC_HANDLED: Final = Counter(
    "qsc_grpc_server_handled",
    "RPCs completed on this server, by service, method and gRPC status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
    registry=None,
)
RPC_SECONDS: Final = Histogram(
    "qsc_grpc_server_handling_seconds",
    "Time from a call's arrival to its status (a stream: its whole life), by method.",
    ["grpc_service", "grpc_method"],
    buckets=RPC_BUCKETS,
    registry=None,
)
_SHARED: Final[tuple[Collector, ...]] = (RPC_HANDLED, RPC_SECONDS)


def observe_rpc(method: str, code: str, seconds: float, *, known: bool = True) -> None:
    """One finished call (`/pkg.Service/Method`); `known` False files it under `other`, so a
    peer inventing method names cannot grow the label set."""
    service, _, name = method.lstrip("/").partition("/")
    if not known or not name:
        service, name = OTHER_METHOD, OTHER_METHOD
    RPC_HANDLED.labels(service, name, code).inc()
    RPC_SECONDS.labels(service, name).observe(seconds)


# --- the endpoint ---------------------------------------------------------------------------


class MetricsExporter:
    """One component's `/metrics` endpoint over its own registry; see the module docstring."""

    def __init__(self, config: MetricsConfig, *, component: str) -> None:
        self.config = config
        self.component = component
        self.registry = CollectorRegistry(auto_describe=True)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    @property
    def port(self) -> int:
        """The bound port (0 while not serving)."""
        return self._port

    def start(self, collectors: Iterable[Collector] = ()) -> int:
        """Register the shared families, the process's and `collectors`, and serve; return the
        bound port (0 when metrics are off: nothing is started)."""
        listen = self.config.listen
        if listen is None:
            return 0
        if self._server is not None:
            raise RuntimeError("metrics already started")
        for collector in (
            *_SHARED,
            PROCESS_COLLECTOR,
            PLATFORM_COLLECTOR,
            GC_COLLECTOR,
            _BuildInfo(self.component),
            *collectors,
        ):
            self.registry.register(collector)
        try:
            server, thread = start_http_server(listen.port, listen.host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                "metrics.listen", f"cannot bind {listen}: {exc.strerror or exc}"
            ) from None
        self._server, self._thread = server, thread
        self._port = int(server.server_port)
        log_event(
            _log,
            "metrics serving",
            component=self.component,
            address=str(ListenAddress(listen.host, self._port)),
            port=self._port,
        )
        return self._port

    def stop(self) -> None:
        """Stop serving; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._port = 0


class _BuildInfo(Collector):
    def __init__(self, component: str) -> None:
        self._component = component

    def collect(self) -> Iterator[Metric]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            release = version("qsc")
        except PackageNotFoundError:
            release = "unknown"
        info = GaugeMetricFamily(
            "qsc_build_info", "Always 1: this process's component and QSC version.",
            labels=["component", "version"],
        )  # fmt: skip
        info.add_metric([self._component, release], 1)
        yield info


# --- collectors over counters kept elsewhere ------------------------------------------------


class _Callback(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        yield from self._collect()


def callback_collector(collect: Callable[[], Iterable[Metric]]) -> Collector:
    """A collector whose families `collect()` builds at each scrape from existing counters."""
    return _Callback(collect)


def severity_name(severity: int) -> str:
    """`SEVERITY_HIGH` -> `high` (an unknown number: its digits)."""
    try:
        return classification_pb2.Severity.Name(severity).removeprefix("SEVERITY_").lower()  # type: ignore[arg-type]
    except ValueError:
        return str(severity)


class EventCounts(Collector):
    """Events a guardian's producers appended, by rule and severity (`qsc_guardian_events_total`).

    Wrap the sink producers emit through: `pipeline = Pipeline(..., counts.wrap(emit_many))`.
    Events that named no rule (sensor events without a match, telemetry, integrity reports
    without a rule) count under `rule=""`. Thread-safe; the labels are bounded by the ruleset.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], int] = {}

    def count(self, events: Iterable[event_pb2.Event]) -> None:
        tally: dict[tuple[str, int], int] = {}
        for event in events:
            key = (event.rule.id, int(event.severity))
            tally[key] = tally.get(key, 0) + 1
        with self._lock:
            for key, n in tally.items():
                self._counts[key] = self._counts.get(key, 0) + n

    def wrap(
        self, emit_many: Callable[[list[event_pb2.Event]], T]
    ) -> Callable[[Iterable[event_pb2.Event]], T]:
        """`emit_many` counting what it accepted (an append that raised counts nothing)."""

        def emit(events: Iterable[event_pb2.Event]) -> T:
            batch = events if isinstance(events, list) else list(events)
            result = emit_many(batch)
            self.count(batch)
            return result

        return emit

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "qsc_guardian_events",
            "Events appended to the outbox by this guardian's producers, by rule and severity.",
            labels=["rule", "severity"],
        )
        with self._lock:
            counts = sorted(self._counts.items())
        for (rule, severity), n in counts:
            family.add_metric([rule, severity_name(severity)], n)
        yield family


# LossStage values (LossCounters field names) -> the `stage` label.
_STAGE_LABELS: Final = {
    "ring_buffer_lost": "ring_buffer",
    "kernel_queue_overflows": "kernel_queue",
    "decode_errors": "decode",
    "user_queue_dropped": "user_queue",
    "outbox_dropped": "outbox",
}


class GuardianCollector(Collector):
    """A guardian's outbox and sensors, read from `Outbox.status()` and the sensor registry."""

    def __init__(self, guardian: Guardian) -> None:
        self._guardian = guardian

    def collect(self) -> Iterator[Metric]:
        status = self._guardian.outbox.status()
        gauges = (
            ("qsc_guardian_outbox_depth", "Sequence numbers retained in the outbox.", status.depth),
            ("qsc_guardian_outbox_bytes", "Bytes the outbox holds on disk.", status.disk_bytes),
            (
                "qsc_guardian_outbox_budget_bytes",
                "The outbox's disk budget; at it the oldest events are dropped (a gap event).",
                status.disk_budget_bytes,
            ),
            ("qsc_guardian_outbox_last_seq", "The newest sequence number.", status.last_seq),
            (
                "qsc_guardian_outbox_durable_seq",
                "Every event up to this sequence number is fdatasync'ed.",
                status.durable_seq,
            ),
        )
        for name, doc, value in gauges:
            yield GaugeMetricFamily(name, doc, value=value)
        lost = CounterMetricFamily(
            "qsc_guardian_outbox_lost_events",
            "Events the outbox lost since it was created: dropped under the disk budget, "
            "or corrupted on disk (each range also reported by a gap event).",
            labels=["reason"],
        )
        lost.add_metric(["disk_budget"], status.dropped_total)
        lost.add_metric(["corrupted"], status.corrupted_total)
        yield lost
        yield CounterMetricFamily(
            "qsc_guardian_outbox_expired_events",
            "Events deleted by retention since the outbox was created (ageing, not loss).",
            value=status.expired_total,
        )
        snapshots = self._guardian.sensors.snapshots()
        losses = CounterMetricFamily(
            "qsc_guardian_sensor_lost_events",
            "Events a sensor lost since start, by stage (ring_buffer, kernel_queue, decode, "
            "user_queue, outbox).",
            labels=["sensor", "stage"],
        )
        events = CounterMetricFamily(
            "qsc_guardian_sensor_events",
            "Events a sensor (or pipeline stage) counted since start.",
            labels=["sensor"],
        )
        states = GaugeMetricFamily(
            "qsc_guardian_sensor_state",
            "1 for a sensor's current state (healthy, degraded, failed), else 0.",
            labels=["sensor", "state", "mode"],
        )
        for snap in snapshots:
            for stage, n in snap.loss.items():
                losses.add_metric([snap.name, _STAGE_LABELS.get(stage, stage)], n)
            events.add_metric([snap.name], snap.events)
            for state in ("healthy", "degraded", "failed"):
                current = snap.state.name.lower() == state
                states.add_metric([snap.name, state, snap.mode], 1 if current else 0)
        yield losses
        yield events
        yield states


class TransportCollector(Collector):
    """The mesh server's transport counters (`mesh.policy.PolicyCounters`) and open streams.

    grpc shows calls, not handshakes, so calls are counted per negotiated key-exchange group and
    policy outcome, and classical handshakes per role as distinct connections."""

    def __init__(self, server: ComponentServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        stats = self._server.policy_stats()
        policy = self._server.config.pq_policy
        calls = CounterMetricFamily(
            "qsc_transport_calls",
            "Calls by peer role, negotiated key-exchange group and policy outcome "
            "(accepted, refused).",
            labels=["role", "kex_group", "hybrid", "outcome"],
        )
        for outcome, table in (("accepted", stats.calls), ("refused", stats.refused)):
            for role, groups in sorted(table.items()):
                for group, n in sorted(groups.items()):
                    hybrid = "true" if policy.is_hybrid(group) else "false"
                    calls.add_metric([role, group, hybrid, outcome], n)
        yield calls
        classical = CounterMetricFamily(
            "qsc_transport_classical_connections",
            "Distinct connections whose handshake was classical (no ML-KEM), by peer role.",
            labels=["role"],
        )
        for role, n in sorted(stats.classical_connections.items()):
            classical.add_metric([role], n)
        yield classical
        streams = GaugeMetricFamily(
            "qsc_grpc_server_open_streams",
            "Streaming calls open now, by peer SPIFFE ID.",
            labels=["peer"],
        )
        for peer, n in sorted(self._server.open_streams().items()):
            streams.add_metric([peer], n)
        yield streams


def guardian_collectors(guardian: Guardian, counts: EventCounts) -> Sequence[Collector]:
    """What Alpha and Beta export alike: events, outbox and sensors, the server's transport."""
    return (counts, GuardianCollector(guardian), TransportCollector(guardian.server))
