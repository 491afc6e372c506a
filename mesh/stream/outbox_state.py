"""The outbox's durable numbering state: ``STATE`` and ``SEQ_HINT`` in the outbox directory.

* ``STATE`` (a :mod:`crypto.statefile`, as the nonce counters use) holds the reserved high-water
  mark of handed-out sequence numbers, the mark below which every seq was removed on purpose
  (budget, retention), the lifetime counters and the ranges already reported by a gap event.
  :class:`DurableState` is its in-memory copy: load, persist, and reserve numbers in blocks that
  grow while reservations come fast, each written durably *before* any number of it is used.
* ``SEQ_HINT`` (:class:`SeqHint`) is a shared memory map holding the exact last seq numbered,
  stamped with the kernel's boot id (:func:`boot_id`): exact after a ``kill -9`` or a clean stop,
  not trusted after a reboot.

What the outbox concludes from them on reopen (and why) is in the Guarantees list of
:mod:`mesh.stream.outbox`. Not thread-safe: the outbox calls all of this under its lock.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
import uuid
from pathlib import Path
from typing import Final

from crypto.errors import StateFileError
from crypto.statefile import StateValue, read_state, write_state

__all__ = [
    "HINT_FILE",
    "STATE_FILE",
    "UNKNOWN_MARGIN",
    "DurableState",
    "SeqHint",
    "boot_id",
]

STATE_FILE: Final = "STATE"
HINT_FILE: Final = "SEQ_HINT"
_STATE_FORMAT: Final = "qsc-outbox-state"
_STATE_VERSION: Final = 1
# The digest covers the fields in this order.
_STATE_FIELDS: Final = (
    "reserved",
    "removed_through",
    "dropped_total",
    "expired_total",
    "corrupted_total",
    "reported",
)
_MAX_STATE_BYTES: Final = 1 << 20
# Reported ranges kept in STATE, newest first kept: past this an old range could be reported again
# (over-reporting, never silence); only an attacker damaging thousands of spots gets there.
_MAX_REPORTED: Final = 4096
# Numbers reserved per durable write of STATE: the block doubles while reservations come less
# than a second apart and halves when they come slower than every 10 s. Bounds what an unclean
# reboot can over-report.
_MIN_RESERVE: Final = 4096
_MAX_RESERVE: Final = 1 << 20
# How far past the last valid record numbering resumes when STATE is missing or damaged: more
# than any one reservation, so more than the outbox can have numbered unseen in normal operation.
UNKNOWN_MARGIN: Final = _MAX_RESERVE


class DurableState:
    """What ``STATE`` holds, in memory; the outbox mutates the fields and calls :meth:`persist`."""

    __slots__ = (
        "_reserve_block",
        "_reserved_at",
        "corrupted_total",
        "dropped_total",
        "expired_total",
        "path",
        "removed_through",
        "reported",
        "reserved",
    )

    def __init__(self, directory: Path) -> None:
        self.path = directory / STATE_FILE
        # Durable high-water mark: no seq above it was ever numbered.
        self.reserved = 0
        # Every seq up to here was removed on purpose (budget, retention).
        self.removed_through = 0
        # Lifetime counters (since the outbox was created).
        self.dropped_total = 0
        self.expired_total = 0
        self.corrupted_total = 0
        # Disjoint, sorted ranges already reported by a gap event.
        self.reported: list[tuple[int, int]] = []
        self._reserve_block = _MIN_RESERVE
        self._reserved_at = -1e9

    def load(self) -> None:
        """Read ``STATE`` into the fields, all or none; raises :class:`StateFileError` (its
        ``problem`` is ``missing``, ``unreadable``, ``corrupt`` or ``version``)."""
        path = self.path
        doc = read_state(
            path, _STATE_FORMAT, _STATE_VERSION, _STATE_FIELDS, max_bytes=_MAX_STATE_BYTES
        )
        ints = [v for name in _STATE_FIELDS[:-1] if type(v := doc[name]) is int and v >= 0]
        reported = doc["reported"]
        if len(ints) != len(_STATE_FIELDS) - 1 or not isinstance(reported, list):
            raise StateFileError(path, "corrupt")
        ranges: list[tuple[int, int]] = []
        for item in reported:
            if not (
                isinstance(item, list)
                and len(item) == 2
                and all(type(v) is int for v in item)
                and 1 <= item[0] <= item[1]
                and (not ranges or ranges[-1][1] < item[0])
            ):
                raise StateFileError(path, "corrupt")
            ranges.append((item[0], item[1]))
        (
            self.reserved,
            self.removed_through,
            self.dropped_total,
            self.expired_total,
            self.corrupted_total,
        ) = ints
        self.reported = ranges

    def set_aside(self) -> None:
        """Keep a damaged ``STATE`` as ``STATE.damaged`` for the operator."""
        os.replace(self.path, self.path.with_name(STATE_FILE + ".damaged"))

    def persist(self, first_retained: int, *, reserved: int | None = None) -> None:
        """Write ``STATE`` durably (old or new content whatever the crash), with the mark
        ``reserved`` if given; reported ranges before ``first_retained`` are forgotten."""
        # Ranges no longer retained can never be scanned again.
        kept = [r for r in self.reported if r[1] >= first_retained][-_MAX_REPORTED:]
        self.reported = kept
        mark = self.reserved if reserved is None else reserved
        fields: dict[str, StateValue] = {
            "reserved": mark,
            "removed_through": self.removed_through,
            "dropped_total": self.dropped_total,
            "expired_total": self.expired_total,
            "corrupted_total": self.corrupted_total,
            "reported": [[a, b] for a, b in kept],
        }
        write_state(self.path, _STATE_FORMAT, _STATE_VERSION, fields)
        self.reserved = mark

    def reserve(self, need: int, first_retained: int) -> None:
        """Make the durable mark cover ``need`` (and a block beyond) before it is numbered; the
        first call always writes ``STATE``."""
        if need <= self.reserved and self._reserved_at > 0:
            return
        now = time.monotonic()
        if now - self._reserved_at < 1.0:
            self._reserve_block = min(self._reserve_block * 2, _MAX_RESERVE)
        elif now - self._reserved_at > 10.0:
            self._reserve_block = max(self._reserve_block // 2, _MIN_RESERVE)
        # ``need`` is past every number issued so far, so this may also lower a mark a previous
        # process reserved but never used.
        self.persist(first_retained, reserved=need + self._reserve_block)
        self._reserved_at = now


def boot_id() -> bytes | None:
    """The running kernel's boot id: page-cache contents survive exactly as long as it."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as file:
            return uuid.UUID(file.read().strip().decode()).bytes
    except (OSError, ValueError):
        return None


class SeqHint:
    """The last seq numbered, in a shared memory map, stamped with the boot id.

    A store is one memory write, no syscall, so it costs appends nothing measurable. The page
    cache keeps it through a ``kill -9``; a reboot may lose or tear it, hence the boot id
    (``boot``, from :func:`boot_id`): it is only trusted within the boot that wrote it. Two
    slots, written alternately, each holding the value and its complement: a process killed in
    the middle of one store leaves that slot invalid and the other one write older (the records
    of that write are on disk, so the reopen trusts them).
    """

    _HEAD: Final = struct.Struct("<4s16s")
    _VALUE: Final = struct.Struct("<QQ")
    _SLOT_SIZE: Final = 36
    _MAGIC: Final = b"QSH1"
    _MASK: Final = (1 << 64) - 1

    def __init__(self, path: Path, boot: bytes | None) -> None:
        self._boot = boot
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            size = 2 * self._SLOT_SIZE
            if os.fstat(self._fd).st_size != size:
                os.ftruncate(self._fd, size)
            self._map = mmap.mmap(self._fd, size)
        except BaseException:
            os.close(self._fd)
            raise
        self._slot = 0

    def read(self) -> int | None:
        """The last seq stored in this boot, or ``None`` (another boot, never stored, torn)."""
        if self._boot is None:
            return None
        best: int | None = None
        for slot in (0, 1):
            offset = slot * self._SLOT_SIZE
            magic, boot = self._HEAD.unpack_from(self._map, offset)
            last, check = self._VALUE.unpack_from(self._map, offset + self._HEAD.size)
            if magic != self._MAGIC or boot != self._boot or check != last ^ self._MASK:
                continue
            if best is None or last > best:
                best = last
                self._slot = 1 - slot  # overwrite the older slot first
        return best

    def store(self, last: int) -> None:
        offset = self._slot * self._SLOT_SIZE
        self._VALUE.pack_into(self._map, offset + self._HEAD.size, last, last ^ self._MASK)
        self._slot ^= 1

    def start(self, last: int) -> None:
        """Stamp both slots with this boot and ``last`` (after :meth:`read`, before stores)."""
        for slot in (0, 1):
            offset = slot * self._SLOT_SIZE
            # The value first: a slot is never valid with this boot's stamp and an old value.
            self._VALUE.pack_into(self._map, offset + self._HEAD.size, last, last ^ self._MASK)
            self._HEAD.pack_into(self._map, offset, self._MAGIC, self._boot or bytes(16))

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
