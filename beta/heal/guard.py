"""The loop guard: a file that keeps being tampered with is reported, not fought forever.

Attempts are counted per (path, baseline version). The first tampering of a version heals at
once; after attempt n the next one waits ``min(initial * 2**(n-1), maximum)`` since the last
attempt; after `max_attempts` nothing is healed for that version again until the baseline
changes (a new version resets the count). A failed attempt counts like a successful one, and
is not retried for the same tampering anyway (the monitor reports each state once). The ledger
is persisted (sealed), so a restart does not reset it: a crash loop cannot become a heal loop.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from beta.heal.sealed_doc import HealStateTamperedError, SealedStateFile
from crypto.keyring import KeyManager
from mesh.backoff import backoff_bound

__all__ = ["BackoffConfig", "LoopGuard"]

_MAX_PATHS: Final = 100_000


@dataclass(frozen=True)
class BackoffConfig:
    initial: timedelta = timedelta(minutes=10)
    maximum: timedelta = timedelta(hours=6)
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if not timedelta(0) < self.initial <= self.maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def wait_after(self, attempts: int) -> float:
        """Seconds to wait after `attempts` (>= 1) attempts (no jitter: one guardian, one file)."""
        return backoff_bound(
            attempts, initial=self.initial.total_seconds(), maximum=self.maximum.total_seconds()
        )


@dataclass(frozen=True)
class _Entry:
    version: int
    attempts: int
    last: float
    last_ok: bool


class LoopGuard:
    """check() before a heal, record() after it. Thread-safe."""

    def __init__(
        self,
        path: Path,
        keys: KeyManager,
        config: BackoffConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or BackoffConfig()
        self._file = SealedStateFile(path, keys, "heal-guard")
        self._clock = clock
        self._lock = threading.Lock()
        self._ledger: dict[str, _Entry] = {}
        doc = self._file.load()
        if doc is not None:
            try:
                self._ledger = {p: _entry(e) for p, e in doc["paths"].items()}
            except (KeyError, TypeError, ValueError, AttributeError):
                raise HealStateTamperedError(f"{path}: malformed ledger") from None

    def attempts(self, path: str, baseline_version: int) -> int:
        with self._lock:
            e = self._ledger.get(path)
            return e.attempts if e is not None and e.version == baseline_version else 0

    def check(self, path: str, baseline_version: int) -> str | None:
        """None if a heal may run now; otherwise why not (for the report)."""
        with self._lock:
            e = self._ledger.get(path)
            if e is None or e.version != baseline_version:
                return None
            now = self._clock()
            if e.attempts >= self.config.max_attempts:
                return (
                    f"healed {e.attempts} times for baseline version {baseline_version} and "
                    "tampered with again: not healing it again until the baseline changes; "
                    "investigate who keeps changing it"
                )
            until = e.last + self.config.wait_after(e.attempts)
            if now < until:
                when = dt.datetime.fromtimestamp(until, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                outcome = "heal" if e.last_ok else "failed heal"
                return (
                    f"tampered with again {max(0.0, now - e.last):.0f}s after {outcome} "
                    f"#{e.attempts}: backing off until {when}"
                )
            return None

    def record(self, path: str, baseline_version: int, *, ok: bool) -> int:
        """Count an attempt; returns the attempts made for this version."""
        with self._lock:
            e = self._ledger.get(path)
            if e is not None and e.version > baseline_version:
                return 0  # a late report about an older baseline
            n = e.attempts + 1 if e is not None and e.version == baseline_version else 1
            ledger = dict(self._ledger)
            ledger[path] = _Entry(baseline_version, n, self._clock(), ok)
            if len(ledger) > _MAX_PATHS:  # bounded: forget the longest-quiet paths
                for old in sorted(ledger, key=lambda p: ledger[p].last)[: len(ledger) - _MAX_PATHS]:
                    del ledger[old]
            doc: dict[str, Any] = {
                "paths": {
                    p: [x.version, x.attempts, x.last, int(x.last_ok)] for p, x in ledger.items()
                }
            }
            self._file.save(doc)
            self._ledger = ledger
            return n


def _entry(item: Any) -> _Entry:
    version, attempts, last, ok = item
    if not (type(version) is int and type(attempts) is int and type(ok) is int) or attempts < 1:
        raise ValueError("malformed ledger entry")
    return _Entry(version, attempts, float(last), bool(ok))
