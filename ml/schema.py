"""The host feature schema, version 1, in plain Python.

It mirrors `qsc.ml.v1.HostFeature` (a unit test keeps the two equal): a feature's name is the enum
value's name in lower case without the `HOST_FEATURE_` prefix, in enum order. The schema version
changes only when a feature's meaning changes; new features are appended without a bump because
a model names the features it was trained on and requests name theirs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

SCHEMA_VERSION: Final = 1

FEATURES: Final[tuple[str, ...]] = (
    "cpu_percent",
    "memory_percent",
    "network_bytes_out",
    "network_bytes_in",
    "failed_logins",
    "process_count",
    "exec_rate",
    "distinct_destination_addresses",
    "file_changes",
    "successful_logins",
    "new_listening_ports",
    "privilege_changes",
)

# Columns of a telemetry window that are not features.
TIME_COLUMN: Final = "time"
HOST_COLUMN: Final = "host"
LABEL_COLUMN: Final = "label"
KIND_COLUMN: Final = "kind"


def check_feature_names(names: Iterable[str]) -> tuple[str, ...]:
    """The names as a tuple; ValueError when one is unknown or repeated."""
    out = tuple(names)
    unknown = [n for n in out if n not in FEATURES]
    if unknown:
        raise ValueError(
            f"unknown feature(s) {', '.join(map(repr, unknown))}; schema version "
            f"{SCHEMA_VERSION} has {', '.join(FEATURES)}"
        )
    seen: set[str] = set()
    for name in out:
        if name in seen:
            raise ValueError(f"feature {name!r} is named twice")
        seen.add(name)
    if not out:
        raise ValueError("no features")
    return out


def column_order(model_features: Sequence[str], given: Sequence[str]) -> list[int]:
    """For each model feature, its index in `given`; ValueError naming missing or extra ones."""
    index = {name: i for i, name in enumerate(given)}
    if len(index) != len(given):
        dup = next(n for n in given if given.count(n) > 1)
        raise ValueError(f"feature {dup!r} is named twice")
    missing = [n for n in model_features if n not in index]
    extra = [n for n in given if n not in model_features]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"not model features: {', '.join(extra)}")
        raise ValueError(
            f"{'; '.join(parts)} (the model takes {len(model_features)}: "
            f"{', '.join(model_features)})"
        )
    return [index[n] for n in model_features]
