"""The Cortex's one filter language: AIP-160 filters over events, in memory and as SQL.

ListEvents runs a filter as SQL over the event store (`Filter.to_sql`); correlation rules run the
same filter on live events (`Filter.matches`); both give the same answer for the same event.
`Filter.canonical` is the normalized text a page token is bound to.

Grammar (AIP-160 subset; keywords upper case):

    filter      := [ expression ]                       empty: every event
    expression  := sequence { "AND" sequence }
    sequence    := factor { factor }                    juxtaposition: implicit AND
    factor      := term { "OR" term }                   OR binds tighter than AND
    term        := [ "NOT" | "-" ] term | simple
    simple      := "(" expression ")" | restriction
    restriction := FIELD ( "=" | "!=" | "<" | "<=" | ">" | ">=" ) value
    value       := WORD | "double-quoted string"         escapes: \\" \\\\ \\* \\n \\t \\r

So `a AND b OR c` is `a AND (b OR c)`. Fields (`cortex.fields.FIELDS`) and what they take:

    time                  all six operators; an RFC 3339 timestamp in quotes (nanoseconds kept)
    seq                   all six; a non-negative integer
    severity              all six, ordered; INFO LOW MEDIUM HIGH CRITICAL (or SEVERITY_HIGH)
    category              = !=; FILE, CATEGORY_FILE, ...
    guardian host rule.id = !=; a string, `*` as its last character is a prefix wildcard
    kind                  = !=; a detail kind (`file_rename`, FILE_RENAME), `*` prefix too
    mitre                 = !=; a technique id (T1059.004), or a prefix (`"T1059*"`)
    blind fields          = !=; the exact value (`process.exe = "/tmp/x"`), no wildcard:
                          process.exe user source_address destination_address file.path

Aliases (`cortex.fields.ALIASES`): `guardian.id`, `guardian.host`, `auth.user`,
`auth.source_address`, `network.source_address`, `network.destination_address` mean the fields
above; the canonical text uses the short names.

Semantics: a field has zero or more values (MITRE techniques and file.path can have several,
an event can lack any field). A comparison holds when some value satisfies it; an event with no
value satisfies none. `f != v` is exactly `NOT f = v`: no value equals v (so it includes events
without the field), on every field, in memory and in SQL. That is why blind fields take `!=`
too: it says nothing `NOT f = v` would not, and a blind index answers both by one lookup.
Comparing with "unset" (SEVERITY_UNSPECIFIED, an empty string) is an error rather than a filter
that never matches; `host = "*"` selects events that have a host.

Errors are `cortex.errors.FilterError` (INVALID_ARGUMENT) with a 1-based position and a reason.
Limits: MAX_FILTER_CHARS characters, MAX_DEPTH nested parentheses and NOTs, MAX_TERMS
comparisons.
"""

from __future__ import annotations

from cortex.filter.filter import Filter, SqlFragment, everything
from cortex.filter.order import MAX_ORDER_BY_CHARS, Order, parse_order_by
from cortex.filter.parser import MAX_DEPTH, MAX_FILTER_CHARS, MAX_TERMS, parse_tree


def parse(text: str) -> Filter:
    """The Filter of `text` (FilterError naming the position and the reason otherwise)."""
    return Filter(parse_tree(text))


__all__ = [
    "MAX_DEPTH",
    "MAX_FILTER_CHARS",
    "MAX_ORDER_BY_CHARS",
    "MAX_TERMS",
    "Filter",
    "Order",
    "SqlFragment",
    "everything",
    "parse",
    "parse_order_by",
]
