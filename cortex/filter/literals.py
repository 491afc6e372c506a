"""Filter literals per field kind: reading them (RFC 3339 timestamps, enum names, integers,
quoted strings) and writing them back in their one canonical spelling.

Readers raise ValueError with a reason for the caller to wrap in a FilterError at the literal's
position; they never see the position themselves.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Final

from qsc.common.v1 import classification_pb2, event_pb2

INT64_MAX: Final = 2**63 - 1
INT64_MIN: Final = -(2**63)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

# RFC 3339 date-time (section 5.6): full date, "T", full time, zone. Up to 9 fraction digits,
# since the store keeps nanoseconds; more would silently round.
_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
TIME_EXAMPLE: Final = '"2026-12-01T00:00:00Z"'
_SHOWN_CHARS: Final = 40


def shown(text: str) -> str:
    """`text` quoted for an error message, cut short: messages echo what the caller wrote, but
    a 4 KiB literal would push the reason out of the status details (mesh.status cuts them)."""
    if len(text) > _SHOWN_CHARS:
        text = text[: _SHOWN_CHARS - 3] + "..."
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_time(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp (ValueError with a reason)."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(
            f"expected an RFC 3339 timestamp such as {TIME_EXAMPLE}, found {shown(text)}"
        )
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = m.groups()
    if fraction is not None and len(fraction) > 9:
        raise ValueError("a timestamp has at most 9 fraction digits (nanoseconds)")
    if zulu:
        zone = UTC
    else:
        if int(off_h) > 23 or int(off_m) > 59:
            raise ValueError(f"invalid time zone offset in {shown(text)}")
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        zone = timezone(-offset if sign == "-" else offset)
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=zone
        )
    except ValueError as e:  # month 13, February 30, second 60 (no leap seconds in the store)
        raise ValueError(f"invalid timestamp {shown(text)}: {e}") from None
    seconds = (moment - _EPOCH) // timedelta(seconds=1)
    nanos = seconds * 10**9 + int((fraction or "0").ljust(9, "0"))
    if not INT64_MIN <= nanos <= INT64_MAX:  # the store's time_ns is a signed 64-bit integer
        raise ValueError("timestamp out of range (years 1678 to 2262)")
    return nanos


def format_time(nanos: int) -> str:
    """The canonical RFC 3339 spelling: UTC, `Z`, the shortest exact fraction."""
    seconds, fraction = divmod(nanos, 10**9)
    t = _EPOCH + timedelta(seconds=seconds)
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + "Z"


def _enum_names(prefix: str, values: dict[str, int]) -> MappingProxyType[str, int]:
    # Short names (`HIGH`) keyed for lookup; UNSPECIFIED is left out: an event without a
    # severity has no value (see cortex.fields), so comparing with "unset" would never match.
    return MappingProxyType(
        {
            name.removeprefix(prefix): number
            for name, number in values.items()
            if not name.endswith("_UNSPECIFIED")
        }
    )


SEVERITIES: Final = _enum_names("SEVERITY_", dict(classification_pb2.Severity.items()))
CATEGORIES: Final = _enum_names("CATEGORY_", dict(classification_pb2.Category.items()))
_DETAIL: Final = event_pb2.Event.DESCRIPTOR.oneofs_by_name["detail"]
DETAIL_KINDS: Final = tuple(f.name for f in _DETAIL.fields)
_MITRE_ID: Final = re.compile(r"T\d{4}(?:\.\d{3})?")


def parse_enum(names: MappingProxyType[str, int], prefix: str, text: str) -> int:
    """The number of an enum name, with or without its prefix, in any case."""
    short = text.upper().removeprefix(prefix)
    if short in names:
        return names[short]
    if short == "UNSPECIFIED":
        raise ValueError(
            f"{prefix}UNSPECIFIED means not set: an event without one has no value to compare"
        )
    raise ValueError(f"expected one of {', '.join(names)}, found {shown(text)}")


def enum_name(names: MappingProxyType[str, int], number: int) -> str:
    for name, value in names.items():
        if value == number:
            return name
    raise ValueError(f"no enum name for {number}")  # cannot happen: numbers come from names


def parse_kind(text: str) -> str:
    """A detail kind: the oneof field name (`file_rename`), also as the DetailKind name
    (`FILE_RENAME`, `DETAIL_KIND_FILE_RENAME`)."""
    name = text.lower().removeprefix("detail_kind_")
    if name not in DETAIL_KINDS:
        raise ValueError(f"expected a detail kind ({', '.join(DETAIL_KINDS)}), found {shown(text)}")
    return name


def kind_prefix(text: str) -> str:
    # A kind wildcard reads like the kind itself: `kind = "FILE_*"` selects `file_...`.
    return text.lower().removeprefix("detail_kind_")


def check_mitre(text: str) -> str:
    if _MITRE_ID.fullmatch(text) is None:
        raise ValueError(
            f'a MITRE technique id looks like T1059 or T1059.004 (or a prefix: "T1059*"), '
            f"found {shown(text)}"
        )
    return text


def parse_int(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"expected a non-negative integer, found {shown(text)}")
    number = int(text)
    if number > INT64_MAX:  # the store's columns are signed 64-bit integers
        raise ValueError(f"integer out of range (at most {INT64_MAX})")
    return number


# Escapes inside a double-quoted string; `\*` is a literal star (an unescaped trailing `*` is
# the wildcard).
UNESCAPE: Final = MappingProxyType(
    {'"': '"', "\\": "\\", "*": "*", "n": "\n", "t": "\t", "r": "\r"}
)
_ESCAPE: Final = MappingProxyType(
    {'"': '\\"', "\\": "\\\\", "*": "\\*", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
)


def quote(text: str, *, prefix: bool = False) -> str:
    """`text` as a double-quoted filter string that reads back as the same value; with `prefix`,
    followed by the wildcard star."""
    body = "".join(_ESCAPE.get(c, c) for c in text)
    return f'"{body}{"*" if prefix else ""}"'
