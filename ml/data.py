"""Telemetry windows: one row per host and time window, read from and written to CSV or JSON lines.

Columns (CSV header, or JSON object keys): feature names of the host feature schema
(`ml.schema.FEATURES`), plus optional `time` (RFC 3339 such as `2025-01-06T10:05:00Z`, or Unix
seconds), `host`, `label` (0/1 or true/false: 1 means the window is a known anomaly) and `kind`
(free text: which anomaly). Any other column is an error, so a misspelt feature cannot be dropped
silently. Every value must be a finite number; a bad one is reported as `FILE:LINE: column NAME:
...`. The format follows the suffix (`.csv`; `.jsonl`, `.ndjson`, `.json`), else the first byte
(`{` means JSON lines).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import numpy as np
import numpy.typing as npt

from crypto.files import write_file_atomic
from crypto.hashing import blake3_256
from crypto.kdf import encode_fields
from ml.errors import DataFormatError
from ml.schema import (
    FEATURES,
    HOST_COLUMN,
    KIND_COLUMN,
    LABEL_COLUMN,
    SCHEMA_VERSION,
    TIME_COLUMN,
    check_feature_names,
)

T = TypeVar("T")
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

JSONL_SUFFIXES: Final = (".jsonl", ".ndjson", ".json")
OTHER_COLUMNS: Final = (TIME_COLUMN, HOST_COLUMN, LABEL_COLUMN, KIND_COLUMN)
_TRUE: Final = frozenset({"1", "true", "yes", "anomaly"})
_FALSE: Final = frozenset({"0", "false", "no", "normal", ""})


@dataclass(frozen=True)
class Windows:
    """Rows of feature values in `features` order, with what else the files said about them."""

    features: tuple[str, ...]
    values: FloatArray  # shape (rows, len(features))
    times: FloatArray | None = None  # Unix seconds per row, when the input had a time column
    hosts: tuple[str, ...] | None = None
    labels: BoolArray | None = None  # True: a known anomaly
    kinds: tuple[str, ...] | None = None
    sources: tuple[SourceFile, ...] = field(default=())

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])

    def time_range(self) -> tuple[dt.datetime, dt.datetime] | None:
        if self.times is None or not len(self.times):
            return None
        return _from_unix(float(self.times.min())), _from_unix(float(self.times.max()))

    def data_blake3(self) -> bytes:
        """BLAKE3 of the schema version, feature names and the float64 matrix (little-endian,
        row-major): the same rows hash alike whichever file format carried them."""
        header = encode_fields("qsc-ml-windows", SCHEMA_VERSION, ",".join(self.features))
        matrix = np.ascontiguousarray(self.values, dtype="<f8").tobytes()
        return blake3_256(header + matrix)


@dataclass(frozen=True)
class SourceFile:
    """One input file: its name, its rows and the BLAKE3 of its bytes."""

    path: str
    rows: int
    blake3: bytes


def _from_unix(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def format_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _parse_time(raw: object) -> float:
    if isinstance(raw, bool):
        raise ValueError("expected a time")
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                parsed = dt.datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"{raw!r} is not RFC 3339 time or Unix seconds") from None
            if parsed.tzinfo is None:
                raise ValueError(f"{raw!r} has no time zone (add Z for UTC)") from None
            value = parsed.timestamp()
    else:
        raise ValueError(f"expected a time, got {type(raw).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{raw!r} is not a finite time")
    return value


def _parse_number(raw: object) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"expected a number, got {str(raw).lower()}")
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            shown = raw if len(raw) <= 40 else raw[:37] + "..."
            raise ValueError(f"{shown!r} is not a number") from None
    elif raw is None:
        raise ValueError("missing value (null)")
    else:
        raise ValueError(f"expected a number, got {type(raw).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{raw!r} is not a finite number")
    return value


def _parse_label(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int | float) and raw in (0, 1):
        return bool(raw)
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{raw!r} is not a label (0/1, true/false)")


def _is_jsonl(path: Path, head: bytes) -> bool:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return False
    if suffix in JSONL_SUFFIXES:
        return True
    return head.lstrip()[:1] == b"{"


@dataclass
class _Columns:
    """Accumulates rows of one file."""

    features: tuple[str, ...]
    values: list[list[float]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    present: frozenset[str] = frozenset()


def _choose_features(
    path: Path, line: int, columns: Iterable[str], wanted: Sequence[str] | None
) -> tuple[tuple[str, ...], frozenset[str]]:
    names = list(columns)
    unknown = [c for c in names if c not in FEATURES and c not in OTHER_COLUMNS]
    if unknown:
        raise DataFormatError(
            path,
            line,
            f"unknown column(s) {', '.join(map(repr, unknown))}; columns are the features of "
            f"schema version {SCHEMA_VERSION} ({', '.join(FEATURES)}) and "
            f"{', '.join(OTHER_COLUMNS)}",
        )
    present = frozenset(names)
    if wanted is None:
        chosen = tuple(f for f in FEATURES if f in present)
        if not chosen:
            raise DataFormatError(path, line, "no feature columns")
    else:
        chosen = tuple(wanted)
        missing = [f for f in chosen if f not in present]
        if missing:
            raise DataFormatError(path, line, f"missing feature column(s) {', '.join(missing)}")
    return chosen, present


def _cell(
    path: Path, line: int, get: Mapping[str, Any], name: str, parse: Callable[[object], T]
) -> T:
    if name not in get:
        raise DataFormatError(path, line, f"column {name}: missing")
    try:
        return parse(get[name])
    except ValueError as exc:
        raise DataFormatError(path, line, f"column {name}: {exc}") from None


def _add_row(cols: _Columns, path: Path, line: int, get: Mapping[str, Any], *, jsonl: bool) -> None:
    cols.values.append([_cell(path, line, get, name, _parse_number) for name in cols.features])
    if TIME_COLUMN in cols.present:
        cols.times.append(_cell(path, line, get, TIME_COLUMN, _parse_time))
    if LABEL_COLUMN in cols.present:
        cols.labels.append(_cell(path, line, get, LABEL_COLUMN, _parse_label))
    for name, texts in ((HOST_COLUMN, cols.hosts), (KIND_COLUMN, cols.kinds)):
        if name in cols.present:
            value = get.get(name)
            if jsonl and value is not None and not isinstance(value, str):
                raise DataFormatError(path, line, f"column {name}: expected a string")
            texts.append("" if value is None else str(value))


def _read_csv(path: Path, text: str, wanted: Sequence[str] | None) -> _Columns:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    cols: _Columns | None = None
    try:
        for record in reader:
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank line
            if header is None:
                header = [c.strip() for c in record]
                dup = next((c for c in header if header.count(c) > 1), None)
                if dup is not None:
                    raise DataFormatError(path, reader.line_num, f"column {dup!r} appears twice")
                features, present = _choose_features(path, reader.line_num, header, wanted)
                cols = _Columns(features, present=present)
                continue
            assert cols is not None
            if len(record) != len(header):
                raise DataFormatError(
                    path,
                    reader.line_num,
                    f"{len(record)} fields, but the header on line 1 has {len(header)}",
                )
            fields = dict(zip(header, record, strict=True))
            _add_row(cols, path, reader.line_num, fields, jsonl=False)
    except csv.Error as exc:
        raise DataFormatError(path, reader.line_num, f"malformed CSV ({exc})") from None
    if cols is None:
        raise DataFormatError(path, None, "empty file (no header line)")
    return cols


def _read_jsonl(path: Path, text: str, wanted: Sequence[str] | None) -> _Columns:
    cols: _Columns | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise DataFormatError(path, number, f"invalid JSON ({reason})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(path, number, "expected a JSON object per line")
        if cols is None:
            # The first object fixes the columns, as a CSV header would.
            features, present = _choose_features(path, number, obj.keys(), wanted)
            cols = _Columns(features, present=present)
        else:
            extra = [k for k in obj if k not in cols.present]
            if extra:
                _choose_features(path, number, obj.keys(), cols.features)  # unknown names first
                raise DataFormatError(
                    path, number, f"column(s) {', '.join(extra)} not on the first line"
                )
        _add_row(cols, path, number, obj, jsonl=True)
    if cols is None:
        raise DataFormatError(path, None, "empty file (no JSON lines)")
    return cols


def read_windows(
    paths: Sequence[Path],
    *,
    features: Sequence[str] | None = None,
    require_labels: bool = False,
) -> Windows:
    """Read and concatenate telemetry files. `features` defaults to the schema features the first
    file has; every file must have them. DataFormatError names file, line and column."""
    if not paths:
        raise DataFormatError("<input>", None, "no input files")
    if features is not None:
        try:
            features = check_feature_names(features)
        except ValueError as exc:
            raise DataFormatError("--features", None, str(exc)) from None
    parts: list[_Columns] = []
    sources: list[SourceFile] = []
    for path in paths:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise DataFormatError(path, None, f"cannot read ({exc.strerror or exc})") from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise DataFormatError(path, line, "not UTF-8 text") from None
        read = _read_jsonl if _is_jsonl(path, raw[:64]) else _read_csv
        cols = read(path, text, features)
        features = cols.features
        parts.append(cols)
        sources.append(SourceFile(str(path), len(cols.values), blake3_256(raw)))
    assert features is not None
    values = np.array([row for p in parts for row in p.values], dtype=np.float64)
    values = values.reshape(-1, len(features))
    if values.shape[0] == 0:
        raise DataFormatError(paths[0], None, "no rows")

    def every(column: str) -> bool:
        return all(column in p.present for p in parts)

    if require_labels and not every(LABEL_COLUMN):
        missing = next(str(paths[i]) for i, p in enumerate(parts) if LABEL_COLUMN not in p.present)
        raise DataFormatError(missing, 1, f"no {LABEL_COLUMN} column (0/1 per row)")
    return Windows(
        features=tuple(features),
        values=values,
        times=np.array([t for p in parts for t in p.times]) if every(TIME_COLUMN) else None,
        hosts=tuple(h for p in parts for h in p.hosts) if every(HOST_COLUMN) else None,
        labels=(
            np.array([lb for p in parts for lb in p.labels], dtype=bool)
            if every(LABEL_COLUMN)
            else None
        ),
        kinds=tuple(k for p in parts for k in p.kinds) if every(KIND_COLUMN) else None,
        sources=tuple(sources),
    )


def _number_text(value: float) -> str:
    # Counts print as integers; repr keeps every other float exact.
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _records(windows: Windows) -> Iterator[dict[str, Any]]:
    for i in range(windows.rows):
        rec: dict[str, Any] = {}
        if windows.times is not None:
            rec[TIME_COLUMN] = format_time(_from_unix(float(windows.times[i])))
        if windows.hosts is not None:
            rec[HOST_COLUMN] = windows.hosts[i]
        for j, name in enumerate(windows.features):
            value = float(windows.values[i, j])
            rec[name] = int(value) if value.is_integer() and abs(value) < 2**53 else value
        if windows.labels is not None:
            rec[LABEL_COLUMN] = int(windows.labels[i])
        if windows.kinds is not None:
            rec[KIND_COLUMN] = windows.kinds[i]
        yield rec


def encode_windows(windows: Windows, *, jsonl: bool) -> bytes:
    """The file content for `windows`, CSV or JSON lines."""
    out = io.StringIO(newline="")
    if jsonl:
        for rec in _records(windows):
            out.write(json.dumps(rec, separators=(",", ":")) + "\n")
        return out.getvalue().encode()
    writer: Any = None
    for rec in _records(windows):
        if writer is None:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(rec.keys())
        writer.writerow(_number_text(v) if isinstance(v, float) else v for v in rec.values())
    return out.getvalue().encode()


def write_windows(path: Path, windows: Windows) -> None:
    """Write CSV or JSON lines after the suffix (see the module docstring), atomically and 0600
    whatever the umask: exported windows describe real hosts' behaviour."""
    jsonl = path.suffix.lower() in JSONL_SUFFIXES
    write_file_atomic(path, encode_windows(windows, jsonl=jsonl), overwrite=True)
