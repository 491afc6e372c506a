"""The durable outbox: numbering, segments, reads at every boundary, torn tails, damage, the disk
budget, retention, concurrency and async wake-ups."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from mesh import errors
from mesh.stream.outbox import (
    Outbox,
    OutboxClosedError,
    OutboxConfig,
    OutboxError,
    OutboxLockedError,
    OutOfRangeError,
    RecordTooLargeError,
)
from mesh.stream.outbox_segment import HEADER_SIZE, frame, scan, seq_field
from qsc.common.v1 import classification_pb2, event_pb2, identity_pb2, pipeline_details_pb2

GUARDIAN = identity_pb2.GuardianRef(id="alpha-web-1", role=identity_pb2.ROLE_ALPHA, host="web-1")
SMALL = OutboxConfig(segment_bytes=8192, disk_budget_bytes=1 << 20)
_HEAD = struct.Struct("<4sIIQ")


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def make_event(n: int, pad: int = 0) -> event_pb2.Event:
    event = event_pb2.Event(
        id=f"event-{n}",
        severity=classification_pb2.SEVERITY_MEDIUM,
        category=classification_pb2.CATEGORY_PROCESS,
        summary=f"bash read /etc/shadow #{n}" + "x" * pad,
    )
    event.process.pid = 1000 + n
    event.process.comm = "bash"
    event.process.args.extend(["cat", "/etc/shadow"])
    return event


def parse(payload: bytes) -> event_pb2.Event:
    event = event_pb2.Event()
    event.ParseFromString(payload)
    return event


def open_outbox(
    directory: Path, config: OutboxConfig = SMALL, clock: Callable[[], float] = time.time
) -> Outbox:
    return Outbox.open(directory, config, guardian=GUARDIAN, clock=clock)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with open_outbox(tmp_path / "outbox") as box:
        yield box


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def record_spans(path: Path) -> list[tuple[int, int, int]]:
    """``(seq, offset, record length)`` of every record of a well-formed segment."""
    data = path.read_bytes()
    spans = []
    offset = 0
    while offset < len(data):
        _, _, length, seq = _HEAD.unpack_from(data, offset)
        spans.append((seq, offset, HEADER_SIZE + length))
        offset += HEADER_SIZE + length
    return spans


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0x40]))


def gap_events(box: Outbox) -> list[tuple[int, pipeline_details_pb2.Gap]]:
    found = []
    for record in box.read_after(box.first_seq - 1, 1 << 30, 1 << 30):
        event = parse(record.payload)
        if event.HasField("gap"):
            found.append((record.seq, event.gap))
    return found


# -- numbering and round trips ------------------------------------------------------------------


def test_append_and_read_round_trip(outbox: Outbox) -> None:
    event = make_event(1)
    assert outbox.append(event) == 1
    assert event.seq == 1
    [record] = outbox.read_after(0)
    assert record.seq == 1
    stored = parse(record.payload)
    assert stored.seq == 1
    assert stored.guardian == GUARDIAN  # filled in when the producer left it out
    expected = make_event(1)
    expected.seq = 1
    expected.guardian.CopyFrom(GUARDIAN)
    assert stored == expected


def test_append_many_numbers_contiguously(outbox: Outbox) -> None:
    assert outbox.append(make_event(0)) == 1
    batch = [make_event(i) for i in range(1, 101)]
    assert outbox.append_many(batch) == (2, 101)
    assert [e.seq for e in batch] == list(range(2, 102))
    assert outbox.append_many([]) == (102, 101)
    assert [r.seq for r in outbox.read_after(0, 1000)] == list(range(1, 102))
    assert (outbox.first_seq, outbox.last_seq, outbox.depth) == (1, 101, 101)


def test_seq_suffix_parses_as_the_seq_field() -> None:
    body = make_event(7).SerializeToString()
    for seq in (1, 127, 128, 300, 2**35, 2**64 - 1):
        assert parse(body + seq_field(seq)).seq == seq


def test_numbering_is_gapless_across_reopen(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    for round_ in range(4):
        with open_outbox(directory) as box:
            assert box.last_seq == round_ * 50
            box.append_many([make_event(i) for i in range(50)])
    with open_outbox(directory) as box:
        assert [r.seq for r in box.read_after(0, 1000)] == list(range(1, 201))
        assert box.status().truncated_bytes == 0


def test_segments_roll_over_and_are_named_by_first_seq(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    with open_outbox(directory) as box:
        for i in range(400):
            box.append(make_event(i))
        files = segments(directory)
        assert len(files) > 5
        assert box.status().segments == len(files)
        for path in files:
            spans = record_spans(path)
            assert int(path.stem) == spans[0][0]
            assert path.stat().st_size <= SMALL.segment_bytes
        assert [r.seq for r in box.read_after(0, 1000)] == list(range(1, 401))
        assert box.disk_bytes == sum(p.stat().st_size for p in files)


def test_directory_is_0700_and_segments_0600(tmp_path: Path, umask0: None) -> None:
    directory = tmp_path / "a" / "outbox"
    with open_outbox(directory) as box:
        box.append(make_event(1))
    assert directory.stat().st_mode & 0o777 == 0o700
    for path in segments(directory):
        assert path.stat().st_mode & 0o777 == 0o600


def test_read_after_at_every_boundary(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "outbox") as box:
        box.append_many([make_event(i) for i in range(300)])
        firsts = [int(p.stem) for p in segments(tmp_path / "outbox")]
        assert len(firsts) >= 3
        cursors = {0, 1, 150, 299, 300, 301, 10_000}
        for first in firsts:
            cursors |= {first - 2, first - 1, first}
        for cursor in sorted(c for c in cursors if c >= 0):
            got = [r.seq for r in box.read_after(cursor, 1000)]
            assert got == list(range(cursor + 1, 301)), cursor
        # Limits: count, and bytes (always at least one record).
        assert [r.seq for r in box.read_after(10, 5)] == [11, 12, 13, 14, 15]
        one = box.read_after(10, 5, max_bytes=1)
        assert [r.seq for r in one] == [11]
        size = len(one[0].payload)
        assert len(box.read_after(10, 100, max_bytes=3 * size)) == 3


def test_read_after_spans_the_index_stride(tmp_path: Path) -> None:
    config = OutboxConfig(segment_bytes=1 << 20, disk_budget_bytes=8 << 20, index_every=16)
    with open_outbox(tmp_path / "outbox", config) as box:
        box.append_many([make_event(i) for i in range(1000)])
        for cursor in range(0, 1000, 7):
            assert box.read_after(cursor, 3)[0].seq == cursor + 1


# -- torn tails and damage ----------------------------------------------------------------------


def _fill(directory: Path, count: int, config: OutboxConfig = SMALL) -> None:
    with open_outbox(directory, config) as box:
        box.append_many([make_event(i) for i in range(count)])


@pytest.mark.parametrize("damage", ["cut_mid_record", "flip_in_last_record", "garbage_appended"])
def test_a_torn_tail_is_cut_and_its_numbers_are_never_issued_again(
    tmp_path: Path, damage: str
) -> None:
    directory = tmp_path / "outbox"
    _fill(directory, 100)
    last = segments(directory)[-1]
    spans = record_spans(last)
    last_seq, last_offset, last_length = spans[-1]
    assert last_seq == 100
    size = last.stat().st_size
    if damage == "cut_mid_record":
        os.truncate(last, last_offset + last_length // 2)
        valid_seq, cut = 99, last_length // 2
    elif damage == "flip_in_last_record":
        flip(last, last_offset + HEADER_SIZE + 3)
        valid_seq, cut = 99, last_length
    else:
        with open(last, "ab") as file:
            file.write(b"\x00" * 100 + b"QOB1" + os.urandom(50))
        valid_seq, cut = 100, 154
    with open_outbox(directory) as box:
        assert box.status().truncated_bytes == cut
        if valid_seq == 100:  # only garbage was cut: nothing lost, nothing to report
            assert last.stat().st_size == size
            assert box.last_seq == 100
            assert gap_events(box) == []
            assert box.append(make_event(1000)) == 101
            assert [r.seq for r in box.read_after(0, 1000)] == list(range(1, 102))
            return
        # Record 100 had been written (and maybe read): its number is reported, never reused.
        [(gap_seq, gap)] = gap_events(box)
        assert gap_seq == 101
        assert (gap.first_seq, gap.last_seq, gap.count) == (100, 100, 1)
        assert gap.reason == pipeline_details_pb2.GAP_REASON_MISSING_RECORDS
        assert box.status().corrupted_total == 1
        # Cut back to record 99; the gap event follows it.
        assert record_spans(last)[-1][:2] == (101, size - last_length)
        assert box.append(make_event(1000)) == 102
        assert [r.seq for r in box.read_after(0, 1000)] == [*range(1, 100), 101, 102]


def test_a_subscriber_past_a_cut_tail_gets_a_gap_and_every_new_event(tmp_path: Path) -> None:
    """The attack: a subscriber committed everything; the tail loses a few bytes while the
    guardian is down; the guardian appends on restart; the subscriber resumes."""
    directory = tmp_path / "outbox"
    with open_outbox(directory) as box:
        box.append_many([make_event(i) for i in range(100)])
        committed = box.read_after(0, 1000)[-1].seq
    assert committed == 100
    last = segments(directory)[-1]
    os.truncate(last, last.stat().st_size - 3)
    with open_outbox(directory) as box:
        new = [box.append(make_event(1000 + i)) for i in range(5)]
        assert min(new) > committed  # no seq a subscriber holds is reused
        got = box.read_after(committed, 1000)
        events = [parse(r.payload) for r in got]
        gaps = [e.gap for e in events if e.HasField("gap")]
        assert [(g.first_seq, g.last_seq, g.count) for g in gaps] == [(100, 100, 1)]
        assert gaps[0].reason == pipeline_details_pb2.GAP_REASON_MISSING_RECORDS
        assert [r.seq for r, e in zip(got, events, strict=True) if not e.HasField("gap")] == new
        assert [e.id for e in events if not e.HasField("gap")] == [
            f"event-{1000 + i}" for i in range(5)
        ]


def test_a_wholly_torn_last_segment_is_reported_and_never_renumbered(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    _fill(directory, 200)
    last = segments(directory)[-1]
    first = int(last.stem)
    os.truncate(last, 7)
    with open_outbox(directory) as box:
        assert box.last_seq == 201  # the gap event
        [(_, gap)] = gap_events(box)
        assert (gap.first_seq, gap.last_seq) == (first, 200)
        assert box.append(make_event(1)) == 202
    with open_outbox(directory) as box:  # the jump inside the segment is not reported again
        assert len(gap_events(box)) == 1
        assert box.status().corrupted_total == 200 - first + 1


def _crash_after_appending(directory: Path, count: int) -> None:
    """Append in a child process that exits without closing (as a kill -9 would)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            box = open_outbox(directory, OutboxConfig(segment_bytes=8192, fsync="always"))
            box.append_many([make_event(i) for i in range(count)])
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0


def test_after_a_kill_the_exact_hint_continues_without_a_gap(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    _crash_after_appending(directory, 50)
    with open_outbox(directory) as box:
        assert box.last_seq == 50
        assert gap_events(box) == []
        assert box.append(make_event(0)) == 51


def test_after_an_unclean_reboot_numbering_resumes_past_the_durable_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "outbox"
    _crash_after_appending(directory, 50)
    state = json.loads((directory / "STATE").read_text())
    reserved = state["reserved"]
    assert reserved >= 50
    # Another boot: the page-cache hint is not trusted, only the durable mark is.
    monkeypatch.setattr("mesh.stream.outbox._boot_id", lambda: b"\x01" * 16)
    with open_outbox(directory) as box:
        [(gap_seq, gap)] = gap_events(box)
        # An upper bound: everything that may have been numbered past the last record.
        assert (gap.first_seq, gap.last_seq) == (51, reserved)
        assert gap_seq == reserved + 1
        assert box.append(make_event(0)) == reserved + 2


def test_a_clean_close_lowers_the_mark_so_a_reboot_reports_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "outbox"
    _fill(directory, 50)
    assert json.loads((directory / "STATE").read_text())["reserved"] == 50
    monkeypatch.setattr("mesh.stream.outbox._boot_id", lambda: b"\x01" * 16)
    with open_outbox(directory) as box:
        assert gap_events(box) == []
        assert box.append(make_event(0)) == 51


@pytest.mark.parametrize("damage", ["missing", "garbled"])
def test_a_lost_high_water_mark_never_resets_numbering(tmp_path: Path, damage: str) -> None:
    directory = tmp_path / "outbox"
    _fill(directory, 100)
    state = directory / "STATE"
    if damage == "missing":
        state.unlink()
    else:
        state.write_bytes(state.read_bytes().replace(b'"reserved": 100', b'"reserved": 1'))
    with open_outbox(directory) as box:
        [(gap_seq, gap)] = gap_events(box)
        assert gap.reason == pipeline_details_pb2.GAP_REASON_MISSING_RECORDS
        assert gap.first_seq == 101
        assert gap.last_seq >= 100 + 4096  # more than any reservation: conservative
        assert box.append(make_event(0)) == gap_seq + 1
    assert (directory / "STATE.damaged").exists() == (damage == "garbled")
    with open_outbox(directory) as box:  # rebuilt: no second report
        assert len(gap_events(box)) == 1


def test_the_mark_is_reserved_before_numbers_are_used(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    with open_outbox(directory) as box:
        for i in range(3000):
            box.append(make_event(i))
            if i % 500 == 0:
                assert json.loads((directory / "STATE").read_text())["reserved"] >= box.last_seq


@pytest.mark.parametrize("where", ["payload", "length"])
def test_damage_mid_last_segment_is_reported_by_a_gap(tmp_path: Path, where: str) -> None:
    directory = tmp_path / "outbox"
    _fill(directory, 100)
    last = segments(directory)[-1]
    spans = record_spans(last)
    seq, offset, _ = spans[len(spans) // 2]
    flip(last, offset + (HEADER_SIZE + 5 if where == "payload" else 9))
    with open_outbox(directory) as box:
        status = box.status()
        assert status.truncated_bytes == 0
        assert status.corrupted_total == 1
        # The damaged record is skipped, the gap event follows the last valid record.
        seqs = [r.seq for r in box.read_after(0, 1000)]
        assert seqs == [s for s in range(1, 102) if s != seq]
        [(gap_seq, gap)] = gap_events(box)
        assert gap_seq == 101
        assert (gap.first_seq, gap.last_seq, gap.count) == (seq, seq, 1)
        assert gap.reason == pipeline_details_pb2.GAP_REASON_CORRUPTED_RECORDS
        event = parse(box.read_after(100)[0].payload)
        assert event.guardian == GUARDIAN
        assert event.category == classification_pb2.CATEGORY_SYSTEM
        assert box.append(make_event(1)) == 102


def test_damage_in_a_sealed_segment_is_found_on_read_and_reported(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    _fill(directory, 300)
    sealed = segments(directory)[1]
    spans = record_spans(sealed)
    lost = spans[3:5]
    for _, offset, _ in lost:
        flip(sealed, offset + HEADER_SIZE + 1)
    lost_seqs = [seq for seq, _, _ in lost]
    with open_outbox(directory) as box:
        assert box.status().corrupted_total == 0  # sealed segments are checked when first read
        seqs = [r.seq for r in box.read_after(0, 1000)]
        assert seqs == [s for s in range(1, 301) if s not in lost_seqs]
        assert box.status().corrupted_total == 2
        [(gap_seq, gap)] = gap_events(box)
        assert gap_seq == 301
        assert (gap.first_seq, gap.last_seq, gap.count) == (lost_seqs[0], lost_seqs[1], 2)
        # Reading again reports nothing new.
        box.read_after(0, 1000)
        assert box.last_seq == 301


def test_damage_appearing_after_indexing_is_found_by_the_read(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    with open_outbox(directory) as box:
        box.append_many([make_event(i) for i in range(300)])
        sealed = segments(directory)[0]
        seq, offset, _ = record_spans(sealed)[10]
        flip(sealed, offset + HEADER_SIZE + 2)
        assert seq not in [r.seq for r in box.read_after(0, 1000)]
        [(_, gap)] = gap_events(box)
        assert (gap.first_seq, gap.last_seq) == (seq, seq)


def test_new_damage_next_to_reported_damage_reports_only_the_new_record(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    _fill(directory, 300)
    sealed = segments(directory)[1]
    spans = record_spans(sealed)
    for _, offset, _ in spans[3:5]:
        flip(sealed, offset + HEADER_SIZE + 1)
    with open_outbox(directory) as box:
        box.read_after(0, 1000)
        flip(sealed, spans[5][1] + HEADER_SIZE + 1)  # the record right after the damage
        box.read_after(0, 1000)
        gaps = [gap for _, gap in gap_events(box)]
        assert [(g.first_seq, g.last_seq) for g in gaps] == [
            (spans[3][0], spans[4][0]),
            (spans[5][0], spans[5][0]),
        ]
        assert sum(g.count for g in gaps) == box.status().corrupted_total == 3


@pytest.mark.parametrize("where", ["last", "sealed"])
def test_a_reopen_does_not_report_damage_again(tmp_path: Path, where: str) -> None:
    directory = tmp_path / "outbox"
    _fill(directory, 300)
    path = segments(directory)[-1 if where == "last" else 1]
    flip(path, record_spans(path)[2][1] + HEADER_SIZE + 1)
    for _ in range(3):
        with open_outbox(directory) as box:
            box.read_after(0, 1000)  # a sealed segment is scanned on its first read
            gaps = gap_events(box)
            assert len(gaps) == 1
            assert sum(gap.count for _, gap in gaps) == box.status().corrupted_total == 1


def test_lifetime_counters_survive_a_restart(tmp_path: Path) -> None:
    config = OutboxConfig(segment_bytes=8192, disk_budget_bytes=4 * 8192)
    directory = tmp_path / "outbox"
    with open_outbox(directory, config) as box:
        for i in range(1000):
            box.append(make_event(i))
        dropped = box.dropped_total
        assert dropped > 0
    with open_outbox(directory, config) as box:
        assert box.dropped_total == box.status().dropped_total == dropped
        for i in range(1000):
            box.append(make_event(i))
        assert box.dropped_total > dropped
        dropped = box.dropped_total
    with open_outbox(directory, config) as box:
        assert box.dropped_total == dropped


def test_a_crash_between_recording_a_drop_and_unlinking_finishes_it(tmp_path: Path) -> None:
    config = OutboxConfig(segment_bytes=8192, disk_budget_bytes=4 * 8192)
    directory = tmp_path / "outbox"
    kept = tmp_path / "kept"
    with open_outbox(directory, config) as box:
        while len(segments(directory)) < 4:
            box.append(make_event(0))
        shutil.copy(segments(directory)[0], kept)
        while box.dropped_total == 0:
            box.append(make_event(0))
        dropped, first = box.dropped_total, box.first_seq
    oldest = directory / "00000000000000000001.seg"
    shutil.copy(kept, oldest)  # as if the unlink had not happened before the crash
    with open_outbox(directory, config) as box:
        assert not oldest.exists()
        assert (box.dropped_total, box.first_seq) == (dropped, first)
        assert len(gap_events(box)) == 1


def test_scan_reports_lost_ranges_and_resumes() -> None:
    records = [frame(seq, b"payload-%d" % seq) for seq in range(5, 15)]
    damaged = bytearray(b"".join(records))
    # Destroy records 8 and 9 (bytes of both) and leave garbage at the end.
    start = sum(len(r) for r in records[:3])
    damaged[start + 2 : start + len(records[3]) + 4] = b"\x00" * (len(records[3]) + 2)
    result = scan(bytes(damaged) + b"junk", 5, 14, index_every=4, max_payload=1 << 20)
    assert result.lost == ((8, 9),)
    assert result.records == 8
    assert result.tail_bytes == 4
    assert start in result.skips
    # The record after the damage is indexed so readers can land on it.
    assert 10 in result.index_seqs


def test_a_failed_write_leaves_no_partial_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "outbox"
    with open_outbox(directory) as box:
        box.append(make_event(1))
        real_write = os.write

        def half_then_full(fd: int, data: bytes | memoryview) -> int:
            if len(data) > 10:
                real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "write", half_then_full)
        with pytest.raises(OSError, match="No space"):
            box.append(make_event(2))
        monkeypatch.undo()
        assert box.last_seq == 1
        assert box.append(make_event(3)) == 2
    with open_outbox(directory) as box:
        assert box.status().truncated_bytes == 0
        assert [parse(r.payload).id for r in box.read_after(0)] == ["event-1", "event-3"]


def test_a_write_that_cannot_be_rolled_back_stops_appends_until_reopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "outbox"
    with open_outbox(directory) as box:
        box.append(make_event(1))
        real_write = os.write

        def half(fd: int, data: bytes | memoryview) -> int:
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.EIO, "I/O error")

        def refuse(fd: int, length: int) -> None:
            raise OSError(errno.EIO, "I/O error")

        monkeypatch.setattr(os, "write", half)
        monkeypatch.setattr(os, "ftruncate", refuse)
        with pytest.raises(OSError, match="I/O error"):
            box.append(make_event(2))
        monkeypatch.undo()
        with pytest.raises(OutboxError, match="reopen"):
            box.append(make_event(3))
        assert [r.seq for r in box.read_after(0)] == [1]  # reading still works
    with open_outbox(directory) as box:
        assert box.status().truncated_bytes > 0
        assert box.append(make_event(3)) == 2


# -- disk budget and retention ------------------------------------------------------------------


def test_disk_budget_drops_oldest_segments_with_an_exact_gap(tmp_path: Path) -> None:
    config = OutboxConfig(segment_bytes=8192, disk_budget_bytes=4 * 8192)
    directory = tmp_path / "outbox"
    with open_outbox(directory, config) as box:
        for i in range(2000):
            box.append(make_event(i))
            assert box.disk_bytes <= config.disk_budget_bytes
        assert sum(p.stat().st_size for p in segments(directory)) == box.disk_bytes
        gaps = gap_events(box)
        assert gaps
        # The gaps together name exactly the dropped sequence numbers.
        expected_first = 1
        for _, gap in gaps:
            assert gap.reason == pipeline_details_pb2.GAP_REASON_DISK_BUDGET
            assert gap.count == gap.last_seq - gap.first_seq + 1
            expected_first = gap.last_seq + 1
        # Gap events are retained only while their segment is: the newest one tells where the
        # outbox starts now.
        assert gaps[-1][1].last_seq + 1 == box.first_seq == expected_first
        assert box.dropped_total == box.first_seq - 1
        total = box.dropped_total + box.depth
        assert total == box.last_seq


def test_disk_budget_gap_precedes_the_batch_that_forced_it(tmp_path: Path) -> None:
    config = OutboxConfig(segment_bytes=8192, disk_budget_bytes=4 * 8192)
    with open_outbox(tmp_path / "outbox", config) as box:
        while box.disk_bytes < config.disk_budget_bytes - 3000:
            box.append(make_event(0))
        before = box.status()
        first, last = box.append_many([make_event(i, pad=50) for i in range(40)])
        after = box.status()
        assert after.dropped_total > before.dropped_total
        dropped = after.dropped_total - before.dropped_total
        gap = parse(box.read_after(first - 2, 1)[0].payload).gap
        assert (gap.first_seq, gap.last_seq, gap.count) == (
            before.first_seq,
            before.first_seq + dropped - 1,
            dropped,
        )
        assert (first, last) == (before.last_seq + 2, before.last_seq + 41)
        assert box.first_seq == before.first_seq + dropped


def test_out_of_range_names_the_oldest_available_seq(tmp_path: Path) -> None:
    config = OutboxConfig(segment_bytes=8192, disk_budget_bytes=4 * 8192)
    with open_outbox(tmp_path / "outbox", config) as box:
        for i in range(1000):
            box.append(make_event(i))
        oldest = box.first_seq
        assert oldest > 1
        with pytest.raises(OutOfRangeError) as caught:
            box.read_after(oldest - 2)
        assert caught.value.oldest_available_seq == oldest
        assert isinstance(caught.value, errors.OutOfRangeError)
        assert str(oldest) in str(caught.value)
        assert box.read_after(oldest - 1, 1)[0].seq == oldest


def test_retention_ages_out_old_segments_without_a_gap(tmp_path: Path) -> None:
    clock = FakeClock()
    config = OutboxConfig(
        segment_bytes=8192, disk_budget_bytes=1 << 20, retention=timedelta(hours=1)
    )
    directory = tmp_path / "outbox"
    with open_outbox(directory, config, clock=clock) as box:
        box.append_many([make_event(i) for i in range(200)])
        files = len(segments(directory))
        clock.now += 1800
        box.append(make_event(200))
        assert box.first_seq == 1  # half an hour: nothing is old enough
        clock.now += 1900
        box.append(make_event(201))
        active_first = int(segments(directory)[-1].stem)
        assert len(segments(directory)) == 1 < files
        assert box.first_seq == active_first
        status = box.status()
        assert status.expired_total == active_first - 1
        assert status.dropped_total == 0
        assert gap_events(box) == []
        with pytest.raises(OutOfRangeError) as caught:
            box.read_after(0)
        assert caught.value.oldest_available_seq == active_first


def test_retention_after_reopen_uses_the_sealed_segments_age(tmp_path: Path) -> None:
    clock = FakeClock()
    config = OutboxConfig(
        segment_bytes=8192, disk_budget_bytes=1 << 20, retention=timedelta(hours=1)
    )
    directory = tmp_path / "outbox"
    with open_outbox(directory, config, clock=clock) as box:
        box.append_many([make_event(i) for i in range(200)])
        clock.now += 3000
        box.append_many([make_event(i) for i in range(200)])  # rolls: newer sealed segments
    clock.now += 1000
    with open_outbox(directory, config, clock=clock) as box:
        # The first batch is 4000 s old, the second 1000 s: only the first batch's segments go.
        assert 1 < box.first_seq <= 201
        assert box.status().expired_total == box.first_seq - 1
        assert box.last_seq == 400


# -- concurrency, waking, lifecycle -------------------------------------------------------------


def test_concurrent_appenders_get_a_gapless_set(tmp_path: Path) -> None:
    config = OutboxConfig(segment_bytes=64 * 1024, disk_budget_bytes=64 << 20)
    seen: list[list[tuple[int, str]]] = [[] for _ in range(4)]
    with open_outbox(tmp_path / "outbox", config) as box:

        def produce(worker: int) -> None:
            for i in range(300):
                if i % 3:
                    event = make_event(i)
                    event.id = f"{worker}-{i}"
                    seen[worker].append((box.append(event), event.id))
                else:
                    batch = [make_event(j) for j in range(5)]
                    for j, event in enumerate(batch):
                        event.id = f"{worker}-{i}-{j}"
                    box.append_many(batch)
                    seen[worker].extend((e.seq, e.id) for e in batch)

        threads = [threading.Thread(target=produce, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        pairs = dict(pair for worker in seen for pair in worker)
        assert sorted(pairs) == list(range(1, box.last_seq + 1))
        stored = {r.seq: parse(r.payload).id for r in box.read_after(0, 100_000, 1 << 30)}
        assert stored == pairs
        for worker in seen:  # each thread's appends are numbered in its own order
            assert [s for s, _ in worker] == sorted(s for s, _ in worker)


def test_a_slow_reader_during_budget_drops_sees_ordered_records_or_out_of_range(
    tmp_path: Path,
) -> None:
    config = OutboxConfig(segment_bytes=8192, disk_budget_bytes=4 * 8192)
    with open_outbox(tmp_path / "outbox", config) as box:
        stop = threading.Event()
        problems: list[str] = []

        def read() -> None:
            cursor = 0
            while not stop.is_set():
                try:
                    records = box.read_after(cursor, 7)
                except OutOfRangeError as exc:
                    cursor = exc.oldest_available_seq - 1
                    continue
                seqs = [r.seq for r in records]
                if seqs and (seqs != list(range(cursor + 1, cursor + 1 + len(seqs)))):
                    problems.append(f"after {cursor}: {seqs}")
                if seqs:
                    cursor = seqs[-1]

        reader = threading.Thread(target=read)
        reader.start()
        for i in range(3000):
            box.append(make_event(i))
        stop.set()
        reader.join()
        assert problems == []
        assert box.dropped_total > 0


def test_wait_for_seq_after_wakes_on_an_append_from_another_thread(outbox: Outbox) -> None:
    outbox.append(make_event(0))

    async def main() -> tuple[int, float, int]:
        timer = threading.Timer(0.05, lambda: outbox.append(make_event(1)))
        started = time.monotonic()
        timer.start()
        latest = await outbox.wait_for_seq_after(1, timeout=10)
        waited = time.monotonic() - started
        timer.join()
        # Nothing newer: returns the latest after the timeout.
        quiet = await outbox.wait_for_seq_after(latest, timeout=0.05)
        return latest, waited, quiet

    latest, waited, quiet = asyncio.run(main())
    assert latest == 2
    assert waited < 5
    assert quiet == 2
    assert asyncio.run(outbox.wait_for_seq_after(0, timeout=10)) == 2  # already there


@pytest.mark.parametrize("turns", range(8))
def test_wait_for_seq_after_never_swallows_a_cancellation(outbox: Outbox, turns: int) -> None:
    """A waiter cancelled as an append wakes it must still end cancelled (Python 3.11's
    wait_for returned the result instead). ``turns`` loop passes between the append and the
    cancel cover every interleaving of the wake-up with the cancellation; no timing involved."""

    async def main() -> None:
        task = asyncio.create_task(outbox.wait_for_seq_after(0, timeout=60))
        for _ in range(3):
            await asyncio.sleep(0)  # let it register and block
        outbox.append(make_event(0))
        for _ in range(turns):
            await asyncio.sleep(0)
        if task.done():  # woken and finished before the cancel: nothing to swallow
            assert task.result() == 1
            return
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    asyncio.run(main())
    # The cancelled waiter unregistered itself: a later wait still works.
    assert asyncio.run(outbox.wait_for_seq_after(0, timeout=60)) == 1


def test_close_wakes_waiters_and_refuses_further_use(tmp_path: Path) -> None:
    box = open_outbox(tmp_path / "outbox")
    box.append(make_event(0))

    async def main() -> int:
        threading.Timer(0.05, box.close).start()
        return await box.wait_for_seq_after(1, timeout=10)

    started = time.monotonic()
    assert asyncio.run(main()) == 1
    assert time.monotonic() - started < 5
    with pytest.raises(OutboxClosedError):
        box.append(make_event(1))
    with pytest.raises(OutboxClosedError):
        box.read_after(0)
    box.close()


def test_one_process_at_a_time(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "outbox"), pytest.raises(OutboxLockedError):
        open_outbox(tmp_path / "outbox")
    with open_outbox(tmp_path / "outbox") as box:  # released on close
        assert box.last_seq == 0


def test_fsync_always_makes_every_append_durable(tmp_path: Path) -> None:
    config = OutboxConfig(segment_bytes=8192, disk_budget_bytes=1 << 20, fsync="always")
    with open_outbox(tmp_path / "outbox", config) as box:
        for i in range(50):
            box.append(make_event(i))
            assert box.status().durable_seq == box.last_seq


def test_fsync_interval_catches_up_in_the_background(tmp_path: Path) -> None:
    config = OutboxConfig(fsync_interval=timedelta(milliseconds=10))
    with open_outbox(tmp_path / "outbox", config) as box:
        box.append_many([make_event(i) for i in range(10)])
        deadline = time.monotonic() + 5
        while box.status().durable_seq < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert box.status().durable_seq == 10


def test_nothing_reaches_a_reader_before_it_is_durable(tmp_path: Path) -> None:
    # A long interval: only the reader's own group commit can make the records durable. Were a
    # reader handed undurable records, a power loss could reuse their seqs for other events.
    config = OutboxConfig(fsync_interval=timedelta(hours=1))
    with open_outbox(tmp_path / "outbox", config) as box:
        box.append_many([make_event(i) for i in range(10)])
        assert box.status().durable_seq == 0
        records = box.read_after(0)
        assert [r.seq for r in records] == list(range(1, 11))
        assert box.status().durable_seq == 10


def test_too_large_events_and_batches_are_refused_whole(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "outbox") as box:
        with pytest.raises(RecordTooLargeError):
            box.append_many([make_event(1), make_event(2, pad=SMALL.segment_bytes)])
        assert box.last_seq == 0
        batch = [make_event(i, pad=4000) for i in range(300)]  # over budget - 2 segments
        with pytest.raises(RecordTooLargeError, match="split it"):
            box.append_many(batch)
        assert box.last_seq == 0
        # The largest event that fits fills a segment on its own.
        assert box.append(make_event(3, pad=SMALL.segment_bytes - 200)) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("segment_bytes", 100),
        ("disk_budget_bytes", 8192),
        ("retention", timedelta(0)),
        ("fsync", "never"),
        ("fsync_interval", timedelta(0)),
        ("index_every", 0),
    ],
)
def test_invalid_config_names_the_key(field: str, value: object) -> None:
    kwargs: dict[str, object] = {"segment_bytes": 8192, "disk_budget_bytes": 1 << 20, field: value}
    with pytest.raises(errors.ConfigError) as caught:
        OutboxConfig(**kwargs)  # type: ignore[arg-type]
    assert caught.value.key == f"outbox.{field}"


def test_the_budget_error_says_the_default_segment_size_makes_the_minimum_64_mib() -> None:
    with pytest.raises(errors.ConfigError, match=r"\(the default\).*\(64 MiB\)"):
        OutboxConfig(disk_budget_bytes=32 * 1024 * 1024)
    with pytest.raises(errors.ConfigError, match=r"at least 16777216 bytes \(16 MiB\)"):
        OutboxConfig(segment_bytes=4 << 20, disk_budget_bytes=8 << 20)
    assert OutboxConfig(segment_bytes=4 << 20, disk_budget_bytes=16 << 20)
