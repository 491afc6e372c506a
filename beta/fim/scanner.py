"""Full and partial scans: walk the watched paths, observe each file, compare with the baseline.

Three entry points on `Scanner`:

* `snapshot()`: walk and hash everything (for `baseline init`);
* `scan(baseline, quick=False)`: a full scan, every file re-hashed; `quick` re-hashes only files
  whose size, times or inode moved (ctime cannot be set back, so metadata-preserving edits still
  show up), which is what `IntegrityDetection.QUICK_SCAN` means;
* `check(baseline, paths, subtrees)`: the few paths a realtime event named.

A scan first walks (lstat only) to know how many files and bytes lie ahead, then hashes, so the
progress callback can give a rate and an ETA. `io_budget` (bytes/s) meters every chunk read; a
cancelled scan raises `ScanCancelledError`. Unreadable files and directories become `ScanIssue`s,
never exceptions, and a directory that could not be listed never makes its baseline children
look deleted.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from beta.errors import BetaError
from beta.fim import logs
from beta.fim.baseline import Baseline, Change, ChangeKind, Detection, Entry
from beta.fim.config import FimConfig, WatchPath
from beta.fim.metadata import (
    FileType,
    MetaField,
    Observation,
    diff_metadata,
    observe,
)

__all__ = [
    "IoBudget",
    "ScanCancelledError",
    "ScanIssue",
    "ScanProgress",
    "ScanReport",
    "ScanScope",
    "Scanner",
    "compare",
]

# Per-file cost in "bytes" for the ETA and the budget: opening and stat-ing a file costs about as
# much as reading this much of it.
FILE_COST: Final = 16 * 1024
_TIMES: Final = frozenset({MetaField.SIZE, MetaField.MTIME, MetaField.CTIME})
_ROTATION_NOISE: Final = _TIMES | {MetaField.INODE}


class ScanCancelledError(BetaError):
    """The scan was cancelled (the monitor is stopping)."""


@dataclass(frozen=True)
class ScanProgress:
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    current: str
    elapsed: float  # seconds
    rate: float  # bytes/s read so far
    files_rate: float  # files/s so far
    eta: float | None  # seconds left, None until there is a rate
    finished: bool = False


@dataclass(frozen=True)
class ScanIssue:
    """Something a scan could not look at: reported, never fatal."""

    path: str
    reason: str


@dataclass(frozen=True)
class ScanScope:
    """What a scan looked at: every path, or these paths and these subtrees."""

    everything: bool = False
    paths: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    def contains(self, path: str) -> bool:
        if self.everything or path in self.paths:
            return True
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.prefixes)


@dataclass(frozen=True)
class ScanReport:
    detection: Detection
    changes: tuple[Change, ...]
    issues: tuple[ScanIssue, ...]
    scope: ScanScope
    # Accepted churn: baseline entries to replace (a rotated log's new file).
    refreshed: tuple[Entry, ...] = ()
    entries: Mapping[str, Entry] | None = None  # everything seen (snapshot() only)
    # (inode, size) of every log file observed: the realtime monitor's "last seen" sizes.
    log_sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    started: float = 0.0  # time.monotonic() when it started: orders overlapping reports
    time: float = 0.0  # wall clock when it started
    cancelled: bool = False


class IoBudget:
    """A token bucket in bytes/s: `consume` sleeps as needed so reads stay under the rate."""

    def __init__(
        self,
        rate: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("an I/O budget is a positive number of bytes per second")
        self.rate = rate
        # Credit saved while idle is capped at 100 ms of reading (never below one chunk), and
        # a scan starts with none: the rate is a ceiling from the first byte.
        self._burst = max(rate / 10, 1024 * 1024)
        self._clock = clock
        self._sleep = sleep
        self._allow = 0.0
        self._last = clock()
        self._lock = threading.Lock()

    def consume(self, n: int) -> None:
        with self._lock:
            now = self._clock()
            self._allow = min(self._burst, self._allow + (now - self._last) * self.rate)
            self._last = now
            self._allow -= n
            debt = -self._allow
        if debt > 0:
            self._sleep(debt / self.rate)


# --- comparison -----------------------------------------------------------------------------


def _entry(obs: Observation) -> Entry:
    return Entry(obs.path, obs.meta, obs.blake3)


def compare(
    old: Entry | None,
    obs: Observation | None,
    rule: WatchPath,
    *,
    detection: Detection,
    baseline_version: int,
    now: float,
    hashed: bool = True,
    last_size: int | None = None,
) -> tuple[Change | None, Entry | None]:
    """-> (the change, or None; an entry the baseline should take as accepted churn, or None).
    `last_size`: for a log, the size its current inode had when last seen (realtime)."""

    def change(kind: ChangeKind, fields: Iterable[MetaField] = (), detail: str = "") -> Change:
        return Change(
            path=(obs.path if obs else old.path if old else ""),
            kind=kind,
            detection=detection,
            old=old,
            new=_entry(obs) if obs else None,
            fields=tuple(fields),
            baseline_version=baseline_version,
            heal=rule.heal,
            time=now,
            detail=detail,
        )

    if old is None and obs is None:
        return None, None
    if old is None:
        return change(ChangeKind.CREATED), None
    if obs is None:
        if rule.log:
            verdict = logs.classify_missing(old.path, old)
            if verdict is not None:
                return change(ChangeKind.LOG_ROTATED, detail=verdict.detail), None
        return change(ChangeKind.DELETED), None
    ignored = {MetaField(name) for name in rule.ignore}
    fields = [f for f in diff_metadata(old.meta, obs.meta) if f not in ignored]
    old_type, new_type = old.meta.file_type, obs.meta.file_type
    if old_type is not new_type:
        detail = f"type changed: {old_type.value} -> {new_type.value}"
        return change(ChangeKind.CONTENT_CHANGED, fields, detail), None
    if new_type is FileType.DIRECTORY:
        # Entries coming and going move a directory's size and times; they are reported as such.
        fields = [f for f in fields if f not in _TIMES]
        return (change(ChangeKind.METADATA_CHANGED, fields) if fields else None), None
    if new_type is FileType.REGULAR and rule.log:
        check = logs.classify(old, obs, hashed=hashed, last_size=last_size)
        if check is not None:
            kind = check.verdict
            if kind is logs.LogVerdict.GROWTH:
                fields = [f for f in fields if f not in _TIMES]
                # A verified growth moves the baseline up: later edits of what was appended
                # since, and truncation below it, are then caught too.
                grown = hashed and obs.blake3 is not None and obs.meta.size > old.meta.size
                refresh = _entry(obs) if grown and not fields and not check.detail else None
                if fields:
                    return change(ChangeKind.METADATA_CHANGED, fields, check.detail), None
                return None, refresh
            if kind is logs.LogVerdict.ROTATED:
                fields = [f for f in fields if f not in _ROTATION_NOISE]
                refresh = _entry(obs) if obs.blake3 is not None else None
                return change(ChangeKind.LOG_ROTATED, fields, check.detail), refresh
            if kind is logs.LogVerdict.TRUNCATED:
                return change(ChangeKind.LOG_TRUNCATED, fields, check.detail), None
            return change(ChangeKind.CONTENT_CHANGED, fields, check.detail), None
    if new_type is FileType.REGULAR and obs.blake3 is not None and obs.blake3 != old.blake3:
        return change(ChangeKind.CONTENT_CHANGED, fields), None
    if fields:
        return change(ChangeKind.METADATA_CHANGED, fields), None
    return None, None


# --- the scanner ----------------------------------------------------------------------------


@dataclass
class _Work:
    path: str
    rule: WatchPath
    size: int  # from the walk, for progress


@dataclass
class _Walk:
    items: list[_Work] = field(default_factory=list)
    issues: list[ScanIssue] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)  # directories that could not be listed
    seen: set[str] = field(default_factory=set)


class _Meter:
    """Counts files and bytes, applies the budget, and reports progress at most every interval."""

    def __init__(self, scanner: Scanner, files_total: int, bytes_total: int) -> None:
        self.s = scanner
        self.files_total, self.bytes_total = files_total, bytes_total
        self.files = 0
        self.bytes = 0
        self.current = ""
        self.start = scanner._clock()
        self._last = -1.0

    def on_bytes(self, n: int) -> None:
        if self.s._cancel.is_set():
            raise ScanCancelledError("scan cancelled")
        self.bytes += n
        if self.s._budget is not None:
            self.s._budget.consume(n)
        self.tick()

    def file_done(self) -> None:
        self.files += 1
        self.tick()

    def tick(self, *, final: bool = False) -> None:
        if self.s._on_progress is None:
            return
        now = self.s._clock()
        if not final and now - self._last < self.s._progress_interval:
            return
        self._last = now
        elapsed = max(now - self.start, 1e-9)
        rate = self.bytes / elapsed
        done = self.bytes + self.files * FILE_COST
        total = max(self.bytes_total, self.bytes) + max(self.files_total, self.files) * FILE_COST
        eta = 0.0 if final else (elapsed * (total - done) / done if done else None)
        self.s._on_progress(
            ScanProgress(
                files_done=self.files,
                files_total=max(self.files_total, self.files),
                bytes_done=self.bytes,
                bytes_total=max(self.bytes_total, self.bytes),
                current=self.current,
                elapsed=elapsed,
                rate=rate,
                files_rate=self.files / elapsed,
                eta=eta,
                finished=final,
            )
        )


class Scanner:
    """Walks and compares; one scan at a time per instance (the monitor keeps two: one for
    realtime checks, one for full scans)."""

    def __init__(
        self,
        config: FimConfig,
        *,
        io_budget: int | None = None,
        on_progress: Callable[[ScanProgress], None] | None = None,
        progress_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        rate = config.io_budget if io_budget is None else io_budget
        self._budget = IoBudget(rate, clock=clock, sleep=sleep) if rate else None
        self._on_progress = on_progress
        self._progress_interval = progress_interval
        self._clock = clock
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    # -- walking --

    def _walk_rule(self, rule: WatchPath, walk: _Walk, start: str | None = None) -> None:
        """Collect what `rule` records, from its root or from `start` (a directory inside)."""
        cfg = self.config
        top = start or rule.root
        try:
            st = os.lstat(top)
            dev = st.st_dev if start is None else os.lstat(rule.root).st_dev
        except (FileNotFoundError, NotADirectoryError):
            if start is None:
                walk.issues.append(ScanIssue(top, "watched path does not exist"))
            return
        except OSError as exc:
            walk.issues.append(ScanIssue(top, f"cannot stat: {exc.strerror}"))
            walk.incomplete.append(top)
            return
        is_dir = stat.S_ISDIR(st.st_mode)
        if start is None:
            recorded = cfg.recorded(rule, top, is_dir=is_dir)
        else:
            recorded = cfg.covers(top, is_dir=is_dir) is rule
        if recorded and top not in walk.seen:
            walk.seen.add(top)
            walk.items.append(_Work(top, rule, st.st_size if stat.S_ISREG(st.st_mode) else 0))
        if not is_dir or (start is not None and cfg.walkable(top) is not rule):
            return
        if rule.same_filesystem and st.st_dev != dev:
            return  # a mount point met by a realtime subtree check
        roots = cfg.roots
        stack = [top]
        while stack:
            directory = stack.pop()
            try:
                it = os.scandir(directory)
            except FileNotFoundError:
                continue
            except OSError as exc:
                walk.issues.append(ScanIssue(directory, f"cannot list: {exc.strerror}"))
                walk.incomplete.append(directory)
                continue
            with it:
                for de in it:
                    path = de.path
                    if path in roots:
                        continue  # another rule owns it and walks it
                    try:
                        est = de.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        walk.issues.append(ScanIssue(path, f"cannot stat: {exc.strerror}"))
                        continue
                    child_dir = stat.S_ISDIR(est.st_mode)
                    if child_dir and cfg.excluded(rule, path, is_dir=True):
                        continue  # prunes the subtree
                    if cfg.recorded(rule, path, is_dir=child_dir) and path not in walk.seen:
                        walk.seen.add(path)
                        size = est.st_size if stat.S_ISREG(est.st_mode) else 0
                        walk.items.append(_Work(path, rule, size))
                    if (
                        child_dir
                        and rule.recursive
                        and (not rule.same_filesystem or est.st_dev == dev)
                    ):
                        stack.append(path)

    # -- observing --

    def _examine(
        self,
        path: str,
        rule: WatchPath,
        old: Entry | None,
        *,
        detection: Detection,
        version: int,
        quick: bool,
        meter: _Meter | None,
        issues: list[ScanIssue],
        log_seen: Mapping[str, tuple[int, int]],
        log_sizes: dict[str, tuple[int, int]],
    ) -> tuple[Observation | None, Change | None, Entry | None]:
        if self._cancel.is_set():
            raise ScanCancelledError("scan cancelled")
        on_bytes = meter.on_bytes if meter is not None and self._budget is not None else None
        if self._budget is not None:
            self._budget.consume(FILE_COST // 4)
        hash_content, hashed = True, True
        reuse: bytes | None = None
        last_size: int | None = None
        regular_old = old is not None and old.meta.file_type is FileType.REGULAR
        if (
            old is not None
            and regular_old
            and (quick or (rule.log and detection is Detection.REALTIME))
        ):
            try:
                st = os.lstat(path)
            except OSError:
                st = None
            if st is not None and stat.S_ISREG(st.st_mode):
                m = old.meta
                if rule.log and detection is Detection.REALTIME:
                    seen = log_seen.get(path)
                    if seen is not None and seen[0] == st.st_ino:
                        last_size = seen[1]
                    shrank = last_size is not None and st.st_size < last_size
                    if logs.realtime_skip_hash(old, st.st_ino, st.st_size) and not shrank:
                        hash_content, hashed = False, False
                elif (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == (
                    m.inode,
                    m.size,
                    m.mtime_ns,
                    m.ctime_ns,
                ):
                    hash_content, reuse = False, old.blake3
        prefix_len = old.meta.size if (rule.log and regular_old and old) else None
        try:
            obs = observe(
                path,
                hash_content=hash_content,
                prefix_len=prefix_len if hash_content else None,
                on_bytes=on_bytes,
            )
        except OSError as exc:
            issues.append(ScanIssue(path, f"cannot read: {exc.strerror or exc}"))
            return None, None, None
        if meter is not None:
            if on_bytes is None and obs is not None:
                meter.bytes += obs.bytes_read
            meter.current = path
            meter.file_done()
        if obs is not None and reuse is not None:
            obs = Observation(obs.path, obs.meta, reuse, None, obs.error, 0)
        if obs is not None and obs.error is not None:
            issues.append(ScanIssue(path, obs.error))
        if rule.log and obs is not None and obs.meta.file_type is FileType.REGULAR:
            log_sizes[path] = (obs.meta.inode, obs.meta.size)
        change, refresh = compare(
            old,
            obs,
            rule,
            detection=detection,
            baseline_version=version,
            now=time.time(),
            hashed=hashed and hash_content,
            last_size=last_size,
        )
        return obs, change, refresh

    def _run(
        self,
        walk: _Walk,
        baseline: Baseline | None,
        extra: Iterable[tuple[str, WatchPath]],
        *,
        detection: Detection,
        quick: bool,
        scope: ScanScope,
        keep_entries: bool,
        started: float,
        wall: float,
        log_seen: Mapping[str, tuple[int, int]] | None = None,
    ) -> ScanReport:
        extras = [(p, r) for p, r in extra if p not in walk.seen]
        log_sizes: dict[str, tuple[int, int]] = {}
        total_bytes = sum(w.size for w in walk.items)
        meter = _Meter(self, len(walk.items) + len(extras), total_bytes)
        changes: list[Change] = []
        refreshed: list[Entry] = []
        entries: dict[str, Entry] = {}
        issues = walk.issues
        version = baseline.version if baseline else 0
        cancelled = False
        try:
            for path, rule in [(w.path, w.rule) for w in walk.items] + extras:
                old = baseline.get(path) if baseline else None
                obs, change, refresh = self._examine(
                    path,
                    rule,
                    old,
                    detection=detection,
                    version=version,
                    quick=quick,
                    meter=meter,
                    issues=issues,
                    log_seen=log_seen or {},
                    log_sizes=log_sizes,
                )
                if keep_entries and obs is not None:
                    entries[path] = _entry(obs)
                if change is not None:
                    changes.append(change)
                if refresh is not None:
                    refreshed.append(refresh)
        except ScanCancelledError:
            cancelled = True
        meter.tick(final=True)
        return ScanReport(
            detection=detection,
            changes=tuple(changes),
            issues=tuple(issues),
            scope=scope,
            refreshed=tuple(refreshed),
            entries=entries if keep_entries else None,
            log_sizes=log_sizes,
            files=meter.files,
            bytes=meter.bytes,
            seconds=self._clock() - started,
            started=started,
            time=wall,
            cancelled=cancelled,
        )

    def _missing(
        self, baseline: Baseline, walk: _Walk, candidates: Iterable[Entry]
    ) -> list[tuple[str, WatchPath]]:
        """Baseline entries the walk did not meet, still covered, not under an unlisted
        directory: observed again (deleted, or created since the walk passed)."""
        out: list[tuple[str, WatchPath]] = []
        incomplete = tuple(p.rstrip("/") + "/" for p in walk.incomplete)
        for entry in candidates:
            path = entry.path
            if path in walk.seen or path.startswith(incomplete) or path in walk.incomplete:
                continue
            rule = self.config.covers(path, is_dir=entry.meta.file_type is FileType.DIRECTORY)
            if rule is not None:
                out.append((path, rule))
        return out

    # -- entry points --

    def snapshot(self) -> ScanReport:
        """Walk and hash every watched path: the entries of a new baseline."""
        started, wall = self._clock(), time.time()
        walk = _Walk()
        for rule in self.config.paths:
            self._walk_rule(rule, walk)
        return self._run(
            walk,
            None,
            (),
            detection=Detection.FULL_SCAN,
            quick=False,
            scope=ScanScope(everything=True),
            keep_entries=True,
            started=started,
            wall=wall,
        )

    def scan(
        self, baseline: Baseline, *, quick: bool = False, keep_entries: bool = False
    ) -> ScanReport:
        """Compare every watched path with the baseline."""
        started, wall = self._clock(), time.time()
        walk = _Walk()
        for rule in self.config.paths:
            self._walk_rule(rule, walk)
        missing = self._missing(baseline, walk, baseline.entries.values())
        outside = sum(
            1
            for e in baseline.entries.values()
            if self.config.covers(e.path, is_dir=e.meta.file_type is FileType.DIRECTORY) is None
        )
        if outside:
            walk.issues.append(
                ScanIssue(
                    os.fspath(self.config.baseline),
                    f"{outside} baseline entries are outside the configured paths (the "
                    "configuration changed since `baseline init`); they are not compared",
                )
            )
        return self._run(
            walk,
            baseline,
            missing,
            detection=Detection.QUICK_SCAN if quick else Detection.FULL_SCAN,
            quick=quick,
            scope=ScanScope(everything=True),
            keep_entries=keep_entries,
            started=started,
            wall=wall,
        )

    def check(
        self,
        baseline: Baseline,
        paths: Iterable[str] = (),
        subtrees: Iterable[str] = (),
        *,
        detection: Detection = Detection.REALTIME,
        log_seen: Mapping[str, tuple[int, int]] | None = None,
    ) -> ScanReport:
        """Compare only these paths, and everything at and below these directories.
        `log_seen`: (inode, size) of logs when last seen (from earlier reports' `log_sizes`)."""
        started, wall = self._clock(), time.time()
        walk = _Walk()
        paths, subtrees = set(paths), tuple(sorted(set(subtrees)))
        candidates: list[Entry] = []
        for top in subtrees:
            rule = self.config.rule_for(top)
            if rule is not None:
                self._walk_rule(rule, walk, start=top)
            candidates.extend(baseline.under(top))
        extra: list[tuple[str, WatchPath]] = []
        for path in sorted(paths):
            if path in walk.seen:
                continue
            old = baseline.get(path)
            try:
                is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
            except OSError:
                is_dir = old is not None and old.meta.file_type is FileType.DIRECTORY
            rule = self.config.covers(path, is_dir=is_dir)
            if rule is not None:
                extra.append((path, rule))
        extra += self._missing(baseline, walk, candidates)
        return self._run(
            walk,
            baseline,
            extra,
            detection=detection,
            quick=False,
            scope=ScanScope(paths=frozenset(paths), prefixes=subtrees),
            keep_entries=False,
            started=started,
            wall=wall,
            log_seen=log_seen,
        )
