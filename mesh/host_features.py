"""The host feature schema as the guardians and the Cortex see it, without the ML service.

Alpha measures these features per host window and the Cortex exports them; only `ml/` (the
model's side) knows more (`ml.schema`: units, descriptions). The names come from
`qsc.ml.v1.HostFeature`, in enum number order, lower case without the `HOST_FEATURE_` prefix, so
the proto stays the one place a feature is declared; a test keeps this equal to `ml.schema`.
"""

from __future__ import annotations

import math
from typing import Final

from qsc.ml.v1 import host_features_pb2

__all__ = ["FEATURES", "FLOAT32_MAX", "PERCENT_FEATURES", "SCHEMA_VERSION", "high", "in_domain"]

SCHEMA_VERSION: Final = 1
_PREFIX: Final = "HOST_FEATURE_"
FEATURES: Final = tuple(
    v.name.removeprefix(_PREFIX).lower()
    for v in sorted(host_features_pb2.HostFeature.DESCRIPTOR.values, key=lambda v: v.number)
    if v.number != 0
)
PERCENT_FEATURES: Final = frozenset({"cpu_percent", "memory_percent"})
FLOAT32_MAX: Final = 3.4028234663852886e38  # the largest finite float32: models take float32


def high(name: str) -> float:
    """The largest value feature `name` can take (every feature's lowest is 0)."""
    return 100.0 if name in PERCENT_FEATURES else FLOAT32_MAX


def in_domain(name: str, value: float) -> bool:
    """Whether `value` is one feature `name` can take; False for NaN and infinities."""
    return math.isfinite(value) and 0.0 <= value <= high(name)
