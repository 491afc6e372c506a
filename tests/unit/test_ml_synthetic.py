"""The synthetic telemetry generator: deterministic by seed, daily cycles, labelled anomalies of
every kind, each visible in the features it is meant to move."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from ml.data import encode_windows, read_windows, write_windows
from ml.schema import FEATURES
from ml.synthetic import ANOMALY_KINDS, NORMAL, SyntheticConfig, generate

SMALL = SyntheticConfig(hosts=4, days=3, seed=11, anomaly_rate=0.03)


def test_same_seed_same_bytes_other_seed_other_rows() -> None:
    a, b = generate(SMALL), generate(SMALL)
    assert encode_windows(a, jsonl=False) == encode_windows(b, jsonl=False)
    assert a.data_blake3() == b.data_blake3()
    c = generate(SyntheticConfig(hosts=4, days=3, seed=12, anomaly_rate=0.03))
    assert a.data_blake3() != c.data_blake3()


def test_shape_hosts_times_and_labels() -> None:
    w = generate(SMALL)
    per_host = 3 * 24 * 12
    assert w.rows == 4 * per_host
    assert w.features == FEATURES
    assert w.hosts is not None
    assert len(set(w.hosts)) == 4
    assert w.times is not None
    assert w.labels is not None
    assert w.kinds is not None
    assert w.time_range() == (
        SMALL.start,
        SMALL.start + dt.timedelta(days=3) - dt.timedelta(minutes=5),
    )
    rate = w.labels.mean()
    assert 0.029 <= rate <= 0.032
    assert all((k != NORMAL) == bool(lab) for k, lab in zip(w.kinds, w.labels, strict=True))
    assert set(w.kinds) == {NORMAL, *ANOMALY_KINDS}
    assert np.all(np.isfinite(w.values))
    assert np.all(w.values >= 0)
    assert np.all(w.values[:, FEATURES.index("cpu_percent")] <= 100)


def test_daily_cycle_in_normal_rows() -> None:
    w = generate(SyntheticConfig(hosts=3, days=14, seed=2, anomaly_rate=0.0))
    assert w.times is not None
    assert w.labels is not None
    assert not w.labels.any()
    hours = (w.times / 3600) % 24
    cpu = w.values[:, FEATURES.index("cpu_percent")]
    assert cpu[(hours >= 13) & (hours < 15)].mean() > 1.5 * cpu[(hours >= 1) & (hours < 3)].mean()


@pytest.mark.parametrize(
    ("kind", "feature", "factor"),
    [
        ("exfiltration", "network_bytes_out", 5),
        ("cryptomining", "cpu_percent", 2),
        ("brute_force", "failed_logins", 10),
        ("fork_bomb", "process_count", 3),
        ("fork_bomb", "exec_rate", 10),
        ("lateral_movement", "distinct_destination_addresses", 2),
        ("privilege_escalation", "privilege_changes", 3),
    ],
)
def test_each_kind_moves_its_features(kind: str, feature: str, factor: float) -> None:
    w = generate(SyntheticConfig(hosts=4, days=7, seed=5, anomaly_rate=0.05, kinds=(kind,)))
    assert w.kinds is not None
    kinds = np.array(w.kinds)
    col = w.values[:, FEATURES.index(feature)]
    assert (kinds == kind).sum() > 20
    assert np.median(col[kinds == kind]) > factor * np.median(col[kinds == NORMAL])


def test_written_files_read_back_labelled(tmp_path: Path) -> None:
    w = generate(SMALL)
    write_windows(tmp_path / "s.jsonl", w)
    back = read_windows([tmp_path / "s.jsonl"], require_labels=True)
    assert back.data_blake3() == w.data_blake3()
    assert back.kinds == w.kinds


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="kinds"):
        SyntheticConfig(kinds=("ransomware",))
    with pytest.raises(ValueError, match="anomaly_rate"):
        SyntheticConfig(anomaly_rate=0.9)
    with pytest.raises(ValueError, match="time zone"):
        SyntheticConfig(start=dt.datetime(2025, 1, 1))
