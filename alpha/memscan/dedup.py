"""Finding dedup: each (exec_id, kind) reported once, and again only when it grows."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable

from alpha.memscan.model import Finding, ThreatKind


class Deduper:
    """Reports a finding once per (exec_id, kind), and again when it holds something new (a new
    region, another tracer, another library); things going away are not news. Bounded: the
    oldest entries go first, and `prune` forgets processes that exited or exec'd."""

    def __init__(self, max_entries: int = 65536) -> None:
        self._max = max_entries
        self._seen: OrderedDict[tuple[str, ThreatKind], tuple[int, frozenset[Hashable]]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()
        self.suppressed = 0

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, findings: Iterable[Finding]) -> list[Finding]:
        """The findings to report; they are recorded as reported."""
        out: list[Finding] = []
        with self._lock:
            for finding in findings:
                key = (finding.exec_id, finding.kind)
                known = self._seen.get(key)
                if known is not None and finding.identity <= known[1]:
                    self.suppressed += 1
                    continue
                union = finding.identity | (known[1] if known else frozenset())
                self._seen[key] = (finding.pid, union)
                self._seen.move_to_end(key)
                while len(self._seen) > self._max:
                    self._seen.popitem(last=False)
                out.append(finding)
        return out

    def prune(self, exec_id_of: Callable[[int], str | None]) -> int:
        """Forgets entries whose process is gone or runs another program; returns how many."""
        with self._lock:
            entries = [(key, pid) for key, (pid, _) in self._seen.items()]
        current: dict[int, str | None] = {}
        stale = []
        for key, pid in entries:
            if pid not in current:
                current[pid] = exec_id_of(pid)
            if current[pid] != key[0]:
                stale.append(key)
        with self._lock:
            for key in stale:
                self._seen.pop(key, None)
        return len(stale)
