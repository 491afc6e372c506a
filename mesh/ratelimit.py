"""Token buckets per key (a peer, a peer and a status code), bounded in memory.

    buckets = KeyedBuckets(rate=2.0, burst=8)
    if not buckets.take(peer):          # False: over the rate; refuse before doing the work
        raise ResourceExhaustedError(...)

Used where one authenticated peer could make the server do expensive work or write log lines
as fast as it can send: sealed-session handshakes (`mesh.stream.service`) and the access lines
of refused calls (`mesh.interceptors`). Keys live in an LRU of `max_keys`: a peer pushed out
comes back with a full bucket, which bounds memory and costs at most one extra burst.
Event-loop code only; not thread-safe.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final

from mesh.errors import ConfigError

DEFAULT_MAX_KEYS: Final = 4096


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    denied: int = 0  # takes refused since the last one allowed


class KeyedBuckets:
    """`burst` tokens per key, refilled at `rate` per second."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate > 0:
            raise ConfigError("rate", f"must be positive, got {rate}")
        if burst < 1:
            raise ConfigError("burst", f"must be at least 1, got {burst}")
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._clock = clock
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()

    def take(self, key: Hashable) -> bool:
        """Spend one token of `key`'s bucket; False (and nothing spent) when it is empty."""
        return self.take_counting(key)[0]

    def take_counting(self, key: Hashable) -> tuple[bool, int]:
        """As take(), and when allowed also how many takes were refused since the last allowed
        one (for a log line that says how many it stands for)."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens < 1.0:
            bucket.denied += 1
            return False, 0
        bucket.tokens -= 1.0
        denied, bucket.denied = bucket.denied, 0
        return True, denied
