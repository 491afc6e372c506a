"""File integrity monitoring as a guardian worker: the realtime monitor, its baseline, its events.

`FimSource` owns the `FimMonitor` and the sensor `fim.inotify`. A supervisor thread loads the
baseline before anything is compared: a missing or tampered baseline leaves the sensor FAILED
(and a tampered or deleted one is a `baseline_tampered` event), and the thread waits for the
file to change (`qsc-beta baseline init`) to try again, so FIM comes back without a restart.
The highest revision seen is sealed in the state directory and handed back as `min_revision`
on the next start: a validly sealed but older baseline put back while Beta was down is refused.

Changes become `file_integrity` events (guardian.emit_many, on the monitor's threads: an
outbox append is short); changes on healable paths go on to `on_tamper` with their event.
`OnDemandScan` runs a scan for `BetaService.ScanIntegrity` with progress, and feeds its report
through the monitor so that each change is still reported once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from beta.errors import BetaBusyError, BetaInvalidArgumentError, BetaUnavailableError
from beta.fim import (
    Baseline,
    BaselineMissingError,
    BaselineStore,
    BaselineStoreError,
    BaselineTamperedError,
    Change,
    ChangeKind,
    Entry,
    FimConfig,
    FimMonitor,
    HealthObservation,
    Scanner,
    ScanProgress,
    ScanReport,
    tampered_change,
)
from beta.fim.baseline import Detection
from beta.fim.convert import apply_health, changes_to_events
from beta.fim.realtime import SENSOR_NAME
from beta.restart_records import RevisionRecord, RevisionRecordError
from crypto.keyring import KeyManager
from mesh.guardian.sensors import SensorHandle, SensorRegistry, SensorState
from mesh.logs import log_event
from qsc.common.v1 import event_pb2

__all__ = ["TAMPER_KINDS", "FimSource", "OnDemandScan", "ScanOutcome"]

_log = logging.getLogger("qsc.beta.fim")
# How often the supervisor looks for a baseline to appear or change while FIM is stopped.
_BASELINE_POLL: Final = 1.0
# What a heal can undo: the content, the file's existence, its mode/owner/xattrs.
TAMPER_KINDS: Final = frozenset(
    {ChangeKind.CONTENT_CHANGED, ChangeKind.DELETED, ChangeKind.METADATA_CHANGED}
)

EmitMany = Callable[[Sequence[event_pb2.Event]], tuple[int, int]]
OnTamper = Callable[[Change, event_pb2.Event], None]


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class ScanOutcome:
    """What an on-demand scan found; `report` is None when the baseline did not verify."""

    report: ScanReport | None
    baseline_version: int = 0
    tampered_reason: str = ""


class FimSource:
    """The FIM worker; see the module docstring."""

    name: Final = "fim"

    def __init__(
        self,
        config: FimConfig,
        keys: KeyManager,
        state_directory: Path,
        emit_many: EmitMany,
        sensors: SensorRegistry,
        *,
        on_tamper: OnTamper | None = None,
    ) -> None:
        self.config = config
        self._keys = keys
        self._emit_many = emit_many
        self._sensors = sensors
        self._on_tamper = on_tamper
        self._record = RevisionRecord(state_directory, config.baseline, keys)
        self._store: BaselineStore | None = None
        self._monitor: FimMonitor | None = None
        self._handle: SensorHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tamper_reported = ""
        self._scan_lock = threading.Lock()
        self.started = threading.Event()  # the monitor runs (tests, status)

    @property
    def enabled(self) -> bool:
        return bool(self.config.paths)

    @property
    def monitor(self) -> FimMonitor | None:
        return self._monitor

    # --- worker -----------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.enabled:
            log_event(_log, "fim: no [[fim.paths]] configured; file integrity is off")
            return
        # DEGRADED until the baseline verified: nothing is being compared yet.
        self._handle = self._sensors.register(
            SENSOR_NAME,
            mode="starting",
            state=SensorState.DEGRADED,
            reasons=("loading the baseline",),
        )
        self._thread = threading.Thread(target=self._supervise, name="fim-supervisor", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
        monitor = self._monitor
        if monitor is not None:
            await asyncio.to_thread(monitor.stop)
            self._persist_revision()

    # --- baseline supervision ---------------------------------------------------------------

    def _supervise(self) -> None:
        handle = self._handle
        assert handle is not None
        try:
            min_revision = self._record.load()
        except RevisionRecordError as exc:
            min_revision = 0
            self._report_tampered(str(exc), handle)
        store = BaselineStore(self.config.baseline, self._keys, min_revision=min_revision)
        self._store = store
        while not self._stop.is_set():
            stamp = _stamp(store.path)
            baseline = self._load(store, handle, had_one=min_revision > 0)
            if baseline is not None:
                try:
                    self._start_monitor(store, baseline)
                except Exception as exc:  # e.g. no inotify at all: say so, do not vanish
                    _log.exception("fim monitor failed to start")
                    handle.failed(f"FIM could not start: {type(exc).__name__}: {exc}")
                return
            # Wait for `baseline init` (a new file) rather than retrying a known failure.
            while not self._stop.wait(_BASELINE_POLL) and _stamp(store.path) == stamp:
                pass

    def _load(
        self, store: BaselineStore, handle: SensorHandle, *, had_one: bool
    ) -> Baseline | None:
        try:
            return store.load()
        except BaselineMissingError:
            if had_one:  # there was a baseline on this host: its disappearance is tampering
                self._report_tampered("baseline deleted", handle)
            else:
                handle.failed(
                    f"no baseline at {store.path}; create it with `qsc-beta baseline init`",
                    mode="stopped",
                )
        except BaselineTamperedError as exc:
            self._report_tampered(exc.reason, handle)
        except BaselineStoreError as exc:
            handle.failed(str(exc), mode="stopped")
        return None

    def _report_tampered(self, reason: str, handle: SensorHandle) -> None:
        handle.failed(
            f"baseline failed verification ({reason}); FIM stopped until it is rebuilt with "
            "`qsc-beta baseline init --force`",
            mode="stopped",
        )
        if reason != self._tamper_reported:  # once per distinct failure, like the monitor
            self._tamper_reported = reason
            self._emit(changes_to_events([tampered_change(self.config.baseline, reason)]))

    def _start_monitor(self, store: BaselineStore, baseline: Baseline) -> None:
        monitor = FimMonitor(
            self.config,
            store,
            baseline=baseline,
            on_changes=self._on_changes,
            on_health=self._on_health,
            on_scan=self._on_scan,
            on_suppressed=self._on_suppressed,
        )
        self._persist_revision()
        monitor.start()
        self._monitor = monitor
        self._tamper_reported = ""
        self.started.set()
        log_event(
            _log,
            "fim started",
            baseline=str(store.path),
            version=baseline.version,
            revision=baseline.revision,
            entries=len(baseline),
        )

    def _persist_revision(self) -> None:
        if self._store is not None:
            self._record.save(self._store.highest_revision)

    # --- monitor callbacks (on the monitor's threads) -----------------------------------------

    def _emit(self, events: list[event_pb2.Event]) -> None:
        if not events:
            return
        self._emit_many(events)
        if self._handle is not None:
            self._handle.count_event(len(events))

    def _on_changes(self, changes: Sequence[Change]) -> None:
        events = changes_to_events(changes)
        self._emit(events)  # stamps each event's id, which a heal refers to
        self._persist_revision()
        if self._on_tamper is None:
            return
        for change, event in zip(changes, events, strict=True):
            if change.heal != "never" and change.kind in TAMPER_KINDS:
                try:
                    self._on_tamper(change, event)
                except Exception:  # a heal problem must not stop FIM reporting
                    _log.exception("heal dispatch failed for %s", change.path)

    def _on_health(self, obs: HealthObservation) -> None:
        if self._handle is not None:
            apply_health(obs, self._handle)

    def _on_scan(self, report: ScanReport) -> None:
        self._persist_revision()
        log_event(
            _log,
            "fim full scan done",
            files=report.files,
            bytes=report.bytes,
            seconds=round(report.seconds, 3),
            changes=len(report.changes),
            issues=len(report.issues),
        )

    def _on_suppressed(self, path: str, entry: Entry | None) -> None:
        self._persist_revision()
        log_event(_log, "fim: Beta's own write not reported", path=path)

    # --- for the heal and the servicer --------------------------------------------------------

    def suppress(self, path: str, expected_blake3: bytes | None) -> None:
        """Beta is about to write `path` (a heal): do not report it."""
        monitor = self._monitor
        if monitor is not None:
            monitor.suppress(path, expected_blake3)

    def baseline(self) -> Baseline:
        """The trusted baseline in use; BetaUnavailableError when FIM is not running."""
        monitor = self._monitor
        if monitor is None:
            if not self.enabled:
                raise BetaUnavailableError("file integrity is not configured ([[fim.paths]])")
            raise BetaUnavailableError(
                "file integrity is stopped: no trusted baseline (see the fim.inotify sensor)"
            )
        return monitor.baseline

    def new_scan(
        self,
        paths: Sequence[str],
        *,
        quick: bool,
        on_progress: Callable[[ScanProgress], None],
        progress_interval: float = 0.5,
    ) -> OnDemandScan:
        """A scan for ScanIntegrity; `run()` it on a thread, `cancel()` it from anywhere."""
        targets = [self._check_path(p) for p in paths]
        return OnDemandScan(self, targets, quick, on_progress, progress_interval)

    def _check_path(self, raw: str) -> str:
        if not raw.startswith("/") or "\0" in raw:
            raise BetaInvalidArgumentError(f"paths: {raw!r} is not an absolute path")
        path = os.path.normpath(raw)
        if self.config.rule_for(path) is None:
            raise BetaInvalidArgumentError(f"paths: {path} is not below a watched path")
        return path

    def _run_scan(self, scan: OnDemandScan) -> ScanOutcome:
        if not self._scan_lock.acquire(blocking=False):
            raise BetaBusyError("an integrity scan is already running; try again when it ends")
        try:
            trusted = self.baseline()
            store = self._store
            assert store is not None
            assert self._monitor is not None
            # The file on disk must still verify; a newer revision (baseline init) is used.
            try:
                disk = store.load()
            except (BaselineTamperedError, BaselineMissingError) as exc:
                reason = exc.reason if isinstance(exc, BaselineTamperedError) else "deleted"
                self._monitor.request_scan("baseline failed verification during ScanIntegrity")
                return ScanOutcome(None, trusted.version, reason)
            baseline = disk if disk.revision > trusted.revision else trusted
            report = scan.scan_with(baseline)
            if report.cancelled:
                return ScanOutcome(report, baseline.version)
            # Beta's own writes (a heal the monitor has not absorbed yet) are no finding.
            own = {id(c) for c in self._monitor.deliver(report)}
            changes = tuple(c for c in report.changes if id(c) not in own)
            return ScanOutcome(dataclasses.replace(report, changes=changes), baseline.version)
        finally:
            self._scan_lock.release()


class OnDemandScan:
    """One ScanIntegrity run: every watched path (or the given ones) against the baseline."""

    def __init__(
        self,
        source: FimSource,
        paths: list[str],
        quick: bool,
        on_progress: Callable[[ScanProgress], None],
        progress_interval: float,
    ) -> None:
        self._source = source
        self._paths = paths
        self.quick = quick and not paths  # a path list is always compared in full
        self._scanner = Scanner(
            source.config, on_progress=on_progress, progress_interval=progress_interval
        )

    def run(self) -> ScanOutcome:
        return self._source._run_scan(self)

    def cancel(self) -> None:
        self._scanner.cancel()

    def scan_with(self, baseline: Baseline) -> ScanReport:
        if not self._paths:
            return self._scanner.scan(baseline, quick=self.quick)
        files: list[str] = []
        dirs: list[str] = []
        for path in self._paths:
            (dirs if os.path.isdir(path) and not os.path.islink(path) else files).append(path)
        return self._scanner.check(baseline, files, dirs, detection=Detection.FULL_SCAN)
