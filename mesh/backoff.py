"""Capped exponential backoff with jitter: the one formula behind every retry and reconnect wait.

For attempt n (1-based)::

    bound(n) = min(maximum, initial * multiplier**(n-1))
    delay(n) = uniform in [(1 - jitter) * bound(n), bound(n)]

``jitter = 1`` is "full jitter" (anywhere in [0, bound]: many clients cut off together do not come
back in lockstep), ``0`` is the bound itself; in between, the lower end keeps a client from
hammering a peer that is down. The policies that use it (`mesh.channel.RetryPolicy`,
`mesh.stream.subscriber.ReconnectPolicy`, Beta's heal `BackoffConfig`) keep their own config
fields and validation, and pass seconds here.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["backoff_bound", "jittered_delay"]


def backoff_bound(
    attempt: int, *, initial: float, maximum: float, multiplier: float = 2.0
) -> float:
    """The longest wait, in seconds, before attempt `attempt` (1-based): the capped exponential."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    try:
        grown = initial * multiplier ** (attempt - 1)
    except OverflowError:  # far past the cap
        return maximum
    return min(maximum, grown)


def jittered_delay(bound: float, jitter: float, rng: Callable[[], float] = random.random) -> float:
    """A wait uniform in [(1 - jitter) * bound, bound]; `rng` returns floats in [0, 1) and is
    not drawn from without jitter."""
    return bound * (1.0 - jitter * rng()) if jitter else bound
