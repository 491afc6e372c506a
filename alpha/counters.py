"""The pipeline's per-stage counts in `GetStatus`, through the guardian's sensor registry.

`SensorStatus` (qsc.guardian.v1) has no free-form counters, but each registry entry carries an
event count and the time it last moved: one entry per stage, named `pipeline.<stage>` with mode
`pipeline`, shows each count and when it last grew. They are counts, not losses: an unmatched
drop is the rules' verdict on a harmless event. Pipeline losses (conversion failures, events the
outbox refused) stay loss counters of the source that fed them (alpha.pipeline).

    counters = PipelineCounters(guardian.sensors)
    pipeline = Pipeline(..., counts=counters.add)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from mesh.guardian.sensors import SensorHandle, SensorRegistry

PREFIX: Final = "pipeline."
MODE: Final = "pipeline"
# alpha.pipeline.PipelineStats fields shown, in pipeline order.
STAGES: Final = (
    "observations",  # handed in by the syscall sensor
    "no_detail",  # without an event kind of their own (forks, W+X maps)
    "candidates",  # converted to events for the rules
    "findings",  # detector findings (memory, sockets, auth, scans from connects)
    "matched",  # events a rule fired on
    "unmatched_dropped",  # sensor events no rule fired on, not emitted
    "emitted",  # appended to the outbox
)


class PipelineCounters:
    """Registers one entry per stage (each announced by a sensor-health event, once)."""

    def __init__(self, registry: SensorRegistry) -> None:
        self._handles: dict[str, SensorHandle] = {
            stage: registry.register(PREFIX + stage, mode=MODE) for stage in STAGES
        }

    def add(self, deltas: Mapping[str, int]) -> None:
        """Add PipelineStats increments; fields not shown here are ignored. Thread-safe."""
        for stage, n in deltas.items():
            handle = self._handles.get(stage)
            if handle is not None and n > 0:
                handle.count_event(n)
