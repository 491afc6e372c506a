"""A FimMonitor's listener for tests: the changes it reports (with their arrival times) and its
health observations, and waits on either. Shared by the unit and the integration FIM tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from beta.fim.baseline import Change, ChangeKind
from beta.fim.realtime import HealthObservation


class Recorder:
    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout  # what `wait` and `wait_for` allow unless told otherwise
        self.changes: list[Change] = []
        self.times: list[float] = []  # time.monotonic() when each of `changes` arrived
        self.health: list[HealthObservation] = []
        self.cond = threading.Condition()

    def on_changes(self, changes: Sequence[Change]) -> None:
        now = time.monotonic()
        with self.cond:
            self.changes.extend(changes)
            self.times.extend(now for _ in changes)
            self.cond.notify_all()

    def on_health(self, obs: HealthObservation) -> None:
        with self.cond:
            self.health.append(obs)
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def of(self, path: Path) -> list[Change]:
        with self.cond:
            return [c for c in self.changes if c.path == str(path)]

    def wait_for(self, path: Path, kind: ChangeKind, timeout: float | None = None) -> Change:
        found: list[Change] = []

        def seen() -> bool:
            found[:] = [c for c in self.of(path) if c.kind is kind]
            return bool(found)

        assert self.wait(seen, timeout), (path, kind, [(c.path, c.kind) for c in self.changes])
        return found[-1]

    def wait_past(self, marker: Path, timeout: float | None = None) -> None:
        """Create `marker`, a new file under a watched directory, and wait until it is reported.

        The monitor reads inotify in order on one thread and checks a path `coalesce` after its
        last finished write (close, rename, attribute change), so by then every write finished
        before the marker has been checked: an absence asserted next is not a matter of timing.
        """
        marker.write_text("written after what the test waits past\n")
        self.wait_for(marker, ChangeKind.CREATED, timeout)
