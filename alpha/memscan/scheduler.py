"""The scan scheduler: periodic rounds in CPU-bounded slices, and scans triggered by the sensor
(on exec, on W+X mmap/mprotect), rate- and queue-bounded.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from alpha.memscan.dedup import Deduper
from alpha.memscan.model import Finding, PidScan, ScanResult, Trigger
from alpha.memscan.scanner import MemoryScanner
from alpha.sensors.model import Kind, MemProtDetail, Observation

log = logging.getLogger(__name__)

_PROT_WRITE: Final = 0x2
_PROT_EXEC: Final = 0x4


FindingsCallback = Callable[[list[Finding]], None]


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    rounds: int = 0
    last_round: ScanResult | None = None
    last_round_end_ns: int | None = None  # wall clock: proves the scheduler is alive
    triggered_scans: int = 0  # on-exec and syscall scans run
    triggered_dropped: int = 0  # refused: queue full or over exec_max_per_second
    triggered_coalesced: int = 0  # already pending or scanned within rescan_interval
    reported: int = 0
    duplicates: int = 0
    callback_errors: int = 0
    worker_errors: int = 0  # unexpected failures of the scan thread (logged), which goes on


@dataclass(order=True, slots=True)
class _Pending:
    due: float
    seq: int
    pid: int = field(compare=False)
    key: tuple[str, Trigger] = field(compare=False)


class ScanScheduler:
    """Runs periodic rounds and triggered scans on one thread and hands new findings (deduped,
    allowlisted ones left out) to `on_findings`, called from that thread.

    `observe(obs)` / `observe_batch(batch)` is the on-exec hook: cheap enough to call with every
    sensor batch (a kind test and, for execs, a heap push)."""

    def __init__(
        self,
        scanner: MemoryScanner,
        on_findings: FindingsCallback,
        *,
        dedup: Deduper | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.scanner = scanner
        self.config = scanner.config
        self.dedup = dedup or Deduper(self.config.dedup_max_entries)
        self._on_findings = on_findings
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._pending_keys: set[tuple[str, Trigger]] = set()
        self._recent: OrderedDict[tuple[str, Trigger], float] = OrderedDict()
        self._seq = 0
        self._tokens = self.config.exec_max_per_second
        self._tokens_at = clock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stats = SchedulerStats()

    # --- lifecycle

    def start(self) -> None:
        """Starts the scan thread; a no-op when `enabled` is false (ScanMemory still works)."""
        if self._thread is not None or not self.config.enabled:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="qsc-memscan", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> ScanScheduler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> SchedulerStats:
        with self._cond:
            return dataclasses.replace(self._stats, duplicates=self.dedup.suppressed)

    # --- triggers

    def observe(self, obs: Observation) -> None:
        kind = obs.kind
        if kind is Kind.EXEC:
            if self.config.exec_scan:
                self.request_scan(obs.pid, _exec_id(obs), Trigger.EXEC)
        elif kind is Kind.MEMPROT and self.config.syscall_scan:
            detail = obs.detail
            wx = _PROT_WRITE | _PROT_EXEC
            if isinstance(detail, MemProtDetail) and detail.prot & wx == wx:
                self.request_scan(obs.pid, _exec_id(obs), Trigger.SYSCALL)

    def observe_batch(self, batch: Iterable[Observation]) -> None:
        for obs in batch:
            if obs.kind is Kind.EXEC or obs.kind is Kind.MEMPROT:
                self.observe(obs)

    def request_scan(self, pid: int, exec_id: str, trigger: Trigger = Trigger.EXEC) -> bool:
        """Schedules a scan of `pid` `exec_delay` from now; False when coalesced or dropped."""
        key = (exec_id or f"pid:{pid}", trigger)
        with self._cond:
            now = self._clock()
            last = self._recent.get(key)
            rescan = self.config.rescan_interval.total_seconds()
            if key in self._pending_keys or (last is not None and now - last < rescan):
                self._bump("triggered_coalesced")
                return False
            rate = self.config.exec_max_per_second
            self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
            self._tokens_at = now
            if len(self._pending) >= self.config.exec_max_pending or self._tokens < 1:
                self._bump("triggered_dropped")
                return False
            self._tokens -= 1
            self._recent[key] = now
            self._recent.move_to_end(key)
            while len(self._recent) > self.config.dedup_max_entries:
                self._recent.popitem(last=False)
            self._seq += 1
            due = now + self.config.exec_delay.total_seconds()
            heapq.heappush(self._pending, _Pending(due, self._seq, pid, key))
            self._pending_keys.add(key)
            self._cond.notify_all()
            return True

    # --- the worker

    def _bump(self, name: str, n: int = 1) -> None:
        # Under self._cond.
        self._stats = dataclasses.replace(self._stats, **{name: getattr(self._stats, name) + n})

    def _next_round_delay(self) -> float:
        interval = self.config.interval.total_seconds()
        return interval * (1 + self._rng.uniform(-self.config.jitter, self.config.jitter))

    def _run(self) -> None:
        cfg = self.config
        next_round = self._clock() + cfg.initial_delay.total_seconds()
        round_pids: list[int] = []
        round_scans: list[PidScan] = []
        round_started = 0.0
        round_busy = 0.0
        next_slice = 0.0
        in_round = False
        while True:
            due: list[_Pending] = []
            do_slice = list_pids = False
            with self._cond:
                while not self._stopping:
                    now = self._clock()
                    while self._pending and self._pending[0].due <= now:
                        item = heapq.heappop(self._pending)
                        self._pending_keys.discard(item.key)
                        due.append(item)
                    if due:
                        break
                    if not in_round and now >= next_round:
                        in_round = True
                        round_pids, round_scans = [], []
                        round_started, round_busy, next_slice = now, 0.0, now
                        do_slice = list_pids = True
                        break
                    if in_round and now >= next_slice:
                        do_slice = True
                        break
                    wake = next_slice if in_round else next_round
                    if self._pending:
                        wake = min(wake, self._pending[0].due)
                    self._cond.wait(max(0.0, wake - now))
                if self._stopping:
                    return
            try:
                for item in due:
                    scan = self.scanner.scan_pid(item.pid, item.key[1])
                    with self._cond:
                        self._bump("triggered_scans")
                    self._report(scan.findings)
            except Exception:  # a bug must not silently end the scans: logged, counted, go on
                log.exception("memscan: triggered scan failed")
                with self._cond:
                    self._bump("worker_errors")
            if not do_slice:
                continue
            t0 = self._clock()
            if list_pids:  # outside the lock: request_scan must never wait on a /proc listing
                round_pids = self.scanner.list_pids()
            batch, round_pids = round_pids[: cfg.slice_size], round_pids[cfg.slice_size :]
            try:
                scans = self.scanner.scan_each(batch, Trigger.PERIODIC)
                round_scans.extend(scans)
                self._report([f for s in scans for f in s.findings])
            except Exception:  # as above: the round goes on with the next slice
                log.exception("memscan: periodic slice failed")
                with self._cond:
                    self._bump("worker_errors")
            spent = self._clock() - t0
            round_busy += spent
            # Pause so that busy time stays under max_cpu_fraction of the wall time.
            next_slice = self._clock() + spent * (1 - cfg.max_cpu_fraction) / cfg.max_cpu_fraction
            if round_pids:
                continue
            in_round = False
            self.dedup.prune(self.scanner.exec_id_of)
            result = ScanResult.collect(round_scans, round_busy)  # busy time, not the pauses
            with self._cond:
                self._stats = dataclasses.replace(
                    self._stats,
                    rounds=self._stats.rounds + 1,
                    last_round=result,
                    last_round_end_ns=time.time_ns(),
                )
            next_round = max(round_started + self._next_round_delay(), self._clock())
            log.debug(
                "memscan round: %d scanned, %d skipped, %d findings in %.1f ms",
                result.scanned,
                result.skipped,
                len(result.findings),
                result.duration_s * 1000,
            )

    def _report(self, findings: Sequence[Finding]) -> None:
        if not findings:
            return
        new = self.dedup.admit(f for f in findings if not f.allowlisted)
        if not new:
            return
        try:
            self._on_findings(new)
        except Exception:  # a consumer bug must not stop the scans; it is counted and logged
            log.exception("memscan: on_findings failed")
            with self._cond:
                self._bump("callback_errors")
            return
        with self._cond:
            self._bump("reported", len(new))


def _exec_id(obs: Observation) -> str:
    return obs.process.exec_id if obs.process is not None else ""
