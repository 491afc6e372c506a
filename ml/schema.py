"""The host feature schema, version 1, in plain Python.

The feature list is read from `qsc.ml.v1.HostFeature` at import, so the proto is the one place a
feature is declared: a feature's name is the enum value's name in lower case without the
`HOST_FEATURE_` prefix, in enum number order (numbers are never reused or renumbered, so a
published feature keeps its position). The schema version changes only when a feature's meaning
changes; new features are appended without a bump because a model names the features it was
trained on and requests name theirs. Every feature needs its domain in `DOMAINS` here: a new enum
value without one fails this module's import, not a Score call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from google.protobuf.descriptor import EnumDescriptor

from qsc.ml.v1 import host_features_pb2

SCHEMA_VERSION: Final = 1

_ENUM_PREFIX: Final = "HOST_FEATURE_"


def feature_names(enum: EnumDescriptor) -> tuple[str, ...]:
    """The feature names an enum declares, in number order, without its unspecified value 0."""
    values = sorted((v for v in enum.values if v.number != 0), key=lambda v: v.number)
    for value in values:
        if not value.name.startswith(_ENUM_PREFIX):
            raise ValueError(f"{enum.full_name}.{value.name} lacks the {_ENUM_PREFIX} prefix")
    return tuple(v.name.removeprefix(_ENUM_PREFIX).lower() for v in values)


FEATURES: Final = feature_names(host_features_pb2.HostFeature.DESCRIPTOR)

# The largest finite float32: models take float32 (as scikit-learn does), so a larger value would
# reach the forest as infinity, which no tree split can order sensibly.
FLOAT32_MAX: Final = 3.4028234663852886e38


@dataclass(frozen=True)
class FeatureDomain:
    """The values a feature can take by its definition (not what training saw: see the card's
    `training.feature_ranges`). A value outside is a broken or forged input, never a host state."""

    minimum: float
    maximum: float
    unit: str

    def allows(self, value: float) -> bool:
        return self.minimum <= value <= self.maximum  # False for NaN too

    def describe(self) -> str:
        if self.maximum >= FLOAT32_MAX:
            return f"a {self.unit} >= {self.minimum:g} (and at most {FLOAT32_MAX:g})"
        return f"a {self.unit} in [{self.minimum:g}, {self.maximum:g}]"


_PERCENT: Final = FeatureDomain(0.0, 100.0, "percentage")
_COUNT: Final = FeatureDomain(0.0, FLOAT32_MAX, "count")
_RATE: Final = FeatureDomain(0.0, FLOAT32_MAX, "rate per second")

# The domain of every feature, from its definition in `qsc.ml.v1.HostFeature` (checked below:
# every feature has one, and only features do). Keyed by name, so the feature list can grow
# without touching this table except to add the new feature's domain.
DOMAINS: Final[Mapping[str, FeatureDomain]] = {
    "cpu_percent": _PERCENT,
    "memory_percent": _PERCENT,
    "network_bytes_out": _COUNT,
    "network_bytes_in": _COUNT,
    "failed_logins": _COUNT,
    "process_count": _COUNT,
    "exec_rate": _RATE,
    "distinct_destination_addresses": _COUNT,
    "file_changes": _COUNT,
    "successful_logins": _COUNT,
    "new_listening_ports": _COUNT,
    "privilege_changes": _COUNT,
}
if set(DOMAINS) != set(FEATURES):
    raise ImportError(
        f"ml.schema.DOMAINS does not match qsc.ml.v1.HostFeature: no domain for "
        f"{sorted(set(FEATURES) - set(DOMAINS)) or '-'}, no feature for "
        f"{sorted(set(DOMAINS) - set(FEATURES)) or '-'}"
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
