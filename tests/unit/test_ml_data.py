"""Telemetry windows from CSV and JSON lines: errors name file, line and column; both formats
round-trip and hash alike."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from ml.data import Windows, read_windows, write_windows
from ml.errors import DataFormatError
from ml.schema import FEATURES

HEADER = "time,host,cpu_percent,memory_percent,failed_logins,label\n"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(path: Path, **kwargs: object) -> DataFormatError:
    with pytest.raises(DataFormatError) as info:
        read_windows([path], **kwargs)  # type: ignore[arg-type]
    return info.value


def test_csv_reads_features_in_schema_order(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "w.csv",
        "failed_logins,time,cpu_percent,host\n"
        "3,2025-01-06T10:00:00Z,12.5,web-1\n"
        "\n"  # blank lines are skipped
        "0,1736157900,7,web-2\n",
    )
    w = read_windows([path])
    assert w.features == ("cpu_percent", "failed_logins")
    assert w.values.tolist() == [[12.5, 3.0], [7.0, 0.0]]
    assert w.hosts == ("web-1", "web-2")
    assert w.labels is None
    span = w.time_range()
    assert span == (
        dt.datetime(2025, 1, 6, 10, 0, tzinfo=dt.UTC),
        dt.datetime(2025, 1, 6, 10, 5, tzinfo=dt.UTC),
    )
    assert w.sources[0].rows == 2
    assert len(w.sources[0].blake3) == 32


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (
            HEADER + "2025-01-06T10:00:00Z,a,1,2,0,0\n2025-01-06T10:05:00Z,a,x,2,0,0\n",
            3,
            "column cpu_percent: 'x' is not a number",
        ),
        (HEADER + "2025-01-06T10:00:00Z,a,1,2,0\n", 2, "5 fields, but the header on line 1 has 6"),
        (
            HEADER + "2025-01-06T10:00:00Z,a,nan,2,0,0\n",
            2,
            "column cpu_percent: 'nan' is not a finite",
        ),
        (
            HEADER + "2025-01-06T10:00:00Z,a,1,inf,0,0\n",
            2,
            "column memory_percent: 'inf' is not a finite",
        ),
        (
            HEADER + "2025-01-06T10:00:00Z,a,1,2,0,maybe\n",
            2,
            "column label: 'maybe' is not a label",
        ),
        (
            HEADER + "2025-01-06T10:00:00,a,1,2,0,0\n",
            2,
            "column time: '2025-01-06T10:00:00' has no time zone",
        ),
        (HEADER + "yesterday,a,1,2,0,0\n", 2, "column time: 'yesterday' is not RFC 3339"),
        ("time,cpu_pct\n1,2\n", 1, "unknown column(s) 'cpu_pct'"),
        ("cpu_percent,cpu_percent\n1,2\n", 1, "column 'cpu_percent' appears twice"),
        ("time,host\n1,a\n", 1, "no feature columns"),
        ('cpu_percent\n"1\n', 2, "malformed CSV"),
    ],
)
def test_csv_errors_name_line_and_column(tmp_path: Path, text: str, line: int, needle: str) -> None:
    path = _write(tmp_path, "bad.csv", text)
    err = _error(path)
    assert err.line == line
    assert str(err).startswith(f"{path}:{line}: ")
    assert needle in str(err)


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ('{"cpu_percent": 1}\n{"cpu_percent": 2\n', 2, "invalid JSON"),
        ('{"cpu_percent": 1}\n[1, 2]\n', 2, "expected a JSON object per line"),
        (
            '{"cpu_percent": 1}\n{"cpu_percent": "high"}\n',
            2,
            "column cpu_percent: 'high' is not a number",
        ),
        (
            '{"cpu_percent": 1}\n{"cpu_percent": null}\n',
            2,
            "column cpu_percent: missing value (null)",
        ),
        ('{"cpu_percent": 1}\n{"cpu_percent": true}\n', 2, "column cpu_percent: expected a number"),
        ('{"cpu_percent": 1, "host": "a"}\n\n{"host": "b"}\n', 3, "column cpu_percent: missing"),
        ('{"cpu_percent": 1}\n{"cpu_percent": 1, "host": "a"}\n', 2, "host not on the first line"),
        ('{"cpu_percent": 1}\n{"cpu_percent": 1, "bogus": 1}\n', 2, "unknown column(s) 'bogus'"),
        ('{"cpu_percent": 1, "host": 7}\n', 1, "column host: expected a string"),
    ],
)
def test_jsonl_errors_name_line_and_column(
    tmp_path: Path, text: str, line: int, needle: str
) -> None:
    path = _write(tmp_path, "bad.jsonl", text)
    err = _error(path)
    assert err.line == line, str(err)
    assert needle in str(err)


def test_requested_features_and_labels(tmp_path: Path) -> None:
    path = _write(tmp_path, "w.csv", "cpu_percent,memory_percent\n1,2\n")
    err = _error(path, features=["cpu_percent", "failed_logins"])
    assert "missing feature column(s) failed_logins" in str(err)
    assert err.line == 1
    err = _error(path, require_labels=True)
    assert "no label column" in str(err)
    err = _error(path, features=["cpu_percent", "nope"])
    assert "unknown feature(s) 'nope'" in str(err)
    w = read_windows([path], features=["memory_percent"])
    assert w.features == ("memory_percent",)
    assert w.values.tolist() == [[2.0]]


def test_files_must_share_the_features(tmp_path: Path) -> None:
    a = _write(tmp_path, "a.csv", "cpu_percent,memory_percent\n1,2\n")
    b = _write(tmp_path, "b.jsonl", '{"cpu_percent": 3}\n')
    with pytest.raises(DataFormatError, match=r"b\.jsonl:1: missing feature column\(s\) memory"):
        read_windows([a, b])


def test_empty_and_unreadable_files(tmp_path: Path) -> None:
    assert "empty file" in str(_error(_write(tmp_path, "e.csv", "")))
    assert "no rows" in str(_error(_write(tmp_path, "h.csv", "cpu_percent\n")))
    assert "cannot read" in str(_error(tmp_path / "missing.csv"))
    raw = tmp_path / "bin.csv"
    raw.write_bytes(b"cpu_percent\n1\n\xff\xfe\n")
    err = _error(raw)
    assert err.line == 3
    assert "not UTF-8" in str(err)


def test_formats_round_trip_and_hash_alike(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = np.column_stack(
        [rng.uniform(0, 100, 50), rng.normal(size=50) * 1e9, rng.poisson(3, 50).astype(float)]
    )
    times = np.float64(1736157600.0) + np.float64(300.0) * np.arange(50, dtype=np.float64)
    labels = np.arange(50) % 7 == 0
    w = Windows(
        features=("cpu_percent", "network_bytes_out", "failed_logins"),  # schema order
        values=values,
        times=times,
        hosts=tuple(f"h{i % 3}" for i in range(50)),
        labels=labels,
        kinds=tuple("x" if i % 7 == 0 else "normal" for i in range(50)),
    )
    back = {}
    for name in ("w.csv", "w.jsonl"):
        write_windows(tmp_path / name, w)
        back[name] = read_windows([tmp_path / name])
    for r in back.values():
        assert r.features == w.features
        assert np.array_equal(r.values, values)  # repr() keeps every float exact
        assert r.times is not None
        assert np.array_equal(r.times, times)
        assert r.hosts == w.hosts
        assert r.kinds == w.kinds
        assert r.labels is not None
        assert np.array_equal(r.labels, labels)
        assert r.data_blake3() == w.data_blake3()
    assert back["w.csv"].sources[0].blake3 != back["w.jsonl"].sources[0].blake3


def test_every_schema_feature_is_a_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "all.csv", ",".join(FEATURES) + "\n" + ",".join(["1"] * 12) + "\n")
    assert read_windows([path]).features == FEATURES
