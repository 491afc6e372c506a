"""The filter tokenizer: splits AIP-160 filter text into tokens that know their position.

Positions are 1-based character positions in the text. A bare word (`HIGH`, `process.exe`,
`web-01`, `T1059*`) is one TEXT token; the keywords `AND`, `OR` and `NOT` are upper case, as in
AIP-160. A `-` that starts a token is negation; inside a word it is a character (`web-01`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from cortex.errors import FilterError
from cortex.filter.literals import UNESCAPE, shown


class T(Enum):
    LPAREN = "("
    RPAREN = ")"
    CMP = "comparison operator"
    HAS = ":"
    MINUS = "-"
    AND = "AND"
    OR = "OR"
    NOT = "NOT"
    TEXT = "word"
    STRING = "string"
    END = "end"


@dataclass(frozen=True)
class Token:
    kind: T
    position: int  # 1-based
    text: str  # as written (for messages)
    value: str = ""  # TEXT: the word; STRING: the unescaped content
    # (index in `value`, position in the text) of each unescaped `*`: only those are wildcards.
    stars: tuple[tuple[int, int], ...] = ()

    def describe(self) -> str:
        if self.kind is T.END:
            return "the end of the filter"
        return shown(self.text) if self.kind is not T.STRING else f"the string {shown(self.value)}"


_KEYWORDS = {"AND": T.AND, "OR": T.OR, "NOT": T.NOT}
# Characters that end a bare word: the ones with a meaning of their own in the grammar.
_SPECIAL = frozenset("()\"'=<>!:,\\")


def tokenize(text: str) -> list[Token]:
    """The tokens of `text`, ending with an END token (FilterError on a character or string the
    grammar has no place for)."""
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        pos = i + 1
        if c.isspace():
            i += 1
        elif c in "()":
            tokens.append(Token(T.LPAREN if c == "(" else T.RPAREN, pos, c))
            i += 1
        elif c in "<>":
            op = c + "=" if text.startswith("=", i + 1) else c
            tokens.append(Token(T.CMP, pos, op, op))
            i += len(op)
        elif c == "=":
            if text.startswith("=", i + 1):
                raise FilterError(pos, "'==' is not an operator; equality is '='")
            tokens.append(Token(T.CMP, pos, "=", "="))
            i += 1
        elif c == "!":
            if not text.startswith("=", i + 1):
                raise FilterError(pos, "unexpected '!'; write '!=' or NOT")
            tokens.append(Token(T.CMP, pos, "!=", "!="))
            i += 2
        elif c == ":":
            tokens.append(Token(T.HAS, pos, ":"))
            i += 1
        elif c == "-":
            tokens.append(Token(T.MINUS, pos, "-"))
            i += 1
        elif c == '"':
            token, i = _string(text, i)
            tokens.append(token)
        elif c == "'":
            raise FilterError(pos, "strings are written in double quotes")
        elif c in _SPECIAL:
            raise FilterError(pos, f"unexpected character {c!r}")
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in _SPECIAL:
                i += 1
            word = text[start:i]
            stars = tuple((k, start + k + 1) for k, ch in enumerate(word) if ch == "*")
            kind = _KEYWORDS.get(word, T.TEXT)
            tokens.append(Token(kind, pos, word, word, stars if kind is T.TEXT else ()))
    tokens.append(Token(T.END, n + 1, ""))
    return tokens


def _string(text: str, start: int) -> tuple[Token, int]:
    value: list[str] = []
    stars: list[tuple[int, int]] = []
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == '"':
            token = Token(T.STRING, start + 1, text[start : i + 1], "".join(value), tuple(stars))
            return token, i + 1
        if c == "\\":
            escaped = text[i + 1 : i + 2]
            if escaped not in UNESCAPE:  # also a backslash at the very end
                shown = repr(escaped) if escaped else "the end"
                raise FilterError(
                    i + 1, f"unknown escape '\\' before {shown}; escapes: " + _ESCAPES
                )
            value.append(UNESCAPE[escaped])
            i += 2
            continue
        if c == "*":
            stars.append((len(value), i + 1))
        value.append(c)
        i += 1
    raise FilterError(start + 1, "unterminated string: no closing '\"'")


_ESCAPES = " ".join("\\" + e for e in UNESCAPE)
