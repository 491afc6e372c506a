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
from collections.abc import Callable
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
from cortex.filter.lexer import T, Token, tokenize
from cortex.filter.literals import shown
from cortex.guardian_view import ConnectionState, GuardianDirectory, GuardianView
from cortex.paging import PageBinding, PageTokens, page_size
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

_Getter = Callable[[GuardianView], object]
_STRING_FIELDS: Final[dict[str, _Getter]] = {
    "name": lambda g: g.name,
    "guardian_id": lambda g: g.guardian_id,
    "host": lambda g: g.host,
    "role": lambda g: g.role,
    "address": lambda g: g.address,
    "version": lambda g: g.version,
}
_INT_FIELDS: Final[dict[str, _Getter]] = {
    "lag_events": lambda g: g.lag_events,
    "committed_seq": lambda g: g.committed_seq,
    "latest_seq": lambda g: g.latest_seq,
    "events_lost": lambda g: g.events_lost,
}
_OTHER_FIELDS: Final = ("state", "sealed", "degraded_sensors")
GUARDIAN_FIELDS: Final = tuple(sorted((*_STRING_FIELDS, *_INT_FIELDS, *_OTHER_FIELDS)))
_STATE_PREFIX: Final = "CONNECTION_STATE_"
_OPS: Final[dict[str, Callable[[int, int], bool]]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}

_Predicate = Callable[[GuardianView], bool]


@dataclass(frozen=True)
class GuardianFilter:
    """A parsed guardian filter: `matches` evaluates it, `canonical` is what tokens bind to."""

    predicate: _Predicate | None
    canonical: str

    def matches(self, view: GuardianView) -> bool:
        return self.predicate is None or self.predicate(view)


def parse_guardian_filter(text: str) -> GuardianFilter:
    """The GuardianFilter of `text` (FilterError naming the position and the reason)."""
    if len(text) > MAX_GUARDIAN_FILTER_CHARS:
        raise FilterError(
            MAX_GUARDIAN_FILTER_CHARS + 1, f"at most {MAX_GUARDIAN_FILTER_CHARS} characters"
        )
    parser = _GuardianParser(tokenize(text))
    if parser.peek.kind is T.END:
        return GuardianFilter(None, "")
    predicate, canonical = parser.expression(depth=0)
    rest: Token = parser.peek
    if rest.kind is not T.END:
        raise FilterError(rest.position, f"unexpected {rest.describe()}")
    return GuardianFilter(predicate, canonical)


class _GuardianParser:
    def __init__(self, tokens: list[Token]) -> None:
        self._tokens = tokens
        self._i = 0
        self._terms = 0

    @property
    def peek(self) -> Token:
        return self._tokens[self._i]

    def _take(self) -> Token:
        token = self._tokens[self._i]
        if token.kind is not T.END:
            self._i += 1
        return token

    def expression(self, depth: int) -> tuple[_Predicate, str]:
        parts = [self._sequence(depth)]
        while self.peek.kind is T.AND:
            self._take()
            parts.append(self._sequence(depth))
        return _all(parts)

    def _sequence(self, depth: int) -> tuple[_Predicate, str]:
        parts = [self._factor(depth)]
        while self.peek.kind in (T.LPAREN, T.NOT, T.MINUS, T.TEXT):
            parts.append(self._factor(depth))
        return _all(parts)

    def _factor(self, depth: int) -> tuple[_Predicate, str]:
        parts = [self._term(depth)]
        while self.peek.kind is T.OR:
            self._take()
            parts.append(self._term(depth))
        if len(parts) == 1:
            return parts[0]
        preds = [p for p, _ in parts]
        return (lambda g: any(p(g) for p in preds)), "(" + " OR ".join(c for _, c in parts) + ")"

    def _term(self, depth: int) -> tuple[_Predicate, str]:
        if depth > 32:
            raise FilterError(self.peek.position, "nested too deeply (at most 32 levels)")
        if self.peek.kind in (T.NOT, T.MINUS):
            self._take()
            inner, text = self._term(depth + 1)
            return (lambda g: not inner(g)), f"NOT {text}"
        if self.peek.kind is T.LPAREN:
            self._take()
            inner, text = self.expression(depth + 1)
            close = self._take()
            if close.kind is not T.RPAREN:
                raise FilterError(close.position, f"expected ')', found {close.describe()}")
            return inner, text
        return self._restriction()

    def _restriction(self) -> tuple[_Predicate, str]:
        field = self._take()
        if field.kind is not T.TEXT:
            raise FilterError(field.position, f"expected a field, found {field.describe()}")
        name = field.value
        if name not in GUARDIAN_FIELDS:
            raise FilterError(
                field.position,
                f"field {shown(name)} is not filterable; fields: {', '.join(GUARDIAN_FIELDS)}",
            )
        op = self._take()
        if op.kind is not T.CMP:
            raise FilterError(
                op.position, f"expected a comparison after {name}, found {op.describe()}"
            )
        value = self._take()
        if value.kind not in (T.TEXT, T.STRING):
            raise FilterError(value.position, f"expected a value, found {value.describe()}")
        self._terms += 1
        if self._terms > MAX_GUARDIAN_TERMS:
            raise FilterError(field.position, f"at most {MAX_GUARDIAN_TERMS} comparisons")
        if name in _INT_FIELDS:
            return _int_restriction(name, op, value)
        if op.value not in ("=", "!="):
            raise FilterError(op.position, f"{name} takes = and != only")
        negate = op.value == "!="
        match, text = _equality(name, value)
        rendered = f"{name} {op.value} {text}"
        if negate:
            return (lambda g: not match(g)), rendered
        return match, rendered


def _all(parts: list[tuple[_Predicate, str]]) -> tuple[_Predicate, str]:
    if len(parts) == 1:
        return parts[0]
    preds = [p for p, _ in parts]
    return (lambda g: all(p(g) for p in preds)), " AND ".join(c for _, c in parts)


def _int_restriction(name: str, op: Token, value: Token) -> tuple[_Predicate, str]:
    text = value.value
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise FilterError(value.position, f"{name} takes a non-negative integer, not {shown(text)}")
    number = int(text)
    get, compare = _INT_FIELDS[name], _OPS[op.value]

    def predicate(g: GuardianView) -> bool:
        got = get(g)
        return isinstance(got, int) and compare(got, number)

    return predicate, f"{name} {op.value} {number}"


def _equality(name: str, value: Token) -> tuple[_Predicate, str]:
    """The `=` predicate of one non-integer field, and its canonical value text."""
    text = value.value
    if name == "state":
        word = text.upper().removeprefix(_STATE_PREFIX)
        try:
            state = ConnectionState[word]
        except KeyError:
            raise FilterError(
                value.position,
                f"state is one of {', '.join(s.name for s in ConnectionState)}, not {shown(text)}",
            ) from None
        return (lambda g: g.state is state), state.name
    if name == "sealed":
        if text.lower() not in ("true", "false"):
            raise FilterError(value.position, f"sealed is true or false, not {shown(text)}")
        flag = text.lower() == "true"
        return (lambda g: g.sealed is flag), str(flag).lower()
    if not text:
        raise FilterError(value.position, f"{name} compared with an empty string")
    stars = [i for i, _ in value.stars]
    if any(i != len(text) - 1 for i in stars):
        raise FilterError(value.position, "`*` is a wildcard only as the last character")
    prefix = text[:-1] if stars else None
    if name == "degraded_sensors":
        if prefix is not None:
            return (
                lambda g: any(s.startswith(prefix) for s in g.degraded_sensors),
                _quoted(text),
            )
        return (lambda g: text in g.degraded_sensors), _quoted(text)
    get = _STRING_FIELDS[name]
    if prefix is not None:
        return (lambda g: str(get(g)).startswith(prefix)), _quoted(text)
    return (lambda g: get(g) == text), _quoted(text)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


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
