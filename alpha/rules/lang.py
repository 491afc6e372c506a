"""The condition language: tokenizer, AST and recursive-descent parser.

Grammar (precedence: `not` over `and` over `or`, as in Falco):

    expr      := and_expr ("or" and_expr)*
    and_expr  := unary ("and" unary)*
    unary     := "not" unary | primary
    primary   := "(" expr ")" | predicate | MACRO
    predicate := FIELD "exists"
               | FIELD ("in" | "intersects" | "pmatch") "(" [value ("," value)*] ")"
               | FIELD CMP value
    CMP       := "=" | "==" | "!=" | "<" | "<=" | ">" | ">=" | "startswith" | "endswith"
               | "contains" | "icontains" | "glob" | "iglob" | "regex"
    FIELD     := name ["[" digits "]"]        e.g. proc.name, proc.aname[2]
    value     := bare word | "double quoted" | 'single quoted'

A bare word followed by an operator is a field; one standing alone is a macro reference, except a
boolean field, which reads as `field = true` (`file.write and ...`). Inside `in (...)`, a bare word
naming a list expands to its items; quoted words never do. Parsing knows nothing of the field table:
names are checked when the tree is bound (`alpha.rules.compiler`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from alpha.rules.errors import ConditionError

COMPARISONS = frozenset(
    {
        "=",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "startswith",
        "endswith",
        "contains",
        "icontains",
        "glob",
        "iglob",
        "regex",
    }
)
SET_OPERATORS = frozenset({"in", "intersects", "pmatch"})
UNARY_OPERATORS = frozenset({"exists"})
KEYWORDS = frozenset({"and", "or", "not"}) | COMPARISONS | SET_OPERATORS | UNARY_OPERATORS

# --- source text and locations ----------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One piece of a condition's text and where it came from.

    `lines[k]` is the 1-based file line of the k-th non-blank character of `text`: YAML folding
    changes blanks and line breaks but never the other characters, so counting them maps an offset
    in the folded value back to a line of the file.
    """

    start: int
    text: str
    file: str | None
    line: int | None
    lines: tuple[int, ...] = ()

    def locate(self, offset: int) -> int | None:
        if not self.lines:
            return self.line
        rel = max(0, offset - self.start)
        k = sum(1 for c in self.text[:rel] if not c.isspace())
        return self.lines[min(k, len(self.lines) - 1)]


@dataclass(frozen=True)
class SourceText:
    """A condition's text, possibly joined from several files (append/override)."""

    text: str
    segments: tuple[Segment, ...]

    @classmethod
    def plain(
        cls,
        text: str,
        file: str | None = None,
        line: int | None = None,
        lines: Sequence[int] = (),
    ) -> SourceText:
        return cls(text, (Segment(0, text, file, line, tuple(lines)),))

    def append(self, more: SourceText) -> SourceText:
        """This text then `more`, separated by a blank (Falco's condition append)."""
        shift = len(self.text) + 1
        moved = tuple(
            Segment(s.start + shift, s.text, s.file, s.line, s.lines) for s in more.segments
        )
        return SourceText(f"{self.text} {more.text}", self.segments + moved)

    def locate(self, offset: int | None) -> tuple[str | None, int | None]:
        """File and line of a character of the text (the first segment's when offset is None)."""
        seg = self.segments[0]
        if offset is not None:
            for candidate in self.segments:
                if candidate.start <= offset:
                    seg = candidate
        return seg.file, seg.locate(offset if offset is not None else seg.start)

    def error(self, err: ConditionError) -> ConditionError:
        """`err` placed at its offset in this text, unless it already carries a file."""
        if err.file is not None:
            return err
        file, line = self.locate(err.offset)
        return ConditionError(err.reason, file, line, err.offset)


# --- tokens --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    kind: str  # "(", ")", ",", "op", "word", "str", "eof"
    text: str
    pos: int


_OPERATOR = re.compile(r"==|!=|<=|>=|=|<|>")
_BARE_STOP = frozenset(" \t\r\n\f\v(),\"'=<>")


def tokenize(text: str) -> list[Token]:
    """Split a condition into tokens; raises ConditionError on an unterminated string."""
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "(),":
            tokens.append(Token(c, c, i))
            i += 1
        elif c in "\"'":
            value, end = _quoted(text, i)
            tokens.append(Token("str", value, i))
            i = end
        elif (m := _OPERATOR.match(text, i)) is not None:
            op = "=" if m.group() == "==" else m.group()
            tokens.append(Token("op", op, i))
            i = m.end()
        else:
            start = i
            while i < n and text[i] not in _BARE_STOP and not text.startswith("!=", i):
                i += 1
            if i == start:  # a lone "!"
                raise ConditionError(f"unexpected character {text[i]!r}", offset=i)
            tokens.append(Token("word", text[start:i], start))
    tokens.append(Token("eof", "", n))
    return tokens


def _quoted(text: str, start: int) -> tuple[str, int]:
    quote = text[start]
    out: list[str] = []
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in (quote, "\\"):
            out.append(text[i + 1])
            i += 2
        elif c == quote:
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1
    raise ConditionError("unterminated string", offset=start)


# --- AST -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Literal:
    """A value as written: `quoted` values are never list names."""

    text: str
    quoted: bool
    pos: int


@dataclass(frozen=True)
class Compare:
    """`field op values`. `values` is empty for exists, one literal for comparisons."""

    field: str
    index: int | None
    op: str
    values: tuple[Literal, ...]
    pos: int
    # True when written as a bare boolean field (`file.write`), meaning `= true`.
    implicit: bool = False


@dataclass(frozen=True)
class MacroRef:
    name: str
    pos: int


@dataclass(frozen=True)
class Not:
    child: Node
    pos: int


@dataclass(frozen=True)
class And:
    children: tuple[Node, ...]
    pos: int


@dataclass(frozen=True)
class Or:
    children: tuple[Node, ...]
    pos: int


Node = Compare | MacroRef | Not | And | Or

_FIELD_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_.]*)(?:\[(\d+)\])?")
_MACRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


class _Parser:
    def __init__(self, text: str, bool_fields: frozenset[str]) -> None:
        self.tokens = tokenize(text)
        self.i = 0
        self.bool_fields = bool_fields

    def peek(self) -> Token:
        return self.tokens[self.i]

    def next(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def is_word(self, *words: str) -> bool:
        tok = self.peek()
        return tok.kind == "word" and tok.text in words

    def parse(self) -> Node:
        if self.peek().kind == "eof":
            raise ConditionError("empty condition", offset=0)
        node = self.expr()
        tok = self.peek()
        if tok.kind != "eof":
            raise ConditionError(
                f"unexpected {_describe(tok)}; expected and, or or the end", offset=tok.pos
            )
        return node

    def expr(self) -> Node:
        first = self.and_expr()
        children = [first]
        while self.is_word("or"):
            self.next()
            children.append(self.and_expr())
        return first if len(children) == 1 else Or(tuple(children), _pos(first))

    def and_expr(self) -> Node:
        first = self.unary()
        children = [first]
        while self.is_word("and"):
            self.next()
            children.append(self.unary())
        return first if len(children) == 1 else And(tuple(children), _pos(first))

    def unary(self) -> Node:
        if self.is_word("not"):
            tok = self.next()
            return Not(self.unary(), tok.pos)
        return self.primary()

    def primary(self) -> Node:
        tok = self.next()
        if tok.kind == "(":
            node = self.expr()
            close = self.next()
            if close.kind != ")":
                raise ConditionError(
                    f"expected ')' to close the '(' at offset {tok.pos}, found {_describe(close)}",
                    offset=close.pos,
                )
            return node
        if tok.kind != "word" or tok.text in KEYWORDS:
            raise ConditionError(
                f"expected a field, a macro or '(', found {_describe(tok)}", offset=tok.pos
            )
        after = self.peek()
        is_operator = after.kind == "op" or (
            after.kind == "word" and after.text in (COMPARISONS | SET_OPERATORS | UNARY_OPERATORS)
        )
        if is_operator:
            return self.predicate(tok)
        if tok.text in self.bool_fields:
            return Compare(tok.text, None, "=", (Literal("true", False, tok.pos),), tok.pos, True)
        if _MACRO_NAME.fullmatch(tok.text) is None:
            raise ConditionError(
                f"field {tok.text!r} needs an operator (only boolean fields stand alone)",
                offset=tok.pos,
            )
        return MacroRef(tok.text, tok.pos)

    def predicate(self, name_tok: Token) -> Node:
        m = _FIELD_NAME.fullmatch(name_tok.text)
        if m is None:
            raise ConditionError(f"{name_tok.text!r} is not a field name", offset=name_tok.pos)
        field, index = m.group(1), (int(m.group(2)) if m.group(2) is not None else None)
        op_tok = self.next()
        op = op_tok.text
        if op in UNARY_OPERATORS:
            return Compare(field, index, op, (), name_tok.pos)
        if op in SET_OPERATORS:
            values = self.value_list(op_tok)
            return Compare(field, index, op, values, name_tok.pos)
        value = self.next()
        if value.kind not in ("word", "str") or (
            value.kind == "word" and value.text in ("and", "or")
        ):
            raise ConditionError(
                f"expected a value after {op!r}, found {_describe(value)}", offset=value.pos
            )
        return Compare(
            field, index, op, (Literal(value.text, value.kind == "str", value.pos),), name_tok.pos
        )

    def value_list(self, op_tok: Token) -> tuple[Literal, ...]:
        open_tok = self.next()
        if open_tok.kind != "(":
            # `field in listname` without parentheses is accepted: one list reference.
            if open_tok.kind == "word" and open_tok.text not in KEYWORDS:
                return (Literal(open_tok.text, False, open_tok.pos),)
            raise ConditionError(
                f"expected '(' after {op_tok.text!r}, found {_describe(open_tok)}",
                offset=open_tok.pos,
            )
        values: list[Literal] = []
        if self.peek().kind == ")":
            self.next()
            return ()
        while True:
            tok = self.next()
            if tok.kind not in ("word", "str"):
                raise ConditionError(f"expected a value, found {_describe(tok)}", offset=tok.pos)
            values.append(Literal(tok.text, tok.kind == "str", tok.pos))
            sep = self.next()
            if sep.kind == ")":
                return tuple(values)
            if sep.kind != ",":
                raise ConditionError(
                    f"expected ',' or ')' in the list after {op_tok.text!r}, "
                    f"found {_describe(sep)}",
                    offset=sep.pos,
                )


def _pos(node: Node) -> int:
    return node.pos


def _describe(tok: Token) -> str:
    if tok.kind == "eof":
        return "the end of the condition"
    if tok.kind == "str":
        return f"string {tok.text!r}"
    return repr(tok.text)


def parse(text: str, bool_fields: frozenset[str] = frozenset()) -> Node:
    """Parse a condition. `bool_fields` are the names that may stand alone as `name = true`."""
    return _Parser(text, bool_fields).parse()


def references(node: Node) -> set[str]:
    """Names of the macros a tree refers to directly."""
    found: set[str] = set()
    stack: list[Node] = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, MacroRef):
            found.add(n.name)
        elif isinstance(n, Not):
            stack.append(n.child)
        elif isinstance(n, And | Or):
            stack.extend(n.children)
    return found
