"""The durable outbox: every guardian event is appended here before anyone sees it.

Guarantees and the decisions behind them:

* **Numbering.** Each event gets the next per-guardian sequence number (from 1) when it is
  appended; ``append_many`` numbers a batch contiguously and writes it with one ``write()``.
  Numbers are gapless except where a gap event names a range.
* **No seq is ever issued twice.** A sequence number once *numbered* (written, whether or not a
  reader has seen it yet) is never given to another event, whatever happens to the segments:
  ``STATE`` (a :mod:`crypto.statefile`, as the nonce counters use) holds a reserved high-water
  mark, raised in blocks and written durably *before* any number of the block is used (a block
  grows while reservations come fast, so appends pay about one durable write a second at most).
  ``SEQ_HINT``, a shared memory map updated after every write (no syscall), holds the exact last
  number with the kernel's boot id: after a ``kill -9`` or a clean stop it is exact, so a reopen
  continues after ``max(last valid record, hint)`` and a tail found shorter than that (cut or
  truncated segments, removed files) is reported by a gap event
  (``GAP_REASON_MISSING_RECORDS``) naming exactly the missing range. After a reboot the hint is
  not trusted: numbering continues after the reserved mark and the gap is an upper bound (a clean
  ``close`` lowers the mark to the last seq, so only an unclean reboot over-reports). A ``STATE``
  that is missing or damaged while segments exist never resets numbering: the outbox logs an
  error, keeps the damaged file as ``STATE.damaged``, continues 2**20 numbers (more than any
  reservation) beyond the last valid record and reports that range as missing (an upper bound).
  So does a ``STATE`` older than the records (restored from a backup).
* **Crash safety.** A record is written with ``os.write`` (no user-space buffer) before ``append``
  returns, so once it returns the bytes are in the kernel page cache and a ``kill -9`` cannot lose
  them, whatever the fsync policy. ``fsync="always"`` also ``fdatasync``s before returning (power
  loss loses nothing acknowledged); ``fsync="interval"`` group-commits one ``fdatasync`` at most
  every ``fsync_interval`` from a background thread (power loss can lose the last interval).
  Nothing is handed to a reader before it is durable: ``read_after`` first group-commits the
  records it is about to return (one ``fdatasync`` covers every record written so far), so a seq
  a subscriber has seen is never reused for another event after a power loss. A sealed segment
  is always synced before the next one is created.
* **Torn tail.** On open the last segment is validated record by record (CRC-32 over length, seq
  and payload; see :mod:`mesh.stream.outbox_segment`). Invalid bytes with no valid record after
  them are a torn tail (an append that never returned): they are cut, logged with the byte count
  and reported as ``status().truncated_bytes``. Numbering continues after the last number ever
  issued (above), so the cut records, if they had been numbered, are reported as missing.
* **Corruption.** Damage *followed by* valid records (in the last segment on open, in a sealed
  segment when it is first read, or anywhere a read finds new damage) is never skipped silently:
  the lost range is logged as an error, counted in ``corrupted_total`` and reported by an
  ordinary gap event (``GAP_REASON_CORRUPTED_RECORDS``) appended at the head of the outbox; reads
  jump over it. Each sequence number is reported once in the outbox's lifetime: the ranges
  reported (those still retained) are kept in ``STATE``, written after the gap event is synced,
  and a later scan, in this process or after a reopen, reports only what they do not cover (a
  crash between the two reports a range twice rather than never).
* **Disk budget.** Before an append would take the segments past ``disk_budget_bytes``, the oldest
  whole segments are dropped. A gap event (``GAP_REASON_DISK_BUDGET``) naming the exact first and
  last seq and the count is written and synced, then ``STATE`` records the drop, *before* the
  files are unlinked; a reopen finishes unlinking what ``STATE`` says was removed, so a crash
  never loses silently nor reports a drop twice. Dropped events count in ``dropped_total``.
* **Lifetime counters.** ``dropped_total``, ``expired_total`` and ``corrupted_total`` count since
  the outbox was created: they live in ``STATE`` and survive restarts.
* **Retention.** Sealed segments whose newest record is older than ``retention`` are deleted
  without a gap event: ageing out is expected, not loss (``STATE`` records the removal first, as
  for the budget). The active segment never expires. A
  subscriber whose cursor is older than the oldest retained record (ageing or budget) gets
  :class:`OutOfRangeError` carrying ``oldest_available_seq``; after a budget drop it then finds the
  gap event further on.
* **Readers** use their own file descriptors and ``pread``; they hold the lock only to take a
  snapshot, so a slow reader never blocks appends, and nothing is ever dropped for a reader.

This module holds :class:`Outbox` (opening and recovery, appending, the disk budget, retention,
reading, waiting), its configuration, status and errors. The parts it is built from:
:mod:`mesh.stream.outbox_segment` (segment files, record framing, scans),
:mod:`mesh.stream.outbox_state` (``STATE``: high-water mark, removal mark, lifetime counters,
reported ranges; ``SEQ_HINT`` and the boot id) and :mod:`mesh.stream.outbox_gaps` (which ranges a
gap event already reported; the gap events).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self

from crypto.errors import StateFileError
from crypto.files import fsync_directory, make_private_dirs
from mesh import errors
from mesh.stream.outbox_gaps import (
    CORRUPTED,
    MISSING,
    Lost,
    claim_unreported,
    gap_event,
    gap_record_upper_bound,
)
from mesh.stream.outbox_segment import (
    HEADER_SIZE,
    SEQ_FIELD_MAX,
    BadRecordError,
    Record,
    Segment,
    frame_into,
    parse_segment_file_name,
    read_records,
    scan,
    segment_file_name,
    seq_field,
)
from mesh.stream.outbox_state import HINT_FILE, STATE_FILE, UNKNOWN_MARGIN, DurableState, SeqHint

# Looked up here at each open, not bound into SeqHint, so a test can fake another boot.
from mesh.stream.outbox_state import boot_id as _boot_id
from qsc.common.v1 import event_pb2, identity_pb2, pipeline_details_pb2

__all__ = [
    "OutOfRangeError",
    "Outbox",
    "OutboxClosedError",
    "OutboxConfig",
    "OutboxError",
    "OutboxLockedError",
    "OutboxStatus",
    "Record",
    "RecordTooLargeError",
]

_log = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
GiB: Final = 1024 * MiB
_LOCK_FILE: Final = "LOCK"
_MIN_SEGMENT_BYTES: Final = 4096
_DEFAULT_SEGMENT_BYTES: Final = 16 * MiB
_MAX_SEGMENT_BYTES: Final = 1 << 31  # the record length field is 32 bits
# How often appends look for expired segments, at most (clock seconds).
_EXPIRY_CHECK_SECONDS: Final = 60.0
# Attempts of one read_after against a changing set of segments or newly found damage.
_READ_ATTEMPTS: Final = 3

FsyncPolicy = Literal["always", "interval"]


class OutboxError(errors.MeshError):
    """Base of the outbox's errors."""


class OutOfRangeError(OutboxError, errors.OutOfRangeError):
    """The cursor is older than the oldest retained record; resume from ``oldest_available_seq``
    (that is, ask for records after ``oldest_available_seq - 1``)."""

    def __init__(self, oldest_available_seq: int) -> None:
        super().__init__(
            f"events before seq {oldest_available_seq} are no longer retained; "
            f"the oldest available is {oldest_available_seq}"
        )
        self.oldest_available_seq = oldest_available_seq


class OutboxClosedError(OutboxError, errors.UnavailableError):
    """The outbox was closed."""


class OutboxLockedError(OutboxError, errors.FailedPreconditionError):
    """Another process has this outbox directory open."""


class RecordTooLargeError(OutboxError, errors.InvalidArgumentError):
    """An event, or a batch, too large for the configured segment size or disk budget."""


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    """How an outbox stores events. Sizes in bytes."""

    segment_bytes: int = _DEFAULT_SEGMENT_BYTES
    disk_budget_bytes: int = 1 * GiB
    # Sealed segments whose newest event is older than this are deleted.
    retention: timedelta = timedelta(days=7)
    # "always": fdatasync before append returns; "interval": group commit every fsync_interval.
    fsync: FsyncPolicy = "interval"
    fsync_interval: timedelta = timedelta(milliseconds=50)
    # One sparse index entry per this many records.
    index_every: int = 64

    def __post_init__(self) -> None:
        if not _MIN_SEGMENT_BYTES <= self.segment_bytes <= _MAX_SEGMENT_BYTES:
            raise errors.ConfigError(
                "outbox.segment_bytes",
                f"must be between {_MIN_SEGMENT_BYTES} and {_MAX_SEGMENT_BYTES}",
            )
        # Room for the active segment, one batch of up to two segments and the dropped ones.
        if self.disk_budget_bytes < 4 * self.segment_bytes:
            # Say what the minimum is with the segment size in force: an operator who only set
            # the budget would otherwise not know the default segment size makes it 64 MiB.
            which = " (the default)" if self.segment_bytes == _DEFAULT_SEGMENT_BYTES else ""
            raise errors.ConfigError(
                "outbox.disk_budget_bytes",
                f"must be at least 4 x outbox.segment_bytes: {self.segment_bytes} bytes"
                f"{which}, so at least {4 * self.segment_bytes} bytes "
                f"({4 * self.segment_bytes / MiB:g} MiB); lower outbox.segment_bytes "
                f"(at least {_MIN_SEGMENT_BYTES}) for a smaller budget",
            )
        if self.retention <= timedelta(0):
            raise errors.ConfigError("outbox.retention", "must be positive")
        if self.fsync not in ("always", "interval"):
            raise errors.ConfigError("outbox.fsync", "must be 'always' or 'interval'")
        if self.fsync_interval <= timedelta(0):
            raise errors.ConfigError("outbox.fsync_interval", "must be positive")
        if self.index_every < 1:
            raise errors.ConfigError("outbox.index_every", "must be at least 1")


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """A consistent snapshot of an outbox."""

    first_seq: int
    last_seq: int
    # Retained sequence numbers, damaged ones included: last_seq - first_seq + 1.
    depth: int
    # Every record up to here has been fdatasync'ed.
    durable_seq: int
    disk_bytes: int
    disk_budget_bytes: int
    segments: int
    # The three totals count since the outbox was created (they survive restarts, in STATE).
    # Events dropped under the disk budget (each range also reported by a gap event).
    dropped_total: int
    # Events deleted by retention (no gap event: ageing is not loss).
    expired_total: int
    # Events lost to on-disk damage or missing from the tail on reopen (each range also reported
    # by a gap event; after an unclean reboot the missing range is an upper bound).
    corrupted_total: int
    # Bytes of torn tail cut when this outbox was opened.
    truncated_bytes: int


class Outbox:
    """A durable, sequence-numbered, segmented event log for one guardian. Thread-safe.

    Use :meth:`open`; close with :meth:`close` (or as a context manager).
    """

    def __init__(
        self,
        directory: Path,
        config: OutboxConfig,
        guardian: identity_pb2.GuardianRef,
        clock: Callable[[], float],
        lock_fd: int,
    ) -> None:
        self._dir = directory
        self._config = config
        self._guardian = guardian
        self._clock = clock
        self._lock_fd = lock_fd
        self._max_payload = config.segment_bytes - HEADER_SIZE
        self._max_body = self._max_payload - SEQ_FIELD_MAX
        self._max_batch_bytes = config.disk_budget_bytes - 2 * config.segment_bytes
        self._lock = threading.Lock()
        # Guards the active fd against being swapped while the flusher syncs it.
        # Order: _lock before _sync_lock.
        self._sync_lock = threading.Lock()
        self._fd = -1
        self._segments: tuple[Segment, ...] = ()
        self._firsts: tuple[int, ...] = ()
        self._last_seq = 0
        self._durable_seq = 0
        self._disk_bytes = 0
        self._truncated_bytes = 0
        # High-water mark, removal mark, lifetime counters, reported ranges: STATE's content.
        self._state = DurableState(directory)
        self._hint: SeqHint | None = None
        # hint.store once the hint is open (a bound method: appends pay one call, no lookups).
        self._store_hint: Callable[[int], None] = _ignore
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event, int]] = []
        self._closed = False
        # Set when a failed append could not be rolled back: appends refused until reopened.
        self._broken = False
        self._next_expiry_check = 0.0
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._gap_upper = gap_record_upper_bound(guardian)

    # -- opening and closing ------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: Path,
        config: OutboxConfig,
        *,
        guardian: identity_pb2.GuardianRef,
        clock: Callable[[], float] = time.time,
    ) -> Outbox:
        """Open (or create, mode 0700) the outbox in ``directory``: cut a torn tail, report
        damage, expire old segments and continue the numbering. ``clock`` gives epoch seconds."""
        created = not directory.exists()
        make_private_dirs(directory)
        os.chmod(directory, 0o700)
        if created:
            fsync_directory(directory.parent)
        lock_fd = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise OutboxLockedError(f"outbox {directory} is open in another process") from None
        outbox = cls(directory, config, guardian, clock, lock_fd)
        try:
            lost = outbox._recover()
            if lost:
                outbox._report_lost(lost)
            outbox._start_flusher()
        except BaseException:
            outbox._release()
            raise
        return outbox

    def _recover(self) -> list[Lost]:
        """Load STATE and the segments, validate the last one, continue the numbering after every
        number ever issued; return the ranges to report (damage, missing tail)."""
        known = self._load_state()
        state = self._state
        hint = SeqHint(self._dir / HINT_FILE, _boot_id())
        self._hint = hint
        exact = hint.read()
        found = sorted(
            (first, entry)
            for entry in self._dir.iterdir()
            if (first := parse_segment_file_name(entry.name)) is not None
        )
        segments: list[Segment] = []
        for i, (first, path) in enumerate(found):
            stat = path.stat()
            last = found[i + 1][0] - 1 if i + 1 < len(found) else None
            segments.append(Segment(first, path, stat.st_size, stat.st_mtime, last_seq=last))
        # A crash between recording a removal (budget, retention) and unlinking: finish it.
        finished = 0
        while len(segments) > 1 and (segments[0].last_seq or 0) <= state.removed_through:
            segments.pop(0).path.unlink(missing_ok=True)
            finished += 1
        if finished:
            fsync_directory(self._dir)
        lost: list[Lost] = []
        if not segments:
            # New, or every segment file was removed behind our back: start after every number
            # STATE or the hint knows of, and report what was retained as missing.
            top = max(state.reserved if exact is None else exact, state.removed_through)
            if not known and top:
                _log.error("outbox %s: segments missing; numbering resumes at %d", self._dir, top)
            if top > state.removed_through:
                lost.append((state.removed_through + 1, top, MISSING))
            path = self._dir / segment_file_name(top + 1)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            fsync_directory(self._dir)
            segments.append(Segment(top + 1, path, 0, self._clock()))
            new = True
        else:
            new = False
        active = segments[-1]
        result = scan(
            active.path.read_bytes(),
            active.first_seq,
            None,
            index_every=self._config.index_every,
            max_payload=self._max_payload,
        )
        self._fd = os.open(active.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        if result.tail_bytes:
            os.ftruncate(self._fd, result.valid_end)
        # After a kill -9 the tail may still be only in the page cache: make durable_seq true.
        os.fdatasync(self._fd)
        valid = active.first_seq - 1 if result.last_valid_seq is None else result.last_valid_seq
        if new:
            top = valid
        elif known is None:
            # STATE lost or damaged: how far numbering went is unknown. Never reset it.
            top = valid + UNKNOWN_MARGIN
            _log.error(
                "outbox %s: no valid %s while segments exist; numbering resumes conservatively "
                "at %d, seq %d-%d reported as possibly missing",
                self._dir,
                STATE_FILE,
                top + 1,
                valid + 1,
                top,
            )
        else:
            # The hint is exact after a kill -9 or a clean stop; after a reboot only the durable
            # mark bounds what was numbered.
            top = max(valid, state.reserved if exact is None else exact)
            if valid > state.reserved:
                # Records past the durable mark: STATE is older than the segments (restored from
                # a backup?). What was numbered after them is unknown.
                top = max(top, valid + UNKNOWN_MARGIN)
                _log.error(
                    "outbox %s: records up to seq %d lie past the high-water mark %d of %s; "
                    "numbering resumes conservatively at %d",
                    self._dir,
                    valid,
                    state.reserved,
                    STATE_FILE,
                    top + 1,
                )
        if top > valid:
            lost.append((valid + 1, top, MISSING))
        if result.tail_bytes:
            self._truncated_bytes = result.tail_bytes
            _log.warning(
                "outbox %s: cut a torn tail of %d bytes from %s after seq %d; numbering "
                "continues after seq %d",
                self._dir,
                result.tail_bytes,
                active.path.name,
                valid,
                top,
            )
        active.size = result.valid_end
        active.records = result.records
        active.apply_scan(result)
        self._set_segments(tuple(segments))
        self._last_seq = top
        # Nothing exists between the last valid record and top: all of it is "durable".
        self._durable_seq = self._last_seq
        self._disk_bytes = sum(segment.size for segment in segments)
        with self._lock:
            # Reserve before anything is numbered; this also writes a new or rebuilt STATE.
            self._reserve_locked(top + 1)
            hint.start(top)
            self._store_hint = hint.store
            self._expire_locked(self._clock())
        # Logged by _report_lost, range by range, unless a gap event reported it already.
        lost.extend((a, b, CORRUPTED) for a, b in result.lost)
        return lost

    def _start_flusher(self) -> None:
        if self._config.fsync == "interval":
            self._flusher = threading.Thread(
                target=self._flush_loop, name=f"qsc-outbox-fsync:{self._dir.name}", daemon=True
            )
            self._flusher.start()

    def _load_state(self) -> bool | None:
        """Read STATE into the counters: ``True`` when valid, ``False`` when there is none and no
        segment either (a new outbox), ``None`` when it is missing or damaged beside segments
        (kept as STATE.damaged for the operator)."""
        try:
            self._state.load()
        except StateFileError as e:
            has_segments = any(
                parse_segment_file_name(entry.name) is not None for entry in self._dir.iterdir()
            )
            if e.problem == "missing" and not has_segments:
                return False
            if e.problem != "missing":
                self._state.set_aside()
            _log.error("outbox %s: %s", self._dir, e)
            return None
        return True

    def _persist_locked(self, *, reserved: int | None = None) -> None:
        """Write STATE durably (old or new content whatever the crash). Caller holds the lock."""
        self._state.persist(self._firsts[0] if self._firsts else 0, reserved=reserved)

    def _reserve_locked(self, need: int) -> None:
        """Make the durable mark cover ``need`` (and a block beyond) before it is numbered."""
        self._state.reserve(need, self._firsts[0] if self._firsts else 0)

    def close(self) -> None:
        """Sync everything written, stop the flusher, release the directory. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiters, self._waiters = self._waiters, []
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        with self._sync_lock:
            os.fdatasync(self._fd)
            self._durable_seq = self._last_seq
        if not self._broken:
            try:
                # Nothing above last_seq was numbered: lower the mark, so a reboot before the
                # next open (when the hint is not trusted) reports no phantom gap.
                self._persist_locked(reserved=self._last_seq)
            except OSError:
                _log.exception("outbox %s: could not lower the high-water mark", self._dir)
        self._release()
        _wake(waiters)

    def _release(self) -> None:
        self._closed = True
        self._stop.set()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join()
        with self._sync_lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        if self._hint is not None:
            self._store_hint = _ignore
            self._hint.close()
            self._hint = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- appending ----------------------------------------------------------------------------

    def append(self, event: event_pb2.Event) -> int:
        """Append one event; set and return its ``seq``. Prefer :meth:`append_many`."""
        return self.append_many((event,))[0]

    def append_many(self, events: Iterable[event_pb2.Event]) -> tuple[int, int]:
        """Append a batch with one ``write()``; set each event's ``seq``; return the first and last.

        An event without ``guardian`` gets the outbox's. The batch is numbered contiguously; an
        empty batch returns ``(last_seq + 1, last_seq)``. Nothing is written if any event is too
        large. A gap event the disk budget forces is numbered just before the batch. Should the
        disk fail in the middle of a batch that spans segments, the part already written stays
        and the ``OSError`` propagates.
        """
        batch = list(events)
        bodies = [self._serialize(event) for event in batch]
        if (size := _upper_bytes(bodies)) > self._max_batch_bytes:
            # A batch must fit beside the active segment within the budget, or its numbering
            # could not stay contiguous around the gap event a drop writes first.
            raise RecordTooLargeError(
                f"a batch of about {size} bytes exceeds the outbox maximum of "
                f"{self._max_batch_bytes}; split it"
            )
        with self._lock:
            self._check_writable()
            if not bodies:
                return self._last_seq + 1, self._last_seq
            now = self._clock()
            if now >= self._next_expiry_check:
                self._expire_locked(now)
            self._make_room_locked(_upper_bytes(bodies), now)
            first, last = self._write_locked(bodies, now)
            for seq, event in enumerate(batch, start=first):
                event.seq = seq
            waiters = self._take_waiters_locked()
        _wake(waiters)
        return first, last

    def _serialize(self, event: event_pb2.Event) -> bytes:
        """The event serialized without its seq (which the outbox appends as a suffix)."""
        if not event.HasField("guardian"):
            event.guardian.CopyFrom(self._guardian)
        event.seq = 0
        body = event.SerializeToString()
        if len(body) > self._max_body:
            raise RecordTooLargeError(
                f"an event of {len(body)} bytes exceeds the outbox maximum of {self._max_body}"
            )
        return body

    def _write_locked(self, bodies: Sequence[bytes], now: float) -> tuple[int, int]:
        """Number and write ``bodies``, rolling segments as they fill. Caller holds the lock."""
        first = self._last_seq + 1
        if first + len(bodies) - 1 > self._state.reserved:
            self._reserve_locked(first + len(bodies) - 1)
        every = self._config.index_every
        i = 0
        while i < len(bodies):
            active = self._active
            room = self._config.segment_bytes - active.size
            parts: list[bytes] = []
            index: list[tuple[int, int]] = []
            seq = self._last_seq + 1
            written = 0
            count = active.records
            while i < len(bodies):
                body = bodies[i]
                suffix = seq_field(seq)
                length = HEADER_SIZE + len(body) + len(suffix)
                # An empty segment takes any record, so a record never waits for room forever.
                if written + length > room and (parts or active.size):
                    break
                if count % every == 0:
                    index.append((seq, active.size + written))
                frame_into(parts, seq, body, suffix)
                written += length
                count += 1
                seq += 1
                i += 1
            if not parts:
                self._roll_locked()
                continue
            self._write_all(b"".join(parts), sync=self._config.fsync == "always")
            for entry_seq, offset in index:
                active.add_index(entry_seq, offset)
            active.records = count
            active.newest_time = now
            active.size += written
            self._disk_bytes += written
            # After the write, before any reader can see the seqs: a kill -9 in between leaves
            # the hint behind the records, never ahead (a reopen then trusts the records).
            self._store_hint(seq - 1)
            self._last_seq = seq - 1
            if self._config.fsync == "always":
                self._durable_seq = self._last_seq
        return first, self._last_seq

    def _write_all(self, data: bytes, *, sync: bool) -> None:
        """Write all of ``data`` to the active segment (and fdatasync it), or none of it."""
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, view[done:])
            if sync:
                os.fdatasync(self._fd)
        except BaseException:
            # Nothing of a failed append may stay: its seqs will be handed out again, and a
            # partial record must not sit before later ones (O_APPEND writes at the new end).
            try:
                os.ftruncate(self._fd, self._active.size)
            except OSError:
                # Records appended after the partial one could be mistaken for it: stop
                # appending; a reopen cuts it as a torn tail.
                self._broken = True
            raise

    def _roll_locked(self) -> None:
        """Seal the active segment (synced, mtime = its newest append) and start the next."""
        old = self._active
        first = self._last_seq + 1
        path = self._dir / segment_file_name(first)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with self._sync_lock:
                # Synced before it is sealed: only the last segment can ever have a torn tail.
                os.fdatasync(self._fd)
                # Retention after a reopen ages a sealed segment by its mtime: make that the
                # outbox clock's time of its newest record (the kernel's, unless a test fakes it).
                stamp = int(old.newest_time * 1e9)
                os.utime(self._fd, ns=(stamp, stamp))
                os.close(self._fd)
                self._fd = fd
                self._durable_seq = self._last_seq
        except BaseException:
            if self._fd != fd:  # still on the old segment: leave no file behind for the retry
                os.close(fd)
                path.unlink(missing_ok=True)
            raise
        fsync_directory(self._dir)
        old.last_seq = self._last_seq
        old.indexed = True
        self._set_segments(
            (*self._segments, Segment(first, path, 0, old.newest_time, indexed=True))
        )

    def _make_room_locked(self, incoming: int, now: float) -> None:
        """Drop the oldest segments if ``incoming`` bytes would exceed the budget, reporting
        exactly what was lost with a gap event written and synced before any file goes."""
        budget = self._config.disk_budget_bytes
        if self._disk_bytes + incoming <= budget:
            return
        need = incoming + self._gap_upper
        drop = 0
        freed = 0
        for segment in self._segments[:-1]:
            if self._disk_bytes - freed + need <= budget:
                break
            drop += 1
            freed += segment.size
        if drop == 0:
            _log.warning("outbox %s: over its disk budget with nothing sealed to drop", self._dir)
            return
        first = self._segments[0].first_seq
        last = self._segments[drop].first_seq - 1
        gap = gap_event(
            self._guardian, first, last, pipeline_details_pb2.GAP_REASON_DISK_BUDGET, now
        )
        gap_seq, _ = self._write_locked([self._serialize(gap)], now)
        if self._config.fsync == "interval":
            os.fdatasync(self._fd)
        dropped, kept = self._segments[:drop], self._segments[drop:]
        self._set_segments(kept)
        # Recorded before the unlinks: a reopen finishes them instead of dropping and counting
        # the same range again.
        self._state.dropped_total += last - first + 1
        self._state.removed_through = max(self._state.removed_through, last)
        self._persist_locked()
        for segment in dropped:
            segment.path.unlink(missing_ok=True)
        fsync_directory(self._dir)
        self._disk_bytes -= freed
        _log.warning(
            "outbox %s: disk budget of %d bytes reached; dropped seq %d-%d (%d events), "
            "reported by gap event seq %d",
            self._dir,
            budget,
            first,
            last,
            last - first + 1,
            gap_seq,
        )

    def _expire_locked(self, now: float) -> int:
        """Delete sealed segments whose newest record is older than retention."""
        self._next_expiry_check = now + min(
            _EXPIRY_CHECK_SECONDS, self._config.retention.total_seconds() / 10
        )
        horizon = now - self._config.retention.total_seconds()
        drop = 0
        for segment in self._segments[:-1]:
            if segment.newest_time >= horizon:
                break
            drop += 1
        if not drop:
            return 0
        expired = self._segments[drop].first_seq - self._segments[0].first_seq
        dropped, kept = self._segments[:drop], self._segments[drop:]
        self._set_segments(kept)
        self._state.expired_total += expired
        self._state.removed_through = max(self._state.removed_through, kept[0].first_seq - 1)
        self._persist_locked()
        for segment in dropped:
            segment.path.unlink(missing_ok=True)
            self._disk_bytes -= segment.size
        fsync_directory(self._dir)
        _log.info(
            "outbox %s: retention expired seq %d-%d",
            self._dir,
            dropped[0].first_seq,
            kept[0].first_seq - 1,
        )
        return expired

    def expire(self) -> int:
        """Apply retention now (appends also do, at most once a minute); return events deleted."""
        with self._lock:
            self._check_open()
            return self._expire_locked(self._clock())

    def sync(self) -> None:
        """fdatasync now."""
        with self._lock:
            self._check_open()
            os.fdatasync(self._fd)
            self._durable_seq = self._last_seq

    def _sync_through(self, seq: int) -> None:
        """Make every record up to ``seq`` durable (group commit with the flush thread)."""
        with self._sync_lock:
            # _sync_lock also guards the fd swap of a segment roll, which syncs the old one.
            if seq <= self._durable_seq or self._fd < 0:
                return
            target = self._last_seq
            os.fdatasync(self._fd)
            self._durable_seq = max(self._durable_seq, target)

    # -- gap events ----------------------------------------------------------------------------

    def _report_lost(self, ranges: Iterable[Lost]) -> None:
        """Append one gap event per lost range, for the numbers no gap event reported yet.

        Scans may find a range again, or a wider one (new damage next to old, a rescan after a
        reopen): only the numbers outside every range already reported are reported, so the gap
        counts add up to the loss. The reported ranges are persisted after the gap events are
        synced: a crash in between reports a range twice rather than never.
        """
        with self._lock:
            if self._closed or self._broken:
                return
            fresh, self._state.reported = claim_unreported(
                ranges, self._state.reported, self.first_seq
            )
            if not fresh:
                return
            now = self._clock()
            bodies = [
                self._serialize(gap_event(self._guardian, a, b, why, now)) for a, b, why in fresh
            ]
            self._make_room_locked(_upper_bytes(bodies), now)
            first, _ = self._write_locked(bodies, now)
            if self._config.fsync == "interval":
                os.fdatasync(self._fd)
            for offset, (a, b, reason) in enumerate(fresh):
                self._state.corrupted_total += b - a + 1
                _log.error(
                    "outbox %s: seq %d-%d (%d events) %s; reported by gap seq %d",
                    self._dir,
                    a,
                    b,
                    b - a + 1,
                    "missing" if reason == MISSING else "damaged on disk",
                    first + offset,
                )
            self._persist_locked()
            waiters = self._take_waiters_locked()
        _wake(waiters)

    # -- reading -------------------------------------------------------------------------------

    def read_after(self, seq: int, max_events: int = 512, max_bytes: int = 4 * MiB) -> list[Record]:
        """Records with sequence numbers above ``seq``, in order, at most ``max_events`` and about
        ``max_bytes`` of payload (always at least one record if any is available).

        Empty when ``seq >= last_seq``. Raises :class:`OutOfRangeError` when ``seq`` is older than
        the oldest retained record minus one. Damaged ranges are skipped (a gap event reports
        them), so consecutive records may jump.
        """
        if seq < 0 or max_events < 1 or max_bytes < 1:
            raise ValueError("seq must be >= 0, max_events and max_bytes >= 1")
        for _ in range(_READ_ATTEMPTS):
            with self._lock:
                self._check_open()
                segments, firsts = self._segments, self._firsts
                last, active_end = self._last_seq, self._active.size
            if seq < firsts[0] - 1:
                raise OutOfRangeError(firsts[0])
            if seq >= last:
                return []
            if last > self._durable_seq:
                self._sync_through(last)
            start = max(bisect.bisect_right(firsts, seq + 1) - 1, 0)
            out: list[Record] = []
            out_bytes = 0
            try:
                for segment in segments[start:]:
                    if not segment.indexed:
                        self._index_segment(segment)
                    end = active_end if segment is segments[-1] else segment.size
                    full, out_bytes = read_records(
                        segment,
                        end,
                        seq,
                        last,
                        max_events,
                        max_bytes,
                        out,
                        out_bytes,
                        self._max_payload,
                    )
                    if full:
                        break
                return out
            except FileNotFoundError:
                continue  # dropped meanwhile: the next snapshot says where the outbox starts
            except BadRecordError as bad:
                upper = segment.last_seq if segment.last_seq is not None else last
                self._rescan(segment, upper, end, bad.offset)
        raise OutboxError("the outbox kept changing under a read; try again")

    def _index_segment(self, segment: Segment) -> None:
        """Scan a sealed segment found on disk: build its index, report its damage."""
        with segment.scan_lock:
            if segment.indexed:
                return
            result = scan(
                segment.path.read_bytes(),
                segment.first_seq,
                segment.last_seq,
                index_every=self._config.index_every,
                max_payload=self._max_payload,
            )
            segment.apply_scan(result)
        if result.lost:
            self._report_lost((a, b, CORRUPTED) for a, b in result.lost)

    def _rescan(self, segment: Segment, upper: int, end: int, offset: int) -> None:
        """A read found damage no scan knew of: learn where it ends and report what it cost."""
        with segment.scan_lock:
            with open(segment.path, "rb") as file:
                data = file.read(end)
            result = scan(
                data,
                segment.first_seq,
                upper,
                index_every=self._config.index_every,
                max_payload=self._max_payload,
            )
            # Only the skips: the active segment's index is the writer's to extend.
            segment.skips.update(result.skips)
        _log.error("outbox %s: damage found at %s:%d", self._dir, segment.path.name, offset)
        if result.lost:
            self._report_lost((a, b, CORRUPTED) for a, b in result.lost)

    async def wait_for_seq_after(self, seq: int, timeout: float) -> int:
        """Wait until a record newer than ``seq`` exists, at most ``timeout`` seconds; return the
        latest seq (still ``<= seq`` after a timeout or a close). Appends from any thread (they
        signal through ``call_soon_threadsafe``) wake it."""
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event, seq)
        with self._lock:
            if self._last_seq > seq or self._closed:
                return self._last_seq
            self._waiters.append(entry)
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the result when a
            # cancellation arrives as the event is set, and the caller's task would not stop.
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove(entry)
        return self._last_seq

    def _take_waiters_locked(self) -> list[tuple[asyncio.AbstractEventLoop, asyncio.Event, int]]:
        if not self._waiters:
            return []
        ready = [w for w in self._waiters if w[2] < self._last_seq]
        self._waiters = [w for w in self._waiters if w[2] >= self._last_seq]
        return ready

    # -- state ---------------------------------------------------------------------------------

    @property
    def first_seq(self) -> int:
        """The oldest retained sequence number (``last_seq + 1`` when nothing is retained)."""
        return self._firsts[0]

    @property
    def last_seq(self) -> int:
        """The newest sequence number appended (0 before the first)."""
        return self._last_seq

    @property
    def depth(self) -> int:
        """Retained sequence numbers."""
        return self._last_seq - self._firsts[0] + 1

    @property
    def disk_bytes(self) -> int:
        return self._disk_bytes

    @property
    def dropped_total(self) -> int:
        """Events dropped under the disk budget since this outbox was created (kept in STATE)."""
        return self._state.dropped_total

    def status(self) -> OutboxStatus:
        with self._lock:
            return OutboxStatus(
                first_seq=self._firsts[0],
                last_seq=self._last_seq,
                depth=self._last_seq - self._firsts[0] + 1,
                durable_seq=self._durable_seq,
                disk_bytes=self._disk_bytes,
                disk_budget_bytes=self._config.disk_budget_bytes,
                segments=len(self._segments),
                dropped_total=self._state.dropped_total,
                expired_total=self._state.expired_total,
                corrupted_total=self._state.corrupted_total,
                truncated_bytes=self._truncated_bytes,
            )

    @property
    def _active(self) -> Segment:
        return self._segments[-1]

    def _set_segments(self, segments: tuple[Segment, ...]) -> None:
        self._segments = segments
        self._firsts = tuple(segment.first_seq for segment in segments)

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxClosedError(f"outbox {self._dir} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._broken:
            raise OutboxError(f"outbox {self._dir} failed to roll back a write; reopen it")

    def _flush_loop(self) -> None:
        """Group commit: one fdatasync per interval, when something was written."""
        interval = self._config.fsync_interval.total_seconds()
        while not self._stop.wait(interval):
            with self._sync_lock:
                target = self._last_seq
                if target <= self._durable_seq or self._fd < 0:
                    continue
                try:
                    os.fdatasync(self._fd)
                except OSError:
                    _log.exception("outbox %s: fdatasync failed", self._dir)
                    continue
                self._durable_seq = max(self._durable_seq, target)


def _upper_bytes(bodies: Sequence[bytes]) -> int:
    """Bytes the records of ``bodies`` take on disk, at most."""
    return sum(len(body) for body in bodies) + len(bodies) * (HEADER_SIZE + SEQ_FIELD_MAX)


def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event, int]]) -> None:
    for loop, event, _ in waiters:
        # A waiter's loop may have closed since; it no longer needs waking.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(event.set)


def _ignore(_: int) -> None:
    pass
