"""Outbox segment files: record framing, validation scans and positioned reads.

A segment is one append-only file named by the sequence number of its first record
(``00000000000000000001.seg``). It holds records back to back, each framed as::

    offset  size  field
    0       4     magic b"QOB1"
    4       4     crc32 (little endian) of bytes 8 .. end of payload: length, seq and payload
    8       4     payload length (little endian)
    12      8     seq (little endian)
    20      n     payload: one serialized ``qsc.common.v1.Event``

CRC-32 is a torn-write and bit-rot detector, not an integrity check against an attacker (anyone who
can write the file can recompute it): it catches a record cut short by a crash, zero-filled blocks
after power loss and flipped bits, which is all this framing has to do. The length and seq are
inside the checksum, so a damaged length cannot send the parser off with a valid-looking record.

Nothing here knows about protobuf or locking: :mod:`mesh.stream.outbox` owns both.
"""

from __future__ import annotations

import bisect
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NamedTuple

MAGIC: Final = b"QOB1"
_HEAD: Final = struct.Struct("<4sIIQ")
_LEN_SEQ: Final = struct.Struct("<IQ")
HEADER_SIZE: Final = _HEAD.size
# Upper bound of the bytes appended to a payload to carry its seq (tag byte + 10-byte varint).
SEQ_FIELD_MAX: Final = 11
SEGMENT_SUFFIX: Final = ".seg"
_SEGMENT_NAME: Final = re.compile(r"^(\d{20})\.seg$")
# Reads fetch at least this much per pread: one syscall covers a few hundred typical events.
_READ_CHUNK: Final = 256 * 1024
# Protobuf tag of `Event.seq` (field 3, varint).
_SEQ_TAG: Final = b"\x18"


class Record(NamedTuple):
    """One stored event: its sequence number and its serialized ``Event``."""

    seq: int
    payload: bytes


class BadRecordError(Exception):
    """A record that failed validation at ``offset`` where no scan had found damage before."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"invalid record at offset {offset}")
        self.offset = offset


def segment_file_name(first_seq: int) -> str:
    """File name of the segment whose first record is ``first_seq``; sorts numerically."""
    return f"{first_seq:020d}{SEGMENT_SUFFIX}"


def parse_segment_file_name(name: str) -> int | None:
    """The first sequence number a segment file name carries, or ``None`` if it is not one."""
    match = _SEGMENT_NAME.match(name)
    return int(match.group(1)) if match else None


def seq_field(seq: int) -> bytes:
    """``Event.seq`` encoded as a protobuf field, to append to an Event serialized without it.

    Parsers accept fields in any order, so ``SerializeToString(event without seq) + seq_field(n)``
    parses as the event with ``seq == n``. This lets callers serialize outside the outbox lock and
    lets the outbox know every record's exact size before it assigns numbers.
    """
    out = bytearray(_SEQ_TAG)
    while seq > 0x7F:
        out.append((seq & 0x7F) | 0x80)
        seq >>= 7
    out.append(seq)
    return bytes(out)


def frame_into(parts: list[bytes], seq: int, body: bytes, suffix: bytes = b"") -> int:
    """Append one record's pieces to ``parts`` (for one ``b"".join``); return the record length.

    The payload is ``body + suffix``: the outbox passes an Event serialized without its seq and
    :func:`seq_field`, so the payload is never copied before the final join.
    """
    length = len(body) + len(suffix)
    len_seq = _LEN_SEQ.pack(length, seq)
    crc = zlib.crc32(suffix, zlib.crc32(body, zlib.crc32(len_seq)))
    parts += (MAGIC, crc.to_bytes(4, "little"), len_seq, body, suffix)
    return HEADER_SIZE + length


def frame(seq: int, payload: bytes) -> bytes:
    """One whole record."""
    parts: list[bytes] = []
    frame_into(parts, seq, payload)
    return b"".join(parts)


def _valid_at(
    data: bytes, view: memoryview, offset: int, max_payload: int
) -> tuple[int, int] | None:
    """``(seq, record length)`` of a valid record at ``offset`` of ``data``, else ``None``."""
    if offset + HEADER_SIZE > len(data):
        return None
    magic, crc, length, seq = _HEAD.unpack_from(data, offset)
    stop = offset + HEADER_SIZE + length
    if magic != MAGIC or length > max_payload or stop > len(data):
        return None
    if zlib.crc32(view[offset + 8 : stop]) != crc:
        return None
    return seq, HEADER_SIZE + length


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What a full validation pass over one segment found."""

    records: int
    last_valid_seq: int | None
    # Offset just past the last valid record: where a torn tail starts.
    valid_end: int
    # Bytes after ``valid_end`` in which no valid record follows (a torn tail for the last segment).
    tail_bytes: int
    index_seqs: list[int]
    index_offsets: list[int]
    # Offset of a damaged region -> offset where valid records resume (or the end of the data).
    skips: dict[int, int]
    # Inclusive sequence ranges that were lost to damage (not counting a torn tail of the last
    # segment, whose records were never acknowledged).
    lost: tuple[tuple[int, int], ...]


def scan(
    data: bytes,
    first_seq: int,
    last_seq: int | None,
    *,
    index_every: int,
    max_payload: int,
) -> ScanResult:
    """Validate every record of one segment's bytes and build its sparse index.

    ``last_seq`` is the segment's known last sequence number (a sealed segment: the next segment's
    first minus one) or ``None`` for the last segment, whose end is whatever was written.

    After a damaged record the scan looks for the next offset holding a valid record with a
    plausible seq (magic, length in bounds, CRC, seq not below the expected one): the records in
    between are reported in ``lost`` and the reader jumps over them through ``skips``. When no valid
    record follows, the rest is the tail: ``tail_bytes`` for the last segment (the caller cuts it),
    lost records for a sealed one.
    """
    view = memoryview(data)
    end = len(data)
    upper = last_seq if last_seq is not None else (1 << 64) - 1
    expected = first_seq
    offset = 0
    records = 0
    index_seqs: list[int] = []
    index_offsets: list[int] = []
    skips: dict[int, int] = {}
    lost: list[tuple[int, int]] = []
    force_index = True
    tail = 0
    while offset < end:
        found = _valid_at(data, view, offset, max_payload)
        if found is None or found[0] != expected:
            resumed = _resync(data, view, offset, expected, upper, max_payload)
            if resumed is None:
                tail = end - offset
                if last_seq is not None:
                    skips[offset] = end
                break
            position, seq = resumed
            if position > offset:
                skips[offset] = position
            if seq > expected:
                lost.append((expected, seq - 1))
            offset, expected, force_index = position, seq, True
            continue
        if force_index or records % index_every == 0:
            index_seqs.append(expected)
            index_offsets.append(offset)
            force_index = False
        records += 1
        offset += found[1]
        expected += 1
    if last_seq is not None and expected <= last_seq:
        lost.append((expected, last_seq))
    return ScanResult(
        records=records,
        last_valid_seq=expected - 1 if expected > first_seq else None,
        valid_end=end - tail,
        tail_bytes=tail,
        index_seqs=index_seqs,
        index_offsets=index_offsets,
        skips=skips,
        lost=tuple(lost),
    )


def _resync(
    data: bytes, view: memoryview, offset: int, expected: int, upper: int, max_payload: int
) -> tuple[int, int] | None:
    """The first ``(offset, seq)`` at or after ``offset`` where a plausible valid record starts."""
    position = offset
    while True:
        position = data.find(MAGIC, position)
        if position < 0:
            return None
        found = _valid_at(data, view, position, max_payload)
        if found is not None and expected <= found[0] <= upper:
            return position, found[0]
        position += 1


@dataclass(slots=True, eq=False)
class Segment:
    """In-memory state of one segment file.

    The writer mutates the active segment under the outbox lock; readers only read fields whose
    updates are single attribute or list-append operations, so they never see a torn state (they
    bound every read by the committed end they took under the lock).
    """

    first_seq: int
    path: Path
    # Committed bytes: what readers may read.
    size: int
    # Newest append time (the outbox clock); what retention ages by.
    newest_time: float
    # Known last seq of a sealed segment; ``None`` while the segment is the active one.
    last_seq: int | None = None
    # Records counted by the writer (for the index cadence); meaningful for the active segment.
    records: int = 0
    # Sparse index: seq -> offset of that record, for every ``index_every``-th record and every
    # record after damage. Offsets are appended before seqs so a concurrent bisect on the seqs
    # never finds a seq whose offset is missing.
    index_seqs: list[int] = field(default_factory=list)
    index_offsets: list[int] = field(default_factory=list)
    skips: dict[int, int] = field(default_factory=dict)
    # Whether the sparse index covers the whole segment (sealed segments found on disk are indexed
    # lazily, on first read).
    indexed: bool = False
    scan_lock: threading.Lock = field(default_factory=threading.Lock)

    def add_index(self, seq: int, offset: int) -> None:
        self.index_offsets.append(offset)
        self.index_seqs.append(seq)

    def start_offset(self, seq: int) -> int:
        """Offset of the indexed record at or before ``seq`` (0 when there is none)."""
        slot = bisect.bisect_right(self.index_seqs, seq) - 1
        return self.index_offsets[slot] if slot >= 0 else 0

    def apply_scan(self, result: ScanResult) -> None:
        self.index_offsets = result.index_offsets
        self.index_seqs = result.index_seqs
        self.skips.update(result.skips)
        self.indexed = True


def read_records(
    segment: Segment,
    end: int,
    after: int,
    upto: int,
    max_events: int,
    max_bytes: int,
    out: list[Record],
    out_bytes: int,
    max_payload: int,
) -> tuple[bool, int]:
    """Append to ``out`` the records of ``segment`` with ``after < seq <= upto`` found before
    ``end``, while ``out`` holds fewer than ``max_events`` and under ``max_bytes`` of payload (it
    always gets at least one record).

    Returns ``(full, out_bytes)``: whether a limit (or ``upto``) stopped the read, and the payload
    bytes now in ``out``. Every record is checked again (CRC and seq order) since the disk may have
    changed since the scan; damage a scan already found is jumped over through ``segment.skips``,
    new damage raises :class:`BadRecordError`. ``FileNotFoundError`` means the segment was dropped
    meanwhile.
    """
    position = segment.start_offset(after + 1)
    fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = b""
        view = memoryview(buf)
        buf_start = position
        previous = -1
        while position < end:
            rel = position - buf_start
            if rel < 0 or rel + HEADER_SIZE > len(buf):
                buf = os.pread(fd, min(end - position, _READ_CHUNK), position)
                view, buf_start, rel = memoryview(buf), position, 0
            if rel + HEADER_SIZE > len(buf):
                position = _skip(segment, position)
                continue
            magic, crc, length, seq = _HEAD.unpack_from(buf, rel)
            stop = rel + HEADER_SIZE + length
            if magic != MAGIC or length > max_payload or position + HEADER_SIZE + length > end:
                position = _skip(segment, position)
                continue
            if stop > len(buf):
                buf = os.pread(fd, min(end - position, max(_READ_CHUNK, stop - rel)), position)
                view, buf_start, rel = memoryview(buf), position, 0
                stop = HEADER_SIZE + length
                if stop > len(buf):
                    position = _skip(segment, position)
                    continue
            if zlib.crc32(view[rel + 8 : stop]) != crc or seq <= previous:
                position = _skip(segment, position)
                continue
            previous = seq
            if seq > after:
                if seq > upto:
                    return True, out_bytes
                if out and (len(out) >= max_events or out_bytes + length > max_bytes):
                    return True, out_bytes
                out.append(Record(seq, buf[rel + HEADER_SIZE : stop]))
                out_bytes += length
            position += HEADER_SIZE + length
        return len(out) >= max_events, out_bytes
    finally:
        os.close(fd)


def _skip(segment: Segment, position: int) -> int:
    """Where reading resumes after damage a scan found at ``position``; else raise."""
    resume = segment.skips.get(position)
    if resume is None:
        raise BadRecordError(position)
    return resume
