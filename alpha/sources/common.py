"""What the Alpha sources share: the monitor period, the late-bound process lookup, a ticker."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Final

from alpha.sensors.model import ProcessInfo

# One logger for every source, the name they logged under as one module.
log = logging.getLogger("qsc.alpha.sources")

MONITOR_INTERVAL_S: Final = 1.0


class LateLookup:
    """A process lookup bound once the sensor (and its process table) exists: the memory
    scanner and the servicer are built before the guardian starts its workers."""

    def __init__(self) -> None:
        self.target: Callable[[int], ProcessInfo | None] | None = None

    def __call__(self, pid: int) -> ProcessInfo | None:
        target = self.target
        return target(pid) if target is not None else None


class Periodic:
    """A daemon thread calling `tick()` every `interval` seconds until stopped."""

    def __init__(self, name: str, interval: float, tick: Callable[[], object]) -> None:
        self._interval = interval
        self._tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # a source bug must not end the source: logged, next round
                log.exception("%s: tick failed", self._thread.name)
            self._stop.wait(self._interval)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
