"""Host telemetry windows: the ML feature schema (`qsc.ml.v1.HostFeature`) measured on this host.

    counter = WindowCounter()
    pipeline.add_observer(counter.observe)          # every sensor event and detector finding
    gauges = GaugeSampler()                          # /proc readings at the window's start
    ... counter.observe(events) from any thread; gauges.sample_memory() now and then ...
    counts = counter.close()                         # this window's counts; the next one starts
    window = measure(counts, gauges.close(), start_ns=..., end_ns=..., duration_s=...)

The counted features come from the events the pipeline sees, before the rules judge them, so a
harmless exec counts like a suspicious one:

- `exec_rate`: `process_exec` events, per second of the window;
- `privilege_changes`: successful `privilege_change` calls (the setuid family), plus
  `process_exec` events with `setuid_exec`;
- `file_changes`: successful changes of watched paths: `file_access` opened for writing (or
  creating, truncating), `permission_change`, `ownership_change`, `file_delete`, `file_rename`,
  `file_link`;
- `distinct_destination_addresses`: distinct remote addresses of `network_connection` connects
  (attempts included: a refused connect still reached the host), loopback and unspecified
  addresses left out;
- `new_listening_ports`: distinct (protocol, address, port) of `network_connection` listens
  (the socket poller reports a listener once, when it appears);
- `failed_logins`, `successful_logins`: `auth_event`s by outcome (one per attempt).

The gauges are read from /proc (`GaugeSampler`): `cpu_percent` from the /proc/stat counters
between the window's start and end (the mean over all cores), `memory_percent` as the mean of
(MemTotal - MemAvailable) / MemTotal over the samples taken during the window, `process_count`
as the processes in /proc at the window's end, and `network_bytes_out`/`_in` as the growth of
the interface byte counters in /proc/net/dev over the window, loopback excluded (a counter
that went backwards, an interface re-created, counts from zero).

Every value is fitted to its feature's domain (percentages in [0, 100], counts and rates finite,
non-negative and at most the largest float32), as the ML service refuses anything else. A
feature this host cannot measure (its sensor or detector is off, /proc unreadable) is reported as
0 and named in `Window.unmeasured`, so a zero never hides an unobserved window.

Alpha may not import the ML service (`ml.schema`): the feature names are read from the same
proto enum the same way (lower case, without `HOST_FEATURE_`), and tests/unit check that both
agree, names, schema version and domains.
"""

from __future__ import annotations

import ipaddress
import math
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Final

from alpha.network.detect import normalize_address
from alpha.sensors.proctable import PROC
from mesh.errors import ConfigError
from mesh.host_features import FEATURES, SCHEMA_VERSION, high
from qsc.common.v1 import auth_details_pb2, event_pb2, file_details_pb2, network_details_pb2

Event = event_pb2.Event

# The host feature schema (names from qsc.ml.v1.HostFeature, version, domains).
FEATURE_SCHEMA_VERSION: Final = SCHEMA_VERSION

_WRITE_ACCESS: Final = frozenset(
    {file_details_pb2.ACCESS_MODE_WRITE, file_details_pb2.ACCESS_MODE_READ_WRITE}
)
_CHANGE_KINDS: Final = frozenset(
    {"permission_change", "ownership_change", "file_delete", "file_rename", "file_link"}
)
_CONNECT: Final = network_details_pb2.CONNECTION_OPERATION_CONNECT
_LISTEN: Final = network_details_pb2.CONNECTION_OPERATION_LISTEN
_FAILED: Final = auth_details_pb2.AUTH_OUTCOME_FAILED
_ACCEPTED: Final = auth_details_pb2.AUTH_OUTCOME_ACCEPTED
_MAX_DISTINCT: Final = 1 << 20  # addresses or listeners remembered per window: bounds memory


# --- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TelemetryConfig:
    """The `[telemetry]` section of Alpha's configuration (env: `QSC_ALPHA_TELEMETRY__<FIELD>`):
    one `host_telemetry` event per `window`, while `enabled`."""

    enabled: bool = True
    window: timedelta = timedelta(seconds=60)

    def __post_init__(self) -> None:
        if not timedelta(seconds=1) <= self.window <= timedelta(hours=24):
            raise ConfigError("window", "between 1s and 24h")


# --- counting ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowCounts:
    """What the events of one window added up to."""

    events: int = 0  # every event observed, of any kind
    execs: int = 0
    privilege_changes: int = 0
    file_changes: int = 0
    failed_logins: int = 0
    successful_logins: int = 0
    destinations: int = 0  # distinct remote addresses connected to
    listeners: int = 0  # distinct new listening sockets


def remote_address(address: str) -> str | None:
    """The canonical text of an IP that names another host; None for loopback, unspecified or
    no IP at all (a unix socket's path)."""
    text = normalize_address(address)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return None if ip.is_loopback or ip.is_unspecified else text


class WindowCounter:
    """Counts the window's events by kind. Thread-safe: the sensor thread and the detectors'
    threads call `observe` while the window closes on another."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._events = 0
        self._execs = 0
        self._privilege = 0
        self._files = 0
        self._failed = 0
        self._accepted = 0
        self._destinations: set[str] = set()
        self._listeners: set[tuple[int, str, int]] = set()

    def observe(self, events: Iterable[Event]) -> None:
        """Count a batch of events, whatever the rules will say of them."""
        with self._lock:
            for event in events:
                self._events += 1
                kind = event.WhichOneof("detail")
                if kind == "process_exec":
                    self._execs += 1
                    if event.process_exec.setuid_exec:
                        self._privilege += 1
                elif kind == "privilege_change":
                    if event.privilege_change.result == 0:
                        self._privilege += 1
                elif kind == "file_access":
                    access = event.file_access
                    written = access.access in _WRITE_ACCESS or access.created or access.truncated
                    if written and access.result >= 0:
                        self._files += 1
                elif kind in _CHANGE_KINDS:
                    if getattr(event, kind).result == 0:
                        self._files += 1
                elif kind == "network_connection":
                    self._connection(event.network_connection)
                elif kind == "auth_event":
                    outcome = event.auth_event.outcome
                    if outcome == _FAILED:
                        self._failed += 1
                    elif outcome == _ACCEPTED:
                        self._accepted += 1

    def _connection(self, conn: network_details_pb2.NetworkConnection) -> None:
        if conn.operation == _CONNECT:
            address = remote_address(conn.remote.address)
            if address is not None and len(self._destinations) < _MAX_DISTINCT:
                self._destinations.add(address)
        elif conn.operation == _LISTEN and len(self._listeners) < _MAX_DISTINCT:
            local = conn.local
            self._listeners.add((conn.protocol, normalize_address(local.address), local.port))

    def close(self) -> WindowCounts:
        """This window's counts; the next window starts from zero."""
        with self._lock:
            counts = WindowCounts(
                events=self._events,
                execs=self._execs,
                privilege_changes=self._privilege,
                file_changes=self._files,
                failed_logins=self._failed,
                successful_logins=self._accepted,
                destinations=len(self._destinations),
                listeners=len(self._listeners),
            )
            self._reset()
        return counts


# --- gauges from /proc ------------------------------------------------------------------------


def parse_cpu_times(text: str) -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores from /proc/stat's `cpu` line, None when absent.
    Guest time is already inside user and nice; idle and iowait are not busy."""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            try:
                values = [int(v) for v in parts[1:9]]
            except ValueError:
                return None
            if len(values) < 4:
                return None
            total = sum(values)
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            return total - idle, total
    return None


def parse_memory_percent(text: str) -> float | None:
    """Memory in use, in percent of MemTotal, from /proc/meminfo; None when it cannot say."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("MemTotal", "MemAvailable"):
            try:
                found[name] = int(rest.split()[0])
            except (ValueError, IndexError):
                return None
    total, available = found.get("MemTotal"), found.get("MemAvailable")
    if not total or available is None:
        return None
    return 100.0 * (total - available) / total


def parse_net_dev(text: str) -> dict[str, tuple[int, int]]:
    """Interface -> (bytes received, bytes sent) from /proc/net/dev, loopback left out."""
    out: dict[str, tuple[int, int]] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        name = name.strip()
        fields = rest.split()
        if not sep or name == "lo" or len(fields) < 9:
            continue
        try:
            out[name] = (int(fields[0]), int(fields[8]))
        except ValueError:
            continue
    return out


def count_processes(proc: Path = PROC) -> int | None:
    """Processes (thread groups) in /proc now; None when /proc cannot be listed."""
    try:
        with os.scandir(proc) as entries:
            return sum(1 for e in entries if e.name.isdigit())
    except OSError:
        return None


def _grown(before: int, after: int) -> int:
    """Growth of a counter; one that went backwards was reset, and counts from zero."""
    return after - before if after >= before else after


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


@dataclass(frozen=True)
class Gauges:
    """The /proc readings of one window; None where nothing could be read."""

    cpu_percent: float | None = None
    memory_percent: float | None = None
    process_count: int | None = None
    bytes_out: int | None = None
    bytes_in: int | None = None


@dataclass
class GaugeSampler:
    """Reads /proc at window boundaries (CPU, interface counters, processes) and samples memory
    in between; not thread-safe (one telemetry thread owns it)."""

    proc: Path = PROC
    _cpu: tuple[int, int] | None = field(default=None, init=False)
    _net: dict[str, tuple[int, int]] | None = field(default=None, init=False)
    _memory: list[float] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.start()

    def start(self) -> None:
        """Take the window's starting readings."""
        stat = _read(self.proc / "stat")
        self._cpu = parse_cpu_times(stat) if stat is not None else None
        dev = _read(self.proc / "net" / "dev")
        self._net = parse_net_dev(dev) if dev is not None else None
        self._memory = []
        self.sample_memory()

    def sample_memory(self) -> None:
        text = _read(self.proc / "meminfo")
        value = parse_memory_percent(text) if text is not None else None
        if value is not None:
            self._memory.append(value)

    def close(self) -> Gauges:
        """The window's gauges; the readings taken now start the next window."""
        self.sample_memory()
        cpu_before, net_before, memory = self._cpu, self._net, self._memory
        self.start()
        cpu: float | None = None
        if cpu_before is not None and self._cpu is not None:
            busy = self._cpu[0] - cpu_before[0]
            total = self._cpu[1] - cpu_before[1]
            if total > 0 and busy >= 0:
                cpu = 100.0 * busy / total
        sent: int | None = None
        received: int | None = None
        if net_before is not None and self._net is not None:
            received = sent = 0
            for name, (rx, tx) in self._net.items():
                rx0, tx0 = net_before.get(name, (0, 0))
                received += _grown(rx0, rx)
                sent += _grown(tx0, tx)
        return Gauges(
            cpu_percent=cpu,
            memory_percent=sum(memory) / len(memory) if memory else None,
            process_count=count_processes(self.proc),
            bytes_out=sent,
            bytes_in=received,
        )


# --- the window -------------------------------------------------------------------------------


def fit(name: str, value: float) -> float:
    """`value` inside the feature's domain: percentages in [0, 100], everything else finite,
    non-negative and at most the largest float32. NaN becomes 0."""
    if math.isnan(value):
        return 0.0
    return min(max(value, 0.0), high(name))


@dataclass(frozen=True)
class Window:
    """One closed window: a value for every feature, in schema order."""

    start_ns: int  # wall clock, inclusive
    end_ns: int  # wall clock, exclusive
    features: tuple[tuple[str, float], ...]
    events: int
    unmeasured: tuple[str, ...] = ()

    def value(self, name: str) -> float:
        return dict(self.features)[name]


def measure(
    counts: WindowCounts,
    gauges: Gauges,
    *,
    start_ns: int,
    end_ns: int,
    duration_s: float,
    unobserved: Iterable[str] = (),
) -> Window:
    """The window's features from its counts and gauges. `duration_s` (monotonic) divides the
    exec count; `unobserved` names features whose source did not run (reported as 0)."""
    raw: Mapping[str, float | None] = {
        "cpu_percent": gauges.cpu_percent,
        "memory_percent": gauges.memory_percent,
        "network_bytes_out": gauges.bytes_out,
        "network_bytes_in": gauges.bytes_in,
        "failed_logins": counts.failed_logins,
        "process_count": gauges.process_count,
        "exec_rate": counts.execs / duration_s if duration_s > 0 else None,
        "distinct_destination_addresses": counts.destinations,
        "file_changes": counts.file_changes,
        "successful_logins": counts.successful_logins,
        "new_listening_ports": counts.listeners,
        "privilege_changes": counts.privilege_changes,
    }
    skip = set(unobserved)
    features: list[tuple[str, float]] = []
    unmeasured: list[str] = []
    for name in FEATURES:
        value = None if name in skip else raw.get(name)
        if value is None:
            unmeasured.append(name)
            value = 0.0
        features.append((name, fit(name, float(value))))
    return Window(
        start_ns=start_ns,
        end_ns=end_ns,
        features=tuple(features),
        events=counts.events,
        unmeasured=tuple(unmeasured),
    )
