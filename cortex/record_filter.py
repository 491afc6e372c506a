"""AIP-160 filters over the Cortex's in-memory resources (guardians, assessments).

Events are filtered by `cortex.filter` (in memory and as SQL over the store); the resources the
Cortex holds in memory use the same grammar and lexer here, over a table of fields each resource
kind declares (`RecordFields`):

    strings   = !=; a string, `*` as its last character is a prefix wildcard
    sets      = !=; holds (or not) that value (or one with that prefix)
    integers  all six operators; a non-negative integer
    numbers   all six operators; a decimal (`confidence >= 0.8`)
    enums     = !=; one of the names (a prefix such as CONNECTION_STATE_ may be written)
    ordered   all six operators over an ordered enum (`severity >= HIGH`)
    bools     = !=; true or false
    times     all six operators; an RFC 3339 timestamp in quotes

`AND` binds loosest, then juxtaposition, then `OR`; `NOT`/`-` negate; parentheses group.
Errors are `FilterError` with a 1-based position. `canonical` is the normalized text a page
token binds to.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from cortex.errors import FilterError
from cortex.filter.lexer import T, Token, tokenize
from cortex.filter.literals import format_time, parse_time, shown

R = TypeVar("R")
Predicate = Callable[[R], bool]
MAX_DEPTH: Final = 32
_OPS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class Enum(Generic[R]):
    """An enum field: `get` gives the record's value as one of `names` (upper case); `prefix`
    may be written before a name (`CONNECTION_STATE_CONNECTED`). For an ordered enum the names
    are in order, lowest first."""

    get: Callable[[R], str]
    names: tuple[str, ...]
    prefix: str = ""


@dataclass(frozen=True)
class RecordFields(Generic[R]):
    strings: Mapping[str, Callable[[R], str]] = field(default_factory=dict)
    sets: Mapping[str, Callable[[R], Collection[str]]] = field(default_factory=dict)
    integers: Mapping[str, Callable[[R], int]] = field(default_factory=dict)
    numbers: Mapping[str, Callable[[R], float]] = field(default_factory=dict)
    enums: Mapping[str, Enum[R]] = field(default_factory=dict)
    ordered: Mapping[str, Enum[R]] = field(default_factory=dict)
    bools: Mapping[str, Callable[[R], bool]] = field(default_factory=dict)
    times: Mapping[str, Callable[[R], int]] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(
            sorted(
                {
                    *self.strings,
                    *self.sets,
                    *self.integers,
                    *self.numbers,
                    *self.enums,
                    *self.ordered,
                    *self.bools,
                    *self.times,
                }
            )
        )


@dataclass(frozen=True)
class RecordFilter(Generic[R]):
    """A parsed filter: `matches` evaluates it, `canonical` is what page tokens bind to."""

    predicate: Callable[[R], bool] | None
    canonical: str

    def matches(self, record: R) -> bool:
        return self.predicate is None or self.predicate(record)


def parse_record_filter(
    text: str, fields: RecordFields[R], *, max_chars: int = 2000, max_terms: int = 64
) -> RecordFilter[R]:
    """The RecordFilter of `text` over `fields` (FilterError naming the position and reason)."""
    if len(text) > max_chars:
        raise FilterError(max_chars + 1, f"at most {max_chars} characters")
    parser: _Parser[R] = _Parser(tokenize(text), fields, max_terms)
    if parser.peek.kind is T.END:
        return RecordFilter(None, "")
    predicate, canonical = parser.expression(depth=0)
    rest = parser.peek
    if rest.kind is not T.END:
        raise FilterError(rest.position, f"unexpected {rest.describe()}")
    return RecordFilter(predicate, canonical)


class _Parser(Generic[R]):
    def __init__(self, tokens: list[Token], fields: RecordFields[R], max_terms: int) -> None:
        self._tokens = tokens
        self._i = 0
        self._terms = 0
        self._fields = fields
        self._max_terms = max_terms

    @property
    def peek(self) -> Token:
        return self._tokens[self._i]

    def _take(self) -> Token:
        token = self._tokens[self._i]
        if token.kind is not T.END:
            self._i += 1
        return token

    def expression(self, depth: int) -> tuple[Predicate[R], str]:
        parts = [self._sequence(depth)]
        while self.peek.kind is T.AND:
            self._take()
            parts.append(self._sequence(depth))
        return _all(parts)

    def _sequence(self, depth: int) -> tuple[Predicate[R], str]:
        parts = [self._factor(depth)]
        while self.peek.kind in (T.LPAREN, T.NOT, T.MINUS, T.TEXT):
            parts.append(self._factor(depth))
        return _all(parts)

    def _factor(self, depth: int) -> tuple[Predicate[R], str]:
        parts = [self._term(depth)]
        while self.peek.kind is T.OR:
            self._take()
            parts.append(self._term(depth))
        if len(parts) == 1:
            return parts[0]
        preds = [p for p, _ in parts]
        return (lambda r: any(p(r) for p in preds)), "(" + " OR ".join(c for _, c in parts) + ")"

    def _term(self, depth: int) -> tuple[Predicate[R], str]:
        if depth > MAX_DEPTH:
            raise FilterError(self.peek.position, f"nested too deeply (at most {MAX_DEPTH} levels)")
        if self.peek.kind in (T.NOT, T.MINUS):
            self._take()
            inner, text = self._term(depth + 1)
            return (lambda r: not inner(r)), f"NOT {text}"
        if self.peek.kind is T.LPAREN:
            self._take()
            inner, text = self.expression(depth + 1)
            close = self._take()
            if close.kind is not T.RPAREN:
                raise FilterError(close.position, f"expected ')', found {close.describe()}")
            return inner, text
        return self._restriction()

    def _restriction(self) -> tuple[Predicate[R], str]:
        f = self._fields
        token = self._take()
        if token.kind is not T.TEXT:
            raise FilterError(token.position, f"expected a field, found {token.describe()}")
        name = token.value
        if name not in f.names:
            raise FilterError(
                token.position,
                f"field {shown(name)} is not filterable; fields: {', '.join(f.names)}",
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
        if self._terms > self._max_terms:
            raise FilterError(token.position, f"at most {self._max_terms} comparisons")
        compare = _OPS[op.value]
        if name in f.integers:
            return _ordered(name, op.value, f.integers[name], _integer(name, value), str)
        if name in f.numbers:
            return _ordered(name, op.value, f.numbers[name], _number(name, value), repr)
        if name in f.times:
            at = _time(name, value)
            return _ordered(name, op.value, f.times[name], at, lambda n: f'"{format_time(n)}"')
        if name in f.ordered:
            enum = f.ordered[name]
            rank = enum.names.index(_enum_name(name, enum, value))
            get_rank: Callable[[R], int] = lambda r: enum.names.index(enum.get(r))  # noqa: E731
            return (
                (lambda r: compare(get_rank(r), rank)),
                f"{name} {op.value} {enum.names[rank]}",
            )
        if op.value not in ("=", "!="):
            raise FilterError(op.position, f"{name} takes = and != only")
        match, text = self._equality(name, value)
        rendered = f"{name} {op.value} {text}"
        if op.value == "!=":
            return (lambda r: not match(r)), rendered
        return match, rendered

    def _equality(self, name: str, value: Token) -> tuple[Predicate[R], str]:
        f = self._fields
        text = value.value
        if name in f.enums:
            enum = f.enums[name]
            wanted = _enum_name(name, enum, value)
            get = enum.get
            return (lambda r: get(r) == wanted), wanted
        if name in f.bools:
            if text.lower() not in ("true", "false"):
                raise FilterError(value.position, f"{name} is true or false, not {shown(text)}")
            flag = text.lower() == "true"
            get_bool = f.bools[name]
            return (lambda r: get_bool(r) is flag), str(flag).lower()
        if not text:
            raise FilterError(value.position, f"{name} compared with an empty string")
        stars = [i for i, _ in value.stars]
        if any(i != len(text) - 1 for i in stars):
            raise FilterError(value.position, "`*` is a wildcard only as the last character")
        prefix = text[:-1] if stars else None
        if name in f.sets:
            get_set = f.sets[name]
            if prefix is not None:
                return (lambda r: any(s.startswith(prefix) for s in get_set(r))), _quoted(text)
            return (lambda r: text in get_set(r)), _quoted(text)
        get_str = f.strings[name]
        if prefix is not None:
            return (lambda r: str(get_str(r)).startswith(prefix)), _quoted(text)
        return (lambda r: get_str(r) == text), _quoted(text)


def _ordered(
    name: str,
    op: str,
    get: Callable[[R], Any],
    wanted: Any,
    render: Callable[[Any], str],
) -> tuple[Predicate[R], str]:
    compare = _OPS[op]

    def predicate(r: R) -> bool:
        got = get(r)
        return isinstance(got, int | float) and compare(got, wanted)

    return predicate, f"{name} {op} {render(wanted)}"


def _integer(name: str, value: Token) -> int:
    text = value.value
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise FilterError(value.position, f"{name} takes a non-negative integer, not {shown(text)}")
    return int(text)


def _number(name: str, value: Token) -> float:
    try:
        number = float(value.value)
    except ValueError:
        number = float("nan")
    if number != number or number in (float("inf"), float("-inf")):  # NaN, infinities
        raise FilterError(value.position, f"{name} takes a number, not {shown(value.value)}")
    return number


def _time(name: str, value: Token) -> int:
    try:
        return parse_time(value.value)
    except ValueError as exc:
        raise FilterError(value.position, f"{name}: {exc}") from None


def _enum_name(name: str, enum: Enum[Any], value: Token) -> str:
    word = value.value.upper()
    if enum.prefix:
        word = word.removeprefix(enum.prefix)
    if word not in enum.names:
        raise FilterError(
            value.position, f"{name} is one of {', '.join(enum.names)}, not {shown(value.value)}"
        )
    return word


def _all(parts: list[tuple[Predicate[R], str]]) -> tuple[Predicate[R], str]:
    if len(parts) == 1:
        return parts[0]
    preds = [p for p, _ in parts]
    return (lambda r: all(p(r) for p in preds)), " AND ".join(c for _, c in parts)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
