"""The recursive-descent parser of the AIP-160 filter subset (grammar: `cortex.filter`).

It checks everything a filter can get wrong while it still knows positions: field names,
operators per field kind, literals, wildcards, and the abuse limits (length, nesting, terms).
What it returns is a normalized tree (`cortex.filter.canonical`) that carries no positions.
"""

from __future__ import annotations

import difflib
from typing import Final

from cortex.errors import FilterError
from cortex.fields import FIELDS, FieldKind, field_named
from cortex.filter import literals
from cortex.filter.canonical import conjunction, disjunction, negation
from cortex.filter.lexer import T, Token, tokenize
from cortex.filter.nodes import Comparison, Node, Op

MAX_FILTER_CHARS: Final = 4096
MAX_DEPTH: Final = 32  # nested parentheses and negations; also bounds recursion here and in SQL
MAX_TERMS: Final = 100  # comparisons; at most 3 SQL parameters each, well under SQLite's 32766

# Which operators each kind takes. Strings, MITRE ids and blind values are looked up, not
# ranged: a blind index has no order, and an order on names or ids helps no analyst.
_ALLOWED: Final = {
    FieldKind.TIME: frozenset(Op),
    FieldKind.INT: frozenset(Op),
    FieldKind.SEVERITY: frozenset(Op),
    FieldKind.CATEGORY: frozenset({Op.EQ, Op.NE}),
    FieldKind.STRING: frozenset({Op.EQ, Op.NE}),
    FieldKind.MITRE: frozenset({Op.EQ, Op.NE}),
    FieldKind.BLIND: frozenset({Op.EQ, Op.NE}),
}
_WILDCARD_KINDS: Final = frozenset({FieldKind.STRING, FieldKind.MITRE})
_TERM_START: Final = frozenset({T.TEXT, T.STRING, T.LPAREN, T.MINUS, T.NOT})


def parse_tree(text: str) -> Node | None:
    """The normalized tree of `text`, None for the empty filter (everything)."""
    if len(text) > MAX_FILTER_CHARS:
        raise FilterError(
            MAX_FILTER_CHARS + 1, f"a filter is at most {MAX_FILTER_CHARS} characters"
        )
    for i, c in enumerate(text):
        if "\ud800" <= c <= "\udfff":  # cannot be encoded as UTF-8, so not stored or bound
            raise FilterError(i + 1, "not valid Unicode (a lone surrogate)")
    parser = _Parser(tokenize(text))
    if parser.peek().kind is T.END:
        return None
    node = parser.expression(0)
    if parser.peek().kind is not T.END:
        tok = parser.peek()
        reason = "unbalanced ')'" if tok.kind is T.RPAREN else f"unexpected {tok.describe()}"
        raise FilterError(tok.position, reason)
    return node


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.at = 0
        self.terms = 0

    def peek(self) -> Token:
        return self.tokens[self.at]

    def next(self) -> Token:
        tok = self.tokens[self.at]
        if tok.kind is not T.END:
            self.at += 1
        return tok

    # expression := sequence { AND sequence }
    def expression(self, depth: int) -> Node:
        parts = [self.sequence(depth)]
        while self.peek().kind is T.AND:
            self.next()
            parts.append(self.sequence(depth))
        return conjunction(parts)

    # sequence := factor { factor }  (juxtaposition is an implicit AND, as in AIP-160)
    def sequence(self, depth: int) -> Node:
        parts = [self.factor(depth)]
        while self.peek().kind in _TERM_START:
            parts.append(self.factor(depth))
        return conjunction(parts)

    # factor := term { OR term }  (OR binds tighter than AND, as AIP-160 says)
    def factor(self, depth: int) -> Node:
        parts = [self.term(depth)]
        while self.peek().kind is T.OR:
            self.next()
            parts.append(self.term(depth))
        return disjunction(parts)

    # term := [ NOT | "-" ] term | simple
    def term(self, depth: int) -> Node:
        if self.peek().kind in (T.NOT, T.MINUS):
            tok = self.next()
            self._deeper(tok, depth)
            return negation(self.term(depth + 1))
        return self.simple(depth)

    # simple := "(" expression ")" | restriction
    def simple(self, depth: int) -> Node:
        tok = self.peek()
        if tok.kind is T.LPAREN:
            self.next()
            self._deeper(tok, depth)
            if self.peek().kind is T.RPAREN:
                raise FilterError(self.peek().position, "empty parentheses")
            node = self.expression(depth + 1)
            if self.peek().kind is not T.RPAREN:
                raise FilterError(
                    self.peek().position,
                    f"expected ')' to close the '(' at position {tok.position}, "
                    f"found {self.peek().describe()}",
                )
            self.next()
            return node
        return self.restriction()

    def _deeper(self, tok: Token, depth: int) -> None:
        if depth + 1 > MAX_DEPTH:
            raise FilterError(
                tok.position, f"nested too deeply (at most {MAX_DEPTH} parentheses and NOTs)"
            )

    # restriction := FIELD comparator value
    def restriction(self) -> Node:
        tok = self.next()
        if tok.kind is T.STRING:
            raise FilterError(
                tok.position,
                "a bare value (global search) is not supported; compare a field, "
                'e.g. host = "web-1"',
            )
        if tok.kind is not T.TEXT:
            raise FilterError(tok.position, f"expected a comparison or '(', found {tok.describe()}")
        field = field_named(tok.value)
        if field is None:
            raise FilterError(tok.position, _unknown_field(tok.value))
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise FilterError(tok.position, f"too many comparisons (at most {MAX_TERMS})")
        op_tok = self.next()
        if op_tok.kind is T.LPAREN:
            raise FilterError(tok.position, "functions are not supported")
        if op_tok.kind is T.HAS:
            raise FilterError(op_tok.position, "the ':' (has) operator is not supported; use '='")
        if op_tok.kind is not T.CMP:
            raise FilterError(
                op_tok.position,
                f"expected a comparison operator (=, !=, <, <=, >, >=) after {field.name}, "
                f"found {op_tok.describe()}",
            )
        op = Op(op_tok.value)
        allowed = _ALLOWED[field.kind]
        if op not in allowed:
            raise FilterError(op_tok.position, _op_refused(field.name, field.kind, op))
        value_tok = self.next()
        if value_tok.kind not in (T.TEXT, T.STRING):
            raise FilterError(
                value_tok.position, f"expected a value after {op}, found {value_tok.describe()}"
            )
        node = self._comparison(field.name, field.kind, op, value_tok)
        return negation(node) if op is Op.NE else node

    def _comparison(self, name: str, kind: FieldKind, op: Op, tok: Token) -> Comparison:
        stored = Op.EQ if op is Op.NE else op  # `!=` is NOT `=` (see negation in restriction)
        try:
            if kind is FieldKind.TIME:
                if tok.kind is T.TEXT and self.peek().kind is T.HAS:
                    raise ValueError(f"quote the timestamp, e.g. time >= {literals.TIME_EXAMPLE}")
                return Comparison(name, stored, literals.parse_time(tok.value))
            if kind is FieldKind.INT:
                if tok.kind is T.STRING:
                    raise ValueError(f"{name} takes an unquoted integer")
                return Comparison(name, stored, literals.parse_int(tok.value))
            if kind is FieldKind.SEVERITY:
                number = literals.parse_enum(literals.SEVERITIES, "SEVERITY_", tok.value)
                return Comparison(name, stored, number)
            if kind is FieldKind.CATEGORY:
                number = literals.parse_enum(literals.CATEGORIES, "CATEGORY_", tok.value)
                return Comparison(name, stored, number)
            return self._string(name, kind, stored, tok)
        except ValueError as e:
            raise FilterError(tok.position, str(e)) from None

    def _string(self, name: str, kind: FieldKind, op: Op, tok: Token) -> Comparison:
        value, stars = tok.value, list(tok.stars)
        prefix = False
        if kind in _WILDCARD_KINDS:
            if stars and stars[-1][0] == len(value) - 1:
                prefix, value = True, value[:-1]
                stars.pop()
            if stars:
                raise FilterError(
                    stars[0][1],
                    "only a trailing '*' is a wildcard; write \\* for a literal star",
                )
        elif stars:
            raise FilterError(
                stars[0][1],
                f"{name} is a blind field: it matches whole values only (a blind index has no "
                "prefixes); write \\* for a literal star",
            )
        if not value and not prefix:
            raise FilterError(
                tok.position,
                f"an empty value never matches (an event without a {name} has no value); "
                f'for "has a {name}" write {name} = "*"'
                if kind in _WILDCARD_KINDS
                else f"an empty value never matches (an event without a {name} has no value)",
            )
        try:
            if name == "kind":
                value = literals.kind_prefix(value) if prefix else literals.parse_kind(value)
            elif kind is FieldKind.MITRE and not prefix:
                value = literals.check_mitre(value)
        except ValueError as e:
            raise FilterError(tok.position, str(e)) from None
        return Comparison(name, op, value, prefix)


def _unknown_field(name: str) -> str:
    lowered = name.lower()
    if lowered in ("and", "or", "not"):
        return f"logical operators are written in upper case: {lowered.upper()}"
    reason = f"field {literals.shown(name)} is not filterable"
    close = difflib.get_close_matches(name, list(FIELDS), n=1)
    if close:
        reason += f' (did you mean "{close[0]}"?)'
    return reason + "; fields: " + ", ".join(FIELDS)


def _op_refused(name: str, kind: FieldKind, op: Op) -> str:
    if kind is FieldKind.BLIND:
        return (
            f"{name} is a blind field: it is looked up by equality only (= or !=), "
            f"not {op}; its index holds keyed hashes, which have no order"
        )
    return f"{name} takes only = and !=, not {op}"
