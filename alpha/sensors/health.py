"""When a sensor calls itself degraded for losing events: a window over its cumulative loss count.

The reason is one constant text on purpose. The guardian's sensor registry emits a sensor-health
event for every change of state *or reasons*, so a loss count inside the text made one event per
monitor tick (every second) for as long as the sensor was overdriven. The counts travel in the
registry's loss counters instead: `GetStatus` shows them, and the runtime's periodic loss report
(`[guardian] loss_report_interval`) carries the exact deltas, aggregated, at most once per
interval. State changes (healthy <-> degraded) are still emitted as they happen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

LOSS_WINDOW_NS: Final = 60_000_000_000
LOSS_REASON: Final = "events lost in the last minute (counts in GetStatus and loss reports)"


class LossWindow:
    """Remembers when a cumulative loss total last grew. Not thread-safe: callers hold their
    own lock (the eBPF sensor's status lock)."""

    def __init__(
        self,
        window_ns: int = LOSS_WINDOW_NS,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._window_ns = window_ns
        self._clock = clock
        self._seen = 0
        self._last_ns: int | None = None

    def observe(self, total: int) -> None:
        """Note the loss total now (cumulative, every stage)."""
        if total > self._seen:
            self._seen = total
            self._last_ns = self._clock()

    def recent(self) -> bool:
        """True while the last loss is less than the window old."""
        return self._last_ns is not None and self._clock() - self._last_ns < self._window_ns

    def reason(self) -> str | None:
        """LOSS_REASON while losses are recent, else None."""
        return LOSS_REASON if self.recent() else None
