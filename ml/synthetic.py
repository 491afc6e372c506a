"""A seeded generator of synthetic host telemetry, labelled, for demos, tests and benchmarks.

Each host gets a profile (its own baseline level per feature). Every window then follows a daily
cycle (activity peaks mid-afternoon, weekends run at 60%), plus noise: Gaussian for percentages,
log-normal for byte and rate volumes, Poisson for counts. Anomalies are injected as episodes of
1-6 consecutive windows on one host, of these kinds:

- `exfiltration`: bytes out x8-40, a few new destinations;
- `cryptomining`: CPU pinned at 85-100%, a little more memory and one pool connection;
- `brute_force`: 30-300 extra failed logins;
- `fork_bomb`: process count x5-20, exec rate x20-80, CPU and memory up;
- `lateral_movement`: 30-150 extra destinations, logins, more bytes out;
- `privilege_escalation`: privilege changes, file changes and a new listening port.

Anomalous windows carry label 1 and their kind; the rest label 0 and kind `normal`. The same
seed and settings give the same rows, byte for byte (numpy's PCG64, drawn in a fixed order).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

import numpy as np

from ml.data import FloatArray, Windows
from ml.schema import FEATURES

ANOMALY_KINDS: Final = (
    "exfiltration",
    "cryptomining",
    "brute_force",
    "fork_bomb",
    "lateral_movement",
    "privilege_escalation",
)
NORMAL: Final = "normal"
DEFAULT_START: Final = dt.datetime(2025, 1, 6, tzinfo=dt.UTC)  # a Monday
MAX_ROWS: Final = 10_000_000
_COL: Final = {name: i for i, name in enumerate(FEATURES)}


@dataclass(frozen=True)
class SyntheticConfig:
    """How much telemetry to generate and how much of it is anomalous."""

    hosts: int = 8
    days: float = 7.0
    window: dt.timedelta = dt.timedelta(minutes=5)
    start: dt.datetime = DEFAULT_START
    anomaly_rate: float = 0.02  # share of windows inside an anomaly episode, roughly
    kinds: tuple[str, ...] = ANOMALY_KINDS
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.hosts <= 100_000:
            raise ValueError("hosts must be 1..100000")
        if not self.window >= dt.timedelta(seconds=1):
            raise ValueError("window must be at least 1s")
        if not 0 < self.days <= 3660:
            raise ValueError("days must be in (0, 3660]")
        if not 0 <= self.anomaly_rate <= 0.5:
            raise ValueError("anomaly_rate must be in [0, 0.5]")
        unknown = [k for k in self.kinds if k not in ANOMALY_KINDS]
        if unknown or (self.anomaly_rate > 0 and not self.kinds):
            raise ValueError(f"kinds must be among {', '.join(ANOMALY_KINDS)}")
        if self.start.tzinfo is None:
            raise ValueError("start must carry a time zone")
        if self.seed < 0:
            raise ValueError("seed must be non-negative")
        if self.hosts * self.windows_per_host > MAX_ROWS:
            raise ValueError(f"at most {MAX_ROWS} rows")

    @property
    def windows_per_host(self) -> int:
        return max(1, int(dt.timedelta(days=self.days) / self.window))


def _profiles(rng: np.random.Generator, hosts: int) -> FloatArray:
    """Per-host baselines, one row per host, columns as FEATURES."""
    base = np.empty((hosts, len(FEATURES)))
    base[:, _COL["cpu_percent"]] = rng.uniform(8, 35, hosts)
    base[:, _COL["memory_percent"]] = rng.uniform(25, 60, hosts)
    base[:, _COL["network_bytes_out"]] = rng.lognormal(np.log(20e6), 0.8, hosts)
    base[:, _COL["network_bytes_in"]] = rng.lognormal(np.log(60e6), 0.8, hosts)
    base[:, _COL["failed_logins"]] = rng.uniform(0.2, 2.0, hosts)
    base[:, _COL["process_count"]] = rng.uniform(120, 400, hosts)
    base[:, _COL["exec_rate"]] = rng.lognormal(np.log(1.5), 0.5, hosts)
    base[:, _COL["distinct_destination_addresses"]] = rng.uniform(5, 40, hosts)
    base[:, _COL["file_changes"]] = rng.uniform(2, 30, hosts)
    base[:, _COL["successful_logins"]] = rng.uniform(0.2, 3.0, hosts)
    base[:, _COL["new_listening_ports"]] = rng.uniform(0.002, 0.02, hosts)
    base[:, _COL["privilege_changes"]] = rng.uniform(0.5, 4.0, hosts)
    return base


def _activity(times: FloatArray) -> FloatArray:
    """Daily cycle in [0.15, 1]: peak at 14:00 UTC, trough at 02:00; weekends at 60%."""
    hours = (times / 3600.0) % 24.0
    daily = 0.15 + 0.85 * (1 + np.cos(2 * np.pi * (hours - 14.0) / 24.0)) / 2
    weekday = ((times // 86400) + 3) % 7  # 1970-01-01 was a Thursday: 0 = Monday
    return np.where(weekday >= 5, 0.6 * daily, daily)


def _normal_rows(
    rng: np.random.Generator,
    base: FloatArray,
    act: FloatArray,
) -> FloatArray:
    n = len(act)
    x = np.empty((n, len(FEATURES)))

    def col(name: str) -> float:
        return float(base[_COL[name]])

    cpu = col("cpu_percent") * (0.4 + 0.9 * act) + rng.normal(0, 3, n)
    x[:, _COL["cpu_percent"]] = np.clip(cpu, 0.5, 100)
    mem = col("memory_percent") + 10 * act + rng.normal(0, 2, n)
    x[:, _COL["memory_percent"]] = np.clip(mem, 1, 100)
    for name in ("network_bytes_out", "network_bytes_in"):
        x[:, _COL[name]] = np.round(rng.lognormal(np.log(col(name) * (0.2 + act)), 0.35))
    for name in ("failed_logins", "successful_logins", "privilege_changes"):
        x[:, _COL[name]] = rng.poisson(col(name) * (0.3 + act))
    proc = col("process_count") * (0.8 + 0.3 * act) + rng.normal(0, 6, n)
    x[:, _COL["process_count"]] = np.round(np.maximum(proc, 10))
    exec_rate = rng.lognormal(np.log(col("exec_rate") * (0.2 + act)), 0.3)
    x[:, _COL["exec_rate"]] = np.round(exec_rate, 3)
    dest = rng.poisson(col("distinct_destination_addresses") * (0.3 + act))
    x[:, _COL["distinct_destination_addresses"]] = dest
    x[:, _COL["file_changes"]] = rng.poisson(col("file_changes") * (0.2 + act))
    x[:, _COL["new_listening_ports"]] = rng.poisson(col("new_listening_ports"), n)
    return x


def _inject(rng: np.random.Generator, row: FloatArray, kind: str) -> None:
    """Turn one normal window into an anomalous one of `kind`, in place."""
    c = _COL
    if kind == "exfiltration":
        row[c["network_bytes_out"]] = round(row[c["network_bytes_out"]] * rng.uniform(8, 40))
        row[c["distinct_destination_addresses"]] += rng.integers(1, 4)
    elif kind == "cryptomining":
        row[c["cpu_percent"]] = rng.uniform(85, 100)
        row[c["memory_percent"]] = min(100.0, row[c["memory_percent"]] + rng.uniform(3, 10))
        row[c["distinct_destination_addresses"]] += 1
    elif kind == "brute_force":
        row[c["failed_logins"]] += rng.integers(30, 300)
    elif kind == "fork_bomb":
        row[c["process_count"]] = round(row[c["process_count"]] * rng.uniform(5, 20))
        row[c["exec_rate"]] = round(row[c["exec_rate"]] * rng.uniform(20, 80), 3)
        row[c["cpu_percent"]] = min(100.0, row[c["cpu_percent"]] + rng.uniform(30, 60))
        row[c["memory_percent"]] = min(100.0, row[c["memory_percent"]] + rng.uniform(10, 30))
    elif kind == "lateral_movement":
        row[c["distinct_destination_addresses"]] += rng.integers(30, 150)
        row[c["successful_logins"]] += rng.integers(3, 15)
        row[c["network_bytes_out"]] = round(row[c["network_bytes_out"]] * rng.uniform(1.5, 3))
    elif kind == "privilege_escalation":
        row[c["privilege_changes"]] += rng.integers(5, 30)
        row[c["file_changes"]] += rng.integers(20, 100)
        row[c["new_listening_ports"]] += 1
    else:  # SyntheticConfig validated the kinds
        raise AssertionError(kind)


def generate(config: SyntheticConfig) -> Windows:
    """Labelled windows for every host, ordered by host then time."""
    rng = np.random.Generator(np.random.PCG64(config.seed))
    per_host = config.windows_per_host
    step = config.window.total_seconds()
    start = config.start.timestamp()
    times = start + step * np.arange(per_host, dtype=np.float64)
    act = _activity(times)
    base = _profiles(rng, config.hosts)
    values = np.concatenate([_normal_rows(rng, base[h], act) for h in range(config.hosts)])
    total = len(values)
    labels = np.zeros(total, dtype=bool)
    kinds = [NORMAL] * total
    target = round(config.anomaly_rate * total)
    marked = 0
    while marked < target:
        host = int(rng.integers(config.hosts))
        length = int(rng.integers(1, 7))
        first = int(rng.integers(per_host))
        kind = config.kinds[int(rng.integers(len(config.kinds)))]
        for i in range(host * per_host + first, host * per_host + min(per_host, first + length)):
            if not labels[i]:
                _inject(rng, values[i], kind)
                labels[i], kinds[i] = True, kind
                marked += 1
    return Windows(
        features=FEATURES,
        values=values,
        times=np.tile(times, config.hosts),
        hosts=tuple(f"host-{h + 1:03d}" for h in range(config.hosts) for _ in range(per_host)),
        labels=labels,
        kinds=tuple(kinds),
    )
