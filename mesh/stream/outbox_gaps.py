"""Lost-range bookkeeping of the outbox: which sequence numbers a gap event already reported, and
the gap events themselves.

Each sequence number is reported once in the outbox's lifetime (see the Guarantees list of
:mod:`mesh.stream.outbox`): a scan that finds a range again, or a wider one, reports only the
numbers outside every range already reported. The reported ranges are disjoint, sorted, inclusive
``(first, last)`` pairs; :mod:`mesh.stream.outbox_state` persists them. Pure functions: the
outbox calls them under its lock and does the writing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from mesh.ids import uuid7
from mesh.stream.outbox_segment import HEADER_SIZE, SEQ_FIELD_MAX
from qsc.common.v1 import classification_pb2, event_pb2, identity_pb2, pipeline_details_pb2

__all__ = [
    "CORRUPTED",
    "MISSING",
    "Lost",
    "add_covered",
    "claim_unreported",
    "gap_event",
    "gap_record_upper_bound",
    "uncovered",
]

# A lost range to report: first seq, last seq, gap reason.
Lost = tuple[int, int, "pipeline_details_pb2.GapReason.ValueType"]
MISSING: Final = pipeline_details_pb2.GAP_REASON_MISSING_RECORDS
CORRUPTED: Final = pipeline_details_pb2.GAP_REASON_CORRUPTED_RECORDS


def uncovered(span: tuple[int, int], covered: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``span`` (inclusive) outside the disjoint sorted ranges ``covered``."""
    a, b = span
    out: list[tuple[int, int]] = []
    if a > b:
        return out
    for c, d in covered:
        if d < a:
            continue
        if c > b:
            break
        if c > a:
            out.append((a, c - 1))
        a = max(a, d + 1)
        if a > b:
            return out
    if a <= b:
        out.append((a, b))
    return out


def add_covered(covered: Sequence[tuple[int, int]], span: tuple[int, int]) -> list[tuple[int, int]]:
    """``covered`` with ``span`` added, merged into disjoint sorted ranges."""
    out: list[tuple[int, int]] = []
    a, b = span
    placed = False
    for c, d in covered:
        if d + 1 < a:
            out.append((c, d))
        elif b + 1 < c:
            if not placed:
                out.append((a, b))
                placed = True
            out.append((c, d))
        else:
            a, b = min(a, c), max(b, d)
    if not placed:
        out.append((a, b))
    out.sort()
    return out


def claim_unreported(
    ranges: Iterable[Lost], reported: Sequence[tuple[int, int]], first_seq: int
) -> tuple[list[Lost], list[tuple[int, int]]]:
    """The parts of ``ranges`` at or after ``first_seq`` that no range in ``reported`` covers,
    and ``reported`` with them added (later ranges of the same call are not reported twice)."""
    fresh: list[Lost] = []
    covered = list(reported)
    for a, b, reason in ranges:
        for part in uncovered((max(a, first_seq), b), covered):
            fresh.append((*part, reason))
            covered = add_covered(covered, part)
    return fresh, covered


def gap_event(
    guardian: identity_pb2.GuardianRef,
    first: int,
    last: int,
    reason: pipeline_details_pb2.GapReason.ValueType,
    now: float,
) -> event_pb2.Event:
    """The event reporting seq ``first``-``last`` lost for ``reason`` (``now``: epoch seconds)."""
    count = last - first + 1
    why = {
        pipeline_details_pb2.GAP_REASON_DISK_BUDGET: "disk budget",
        MISSING: "missing from the outbox's tail",
    }.get(reason, "damage")
    event = event_pb2.Event(
        id=uuid7(now),
        guardian=guardian,
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


def gap_record_upper_bound(guardian: identity_pb2.GuardianRef) -> int:
    """Bytes one gap event's record takes on disk, at most (the disk budget keeps room for it)."""
    top = (1 << 64) - 1
    widest = gap_event(guardian, 1, top, CORRUPTED, 4e9)
    widest.gap.first_seq = widest.gap.count = top
    return HEADER_SIZE + len(widest.SerializeToString()) + SEQ_FIELD_MAX + 64
