"""The model card: a JSON document beside each model saying what it is and how it was made.

Layout (format `qsc-ml-model-card`, version 1)::

    version            BLAKE3 (hex) of the ONNX file: the model's address and version
    created            when this version was written: trained, or tuned (RFC 3339, UTC)
    trained            when its trees were fitted (a tuned model keeps its parent's)
    parent_version     the model this one was tuned from, or null
    model              file name, bytes, blake3, sha3_256, graph (kind, nodes, trees, ...) and
                       export_check (max |fused - sklearn| on held-out rows)
    features           schema_version and names, in the order the model takes them
    training           rows, time_start/time_end, data_blake3 (see ml.data.Windows.data_blake3),
                       files (path, rows, blake3), labelled_anomalies, and feature_ranges:
                       {feature: [min, max]} over the training rows. The service flags a Score
                       row beyond them (ml.scorer); cards written before ranges were recorded
                       have none, and their rows are not range-checked (the response says so)
    parameters         n_estimators, max_samples, max_samples_effective, contamination,
                       max_features, seed
    offset             scikit-learn's offset_ (decision_function = score_samples - offset)
    threshold          value, source (offset | f1 | target_fpr), metrics on the feedback
    score_distribution training scores: min, max, mean, std and a few quantiles
    calibration        method, description and knots [quantile, score] (ml.calibration)
    promoted           only on a version made newest again by `qsc-ml promote` (a deliberate
                       rollback): time, previous_version (the newest before), reason
    auth               {"seal": base64}: see ml.store

`ModelCard` is the typed view the service needs; `doc` keeps the whole document.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ml.calibration import Calibration
from ml.schema import check_feature_names

FORMAT: Final = "qsc-ml-model-card"
FORMAT_VERSION: Final = 1
THRESHOLD_SOURCES: Final = ("offset", "f1", "target_fpr")
_HEX64: Final = re.compile(r"[0-9a-f]{64}")


def is_version(text: object) -> bool:
    """A model version: 64 lowercase hex digits (a BLAKE3 hash)."""
    return isinstance(text, str) and _HEX64.fullmatch(text) is not None


def format_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: object) -> dt.datetime:
    if not isinstance(text, str):
        raise ValueError("expected an RFC 3339 time string")
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return parsed.astimezone(dt.UTC)


@dataclass(frozen=True)
class ModelCard:
    """The fields of an (already authenticated) card the service uses, plus the document."""

    version: str
    created: dt.datetime
    trained: dt.datetime
    parent_version: str | None
    schema_version: int
    features: tuple[str, ...]
    model_blake3: bytes
    model_sha3_256: bytes
    n_estimators: int
    max_samples: int
    max_features: float
    contamination: float | None  # None: auto
    offset: float
    threshold: float
    threshold_source: str
    calibration: Calibration
    training_rows: int
    training_start: dt.datetime | None
    training_end: dt.datetime | None
    training_data_blake3: bytes
    # Per feature, in `features` order, (min, max) seen in training; None on older cards.
    feature_ranges: tuple[tuple[float, float], ...] | None
    promoted_from: str | None  # the version that was newest when `qsc-ml promote` made this one
    doc: Mapping[str, Any]

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ModelCard:
        """Parse; ValueError or KeyError or TypeError on anything malformed."""
        if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"not a {FORMAT} version {FORMAT_VERSION} document")
        version = doc["version"]
        parent = doc.get("parent_version")
        if not is_version(version) or not (parent is None or is_version(parent)):
            raise ValueError("version and parent_version must be 64 hex digits")
        model, features, training = doc["model"], doc["features"], doc["training"]
        params, threshold = doc["parameters"], doc["threshold"]
        names = check_feature_names(_strs(features["names"]))
        contamination = params["contamination"]
        source = threshold["source"]
        if source not in THRESHOLD_SOURCES:
            raise ValueError(f"threshold source must be one of {', '.join(THRESHOLD_SOURCES)}")
        blake = bytes.fromhex(model["blake3"])
        if blake.hex() != version:
            raise ValueError("model.blake3 is not the version")
        start, end = training.get("time_start"), training.get("time_end")
        ranges = training.get("feature_ranges")
        promoted = doc.get("promoted")
        promoted_from = None if promoted is None else promoted["previous_version"]
        if not (promoted_from is None or is_version(promoted_from)):
            raise ValueError("promoted.previous_version must be 64 hex digits")
        return cls(
            version=version,
            created=parse_time(doc["created"]),
            trained=parse_time(doc["trained"]),
            parent_version=parent,
            schema_version=_int(features["schema_version"]),
            features=names,
            model_blake3=blake,
            model_sha3_256=_digest(model["sha3_256"]),
            n_estimators=_int(params["n_estimators"]),
            max_samples=_int(params["max_samples_effective"]),
            max_features=_float(params["max_features"]),
            contamination=None if contamination == "auto" else _float(contamination),
            offset=_float(doc["offset"]),
            threshold=_float(threshold["value"]),
            threshold_source=source,
            calibration=Calibration.from_json(doc["calibration"]),
            training_rows=_int(training["rows"]),
            training_start=None if start is None else parse_time(start),
            training_end=None if end is None else parse_time(end),
            training_data_blake3=_digest(training["data_blake3"]),
            feature_ranges=None if ranges is None else _ranges(ranges, names),
            promoted_from=promoted_from,
            doc=doc,
        )


def _ranges(value: object, names: tuple[str, ...]) -> tuple[tuple[float, float], ...]:
    if not isinstance(value, Mapping) or set(value) != set(names):
        raise ValueError("training.feature_ranges must name exactly the model's features")
    out = []
    for name in names:
        pair = value[name]
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError(f"training.feature_ranges.{name} must be [min, max]")
        low, high = _float(pair[0]), _float(pair[1])
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ValueError(f"training.feature_ranges.{name} must be finite, min <= max")
        out.append((low, high))
    return tuple(out)


def _strs(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return value


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _digest(value: object) -> bytes:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ValueError("expected 64 hex digits")
    return bytes.fromhex(value)
