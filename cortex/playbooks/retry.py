"""What a delivery attempt's outcome means, and when to try again.

    verdict = judge(status=503, retry_after="120", error=None)   # Outcome.RETRY, 120 s asked
    when = schedule.next_delay(attempt=3, asked=verdict.retry_after_s, rng=random.random)

Outcomes (Standard Webhooks' receiver conventions): 2xx delivered; 410 Gone disables the
endpoint (the receiver says it will never take these again); 429 and 5xx, timeouts and
connection failures are retried; any other 4xx fails the delivery at once (a
request the receiver refuses will not pass by repeating it); 3xx is a failure too, since
redirects are not followed (egress goes only to the endpoints listed in the configuration).

The schedule is Standard Webhooks' (as Svix and the spec's reference implementations use it):
retries 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h after each failure, about 27.5 hours in
all, each delay spread by +-20% jitter so a fleet of retries does not arrive in step. A
receiver's Retry-After (seconds or an HTTP date) is honoured when it asks for longer, capped at
`max_retry_after`. Configurable per Cortex.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_SCHEDULE",
    "Judgement",
    "Outcome",
    "RetrySchedule",
    "judge",
    "parse_retry_after",
]

DEFAULT_SCHEDULE: Final = (
    dt.timedelta(seconds=5),
    dt.timedelta(minutes=5),
    dt.timedelta(minutes=30),
    dt.timedelta(hours=2),
    dt.timedelta(hours=5),
    dt.timedelta(hours=10),
    dt.timedelta(hours=10),
)
JITTER: Final = 0.2


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"  # refused for good: dead letter
    ENDPOINT_GONE = "endpoint_gone"  # 410: the endpoint is disabled


@dataclass(frozen=True)
class Judgement:
    outcome: Outcome
    reason: str
    retry_after_s: float | None = None


def parse_retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), None when absent
    or unreadable (then the schedule alone decides)."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    now = now or dt.datetime.now(dt.UTC)
    return max(0.0, (when - now).total_seconds())


def judge(
    status: int | None, *, retry_after: str | None = None, error: str | None = None
) -> Judgement:
    """The outcome of one attempt: the HTTP status it got, or None with `error` (timeout,
    refused connection, TLS failure)."""
    if status is None:
        return Judgement(Outcome.RETRY, error or "no response")
    if 200 <= status < 300:
        return Judgement(Outcome.DELIVERED, f"HTTP {status}")
    if status == 410:
        return Judgement(Outcome.ENDPOINT_GONE, "HTTP 410 Gone: the endpoint is disabled")
    if status == 429 or 500 <= status < 600:
        return Judgement(Outcome.RETRY, f"HTTP {status}", parse_retry_after(retry_after))
    if 300 <= status < 400:
        return Judgement(Outcome.FAILED, f"HTTP {status}: redirects are not followed")
    return Judgement(Outcome.FAILED, f"HTTP {status}: refused by the receiver")


@dataclass(frozen=True)
class RetrySchedule:
    delays: tuple[dt.timedelta, ...] = DEFAULT_SCHEDULE
    jitter: float = JITTER
    max_retry_after: dt.timedelta = dt.timedelta(hours=24)

    def __post_init__(self) -> None:
        if any(d <= dt.timedelta(0) for d in self.delays):
            raise ValueError("retry delays must be positive")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    @property
    def attempts(self) -> int:
        """Attempts in all: the first and one per delay."""
        return len(self.delays) + 1

    def next_delay(
        self, attempt: int, *, asked_s: float | None, rng: Callable[[], float]
    ) -> float | None:
        """Seconds to wait after failed attempt number `attempt` (1 = the first), or None when
        the schedule is spent (the delivery becomes a dead letter)."""
        if attempt < 1:
            raise ValueError("attempts count from 1")
        if attempt > len(self.delays):
            return None
        base = self.delays[attempt - 1].total_seconds()
        delay = base * (1 + self.jitter * (2 * rng() - 1))
        if asked_s is not None:
            delay = max(delay, min(asked_s, self.max_retry_after.total_seconds()))
        return delay
