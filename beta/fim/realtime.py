"""Realtime FIM: inotify watches, coalescing, periodic full scans, degraded mode, suppression.

`FimMonitor` runs two threads. The **event thread** reads inotify (`beta.fim.inotify`: libc by
ctypes, no dependency) and keeps a pending set of dirty paths; a path is checked against the
baseline once its burst settles (see `FimConfig.coalesce`/`settle`/`max_delay`), so a thousand
writes to one file cost one hash. New directories are watched as they appear and their content
checked at once (files created before the watch existed are not missed). The **scan thread** runs
the full scans: at start, on the `full_scan_interval` schedule, and on demand.

Loss is never silent. An inotify queue overflow (IN_Q_OVERFLOW) or the watch limit (ENOSPC from
inotify_add_watch) turns the sensor DEGRADED through `on_health`, with the reason, and starts a
full rescan that also re-adds missing watches; the overflow case returns to HEALTHY once a scan
that started after the last overflow has finished, the watch-limit case once every directory is
watched again (full scans run every `degraded_scan_interval` meanwhile).

Every reported change is compared with the authenticated baseline, and reported once per
distinct state: a path that stays tampered is not re-reported by every scan, one that changes
again is, one that returns to the baseline is forgotten. Beta's own writes are announced with
`suppress(path, expected_hash)`: an observation of that path whose content hash is the expected
one and whose metadata matches the baseline (inode and times aside: a restore cannot keep them)
raises no event, and the baseline entry takes the new inode and times. A healer should set mode,
owner and xattrs on its temporary file *before* renaming it into place.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import select
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from beta.fim.baseline import (
    Baseline,
    BaselineMissingError,
    BaselineStore,
    BaselineStoreError,
    BaselineTamperedError,
    Change,
    ChangeKind,
    Detection,
    Entry,
    tampered_change,
)
from beta.fim.config import FimConfig, WatchPath
from beta.fim.inotify import (
    DIR_MASK,
    FILE_MASK,
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    IN_UNMOUNT,
    Inotify,
    InotifyEvent,
    InotifyLike,
)
from beta.fim.metadata import VOLATILE_FIELDS
from beta.fim.scanner import Scanner, ScanReport

__all__ = [
    "FimMonitor",
    "HealthObservation",
    "SensorStatus",
]

_log = logging.getLogger("qsc.beta.fim")

# Events after which the file is complete: check soon. A bare IN_MODIFY means a writer may
# still be at work: wait for it to settle.
_READY: Final = (
    IN_CLOSE_WRITE | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE | IN_DELETE_SELF
)
_MAX_QUEUED: Final = "/proc/sys/fs/inotify/max_queued_events"
_MAX_WATCHES: Final = "/proc/sys/fs/inotify/max_user_watches"
SENSOR_NAME: Final = "fim.inotify"


# --- health ---------------------------------------------------------------------------------


class SensorStatus(enum.Enum):
    """The states of `qsc.common.v1.SensorState` the monitor reports."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILED = "failed"


@dataclass(frozen=True)
class HealthObservation:
    """The realtime sensor's state: a degraded mode is reported through this, never only logged.
    The runtime forwards it as a sensor-health event (`beta.fim.convert.apply_health`)."""

    state: SensorStatus
    reasons: tuple[str, ...]
    mode: str  # "inotify", or "scan" when only full scans watch
    kernel_queue_overflows: int  # cumulative
    overflows_delta: int  # since the previous observation
    unwatched_directories: int
    time: float


def _sysctl(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "?"


# --- the monitor ----------------------------------------------------------------------------


@dataclass
class _Pending:
    first: float
    last: float
    ready: bool = False
    subtree: bool = False


@dataclass
class _Known:
    fingerprint: tuple[object, ...]
    started: float


@dataclass
class _Suppression:
    expected: bytes | None
    deadline: float


@dataclass
class MonitorStats:
    watches: int = 0
    unwatched_directories: int = 0
    kernel_queue_overflows: int = 0
    realtime_checks: int = 0
    full_scans: int = 0
    changes_reported: int = 0
    suppressed: int = 0
    last_scan_seconds: float = 0.0
    issues: list[str] = field(default_factory=list)


def _fingerprint(c: Change) -> tuple[object, ...]:
    new = c.new
    return (c.kind, c.fields, new.blake3 if new else None, new.meta if new else None)


OnChanges = Callable[[Sequence[Change]], None]
OnHealth = Callable[[HealthObservation], None]
OnScan = Callable[[ScanReport], None]
OnSuppressed = Callable[[str, Entry | None], None]


class FimMonitor:
    """Watches the configured paths in real time and by periodic full scans; see the module
    docstring. Callbacks run on the monitor's threads: keep them short (queue the events)."""

    def __init__(
        self,
        config: FimConfig,
        store: BaselineStore,
        *,
        on_changes: OnChanges,
        on_health: OnHealth | None = None,
        on_scan: OnScan | None = None,
        on_suppressed: OnSuppressed | None = None,
        baseline: Baseline | None = None,
        initial_scan: bool = True,
        inotify_factory: Callable[[], InotifyLike] = Inotify,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._store = store
        self._on_changes = on_changes
        self._on_health = on_health
        self._on_scan = on_scan
        self._on_suppressed = on_suppressed
        self._baseline = baseline
        self._initial_scan = initial_scan
        self._inotify_factory = inotify_factory
        self._clock = clock
        self._rt_scanner = Scanner(config, io_budget=0, clock=clock)
        self._scanner = Scanner(config, clock=clock)
        self.stats = MonitorStats()

        self._ino: InotifyLike | None = None
        self._lock = threading.Lock()  # watches, health
        self._wd_path: dict[int, str] = {}
        self._path_wd: dict[str, int] = {}
        self._file_wds: set[int] = set()
        self._unwatched: set[str] = set()
        self._pending: dict[str, _Pending] = {}  # event thread only
        self._log_seen: dict[str, tuple[int, int]] = {}  # log -> (inode, size) last seen

        self._deliver_lock = threading.RLock()  # known states, suppressions, the baseline
        self._known: dict[str, _Known] = {}
        self._suppress: dict[str, _Suppression] = {}
        self._tamper_reported: str | None = None

        self._degraded: dict[str, str] = {}  # cause -> reason
        self._failed: str | None = None
        self._last_health: tuple[object, ...] | None = None
        self._reported_overflows = 0
        self._last_overflow = -1.0

        self._stop = threading.Event()
        self._scan_wanted = threading.Event()
        self._scan_reasons: list[str] = []
        self._resync = False
        self._busy = threading.Condition()
        self._scanning = False
        self._checking = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._threads: list[threading.Thread] = []
        self._prepared = False

    # -- public API --

    @property
    def baseline(self) -> Baseline:
        if self._baseline is None:
            raise BaselineMissingError("the monitor has not loaded its baseline yet")
        return self._baseline

    def prepare(self) -> None:
        """Load and verify the baseline and set up the watches, without starting threads.
        Raises BaselineTamperedError (after reporting it) if the baseline does not verify."""
        if self._prepared:
            return
        if self._baseline is None:
            try:
                self._baseline = self._store.load()
            except BaselineTamperedError as exc:
                self._failed = f"baseline failed verification: {exc.reason}; FIM stopped"
                self._report_tampered(exc.reason)
                self._emit_health(force=True)
                raise
        if self.config.realtime and any(r.realtime for r in self.config.paths):
            try:
                self._ino = self._inotify_factory()
            except OSError as exc:
                self._degrade("inotify", f"inotify unavailable ({exc.strerror}); full scans only")
            else:
                for rule in self.config.paths:
                    if rule.realtime:
                        self._watch_rule(rule)
        self._prepared = True
        self._emit_health(force=self._last_health is None)  # announce once, whatever the state

    def start(self) -> None:
        """Prepare (if not done) and start the event and scan threads."""
        self.prepare()
        if self._threads:
            return
        if self._ino is not None:
            self._threads.append(
                threading.Thread(target=self._event_loop, name="fim-inotify", daemon=True)
            )
        self._threads.append(threading.Thread(target=self._scan_loop, name="fim-scan", daemon=True))
        if self._initial_scan:
            self.request_scan("start")
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._scanner.cancel()
        self._rt_scanner.cancel()
        self._scan_wanted.set()
        self._wake()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()
        if self._ino is not None:
            self._ino.close()
            self._ino = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> FimMonitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def request_scan(self, reason: str, *, resync: bool = False) -> None:
        """Run a full scan as soon as the scan thread is free."""
        with self._busy:
            self._scan_reasons.append(reason)
            self._resync = self._resync or resync
            self._scan_wanted.set()
            self._busy.notify_all()

    def deliver(self, report: ScanReport) -> list[Change]:
        """Report a scan run outside the monitor (an on-demand scan with its own progress) as
        if it were the monitor's: suppression, once-per-state reporting and baseline refresh
        apply, so its changes reach `on_changes` only when they are news. Returns the changes
        that were Beta's own writes (announced with `suppress`)."""
        return self._deliver(report)

    def suppress(self, path: str, expected_hash: bytes | None, ttl: float = 10.0) -> None:
        """Beta is about to write `path` so that its content hashes to `expected_hash` (None:
        Beta is deleting it): do not report that write (see the module docstring)."""
        with self._deliver_lock:
            self._suppress[os.path.normpath(path)] = _Suppression(
                expected_hash, self._clock() + ttl
            )

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until no scan is running or wanted and no event is pending (tests, benches)."""
        deadline = self._clock() + timeout
        with self._busy:
            while (
                self._scanning
                or self._checking
                or self._scan_wanted.is_set()
                or self._pending_count() > 0
            ):
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._busy.wait(min(left, 0.05))
        return True

    def _pending_count(self) -> int:
        return len(self._pending)

    # -- watches --

    def _add_watch(self, path: str, mask: int, *, is_file: bool = False) -> None:
        ino = self._ino
        if ino is None:
            return
        try:
            wd = ino.add_watch(path, mask)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return  # gone already: its parent's event covers it
            with self._lock:
                self._unwatched.add(path)
            if exc.errno == errno.ENOSPC:
                every = int(self.config.degraded_scan_interval.total_seconds())
                new = self._degrade(
                    "watch_limit",
                    f"inotify watch limit reached (fs.inotify.max_user_watches="
                    f"{_sysctl(_MAX_WATCHES)}): directories are not watched in real time; "
                    f"full scans every {every}s cover them",
                )
                if new:  # changes in the unwatched directories may have been missed already
                    self.request_scan("inotify watch limit")
                return
            self._degrade("watch_error", f"cannot watch {path} ({exc.strerror}) and maybe others")
            return
        with self._lock:
            self._wd_path.setdefault(wd, path)
            self._path_wd[path] = wd
            self._unwatched.discard(path)
            if is_file:
                self._file_wds.add(wd)

    def _watch_tree(self, top: str) -> None:
        """Watch `top` and every directory below it that a realtime rule walks."""
        stack = [top]
        while stack:
            directory = stack.pop()
            rule = self.config.walkable(directory)
            if rule is None or not rule.realtime:
                continue
            self._add_watch(directory, DIR_MASK)
            if directory != rule.root and not rule.recursive:
                continue
            try:
                root_dev = os.lstat(rule.root).st_dev
                with os.scandir(directory) as it:
                    for de in it:
                        if de.is_dir(follow_symlinks=False):
                            if rule.same_filesystem and de.stat(follow_symlinks=False).st_dev != (
                                root_dev
                            ):
                                continue
                            if rule.recursive or de.path in self.config.roots:
                                stack.append(de.path)
            except OSError:
                continue

    def _watch_rule(self, rule: WatchPath) -> None:
        root = rule.root
        try:
            st = os.lstat(root)
        except OSError:
            st = None
        # The parent sees the root itself replaced, deleted or (re)created: a root directory
        # removed and made again would otherwise go unwatched until the next full scan.
        parent = os.path.dirname(root)
        if parent != root:
            self._add_watch(parent, DIR_MASK)
        if st is not None and stat.S_ISDIR(st.st_mode):
            self._watch_tree(root)
            return
        # A file (or a path yet to appear): a watch on the inode itself also sees writes
        # through other hard links.
        if st is not None and not stat.S_ISLNK(st.st_mode):
            self._add_watch(root, FILE_MASK, is_file=True)

    def _unwatch_under(self, prefix: str) -> None:
        ino = self._ino
        below = prefix.rstrip("/") + "/"
        with self._lock:
            doomed = [p for p in self._path_wd if p == prefix or p.startswith(below)]
            wds = [self._path_wd.pop(p) for p in doomed]
            for wd in wds:
                self._wd_path.pop(wd, None)
        for wd in wds:
            if ino is not None:
                ino.rm_watch(wd)

    def _resync_watches(self) -> None:
        with self._lock:
            self._unwatched.clear()
        for rule in self.config.paths:
            if rule.realtime:
                self._watch_rule(rule)
        with self._lock:
            unwatched = len(self._unwatched)
        if not unwatched:
            self._clear("watch_limit")
            self._clear("watch_error")

    # -- health --

    def _degrade(self, cause: str, reason: str, *, update: bool = False) -> bool:
        """Enter (or stay in) degraded mode for `cause`; one observation per new cause.
        Returns whether the cause is new."""
        with self._lock:
            new = cause not in self._degraded
            if not new and not update:
                return False
            self._degraded[cause] = reason
        self._emit_health()
        return new

    def _clear(self, cause: str) -> None:
        with self._lock:
            had = self._degraded.pop(cause, None)
        if had is not None:
            self._emit_health()

    def _emit_health(self, *, force: bool = False) -> None:
        with self._lock:
            overflows = self.stats.kernel_queue_overflows
            delta = overflows - self._reported_overflows
            reasons = tuple(self._degraded.values())
            if self._failed is not None:
                state, reasons = SensorStatus.FAILED, (self._failed, *reasons)
            elif reasons:
                state = SensorStatus.DEGRADED
            else:
                state = SensorStatus.HEALTHY
            realtime = self._ino is not None
            mode = "inotify" if realtime else "scan"
            key = (state, reasons, mode)
            if not force and key == self._last_health and not delta:
                return
            self._last_health = key
            self._reported_overflows = overflows
            unwatched = len(self._unwatched)
            self.stats.unwatched_directories = unwatched
            self.stats.watches = len(self._path_wd)
        obs = HealthObservation(state, reasons, mode, overflows, delta, unwatched, time.time())
        log = _log.info if state is SensorStatus.HEALTHY else _log.warning
        log("fim sensor %s (%s): %s", state.value, mode, "; ".join(reasons) or "ok")
        if self._on_health is not None:
            self._on_health(obs)

    def _overflow(self) -> None:
        with self._lock:
            self.stats.kernel_queue_overflows += 1
            n = self.stats.kernel_queue_overflows
            self._last_overflow = self._clock()
        self._degrade(
            "overflow",
            f"inotify event queue overflowed (fs.inotify.max_queued_events="
            f"{_sysctl(_MAX_QUEUED)}; {n} overflow(s) so far): events were lost, "
            "full rescan started",
            update=True,
        )
        self.request_scan("inotify queue overflow", resync=True)

    # -- the event thread --

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _event_loop(self) -> None:
        ino = self._ino
        assert ino is not None
        poller = select.poll()
        poller.register(ino.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while not self._stop.is_set():
                poller.poll(self._timeout_ms())
                if self._stop.is_set():
                    break
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                now = self._clock()
                for ev in ino.read_events():
                    self._on_event(ev, now)
                self._process_due(self._clock())
        except Exception:  # the sensor must say it died, not vanish
            _log.exception("fim event thread failed")
            with self._lock:
                self._failed = "inotify event thread crashed; full scans only"
            self._emit_health()

    def _timeout_ms(self) -> int:
        if not self._pending:
            return 1000
        now = self._clock()
        due = min(self._due(p) for p in self._pending.values())
        return max(0, min(1000, int((due - now) * 1000) + 1))

    def _due(self, p: _Pending) -> float:
        cfg = self.config
        wait = (cfg.coalesce if p.ready else cfg.settle).total_seconds()
        return min(p.first + cfg.max_delay.total_seconds(), p.last + wait)

    def _mark(self, path: str, now: float, *, ready: bool, subtree: bool = False) -> None:
        if self.config.rule_for(path) is None:
            return
        p = self._pending.get(path)
        if p is None:
            p = self._pending[path] = _Pending(now, now)
        p.last = now
        p.ready = ready
        p.subtree = p.subtree or subtree

    def _on_event(self, ev: InotifyEvent, now: float) -> None:
        mask = ev.mask
        if mask & IN_Q_OVERFLOW:
            self._overflow()
            return
        with self._lock:
            base = self._wd_path.get(ev.wd)
            is_file_wd = ev.wd in self._file_wds
            if mask & IN_IGNORED:
                # The watched inode is gone (deleted, unmounted) or we removed the watch.
                if base is not None and self._path_wd.get(base) == ev.wd:
                    del self._path_wd[base]
                self._wd_path.pop(ev.wd, None)
                self._file_wds.discard(ev.wd)
        if base is None or mask & IN_IGNORED:
            return
        name = os.fsdecode(ev.name)
        path = base if (is_file_wd or not name) else (base.rstrip("/") + "/" + name)
        ready = bool(mask & _READY)
        if mask & IN_ISDIR and name:
            if mask & (IN_CREATE | IN_MOVED_TO):
                self._watch_tree(path)  # before the check: nothing created inside is missed
                self._mark(path, now, ready=True, subtree=True)
                return
            if mask & (IN_MOVED_FROM | IN_DELETE):
                self._unwatch_under(path)
                self._mark(path, now, ready=True, subtree=True)
                return
        if not name and mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT):
            if mask & IN_MOVE_SELF and not is_file_wd:
                self._unwatch_under(path)
            self._mark(path, now, ready=True, subtree=not is_file_wd)
            return
        self._mark(path, now, ready=ready)

    def _process_due(self, now: float) -> None:
        due = [path for path, p in self._pending.items() if self._due(p) <= now]
        if not due:
            return
        paths: list[str] = []
        subtrees: list[str] = []
        with self._busy:
            self._checking = True
        try:
            for path in due:
                p = self._pending.pop(path)
                (subtrees if p.subtree else paths).append(path)
            self._check(paths, subtrees)
        finally:
            with self._busy:
                self._checking = False
                self._busy.notify_all()

    def _check(self, paths: list[str], subtrees: list[str]) -> None:
        baseline = self._baseline
        if baseline is None:
            return
        self.stats.realtime_checks += 1
        report = self._rt_scanner.check(
            baseline, paths, subtrees, detection=Detection.REALTIME, log_seen=self._log_seen
        )
        # A file root replaced by rename is a new inode: watch it again.
        for path in paths:
            rule = self.config.rule_for(path)
            if rule is not None and rule.root == path and rule.realtime:
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    self._add_watch(path, FILE_MASK, is_file=True)
        for issue in report.issues[:5]:  # also in the next full scan's report (on_scan)
            _log.warning("fim: %s: %s", issue.path, issue.reason)
        self._deliver(report)

    # -- the scan thread --

    def _interval(self) -> float:
        with self._lock:
            degraded = bool(self._degraded) or self._ino is None
        cfg = self.config
        return (cfg.degraded_scan_interval if degraded else cfg.full_scan_interval).total_seconds()

    def _scan_loop(self) -> None:
        next_due = self._clock() + self._interval()
        while not self._stop.is_set():
            self._scan_wanted.wait(max(0.0, next_due - self._clock()))
            if self._stop.is_set():
                break
            with self._busy:
                reasons, self._scan_reasons = self._scan_reasons or ["scheduled"], []
                resync, self._resync = self._resync, False
                self._scan_wanted.clear()
                self._scanning = True
            try:
                self._full_scan(reasons, resync=resync)
            except Exception:
                _log.exception("fim full scan failed")
            finally:
                with self._busy:
                    self._scanning = False
                    self._busy.notify_all()
            next_due = self._clock() + self._interval()

    def _full_scan(self, reasons: list[str], *, resync: bool) -> None:
        started = self._clock()
        _log.info("fim full scan: %s", ", ".join(reasons))
        if self._ino is not None and (resync or self._unwatched):
            self._resync_watches()
        self._verify_stored_baseline()
        baseline = self._baseline
        if baseline is None:
            return
        report = self._scanner.scan(baseline)
        if report.cancelled:
            return
        self.stats.full_scans += 1
        self.stats.last_scan_seconds = report.seconds
        self.stats.issues = [f"{i.path}: {i.reason}" for i in report.issues[:20]]
        self._deliver(report)
        if self._on_scan is not None:
            self._on_scan(report)
        with self._lock:
            overflow_covered = self._last_overflow < started
        if overflow_covered:
            self._clear("overflow")

    def _verify_stored_baseline(self) -> None:
        """The on-disk baseline must still verify; a newer revision (another writer, e.g.
        `baseline init`) is adopted."""
        try:
            disk = self._store.load()
        except (BaselineTamperedError, BaselineMissingError) as exc:
            reason = exc.reason if isinstance(exc, BaselineTamperedError) else "baseline deleted"
            self._report_tampered(reason)
            return
        except BaselineStoreError as exc:
            _log.warning("fim: %s", exc)
            return
        with self._deliver_lock:
            self._tamper_reported = None
            current = self._baseline
            if current is None or disk.revision > current.revision:
                if current is not None and disk.version != current.version:
                    self._known.clear()  # a new known-good state: compare afresh
                self._baseline = disk

    def _report_tampered(self, reason: str) -> None:
        with self._deliver_lock:
            if self._tamper_reported == reason:
                return
            self._tamper_reported = reason
        self.stats.changes_reported += 1
        self._on_changes([tampered_change(self._store.path, reason)])

    # -- delivery --

    def _absorbed(self, c: Change) -> bool:
        s = self._suppress.get(c.path)
        if s is None:
            return False
        if self._clock() > s.deadline:
            del self._suppress[c.path]
            return False
        if s.expected is None:
            return c.kind is ChangeKind.DELETED
        if c.new is None or c.new.blake3 != s.expected:
            return False
        return all(f in VOLATILE_FIELDS for f in c.fields)

    def _deliver(self, report: ScanReport) -> list[Change]:
        """Report what is news; returns the changes absorbed as Beta's own writes."""
        out: list[Change] = []
        absorbed: list[Change] = []
        with self._deliver_lock:
            refresh = list(report.refreshed)
            remove: list[str] = []
            seen: set[str] = set()
            for c in report.changes:
                seen.add(c.path)
                known = self._known.get(c.path)
                if known is not None and known.started > report.started:
                    continue  # a newer observation of this path was already handled
                if self._absorbed(c):
                    absorbed.append(c)
                    if c.new is not None:
                        refresh.append(c.new)
                    else:
                        remove.append(c.path)
                    self._known.pop(c.path, None)
                    continue
                fp = _fingerprint(c)
                if known is not None and known.fingerprint == fp:
                    known.started = report.started
                    continue
                self._known[c.path] = _Known(fp, report.started)
                out.append(c)
            if not report.cancelled:
                for path in [p for p in self._known if p not in seen]:
                    k = self._known[path]
                    if k.started <= report.started and report.scope.contains(path):
                        del self._known[path]  # back to the baseline
            if refresh or remove:
                self._refresh(refresh, remove)
            self._log_seen.update(report.log_sizes)
        self.stats.suppressed += len(absorbed)
        self.stats.changes_reported += len(out)
        if self._on_suppressed is not None:
            for c in absorbed:
                self._on_suppressed(c.path, c.new)
        if out:
            self._on_changes(out)
        return absorbed

    def _refresh(self, upsert: Iterable[Entry], remove: Iterable[str]) -> None:
        """Accepted churn (a log rotation, Beta's own restore) moves the baseline forward."""
        upsert, remove = list(upsert), list(remove)
        current = self._baseline
        if current is None:
            return
        try:
            saved = self._store.update(lambda b: b.evolve(upsert, remove))
        except (BaselineTamperedError, BaselineMissingError, BaselineStoreError) as exc:
            # Keep the trusted copy in memory; the next full scan reports the stored one.
            _log.warning("fim: baseline not updated on disk: %s", exc)
            self._baseline = current.evolve(upsert, remove)
            return
        if saved is not None:
            self._baseline = saved
