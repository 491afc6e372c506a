"""The read API's pure core: GetEvent, ListEvents, GetGuardian, ListGuardians (AIP-131/132/158/160).

No gRPC here: `cortex.service` decodes a request, calls `CortexQueries`, encodes the answer.

- Names (AIP-122): `events/{event_id}` (a UUID, as `Event.id`) and `guardians/{guardian_id}`
  (letters, digits, `-` and `.`, as `GuardianRef.id`). Anything else is INVALID_ARGUMENT
  (`ResourceNameError`), a well-formed name of nothing NOT_FOUND.
- Events are filtered by `cortex.filter` compiled to SQL and paged by the store (keyset on time
  and rowid: a page never repeats or skips an event, however many are appended meanwhile). The
  empty `order_by` is `time desc`, newest first, as the API documents for ListEvents.
- Guardians are a handful (the configured list), so they are filtered, sorted and paged in
  memory: the filter below, `order_by` on `name` (the default) or `lag_events`, by offset.
- Page tokens (`cortex.paging`) are bound to the collection, the store id, and the canonical
  filter and order: reused with anything else they are INVALID_ARGUMENT.

Guardian filter (the AIP-160 subset of `cortex.filter`, tokenized by the same lexer; same
precedence: `a AND b OR c` is `a AND (b OR c)`; NOT and `-` negate; parentheses group):

    name guardian_id host role address version   = !=; a string, trailing `*` a prefix
    state                                        = !=; CONNECTED or CONNECTION_STATE_CONNECTED...
    sealed                                       = !=; true or false
    lag_events committed_seq latest_seq events_lost   all six operators; an integer
    degraded_sensors                             = !=; holds (or not) that sensor

`total_size` of ListEvents is the store's count of matching events when the first page is
read; the page token carries it, so later pages report the same total without counting again
(a listing's total is as of its first page, like its order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Protocol

from cortex import filter as event_filter
from cortex.errors import (
    EventNotFoundError,
    FilterError,
    GuardianNotFoundError,
    PageTokenError,
    ResourceNameError,
    StoreArgumentError,
)
from cortex.filter.literals import shown
from cortex.guardian_view import ConnectionState, GuardianDirectory, GuardianView
from cortex.paging import PageBinding, PageTokens, page_size
from cortex.record_filter import Enum, RecordFields, RecordFilter, parse_record_filter
from cortex.store.api import Page, Position, WhereClause
from qsc.common.v1 import event_pb2

__all__ = [
    "CortexQueries",
    "EventsPage",
    "GuardianFilter",
    "GuardiansPage",
    "ReadableStore",
    "parse_guardian_filter",
    "parse_guardian_order",
]

_EVENT_NAME: Final = re.compile(r"events/([0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12})")
_GUARDIAN_NAME: Final = re.compile(r"guardians/([A-Za-z0-9][A-Za-z0-9.-]{0,252})")
MAX_NAME_CHARS: Final = 300
MAX_GUARDIAN_FILTER_CHARS: Final = 2000
MAX_GUARDIAN_TERMS: Final = 64


class ReadableStore(Protocol):
    """What the read API needs of an event store (`SqliteEventStore` has it)."""

    @property
    def store_id(self) -> str: ...

    def get(self, event_id: str) -> event_pb2.Event | None: ...

    def query(
        self,
        where: WhereClause | None = None,
        *,
        descending: bool = False,
        after: Position | None = None,
        limit: int = 100,
    ) -> Page: ...

    def count(self, where: WhereClause | None = None) -> int: ...

    def blind(self, field: str, value: str) -> bytes: ...


@dataclass(frozen=True)
class EventsPage:
    events: tuple[event_pb2.Event, ...]
    next_page_token: str  # "" on the last page
    total_size: int  # matching events when the listing's first page was read


@dataclass(frozen=True)
class GuardiansPage:
    guardians: tuple[GuardianView, ...]
    next_page_token: str
    total_size: int


class CortexQueries:
    """The four read calls over one store and one guardian directory (see the module docstring).

    `token_key` authenticates page tokens (at least 16 bytes; derive it from the Cortex's keyring
    so tokens survive restarts, or pass random bytes to make them per-process)."""

    def __init__(
        self, store: ReadableStore, directory: GuardianDirectory, token_key: bytes
    ) -> None:
        self._store = store
        self._directory = directory
        self._tokens = PageTokens(token_key)

    # -- events ------------------------------------------------------------------------------

    def get_event(self, name: str) -> event_pb2.Event:
        event_id = _name_id(_EVENT_NAME, name, "events/{event_id}, the id a UUID")
        event = self._store.get(event_id)
        if event is None:
            raise EventNotFoundError(f"{name} not found (never stored, or aged out)", name=name)
        return event

    def list_events(
        self, page_size_: int, page_token: str, filter_: str, order_by: str
    ) -> EventsPage:
        size = page_size(page_size_)
        flt = event_filter.parse(filter_)
        order = (
            event_filter.Order(descending=True)
            if not order_by.strip()
            else event_filter.parse_order_by(order_by)
        )
        binding = PageBinding("events", self._store.store_id, flt.canonical(), order.canonical())
        where = flt.to_sql(self._store.blind)
        after: Position | None = None
        if page_token:
            # The token holds "<position> <total>": where the last page ended, and the count
            # taken at the first page.
            position, _, counted = self._tokens.open(binding, page_token).partition(" ")
            try:
                after = Position.parse(position)
            except StoreArgumentError:
                raise PageTokenError("page_token is malformed") from None
            if counted and not counted.isdigit():
                raise PageTokenError("page_token is malformed")
            total = int(counted or 0)  # a token from before totals were carried: not counted
        else:
            total = self._store.count(where)
        page = self._store.query(where, descending=order.descending, after=after, limit=size)
        next_token = (
            "" if page.next is None else self._tokens.issue(binding, f"{page.next.token()} {total}")
        )
        return EventsPage(page.events, next_token, total)

    # -- guardians ---------------------------------------------------------------------------

    def get_guardian(self, name: str) -> GuardianView:
        guardian_id = _name_id(_GUARDIAN_NAME, name, "guardians/{guardian_id}")
        for view in self._directory.guardians():
            if view.guardian_id == guardian_id:
                return view
        raise GuardianNotFoundError(f"{name} not found: the Cortex follows no such guardian")

    def list_guardians(
        self, page_size_: int, page_token: str, filter_: str, order_by: str
    ) -> GuardiansPage:
        size = page_size(page_size_)
        flt = parse_guardian_filter(filter_)
        order = parse_guardian_order(order_by)
        binding = PageBinding("guardians", self._store.store_id, flt.canonical, order.canonical)
        offset = 0
        if page_token:
            raw = self._tokens.open(binding, page_token)
            if not raw.startswith("o") or not raw[1:].isdigit():
                raise PageTokenError("page_token is malformed")
            offset = int(raw[1:])
        matching = sorted((g for g in self._directory.guardians() if flt.matches(g)), key=order.key)
        page = tuple(matching[offset : offset + size])
        end = offset + size
        next_token = self._tokens.issue(binding, f"o{end}") if end < len(matching) else ""
        return GuardiansPage(page, next_token, len(matching))


def _name_id(pattern: re.Pattern[str], name: str, shape: str) -> str:
    match = pattern.fullmatch(name) if len(name) <= MAX_NAME_CHARS else None
    if match is None:
        shown_name = shown(name[:80]) if name else "empty"
        raise ResourceNameError(f"name {shown_name} is not {shape}", expected=shape)
    return match.group(1)


# --- the guardian filter ------------------------------------------------------------------------

GUARDIAN_FILTER_FIELDS: Final[RecordFields[GuardianView]] = RecordFields(
    strings={
        "name": lambda g: g.name,
        "guardian_id": lambda g: g.guardian_id,
        "host": lambda g: g.host,
        "role": lambda g: g.role,
        "address": lambda g: g.address,
        "version": lambda g: g.version,
    },
    sets={"degraded_sensors": lambda g: g.degraded_sensors},
    integers={
        "lag_events": lambda g: g.lag_events,
        "committed_seq": lambda g: g.committed_seq,
        "latest_seq": lambda g: g.latest_seq,
        "events_lost": lambda g: g.events_lost,
    },
    enums={
        "state": Enum(
            lambda g: g.state.name,
            tuple(s.name for s in ConnectionState),
            prefix="CONNECTION_STATE_",
        )
    },
    bools={"sealed": lambda g: g.sealed},
)
GUARDIAN_FIELDS: Final = GUARDIAN_FILTER_FIELDS.names
GuardianFilter = RecordFilter[GuardianView]


def parse_guardian_filter(text: str) -> GuardianFilter:
    """The GuardianFilter of `text` (FilterError naming the position and the reason)."""
    return parse_record_filter(
        text,
        GUARDIAN_FILTER_FIELDS,
        max_chars=MAX_GUARDIAN_FILTER_CHARS,
        max_terms=MAX_GUARDIAN_TERMS,
    )


# --- guardian order ---------------------------------------------------------------------------

_ORDER_FIELDS: Final = ("name", "lag_events")


@dataclass(frozen=True)
class GuardianOrder:
    """`order_by` for ListGuardians: terms over name and lag_events, ties broken by name."""

    terms: tuple[tuple[str, bool], ...]  # (field, descending)

    @property
    def canonical(self) -> str:
        return ", ".join(f"{f} desc" if d else f for f, d in self.terms)

    def key(self, g: GuardianView) -> tuple[int | str | _Reversed, ...]:
        parts: list[int | str | _Reversed] = []
        for field, descending in (*self.terms, ("name", False)):
            value: int | str = g.lag_events if field == "lag_events" else g.name
            if descending:
                parts.append(-value if isinstance(value, int) else _Reversed(value))
            else:
                parts.append(value)
        return tuple(parts)


@dataclass(frozen=True)
class _Reversed:
    """A string that sorts in reverse (for `name desc`)."""

    value: str

    def __lt__(self, other: _Reversed) -> bool:
        return self.value > other.value


def parse_guardian_order(text: str) -> GuardianOrder:
    """The GuardianOrder of `text`: `field [asc|desc]` terms separated by commas; empty is
    `name`. FilterError (argument order_by) names the position otherwise."""
    if len(text) > 128:
        raise FilterError(129, "at most 128 characters", argument="order_by")
    terms: list[tuple[str, bool]] = []
    position = 1
    for part in text.split(","):
        words = part.split()
        if not words:
            if text.strip():
                raise FilterError(position, "empty order_by term", argument="order_by")
            break
        field = words[0]
        if field not in _ORDER_FIELDS:
            raise FilterError(
                position + part.index(field),
                f"guardians can be ordered by {' or '.join(_ORDER_FIELDS)}, not {shown(field)}",
                argument="order_by",
            )
        if len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise FilterError(
                position + part.index(words[1]),
                f"expected asc or desc after {field}, found {shown(' '.join(words[1:]))}",
                argument="order_by",
            )
        if any(f == field for f, _ in terms):
            raise FilterError(position, f"{field} ordered twice", argument="order_by")
        terms.append((field, len(words) == 2 and words[1].lower() == "desc"))
        position += len(part) + 1
    return GuardianOrder(tuple(terms) or (("name", False),))
