"""The durable outbox: every guardian event is appended here before anyone sees it.

Guarantees and the decisions behind them:

* **Numbering.** Each event gets the next gapless per-guardian sequence number (from 1) when it is
  appended; a reopen continues after the last valid record. ``append_many`` numbers a batch
  contiguously and writes it with one ``write()``.
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
  and reported as ``status().truncated_bytes``; numbering continues after the last valid record.
* **Corruption.** Damage *followed by* valid records (in the last segment on open, in a sealed
  segment when it is first read, or anywhere a read finds new damage) is never skipped silently:
  the lost range is logged as an error, counted in ``corrupted_total`` and reported by an
  ordinary gap event (``GAP_REASON_CORRUPTED_RECORDS``) appended at the head of the outbox; reads
  jump over it. Each range is reported once per process (a reopen rescans and reports again).
* **Disk budget.** Before an append would take the segments past ``disk_budget_bytes``, the oldest
  whole segments are dropped. A gap event (``GAP_REASON_DISK_BUDGET``) naming the exact first and
  last seq and the count is written and synced *before* the files are unlinked, so a crash between
  the two over-reports and never loses silently. Dropped events count in ``dropped_total``.
* **Retention.** Sealed segments whose newest record is older than ``retention`` are deleted
  without a gap event: ageing out is expected, not loss. The active segment never expires. A
  subscriber whose cursor is older than the oldest retained record (ageing or budget) gets
  :class:`OutOfRangeError` carrying ``oldest_available_seq``; after a budget drop it then finds the
  gap event further on.
* **Readers** use their own file descriptors and ``pread``; they hold the lock only to take a
  snapshot, so a slow reader never blocks appends, and nothing is ever dropped for a reader.
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
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self

from mesh import errors
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
from qsc.common.v1 import classification_pb2, event_pb2, identity_pb2, pipeline_details_pb2

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

    segment_bytes: int = 16 * MiB
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
            raise errors.ConfigError(
                "outbox.disk_budget_bytes", "must be at least 4 x outbox.segment_bytes"
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
    # Events dropped under the disk budget (each range also reported by a gap event).
    dropped_total: int
    # Events deleted by retention (no gap event: ageing is not loss).
    expired_total: int
    # Events lost to on-disk damage (each range also reported by a gap event).
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
        self._dropped_total = 0
        self._expired_total = 0
        self._corrupted_total = 0
        self._truncated_bytes = 0
        self._reported: set[tuple[int, int]] = set()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event, int]] = []
        self._closed = False
        # Set when a failed append could not be rolled back: appends refused until reopened.
        self._broken = False
        self._next_expiry_check = 0.0
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._gap_upper = self._gap_record_upper_bound()

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
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        if created:
            _fsync_dir(directory.parent)
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
        except BaseException:
            outbox._release()
            raise
        return outbox

    def _recover(self) -> tuple[tuple[int, int], ...]:
        """Load the segments, validate the last one; return the damaged ranges it holds."""
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
        if not segments:
            path = self._dir / segment_file_name(1)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            _fsync_dir(self._dir)
            segments.append(Segment(1, path, 0, self._clock()))
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
        if result.tail_bytes:
            self._truncated_bytes = result.tail_bytes
            _log.warning(
                "outbox %s: cut a torn tail of %d bytes from %s; numbering continues after seq %s",
                self._dir,
                result.tail_bytes,
                active.path.name,
                result.last_valid_seq
                if result.last_valid_seq is not None
                else active.first_seq - 1,
            )
        active.size = result.valid_end
        active.records = result.records
        active.apply_scan(result)
        self._set_segments(tuple(segments))
        self._last_seq = (
            active.first_seq - 1 if result.last_valid_seq is None else result.last_valid_seq
        )
        self._durable_seq = self._last_seq
        self._disk_bytes = sum(segment.size for segment in segments)
        with self._lock:
            self._expire_locked(self._clock())
        if self._config.fsync == "interval":
            self._flusher = threading.Thread(
                target=self._flush_loop, name=f"qsc-outbox-fsync:{self._dir.name}", daemon=True
            )
            self._flusher.start()
        if result.lost:
            _log.error("outbox %s: damaged records in %s", self._dir, active.path.name)
        return result.lost

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
        _fsync_dir(self._dir)
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
        gap = self._gap_event(first, last, pipeline_details_pb2.GAP_REASON_DISK_BUDGET, now)
        gap_seq, _ = self._write_locked([self._serialize(gap)], now)
        if self._config.fsync == "interval":
            os.fdatasync(self._fd)
        dropped, kept = self._segments[:drop], self._segments[drop:]
        self._set_segments(kept)
        for segment in dropped:
            segment.path.unlink(missing_ok=True)
        _fsync_dir(self._dir)
        self._disk_bytes -= freed
        self._dropped_total += last - first + 1
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
        for segment in dropped:
            segment.path.unlink(missing_ok=True)
            self._disk_bytes -= segment.size
        _fsync_dir(self._dir)
        self._expired_total += expired
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

    def _gap_event(
        self, first: int, last: int, reason: pipeline_details_pb2.GapReason.ValueType, now: float
    ) -> event_pb2.Event:
        count = last - first + 1
        why = "disk budget" if reason == pipeline_details_pb2.GAP_REASON_DISK_BUDGET else "damage"
        event = event_pb2.Event(
            id=_uuid7(now),
            guardian=self._guardian,
            severity=classification_pb2.SEVERITY_HIGH,
            category=classification_pb2.CATEGORY_SYSTEM,
            summary=f"outbox lost {count} events, seq {first} to {last} ({why})",
            gap=pipeline_details_pb2.Gap(
                first_seq=first,
                last_seq=last,
                count=count,
                reason=reason,
            ),
        )
        event.time.FromNanoseconds(int(now * 1e9))
        event.observed_time.CopyFrom(event.time)
        return event

    def _gap_record_upper_bound(self) -> int:
        top = (1 << 64) - 1
        widest = self._gap_event(1, top, pipeline_details_pb2.GAP_REASON_CORRUPTED_RECORDS, 4e9)
        widest.gap.first_seq = widest.gap.count = top
        return HEADER_SIZE + len(widest.SerializeToString()) + SEQ_FIELD_MAX + 64

    def _report_lost(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Append one corruption gap event per damaged range not reported yet."""
        with self._lock:
            if self._closed or self._broken:
                return
            fresh = [r for r in ranges if r not in self._reported and r[1] >= self.first_seq]
            if not fresh:
                return
            now = self._clock()
            reason = pipeline_details_pb2.GAP_REASON_CORRUPTED_RECORDS
            bodies = [self._serialize(self._gap_event(a, b, reason, now)) for a, b in fresh]
            self._make_room_locked(_upper_bytes(bodies), now)
            first, _ = self._write_locked(bodies, now)
            for offset, (a, b) in enumerate(fresh):
                self._reported.add((a, b))
                self._corrupted_total += b - a + 1
                _log.error(
                    "outbox %s: seq %d-%d (%d events) damaged on disk; reported by gap seq %d",
                    self._dir,
                    a,
                    b,
                    b - a + 1,
                    first + offset,
                )
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
            self._report_lost(result.lost)

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
            self._report_lost(result.lost)

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
            await asyncio.wait_for(event.wait(), timeout)
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
        """Events dropped under the disk budget since this outbox was opened."""
        return self._dropped_total

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
                dropped_total=self._dropped_total,
                expired_total=self._expired_total,
                corrupted_total=self._corrupted_total,
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _uuid7(now: float) -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version, 74 random bits."""
    rand = int.from_bytes(os.urandom(10), "big")
    value = (int(now * 1000) & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76 | ((rand >> 62) & 0xFFF) << 64 | 0b10 << 62 | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))
