"""A circuit breaker: stop calling what keeps failing, try again after a while.

Used by the ML scorer (one breaker for the ML service) and the playbook deliveries (one per
endpoint). Monotonic time; not thread-safe (each owner uses it from its event loop).
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["CircuitBreaker"]


class CircuitBreaker:
    """Closed until `failures_to_open` failures in a row; then open for `open_for_ns`, after
    which one trial is allowed (half open): its success closes, its failure opens again."""

    def __init__(
        self, failures_to_open: int, open_for_ns: int, clock: Callable[[], int] = time.monotonic_ns
    ) -> None:
        self._threshold = failures_to_open
        self._open_for = open_for_ns
        self._clock = clock
        self._failures = 0
        self._opened_at: int | None = None

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        return self._opened_at is None or self._clock() - self._opened_at >= self._open_for

    def succeeded(self) -> bool:
        """Record a success; True when it closes an open breaker."""
        was_open = self._opened_at is not None
        self._failures = 0
        self._opened_at = None
        return was_open

    def failed(self) -> bool:
        """Record a failure; True when it opens the breaker (not when it was open already)."""
        self._failures += 1
        if self._opened_at is not None:
            self._opened_at = self._clock()  # the trial failed: open again, for as long
            return False
        if self._failures >= self._threshold:
            self._opened_at = self._clock()
            return True
        return False

    def remaining_ns(self) -> int:
        """How long an open breaker stays shut before its trial (0: closed, or trial due)."""
        if self._opened_at is None:
            return 0
        return max(0, self._open_for - (self._clock() - self._opened_at))
