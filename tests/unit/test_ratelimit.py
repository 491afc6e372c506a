"""mesh.ratelimit: token buckets per key, on a clock the test moves."""

from __future__ import annotations

import pytest

from mesh.errors import ConfigError
from mesh.ratelimit import KeyedBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate_and_keys_apart() -> None:
    clock = Clock()
    buckets = KeyedBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(5)] == [True, True, True, False, False]
    assert buckets.take("b")  # its own bucket
    clock.now += 0.5  # one token back at 2/s
    assert buckets.take("a")
    assert not buckets.take("a")
    clock.now += 60  # refills to the burst, never beyond
    assert [buckets.take("a") for _ in range(4)] == [True, True, True, False]


def test_an_allowed_take_says_how_many_were_refused_since_the_last() -> None:
    clock = Clock()
    buckets = KeyedBuckets(rate=1.0, burst=1, clock=clock)
    assert buckets.take_counting("k") == (True, 0)
    assert [buckets.take_counting("k") for _ in range(4)] == [(False, 0)] * 4
    clock.now += 1
    assert buckets.take_counting("k") == (True, 4)
    clock.now += 1
    assert buckets.take_counting("k") == (True, 0)


def test_memory_is_bounded_and_a_forgotten_key_starts_full() -> None:
    clock = Clock()
    buckets = KeyedBuckets(rate=0.001, burst=1, max_keys=2, clock=clock)
    assert buckets.take("a")
    assert not buckets.take("a")
    assert buckets.take("b")
    assert buckets.take("c")
    assert buckets.take("a")


@pytest.mark.parametrize(
    ("rate", "burst", "field"), [(0, 1, "rate"), (-1, 1, "rate"), (1, 0, "burst")]
)
def test_bad_settings_name_the_field(rate: float, burst: int, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        KeyedBuckets(rate=rate, burst=burst)
