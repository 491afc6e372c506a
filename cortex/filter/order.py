"""`order_by` for ListEvents (AIP-132): `time`, optionally followed by `asc` or `desc`.

The empty `order_by` is `time asc`, oldest first: AIP-132 makes a field ascending unless it says
`desc`, and oldest-first is the order events were appended, so a listing paged to its end and
resumed later continues where it stopped. Ties (equal times) are broken by the store's rowid in
the same direction, so pages never repeat or skip an event. SQLite sorts events without a time
(NULL) first in ascending order and last in descending order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from cortex.errors import FilterError
from cortex.filter.literals import shown

MAX_ORDER_BY_CHARS: Final = 64
_WORD: Final = re.compile(r"[^\s,]+|,")


@dataclass(frozen=True)
class Order:
    descending: bool = False

    @property
    def field(self) -> str:
        return "time"

    def canonical(self) -> str:
        return "time desc" if self.descending else "time"

    def sql(self) -> str:
        """The ORDER BY terms (without `ORDER BY`), over `events` unaliased."""
        direction = "DESC" if self.descending else "ASC"
        return f"events.time_ns {direction}, events.rowid {direction}"


def parse_order_by(text: str) -> Order:
    """The Order of an `order_by` text (FilterError naming the position otherwise)."""
    if len(text) > MAX_ORDER_BY_CHARS:
        raise _error(MAX_ORDER_BY_CHARS + 1, f"at most {MAX_ORDER_BY_CHARS} characters")
    words = [(m.group(), m.start() + 1) for m in _WORD.finditer(text)]
    if not words:
        return Order()
    field, position = words[0]
    if field != "time":
        raise _error(position, f"events can be ordered by time only, not {shown(field)}")
    descending = False
    if len(words) > 1:
        direction, position = words[1]
        if direction.lower() not in ("asc", "desc"):
            if direction == ",":
                raise _error(position, "events can be ordered by one field (time) only")
            raise _error(position, f"expected asc or desc after time, found {shown(direction)}")
        descending = direction.lower() == "desc"
    if len(words) > 2:
        extra, position = words[2]
        if extra == ",":
            raise _error(position, "events can be ordered by one field (time) only")
        raise _error(position, f"unexpected {shown(extra)}")
    return Order(descending)


def _error(position: int, reason: str) -> FilterError:
    return FilterError(position, reason, argument="order_by")
