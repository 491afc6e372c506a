"""Binding and compiling conditions.

Binding resolves a parsed tree against the field table, the lists and the macros: it inlines
macros (detecting cycles), expands list references, checks every operator against the field's type
and turns literals into ready-made operands (sets, prefix tuples, compiled regexes, networks). All
errors a condition can have are found here, at load time, never per event.

Compiling turns a bound tree into a Python closure for one detail kind. Knowing the kind, fields
resolve to direct attribute reads and `evt.kind` tests fold to constants; a comparison on a field
the kind does not have folds to false. A rule whose tree folds to false on a kind is simply not
indexed under that kind, which is how the engine's kind index is built. Conjunctions run their
cheapest members first (stable by cost, so an author's order among equals is kept) and exceptions,
being `and not (...)`, run last.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import ipaddress
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from alpha.rules import fields as fieldtab
from alpha.rules.errors import ConditionError
from alpha.rules.fields import Event, Field, FieldType
from alpha.rules.lang import And, Compare, Literal, MacroRef, Node, Not, SourceText, parse

Predicate = Callable[[Event], bool]

# --- bound tree ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BCompare:
    field: Field
    index: int | None
    op: str
    operand: Any
    cost: int


@dataclass(frozen=True)
class BNot:
    child: BNode
    cost: int


@dataclass(frozen=True)
class BAnd:
    children: tuple[BNode, ...]
    cost: int


@dataclass(frozen=True)
class BOr:
    children: tuple[BNode, ...]
    cost: int


@dataclass(frozen=True)
class BConst:
    value: bool
    cost: int = 0


BNode = BCompare | BNot | BAnd | BOr | BConst


@dataclass(frozen=True)
class MacroDef:
    """A macro as the binder sees it: its parsed tree and where its text came from."""

    name: str
    tree: Node
    source: SourceText


@dataclass(frozen=True)
class AddrSet:
    """Addresses and networks an address field is compared with."""

    exact: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        if value in self.exact:
            return True
        if not self.networks:
            return False
        addr = _parse_address(value)
        return addr is not None and any(
            addr.version == net.version and addr in net for net in self.networks
        )


@dataclass(frozen=True)
class PathPrefixes:
    """`pmatch` operand: a path matches a prefix when equal to it or below it."""

    exact: frozenset[str]
    below: tuple[str, ...]
    root: bool

    def match(self, path: str) -> bool:
        if self.root:
            return path.startswith("/")
        return path in self.exact or path.startswith(self.below)


@functools.lru_cache(maxsize=65536)
def _parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1 for every rule
    return addr


# --- binding ---------------------------------------------------------------------------------

_OPS_BY_TYPE: dict[FieldType, frozenset[str]] = {
    FieldType.STRING: frozenset(
        {
            "=",
            "!=",
            "in",
            "startswith",
            "endswith",
            "contains",
            "icontains",
            "glob",
            "iglob",
            "regex",
            "pmatch",
            "exists",
        }
    ),
    FieldType.INT: frozenset({"=", "!=", "<", "<=", ">", ">=", "in", "exists"}),
    FieldType.BOOL: frozenset({"=", "!=", "exists"}),
    FieldType.ENUM: frozenset({"=", "!=", "in", "exists"}),
    FieldType.ADDR: frozenset({"=", "!=", "in", "exists"}),
}
_OP_COST = {
    "=": 0,
    "!=": 0,
    "in": 0,
    "intersects": 1,
    "exists": 0,
    "<": 0,
    "<=": 0,
    ">": 0,
    ">=": 0,
    "startswith": 1,
    "endswith": 1,
    "pmatch": 1,
    "contains": 2,
    "icontains": 3,
    "glob": 3,
    "iglob": 3,
    "regex": 4,
}
_INT_SUFFIXES = {
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_INT_LITERAL = re.compile(
    r"(-?(?:0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[0-7]*|[1-9][0-9_]*))([a-zA-Z]*)"
)


def parse_int(text: str) -> int | None:
    """An integer literal: decimal, 0x hex, 0o or C-style leading-zero octal (file modes such as
    04755), with an optional size suffix (k, M, G, T for powers of 1000; KiB, MiB, GiB, TiB)."""
    m = _INT_LITERAL.fullmatch(text.strip())
    if m is None:
        return None
    number, suffix = m.group(1), m.group(2).lower()
    if suffix and suffix not in _INT_SUFFIXES:
        return None
    digits = number.lstrip("-")
    if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit():
        value = int(number.replace("0", "0o", 1) if number[0] != "-" else "-0o" + digits[1:], 0)
    else:
        value = int(number, 0)
    return value * _INT_SUFFIXES.get(suffix, 1)


_LIST_LIKE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+")


def unquote_item(item: str) -> str:
    # Falco list items may carry their own quotes ('"sh -c uname"') because Falco pastes list text
    # into conditions; here they are values, so the quotes go.
    if len(item) >= 2 and item[0] == item[-1] and item[0] in "\"'":
        return item[1:-1]
    return item


def suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Binder:
    """Binds trees against one set of lists and macros; bound macros are shared between rules."""

    def __init__(self, lists: Mapping[str, Sequence[str]], macros: Mapping[str, MacroDef]) -> None:
        self.lists = lists
        self.macros = macros
        self._bound_macros: dict[str, BNode] = {}
        self._stack: list[str] = []

    def bind(self, tree: Node, source: SourceText) -> BNode:
        """Bind one tree; errors come out located in `source` (or in the macro they are in)."""
        try:
            return self._bind(tree)
        except ConditionError as err:
            raise source.error(err) from None

    def bind_macro(self, name: str) -> BNode:
        return self._macro(MacroRef(name, 0))

    def _bind(self, node: Node) -> BNode:
        if isinstance(node, Compare):
            return self._compare(node)
        if isinstance(node, MacroRef):
            return self._macro(node)
        if isinstance(node, Not):
            return negate(self._bind(node.child))
        if isinstance(node, And):
            return conjoin([self._bind(c) for c in node.children])
        return disjoin([self._bind(c) for c in node.children])

    def _macro(self, ref: MacroRef) -> BNode:
        name = ref.name
        if name in self._stack:
            cycle = " -> ".join([*self._stack[self._stack.index(name) :], name])
            raise ConditionError(f"circular macro reference: {cycle}", offset=ref.pos)
        done = self._bound_macros.get(name)
        if done is not None:
            return done
        macro = self.macros.get(name)
        if macro is None:
            if fieldtab.lookup(name) is not None:
                raise ConditionError(f"field {name!r} needs an operator", offset=ref.pos)
            hint = suggest(name, list(self.macros) + list(fieldtab.all_names()))
            raise ConditionError(f"unknown macro {name!r}{hint}", offset=ref.pos)
        self._stack.append(name)
        try:
            bound = self._bind(macro.tree)
        except ConditionError as err:
            raise macro.source.error(err) from None
        finally:
            self._stack.pop()
        self._bound_macros[name] = bound
        return bound

    def _values(self, node: Compare) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        is_set = node.op in ("in", "intersects", "pmatch")
        for lit in node.values:
            if is_set and not lit.quoted and lit.text in self.lists:
                out.extend((unquote_item(item), lit.pos) for item in self.lists[lit.text])
                continue
            if is_set and not lit.quoted and _LIST_LIKE.fullmatch(lit.text):
                # A misspelt list name would silently become a value that never matches.
                close = difflib.get_close_matches(lit.text, list(self.lists), n=1, cutoff=0.8)
                if close:
                    raise ConditionError(
                        f"unknown list {lit.text!r} (did you mean {close[0]!r}?); "
                        "quote the value if it is meant literally",
                        offset=lit.pos,
                    )
            out.append((lit.text, lit.pos))
        return out

    def _compare(self, node: Compare) -> BNode:
        fld = fieldtab.lookup(node.field)
        if fld is None:
            hint = suggest(node.field, fieldtab.all_names())
            raise ConditionError(f"unknown field {node.field!r}{hint}", offset=node.pos)
        if node.index is not None and fld.indexed is None:
            raise ConditionError(f"field {fld.name!r} takes no [index]", offset=node.pos)
        is_list = fld.is_list and node.index is None
        op = node.op
        allowed = _OPS_BY_TYPE[fld.type] | ({"intersects"} if is_list else set())
        if op not in allowed:
            kind = f"{fld.type.value}{' list' if is_list else ''}"
            raise ConditionError(
                f"operator {op!r} does not apply to {node.field} ({kind} field); "
                f"use one of {', '.join(sorted(allowed))}",
                offset=node.pos,
            )
        values = self._values(node)
        cost = _OP_COST[op] + 2 * fld.cost + (2 if is_list else 0)
        if op == "exists":
            return BCompare(fld, node.index, op, None, cost)
        if op in ("in", "intersects"):
            if not values:
                return BConst(False)  # nothing is in an empty list (a tuning placeholder)
            items = [_literal(fld, v, pos, node.field) for v, pos in values]
            if fld.type is FieldType.ADDR:
                return BCompare(fld, node.index, "in", _addr_set(items), cost)
            return BCompare(fld, node.index, "in", frozenset(items), cost)
        if op == "pmatch":
            if not values:
                return BConst(False)
            prefixes = [v.rstrip("/") or "/" for v, _ in values]
            operand = PathPrefixes(
                frozenset(prefixes), tuple(p + "/" for p in prefixes if p != "/"), "/" in prefixes
            )
            return BCompare(fld, node.index, op, operand, cost)
        if len(values) != 1:
            raise ConditionError(f"operator {op!r} takes one value", offset=node.pos)
        text, pos = values[0]
        if op in ("glob", "iglob"):
            flags = re.IGNORECASE if op == "iglob" else 0
            return BCompare(fld, node.index, op, re.compile(fnmatch.translate(text), flags), cost)
        if op == "regex":
            try:
                pattern = re.compile(text)
            except re.error as err:
                raise ConditionError(
                    f"bad regular expression {text!r}: {err}", offset=pos
                ) from None
            return BCompare(fld, node.index, op, pattern, cost)
        if op in ("startswith", "endswith"):
            return BCompare(fld, node.index, op, (text,), cost)
        if op in ("contains", "icontains"):
            return BCompare(fld, node.index, op, (text,), cost)
        value = _literal(fld, text, pos, node.field)
        if fld.type is FieldType.ADDR:
            return BCompare(fld, node.index, op, _addr_set([value]), cost)
        return BCompare(fld, node.index, op, value, cost)


def _literal(fld: Field, text: str, pos: int, written: str) -> Any:
    if fld.type is FieldType.INT:
        value = parse_int(text)
        if value is None:
            raise ConditionError(
                f"{written} is an integer field; {text!r} is not an integer", offset=pos
            )
        return value
    if fld.type is FieldType.BOOL:
        low = text.lower()
        if low not in ("true", "false"):
            raise ConditionError(
                f"{written} is a boolean field; use true or false, not {text!r}", offset=pos
            )
        return low == "true"
    if fld.type is FieldType.ENUM:
        # Case-insensitive (`O_TRUNC`, `o_trunc`; `ATTACH`), compared in the field's own spelling.
        for choice in fld.choices:
            if choice.lower() == text.lower():
                return choice
        raise ConditionError(
            f"{text!r} is not a value of {written}; use one of {', '.join(fld.choices)}",
            offset=pos,
        )
    if fld.type is FieldType.ADDR:
        try:
            return ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ConditionError(
                f"{written} is an address field; {text!r} is not an IP address or network",
                offset=pos,
            ) from None
    return text


def _addr_set(nets: Sequence[Any]) -> AddrSet:
    exact: set[str] = set()
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for net in nets:
        if (
            isinstance(net, ipaddress.IPv6Network)
            and net.prefixlen == 128
            and net.network_address.ipv4_mapped
        ):
            net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/32")
        if net.num_addresses == 1:
            exact.add(str(net.network_address))
        else:
            networks.append(net)
    return AddrSet(frozenset(exact), tuple(networks))


# --- tree algebra (also used by the loader for exceptions) -------------------------------------


def negate(child: BNode) -> BNode:
    if isinstance(child, BConst):
        return BConst(not child.value)
    if isinstance(child, BNot):
        return child.child
    return BNot(child, child.cost)


def conjoin(children: Sequence[BNode]) -> BNode:
    flat: list[BNode] = []
    for c in children:
        if isinstance(c, BConst):
            if not c.value:
                return c
            continue
        flat.extend(c.children if isinstance(c, BAnd) else (c,))
    if not flat:
        return BConst(True)
    if len(flat) == 1:
        return flat[0]
    ordered = tuple(sorted(flat, key=lambda n: n.cost))  # stable: equal costs keep their order
    return BAnd(ordered, sum(c.cost for c in ordered) + 1)


def disjoin(children: Sequence[BNode]) -> BNode:
    flat: list[BNode] = []
    for c in children:
        if isinstance(c, BConst):
            if c.value:
                return c
            continue
        flat.extend(c.children if isinstance(c, BOr) else (c,))
    flat = _merge_alternatives(flat)
    if not flat:
        return BConst(False)
    if len(flat) == 1:
        return flat[0]
    ordered = tuple(sorted(flat, key=lambda n: n.cost))
    return BOr(ordered, sum(c.cost for c in ordered) + 1)


def _merge_alternatives(nodes: list[BNode]) -> list[BNode]:
    """`f = a or f = b or f in (c)` -> `f in (a, b, c)`; same for startswith, endswith, pmatch.
    Macros written for readability (one alternative per line) then cost one test per event."""
    out: list[BNode] = []
    slots: dict[tuple[str, int | None, str], int] = {}
    for node in nodes:
        key: tuple[str, int | None, str] | None = None
        if isinstance(node, BCompare) and not (node.field.is_list and node.index is None):
            if node.op in ("=", "in") and node.field.type in (
                FieldType.STRING,
                FieldType.INT,
                FieldType.ENUM,
            ):
                key = (node.field.name, node.index, "in")
                node = BCompare(
                    node.field,
                    node.index,
                    "in",
                    node.operand if node.op == "in" else frozenset([node.operand]),
                    node.cost,
                )
            elif node.op in ("startswith", "endswith", "pmatch", "contains", "icontains"):
                key = (node.field.name, node.index, node.op)
        if key is None:
            out.append(node)
            continue
        at = slots.get(key)
        if at is None:
            slots[key] = len(out)
            out.append(node)
            continue
        prev = out[at]
        assert isinstance(prev, BCompare)
        assert isinstance(node, BCompare)
        out[at] = BCompare(
            prev.field, prev.index, prev.op, _union(prev.operand, node.operand), prev.cost
        )
    return out


def _union(a: Any, b: Any) -> Any:
    if isinstance(a, PathPrefixes):
        return PathPrefixes(a.exact | b.exact, a.below + b.below, a.root or b.root)
    if isinstance(a, frozenset):
        return a | b
    return tuple(a) + tuple(b)


# --- compiling ---------------------------------------------------------------------------------


def compile_tree(node: BNode, kind: str) -> Predicate | bool:
    """A closure evaluating `node` on events of `kind`, or a constant when the kind decides it."""
    if isinstance(node, BConst):
        return node.value
    if isinstance(node, BCompare):
        return _compile_compare(node, kind)
    if isinstance(node, BNot):
        inner = compile_tree(node.child, kind)
        if isinstance(inner, bool):
            return not inner
        return lambda ev: not inner(ev)
    parts: list[Predicate] = []
    is_and = isinstance(node, BAnd)
    for child in node.children:
        c = compile_tree(child, kind)
        if isinstance(c, bool):
            if c != is_and:  # false in an and, true in an or: decided
                return c
            continue
        parts.append(c)
    if not parts:
        return is_and
    if len(parts) == 1:
        return parts[0]
    return _all(parts) if is_and else _any(parts)


def _all(parts: list[Predicate]) -> Predicate:
    if len(parts) == 2:
        a, b = parts
        return lambda ev: a(ev) and b(ev)
    if len(parts) == 3:
        a, b, c = parts
        return lambda ev: a(ev) and b(ev) and c(ev)
    seq = tuple(parts)

    def every(ev: Event) -> bool:
        # A plain loop: cheaper per event than all() over a generator.
        for p in seq:  # noqa: SIM110
            if not p(ev):
                return False
        return True

    return every


def _any(parts: list[Predicate]) -> Predicate:
    if len(parts) == 2:
        a, b = parts
        return lambda ev: a(ev) or b(ev)
    if len(parts) == 3:
        a, b, c = parts
        return lambda ev: a(ev) or b(ev) or c(ev)
    seq = tuple(parts)

    def some(ev: Event) -> bool:
        for p in seq:  # noqa: SIM110
            if p(ev):
                return True
        return False

    return some


def _value_test(op: str, operand: Any) -> Callable[[Any], bool]:
    """A test on one present (non-None) value."""
    if op == "=":
        if isinstance(operand, AddrSet):
            return operand.__contains__
        return lambda x: x == operand
    if op == "!=":
        if isinstance(operand, AddrSet):
            return lambda x: x not in operand
        return lambda x: x != operand
    if op == "in":
        return cast(Callable[[Any], bool], operand.__contains__)
    if op == "<":
        return lambda x: x < operand
    if op == "<=":
        return lambda x: x <= operand
    if op == ">":
        return lambda x: x > operand
    if op == ">=":
        return lambda x: x >= operand
    if op == "startswith":
        return lambda x: x.startswith(operand)
    if op == "endswith":
        return lambda x: x.endswith(operand)
    if op in ("contains", "icontains"):
        needles: tuple[str, ...] = operand
        if op == "contains" and len(needles) == 1:
            needle = needles[0]
            return lambda x: needle in x
        # Several needles (merged alternatives) or case-insensitive: one regex scan, in C.
        flags = re.IGNORECASE if op == "icontains" else 0
        search = re.compile("|".join(re.escape(n) for n in needles), flags).search
        return lambda x: search(x) is not None
    if op in ("glob", "iglob", "regex"):
        full = operand.fullmatch
        return lambda x: full(x) is not None
    if op == "pmatch":
        return cast(Callable[[Any], bool], operand.match)
    raise AssertionError(op)


def _compile_compare(node: BCompare, kind: str) -> Predicate | bool:
    fld, op, operand = node.field, node.op, node.operand
    if fld.name == "evt.kind":  # constant on a given kind: decide now
        return op == "exists" or _value_test(op, operand)(kind)
    found = fld.extractor(kind, node.index)
    if found is None:
        return False  # the kind has no such field: every comparison is false, as is exists
    ext: Callable[[Event], Any] = found  # values are typed by the field; checked at bind time
    if fld.is_list and node.index is None:
        return _compile_list(ext, op, operand)
    if op == "exists":
        return lambda ev: ext(ev) is not None
    # The common cases get one closure each, with the extractor inlined; None (missing) compares
    # unequal to every literal and is in no set, so `=` and `in` need no None check.
    if op == "=" and not isinstance(operand, AddrSet):
        if fld.type is FieldType.BOOL:
            return (lambda ev: ext(ev) is True) if operand else (lambda ev: ext(ev) is False)
        return lambda ev: ext(ev) == operand
    if op == "in" and not isinstance(operand, AddrSet):
        return lambda ev: ext(ev) in operand
    if op == "startswith":

        def starts(ev: Event) -> bool:
            x = ext(ev)
            return x is not None and x.startswith(operand)

        return starts
    if op == "pmatch":
        test = _pmatch_test(operand)
        return lambda ev: test(ext(ev))
    test = _value_test(op, operand)

    def compare(ev: Event) -> bool:
        x = ext(ev)
        return x is not None and test(x)

    return compare


def _compile_list(ext: Callable[[Event], Any], op: str, operand: Any) -> Predicate:
    # A list field matches when any element does (Falco's semantics for proc.aname and kin).
    if op == "exists":
        return lambda ev: bool(ext(ev))
    if op == "in" and isinstance(operand, frozenset):
        return lambda ev: not operand.isdisjoint(ext(ev) or ())
    test = _value_test(op, operand)
    return lambda ev: any(test(x) for x in ext(ev) or ())


# --- prefilters: the engine's cheap reject ------------------------------------------------------


@dataclass(frozen=True)
class Prefilter:
    """A test on one field that every event a rule matches passes (a necessary condition).

    The engine extracts each prefilter field once per event and rejects a rule with one set
    lookup or prefix test, without entering its closure: most rules of a kind test the same few
    fields (`proc.name`, `file.path`), so the per-rule cost of a miss drops to a few tens of ns.
    """

    key: tuple[str, int | None]
    extractor: Callable[[Event], Any]
    test: Callable[[Any], bool]
    rank: int  # lower is more selective: sets, then prefixes/patterns, then booleans


_NOT_NONE = functools.partial(operator.is_not, None)


def _scalar_test(node: BCompare) -> tuple[Callable[[Any], bool], int] | None:
    op, operand = node.op, node.operand
    if op == "exists":
        return _NOT_NONE, 4
    if op in ("=", "in") and not isinstance(operand, AddrSet):
        values = operand if op == "in" else frozenset([operand])
        rank = 3 if node.field.type is FieldType.BOOL else 0
        return cast(Callable[[Any], bool], values.__contains__), rank
    if op == "pmatch":
        return _pmatch_test(operand), 1
    if op in ("startswith", "endswith", "glob", "iglob", "regex", "contains", "icontains"):
        test = _value_test(op, operand)
        return (lambda v: v is not None and test(v)), 1
    return None


def _pmatch_test(prefixes: PathPrefixes) -> Callable[[Any], bool]:
    # Inlined rather than calling PathPrefixes.match: one Python frame per test, not two.
    exact, below = prefixes.exact, prefixes.below
    if prefixes.root:
        return lambda v: v is not None and v.startswith("/")
    return lambda v: v is not None and (v in exact or v.startswith(below))


def prefilter(node: BNode, kind: str) -> Prefilter | None:
    """A necessary single-field condition of `node` on events of `kind`, if one exists."""
    if isinstance(node, BCompare):
        if node.field.name == "evt.kind" or (node.field.is_list and node.index is None):
            return None
        ext = node.field.extractor(kind, node.index)
        found = _scalar_test(node)
        if ext is None or found is None:
            return None
        return Prefilter((node.field.name, node.index), ext, found[0], found[1])
    if isinstance(node, BAnd):
        best: Prefilter | None = None
        for child in node.children:
            if compile_tree(child, kind) is True:
                continue  # folded away on this kind
            cand = prefilter(child, kind)
            if cand is not None and (best is None or cand.rank < best.rank):
                best = cand
        return best
    if isinstance(node, BOr):
        # Every live alternative must test the same field; the prefilter is any of their tests.
        parts: list[Prefilter] = []
        for child in node.children:
            if compile_tree(child, kind) is False:
                continue
            cand = prefilter(child, kind)
            if cand is None or (parts and cand.key != parts[0].key):
                return None
            parts.append(cand)
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        return Prefilter(
            parts[0].key,
            parts[0].extractor,
            _any([p.test for p in parts]),
            max(2, max(p.rank for p in parts)),
        )
    return None


# --- a standalone condition (tests, tools) --------------------------------------------------------


class Condition:
    """A bound condition that compiles itself per kind on first use."""

    def __init__(self, tree: BNode) -> None:
        self.tree = tree
        self._by_kind: dict[str, Predicate | bool] = {}

    def for_kind(self, kind: str) -> Predicate | bool:
        found = self._by_kind.get(kind)
        if found is None:
            found = self._by_kind[kind] = compile_tree(self.tree, kind)
        return found

    @property
    def kinds(self) -> frozenset[str]:
        """The kinds on which the condition can be true."""
        return frozenset(k for k in fieldtab.DETAIL_KINDS if self.for_kind(k) is not False)

    def matches(self, event: Event) -> bool:
        kind = event.WhichOneof("detail")
        if kind is None:
            return False
        pred = self.for_kind(kind)
        return pred if isinstance(pred, bool) else pred(event)


BOOL_FIELDS: frozenset[str] = frozenset(
    name
    for name in fieldtab.all_names()
    if (f := fieldtab.lookup(name)) and f.type is FieldType.BOOL
)


def compile_condition(
    text: str,
    lists: Mapping[str, Sequence[str]] | None = None,
    macros: Mapping[str, str] | None = None,
) -> Condition:
    """Parse, bind and wrap one condition, with optional lists and macros given as text."""
    defs = {
        name: MacroDef(name, parse(body, BOOL_FIELDS), SourceText.plain(body))
        for name, body in (macros or {}).items()
    }
    source = SourceText.plain(text)
    try:
        tree = parse(text, BOOL_FIELDS)
    except ConditionError as err:
        raise source.error(err) from None
    return Condition(Binder(lists or {}, defs).bind(tree, source))


__all__ = [
    "BOOL_FIELDS",
    "AddrSet",
    "BAnd",
    "BCompare",
    "BConst",
    "BNode",
    "BNot",
    "BOr",
    "Binder",
    "Condition",
    "Literal",
    "MacroDef",
    "PathPrefixes",
    "Predicate",
    "compile_condition",
    "compile_tree",
    "conjoin",
    "disjoin",
    "negate",
    "parse_int",
]
