"""mesh.backoff: the capped exponential and the jitter band every retry policy uses."""

from __future__ import annotations

import random

import pytest

from mesh.backoff import backoff_bound, jittered_delay


def test_bound_grows_then_caps_even_far_past_float_range() -> None:
    bounds = [backoff_bound(n, initial=0.1, maximum=2.0) for n in range(1, 7)]
    assert bounds == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0])
    assert backoff_bound(100_000, initial=0.1, maximum=2.0) == 2.0
    assert backoff_bound(3, initial=1.0, maximum=100.0, multiplier=3.0) == 9.0
    with pytest.raises(ValueError, match="1-based"):
        backoff_bound(0, initial=0.1, maximum=2.0)


@pytest.mark.parametrize("jitter", [0.0, 0.25, 1.0])
def test_delay_stays_in_its_band(jitter: float) -> None:
    rng = random.Random(3)
    samples = [jittered_delay(4.0, jitter, rng.random) for _ in range(2000)]
    assert all((1.0 - jitter) * 4.0 <= s <= 4.0 for s in samples)
    if jitter:
        assert min(samples) < (1.0 - jitter) * 4.0 + 0.05 * jitter * 4.0
        assert max(samples) > 4.0 - 0.05 * jitter * 4.0


def test_no_jitter_is_the_bound_and_draws_nothing() -> None:
    def rng() -> float:
        raise AssertionError("drawn")

    assert jittered_delay(1.5, 0.0, rng) == 1.5
    assert jittered_delay(2.0, 1.0, lambda: 0.0) == 2.0
    assert jittered_delay(2.0, 0.5, lambda: 1.0) == 1.0
