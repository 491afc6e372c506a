"""Beta's scheduled checks as guardian workers: backup verification and certificate checks.

Each runs on a thread of its own (hashing a backup set or waiting on an OCSP responder must
never hold the event loop that serves subscribers), registers a sensor (`backups`, `certs`)
that turns DEGRADED when a check cannot run at all, and emits its results as events. What a
check *finds* (a corrupted backup, a revoked certificate) is an event, not a sensor state.

The same objects serve BetaService's on-demand calls (`verify`, `check`), one verification per
backup set at a time (the rotation cursor is a read-modify-write).

- Backups: every set is verified every `schedule`; when it was last verified survives a
  restart (`beta.restart_records.ScheduleRecord`), so a never-verified set is verified at start
  and a restart neither skips nor repeats a run. Every result is a `backup_integrity` event: a
  passed verification is the evidence that the set was checked.
- Certificates: every watched file is checked at start and every `interval`. A report is emitted
  when it has problems or differs from the last one emitted (new certificate, a problem gone),
  so a healthy certificate is announced once, not every interval.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from beta.backups import Progress, VerifyDepth, VerifyResult, verify_backup_set
from beta.backups.convert import result_to_event
from beta.certs import CertificateChecker, CertificateReport
from beta.certs.convert import report_to_event
from beta.config import BackupSetSection, BackupsSection, CertsSection
from beta.errors import BetaNotFoundError
from beta.restart_records import ScheduleRecord
from crypto.keyring import KeyManager
from mesh.guardian.sensors import SensorHandle, SensorRegistry
from mesh.logs import log_event
from qsc.common.v1 import event_pb2

__all__ = ["BackupVerifier", "CertWatcher"]

_log = logging.getLogger("qsc.beta.sources.scheduled")
_MAX_WAIT: Final = 60.0  # the schedule thread re-checks at least this often

EmitMany = Callable[[Sequence[event_pb2.Event]], tuple[int, int]]


class _StoppingError(Exception):
    """Raised from a progress callback to abandon a verification when Beta stops."""


class _ThreadWorker(abc.ABC):
    """A guardian worker whose loop runs on its own thread until stop()."""

    name = "worker"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abc.abstractmethod
    def _loop(self) -> None:
        """The worker's body; returns when `_stop` is set."""

    def _spawn(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"beta-{self.name}", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)


class BackupVerifier(_ThreadWorker):
    """Scheduled and on-demand verification of the configured backup sets."""

    name = "backups"

    def __init__(
        self,
        config: BackupsSection,
        keys: KeyManager,
        state_directory: Path,
        emit_many: EmitMany,
        sensors: SensorRegistry,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.config = config
        self._sets = config.by_name()
        self._keys = keys
        self._state = state_directory
        self._emit_many = emit_many
        self._sensors = sensors
        self._clock = clock
        self._locks = {name: threading.Lock() for name in self._sets}
        self._handle: SensorHandle | None = None
        self._failing: dict[str, str] = {}  # set -> why its verification could not run

    async def start(self) -> None:
        if not self.config.sets:
            return
        self._handle = self._sensors.register("backups", mode="scheduled")
        if any(s.scheduled for s in self.config.sets):
            self._spawn()

    def verify(
        self, name: str, *, depth: VerifyDepth | None = None, whole_set: bool = False
    ) -> VerifyResult:
        """Verify one set now (waits for a running verification of it), emit the result."""
        backup = self._sets.get(name)
        if backup is None:
            known = ", ".join(sorted(self._sets)) or "none configured"
            raise BetaNotFoundError(f"no backup set named {name!r} (sets: {known})")
        return self._verify(backup, depth, whole_set)

    def _verify(
        self, backup: BackupSetSection, depth: VerifyDepth | None, whole_set: bool
    ) -> VerifyResult:
        def progress(_: Progress) -> None:
            if self._stop.is_set():
                raise _StoppingError

        decrypt = (
            self._keys.decryption_keys(backup.decrypt_purpose) if backup.decrypt_purpose else None
        )
        with self._locks[backup.name]:
            started = self._clock()
            try:
                result = verify_backup_set(
                    backup.root,
                    backup.manifest,
                    self._keys,
                    backup_set=backup.name,
                    depth=depth or VerifyDepth(backup.depth),
                    subset_fraction=backup.subset_fraction,
                    cursor_path=self._state / "backups" / f"{backup.name}.cursor",
                    whole_set=whole_set,
                    decryption_keys=decrypt,
                    progress=progress,
                    max_failures=backup.max_failures,
                    workers=self.config.workers or None,
                )
            except _StoppingError:
                raise
            except Exception as exc:  # it could not run: the sensor says so, then re-raise
                self._set_failing(backup.name, f"{type(exc).__name__}: {exc}")
                raise
            self._set_failing(backup.name, None)
            ScheduleRecord(self._state, backup.name).save(started)
        self._emit_many([result_to_event(result)])
        if self._handle is not None:
            self._handle.count_event()
        log_event(
            _log,
            "backup verified",
            level=logging.INFO if result.passed else logging.WARNING,
            backup_set=backup.name,
            depth=result.depth.value,
            passed=result.passed,
            failures=result.failure_count,
        )
        return result

    def _set_failing(self, name: str, reason: str | None) -> None:
        if reason is None:
            if self._failing.pop(name, None) is None:
                return
        else:
            self._failing[name] = reason
        if self._handle is None:
            return
        if self._failing:
            reasons = [
                f"backup set {n}: verification cannot run: {r}" for n, r in self._failing.items()
            ]
            self._handle.degraded(*reasons)
        else:
            self._handle.healthy()

    def _due(self, backup: BackupSetSection, now: float) -> float:
        last = ScheduleRecord(self._state, backup.name).load()
        if last is None:
            return now  # never verified on this host: now
        # A last time in the future (clock change, an edited file) counts as now.
        return min(last, now) + backup.schedule.total_seconds()

    def _loop(self) -> None:
        now = self._clock()
        due = {s.name: self._due(s, now) for s in self.config.sets if s.scheduled}
        while not self._stop.is_set():
            name = min(due, key=lambda n: due[n])
            wait = due[name] - self._clock()
            if wait > 0:
                self._stop.wait(min(wait, _MAX_WAIT))
                continue
            backup = self._sets[name]
            try:
                self._verify(backup, None, False)
            except _StoppingError:
                return
            except Exception:
                _log.exception("backup set %s: scheduled verification failed to run", name)
            due[name] = self._clock() + backup.schedule.total_seconds()


class CertWatcher(_ThreadWorker):
    """Scheduled and on-demand certificate checks."""

    name = "certs"

    def __init__(
        self,
        config: CertsSection,
        emit_many: EmitMany,
        sensors: SensorRegistry,
        *,
        checker: CertificateChecker | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self._by_path = {w.path: w for w in config.watch}
        self._checker = checker or CertificateChecker(config.policy())
        self._emit_many = emit_many
        self._sensors = sensors
        self._lock = threading.Lock()  # the checker caches trust stores
        self._last: dict[tuple[Path, int], tuple[object, ...]] = {}
        self._handle: SensorHandle | None = None

    async def start(self) -> None:
        if not self.config.watch:
            return
        self._handle = self._sensors.register("certs", mode="scheduled")
        self._spawn()

    def check(
        self, paths: Sequence[Path] = (), *, skip_revocation: bool = False
    ) -> list[CertificateReport]:
        """Check these files (default: every watched one); a file that is not watched is
        checked with the section's defaults. Reports in path order, then index order."""
        targets = list(paths) or [w.path for w in self.config.watch]
        reports: list[CertificateReport] = []
        for path in targets:
            watched = self.config.watched(self._by_path.get(path), path)
            with self._lock:
                reports.extend(self._checker.check(watched, skip_revocation=skip_revocation))
        return reports

    def _loop(self) -> None:
        interval = self.config.interval.total_seconds()
        while not self._stop.is_set():
            try:
                self._round()
            except Exception as exc:  # a bug, not a finding: the sensor says so
                _log.exception("certificate checks failed")
                if self._handle is not None:
                    self._handle.degraded(f"certificate checks failed: {type(exc).__name__}")
            else:
                if self._handle is not None:
                    self._handle.healthy()
            self._stop.wait(interval)

    def _round(self) -> None:
        events: list[event_pb2.Event] = []
        for report in self.check():
            key = (report.path, report.index)
            state = (
                report.sha256_fingerprint,
                report.problems,
                report.revocation.state,
                report.expiry_threshold_days,
            )
            if report.problems or self._last.get(key) != state:
                events.append(report_to_event(report))
            self._last[key] = state
        if events:
            self._emit_many(events)
            if self._handle is not None:
                self._handle.count_event(len(events))
