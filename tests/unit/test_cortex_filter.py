"""The Cortex filter language (cortex.filter): parsing and precedence, every error with its
position, the abuse limits, canonical text, order_by, and the property that matters most: a
filter selects the same events as SQL over a real SQLite store (this exact schema, real
HMAC-SHA256 blind terms) as it does in memory, including when literals try to be SQL."""

from __future__ import annotations

import hashlib
import hmac
import random
import re
import sqlite3
from collections.abc import Iterator

import grpc
import pytest

from cortex import fields
from cortex.errors import CortexError, FilterError
from cortex.filter import (
    MAX_DEPTH,
    MAX_FILTER_CHARS,
    MAX_ORDER_BY_CHARS,
    MAX_TERMS,
    Filter,
    Order,
    parse,
    parse_order_by,
)
from cortex.filter.nodes import And, Comparison, Not, Op, Or
from cortex.filter.sql import bytes_successor, text_successor
from mesh.errors import InvalidArgumentError
from mesh.status import to_status
from qsc.common.v1 import classification_pb2, event_pb2, file_details_pb2

KEY = b"k" * 32
T0 = 1_796_083_200 * 10**9  # 2026-12-01T00:00:00Z


def blind(field: str, value: str) -> bytes:
    return hmac.new(KEY, field.encode() + b"\0" + value.encode(), hashlib.sha256).digest()


# --- parsing and precedence -------------------------------------------------------------------


def test_empty_filter_is_everything() -> None:
    for text in ("", "   ", "\t\n"):
        f = parse(text)
        assert f.is_everything
        assert f.canonical() == ""
        assert f.matches(event_pb2.Event())
        assert f.to_sql(blind).sql == "1"
        assert f.to_sql(blind).params == ()


def test_or_binds_tighter_than_and() -> None:
    # AIP-160: `a AND b OR c` is `a AND (b OR c)`, not the `(a AND b) OR c` of most languages.
    f = parse("seq = 2 AND seq = 3 OR seq = 1")
    assert f.root == And(
        (
            Or((Comparison("seq", Op.EQ, 1), Comparison("seq", Op.EQ, 3))),
            Comparison("seq", Op.EQ, 2),
        )
    )
    assert not f.matches(event_pb2.Event(seq=1))
    assert f.canonical() == "(seq = 1 OR seq = 3) AND seq = 2"
    assert parse("(seq = 2 AND seq = 3) OR seq = 1").matches(event_pb2.Event(seq=1))


def test_not_binds_to_one_term_and_juxtaposition_is_and() -> None:
    assert parse("NOT seq = 1 OR seq = 1").matches(event_pb2.Event(seq=1))  # (NOT a) OR a
    assert parse("seq >= 1 seq <= 3") == parse("seq >= 1 AND seq <= 3")
    assert parse("-seq = 1") == parse("NOT seq = 1") == parse("seq != 1")
    assert parse("- seq = 1") == parse("seq != 1")


def test_values_per_kind() -> None:
    f = parse('time >= "2026-12-01T01:00:00.5+01:00"')
    assert f.root == Comparison("time", Op.GE, T0 + 500_000_000)
    assert (
        parse("severity >= SEVERITY_HIGH") == parse("severity >= HIGH") == parse("severity >= high")
    )
    assert parse('severity >= "HIGH"') == parse("severity >= HIGH")
    assert parse("category = CATEGORY_FILE").root == Comparison(
        "category", Op.EQ, classification_pb2.CATEGORY_FILE
    )
    assert (
        parse("kind = FILE_RENAME") == parse('kind = "file_rename"') == parse("kind = file_rename")
    )
    assert parse("kind = DETAIL_KIND_AUTH_EVENT").root == Comparison("kind", Op.EQ, "auth_event")
    assert parse("host = web-01").root == Comparison("host", Op.EQ, "web-01")
    assert parse("rule.id = alpha.memfd_exec").root == Comparison(
        "rule.id", Op.EQ, "alpha.memfd_exec"
    )
    assert parse("mitre = T1059*").root == Comparison("mitre", Op.EQ, "T1059", prefix=True)
    assert parse('mitre = "T1059.004"').root == Comparison("mitre", Op.EQ, "T1059.004")
    assert parse('host = "*"').root == Comparison("host", Op.EQ, "", prefix=True)


def test_string_escapes() -> None:
    f = parse(r'host = "a\"b\\c\*d\n\t\r*"')
    assert f.root == Comparison("host", Op.EQ, 'a"b\\c*d\n\t\r', prefix=True)
    # An escaped star is a literal one, also in blind fields, which have no wildcard.
    assert parse(r'process.exe = "/tmp/\*"').root == Comparison("process.exe", Op.EQ, "/tmp/*")
    assert parse("user = \"(a) AND b = 'c'\"").root == Comparison("user", Op.EQ, "(a) AND b = 'c'")


def test_fields_referenced() -> None:
    f = parse('severity >= HIGH AND (NOT user = "root" OR mitre = "T1*")')
    assert f.fields == frozenset({"severity", "user", "mitre"})
    assert parse("").fields == frozenset()


# --- errors, each with its position --------------------------------------------------------

_FIELD_LIST = ", ".join(fields.FIELDS)

ERRORS = [
    ('proccess.exe = "/tmp/x"', 1, 'field "proccess.exe" is not filterable (did you mean'),
    ('severity >= HIGH AND proccess.exe = "/tmp/x"', 22, f"; fields: {_FIELD_LIST}"),
    ("severity >> HIGH", 11, 'expected a value after >, found ">"'),
    ("severity == HIGH", 10, "'==' is not an operator"),
    ('host = "web', 8, "unterminated string"),
    (r'host = "a\qb"', 10, "unknown escape"),
    ('host = "a\\', 10, "unknown escape '\\' before the end"),
    ("host = 'x'", 8, "strings are written in double quotes"),
    ("(severity >= HIGH", 18, "expected ')' to close the '(' at position 1, found the end"),
    ("severity >= HIGH)", 17, "unbalanced ')'"),
    ("()", 2, "empty parentheses"),
    ("severity >= HIGH AND", 21, "expected a comparison or '(', found the end of the filter"),
    ("host = web-1 AND AND seq = 1", 18, "expected a comparison or '(', found \"AND\""),
    ("NOT", 4, "expected a comparison or '(', found the end"),
    ("severity >= BOGUS", 13, "expected one of INFO, LOW, MEDIUM, HIGH, CRITICAL"),
    ("severity = UNSPECIFIED", 12, "SEVERITY_UNSPECIFIED means not set"),
    ("severity = 4", 12, "expected one of"),
    ("category > FILE", 10, "category takes only = and !=, not >"),
    ('host < "m"', 6, "host takes only = and !=, not <"),
    ('process.exe >= "x"', 13, "process.exe is a blind field: it is looked up by equality only"),
    ('file.path = "/tmp/*"', 19, "file.path is a blind field: it matches whole values only"),
    ('mitre = "T1*59"', 12, "only a trailing '*' is a wildcard"),
    ("host = a*b*", 9, "only a trailing '*' is a wildcard"),
    ('mitre = "Command"', 9, "a MITRE technique id looks like T1059"),
    (
        'host = ""',
        8,
        'an empty value never matches (an event without a host has no value); for "has',
    ),
    ('user = ""', 8, "an empty value never matches"),
    ("kind = bogus", 8, "expected a detail kind (process_exec, "),
    ('time >= "2026-12-01"', 9, "expected an RFC 3339 timestamp such as"),
    ("time >= 2026-12-01T00:00:00Z", 9, "quote the timestamp"),
    ('time >= "2026-02-30T00:00:00Z"', 9, "invalid timestamp"),
    ('time >= "2026-12-01T00:00:60Z"', 9, "invalid timestamp"),
    ('time >= "2026-12-01T00:00:00+24:00"', 9, "invalid time zone offset"),
    ('time >= "2026-12-01T00:00:00.1234567891Z"', 9, "at most 9 fraction digits"),
    ('time < "9999-01-01T00:00:00Z"', 8, "timestamp out of range"),
    ("seq = abc", 7, "expected a non-negative integer"),
    ('seq = "5"', 7, "seq takes an unquoted integer"),
    ("seq = 99999999999999999999", 7, "integer out of range"),
    ("seq = -5", 7, 'expected a value after =, found "-"'),
    ("host = ", 8, "expected a value after =, found the end"),
    ("host:web", 5, "the ':' (has) operator is not supported"),
    ('"web-1"', 1, "a bare value (global search) is not supported"),
    ("host", 5, "expected a comparison operator (=, !=, <, <=, >, >=) after host, found the end"),
    ("host(x)", 1, "functions are not supported"),
    ("severity >= HIGH and host = x", 18, "logical operators are written in upper case: AND"),
    ("seq = 1 or seq = 2", 9, "upper case: OR"),
    ("host = x !", 10, "unexpected '!'"),
    ("host = x, seq = 1", 9, "unexpected character ','"),
    ("host = \\x", 8, "unexpected character '\\\\'"),
    ("seq = 1 )", 9, "unbalanced ')'"),
    ('host = "\ud800"', 9, "lone surrogate"),
]


@pytest.mark.parametrize(("text", "position", "reason"), ERRORS)
def test_errors_name_position_and_reason(text: str, position: int, reason: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse(text)
    assert caught.value.position == position, str(caught.value)
    assert reason in caught.value.reason
    assert str(caught.value) == f"filter position {position}: {caught.value.reason}"


def test_filter_error_is_invalid_argument() -> None:
    with pytest.raises(FilterError) as caught:
        parse('proccess.exe = "/tmp/x"')
    err = caught.value
    assert isinstance(err, CortexError)
    assert isinstance(err, InvalidArgumentError)
    status = to_status(err)
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert status.details.startswith('filter position 1: field "proccess.exe" is not filterable')
    assert len(status.details) < 512  # not cut by mesh.status


def test_messages_echo_long_input_cut_short() -> None:
    with pytest.raises(FilterError) as caught:
        parse("x" * 1000 + " = 1")
    assert len(str(caught.value)) < 400
    assert "..." in str(caught.value)


# --- limits ---------------------------------------------------------------------------------


def test_length_limit() -> None:
    ok = "seq = 1".ljust(MAX_FILTER_CHARS)
    assert parse(ok) == parse("seq = 1")
    with pytest.raises(FilterError) as caught:
        parse(ok + " ")
    assert caught.value.position == MAX_FILTER_CHARS + 1
    assert f"at most {MAX_FILTER_CHARS} characters" in caught.value.reason


def test_depth_limit_parentheses() -> None:
    assert parse("(" * MAX_DEPTH + "seq = 1" + ")" * MAX_DEPTH) == parse("seq = 1")
    with pytest.raises(FilterError) as caught:
        parse("(" * (MAX_DEPTH + 1) + "seq = 1" + ")" * (MAX_DEPTH + 1))
    assert caught.value.position == MAX_DEPTH + 1
    assert "nested too deeply" in caught.value.reason


def test_depth_limit_negations() -> None:
    assert parse("NOT " * MAX_DEPTH + "seq = 1") == parse("seq = 1")  # an even number
    with pytest.raises(FilterError) as caught:
        parse("NOT " * (MAX_DEPTH + 1) + "seq = 1")
    assert caught.value.position == 4 * MAX_DEPTH + 1
    with pytest.raises(FilterError) as caught:
        parse("-" * (MAX_DEPTH + 1) + "seq = 1")
    assert caught.value.position == MAX_DEPTH + 1
    # Parentheses and negations add up.
    with pytest.raises(FilterError, match="nested too deeply"):
        parse("NOT (" * (MAX_DEPTH // 2 + 1) + "seq = 1" + ")" * (MAX_DEPTH // 2 + 1))


def test_terms_limit() -> None:
    terms = [f"seq = {i}" for i in range(1, MAX_TERMS + 2)]
    f = parse(" OR ".join(terms[:MAX_TERMS]))
    assert isinstance(f.root, Or)
    assert len(f.root.children) == MAX_TERMS
    text = " OR ".join(terms)
    with pytest.raises(FilterError) as caught:
        parse(text)
    assert caught.value.position == text.rindex("seq") + 1
    assert f"too many comparisons (at most {MAX_TERMS})" in caught.value.reason


# --- canonical text ---------------------------------------------------------------------------

CANONICAL = [
    ("severity>=SEVERITY_HIGH", "severity >= HIGH"),
    ("  category =  file ", "category = FILE"),
    ('host = "x" AND seq = 1 OR seq = 2', '(seq = 1 OR seq = 2) AND host = "x"'),
    ("(seq = 1 AND seq = 2) OR seq = 3", "(seq = 1 AND seq = 2) OR seq = 3"),
    ("seq = 2 AND seq = 1 AND seq = 2", "seq = 1 AND seq = 2"),
    ("(seq = 1 AND (seq = 2 AND (seq = 3)))", "seq = 1 AND seq = 2 AND seq = 3"),
    ("seq = 3 OR (seq = 1 OR seq = 2)", "seq = 1 OR seq = 2 OR seq = 3"),
    ("-host = x", 'host != "x"'),
    ("NOT host = x", 'host != "x"'),
    ("NOT NOT seq = 1", "seq = 1"),
    ("NOT seq != 1", "seq = 1"),
    ("NOT seq < 5", "NOT seq < 5"),  # not seq >= 5: an event without a seq passes only this
    ("NOT (seq = 1 OR seq = 2)", "NOT (seq = 1 OR seq = 2)"),
    ('time >= "2026-12-01T01:00:00+01:00"', 'time >= "2026-12-01T00:00:00Z"'),
    ('time < "2026-11-30t19:00:00.120-05:00"', 'time < "2026-12-01T00:00:00.12Z"'),
    ('time = "1969-12-31T23:59:59.999999999Z"', 'time = "1969-12-31T23:59:59.999999999Z"'),
    ("kind = FILE_*", 'kind = "file_*"'),
    ("mitre = T1059*", 'mitre = "T1059*"'),
    (r'host = "a\"b\\c\*d*"', r'host = "a\"b\\c\*d*"'),
    ('user = "line\nbreak"', r'user = "line\nbreak"'),
    ("source_address = 192.0.2.7", 'source_address = "192.0.2.7"'),
]


@pytest.mark.parametrize(("text", "canonical"), CANONICAL)
def test_canonical(text: str, canonical: str) -> None:
    f = parse(text)
    assert f.canonical() == canonical
    assert str(f) == canonical
    assert parse(canonical) == f  # the canonical text means the same filter
    assert parse(canonical).canonical() == canonical


def test_canonical_ignores_order_and_spelling() -> None:
    a = parse('severity >= HIGH AND (mitre = "T1059*" OR user = "root") AND -kind = gap')
    b = parse('kind != "gap" (user = "root" OR mitre = T1059*) severity >= SEVERITY_HIGH')
    assert a == b
    assert a.canonical() == b.canonical()
    assert parse("seq = 1") != parse("seq = 2")


# --- evaluation semantics -------------------------------------------------------------------


def test_multi_valued_fields_any_value_and_not_equal_is_not_equal() -> None:
    e = event_pb2.Event(file_rename=file_details_pb2.FileRename(old_path="/a", new_path="/b"))
    assert parse('file.path = "/a"').matches(e)
    assert parse('file.path = "/b"').matches(e)
    # `!=` is NOT `=`: the event names /a, so it is not a "file.path != /a" event even though
    # it also names /b.
    assert not parse('file.path != "/a"').matches(e)
    assert parse('file.path != "/c"').matches(e)
    e.rule.techniques.add(id="T1059.004")
    e.rule.techniques.add(id="T1055")
    assert parse('mitre = "T1055"').matches(e)
    assert parse('mitre = "T1059*"').matches(e)
    assert not parse('mitre != "T1055"').matches(e)


def test_absent_values_match_no_comparison() -> None:
    e = event_pb2.Event()  # no time, seq, severity, host, detail ...
    absent = [
        "seq < 5",
        "severity < HIGH",
        'time < "2026-12-01T00:00:00Z"',
        'host = "*"',
        'user = "root"',
        'mitre = "*"',
        "category = FILE",
        'kind = "*"',
    ]
    for text in absent:
        assert not parse(text).matches(e), text
        assert parse(f"NOT {text}").matches(e), text
    assert parse('host != "x"').matches(e)


def test_epoch_time_is_a_time() -> None:
    e = event_pb2.Event()
    e.time.SetInParent()
    assert parse('time = "1970-01-01T00:00:00Z"').matches(e)


# --- order_by ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "descending", "canonical"),
    [
        ("", False, "time"),
        ("   ", False, "time"),
        ("time", False, "time"),
        ("time asc", False, "time"),
        ("  time   DESC ", True, "time desc"),
        ("time desc", True, "time desc"),
    ],
)
def test_order_by(text: str, descending: bool, canonical: str) -> None:
    order = parse_order_by(text)
    assert order == Order(descending)
    assert order.canonical() == canonical
    assert order.field == "time"
    direction = "DESC" if descending else "ASC"
    assert order.sql() == f"events.time_ns {direction}, events.rowid {direction}"


@pytest.mark.parametrize(
    ("text", "position", "reason"),
    [
        ("severity", 1, 'events can be ordered by time only, not "severity"'),
        ("  seq desc", 3, "ordered by time only"),
        ("time up", 6, 'expected asc or desc after time, found "up"'),
        ("time, seq", 5, "one field (time) only"),
        ("time desc, seq", 10, "one field (time) only"),
        ("time desc extra", 11, 'unexpected "extra"'),
        ("time" + " " * MAX_ORDER_BY_CHARS, MAX_ORDER_BY_CHARS + 1, "at most"),
    ],
)
def test_order_by_errors(text: str, position: int, reason: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse_order_by(text)
    assert caught.value.position == position
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"order_by position {position}: ")
    assert caught.value.argument == "order_by"


# --- the catalogue's store helpers --------------------------------------------------------------


def test_clear_columns_and_index_terms() -> None:
    e = event_pb2.Event(seq=7, severity=classification_pb2.SEVERITY_HIGH)
    e.guardian.id = "alpha-web-1"
    e.rule.techniques.add(id="T1059")
    e.rule.techniques.add(id="T1059")
    e.auth_event.user = "root"
    e.auth_event.source.address = "192.0.2.7"
    assert fields.clear_columns(e) == {
        "time_ns": None,
        "guardian_id": "alpha-web-1",
        "host": None,
        "seq": 7,
        "category": None,
        "severity": classification_pb2.SEVERITY_HIGH,
        "rule_id": None,
        "kind": "auth_event",
    }
    assert fields.index_terms(e, blind) == (
        ("mitre", b"T1059"),
        ("user", blind("user", "root")),
        ("source_address", blind("source_address", "192.0.2.7")),
    )
    assert set(fields.COLUMNS) | {"mitre", *fields.BLIND_FIELDS} == set(fields.FIELDS)


def _catalogue_events() -> Iterator[event_pb2.Event]:
    yield event_pb2.Event()  # nothing set: every column absent
    rng = random.Random(11)
    for seq in range(1, 200):
        e = event_pb2.Event(seq=seq if rng.random() < 0.9 else 0)
        e.severity = classification_pb2.Severity.ValueType(rng.randint(0, 5))
        e.category = classification_pb2.Category.ValueType(rng.randint(0, 5))
        if rng.random() < 0.8:
            e.time.FromNanoseconds(rng.randint(0, 2**62))
        e.guardian.id = rng.choice(["", "alpha-web-1"])
        e.guardian.host = rng.choice(["", "web-1"])
        e.rule.id = rng.choice(["", "alpha.shadow_read"])
        for technique in rng.sample(["T1059", "T1059", "", "T1003.008"], rng.randint(0, 3)):
            e.rule.techniques.add(id=technique)
        e.process.exe = rng.choice(["", "/tmp/x"])
        detail = rng.randint(0, 3)
        if detail == 1:
            e.auth_event.user = rng.choice(["", "root"])
            e.auth_event.source.address = rng.choice(["", "192.0.2.7"])
        elif detail == 2:
            e.file_access.path = rng.choice(["", "/etc/shadow"])
        elif detail == 3:
            e.network_connection.remote.address = "198.51.100.1"
        yield e


def test_store_helpers_agree_with_the_catalogue() -> None:
    # clear_columns and index_terms read the message directly for speed; FIELDS stays the truth.
    for e in _catalogue_events():
        columns = fields.clear_columns(e)
        assert set(columns) == set(fields.COLUMNS.values())
        for name, column in fields.COLUMNS.items():
            found = fields.values(e, name)
            assert columns[column] == (found[0] if found else None), (name, e)
        want: dict[tuple[str, bytes], None] = {}
        for technique in fields.values(e, "mitre"):
            want[("mitre", str(technique).encode())] = None
        for name, plain in fields.blind_values(e).items():
            for value in plain:
                want[(name, blind(name, value))] = None
        assert fields.index_terms(e, blind) == tuple(want)


def test_successors() -> None:
    assert bytes_successor(b"T1059") == b"T105:"
    assert bytes_successor(b"a\xff\xff") == b"b"
    assert bytes_successor(b"\xff") is None
    assert text_successor("web-") == "web."
    assert text_successor("a\U0010ffff") == "b"
    assert text_successor("\U0010ffff") is None
    assert text_successor("a\ud7ff") == "a\ue000"


# --- SQL and memory agree ---------------------------------------------------------------------

SCHEMA = """
CREATE TABLE events (
    time_ns INTEGER, guardian_id TEXT, host TEXT, seq INTEGER, category INTEGER,
    severity INTEGER, rule_id TEXT, kind TEXT
);
CREATE TABLE event_terms (event_rowid INTEGER, field TEXT, term BLOB);
CREATE INDEX event_terms_lookup ON event_terms (field, term);
CREATE INDEX event_terms_event ON event_terms (event_rowid);
"""

GUARDIANS = ["alpha-web-1", "alpha-web-2", "beta-db-1", "", "alpha-%_1", "alpha-web-é"]
HOSTS = ["web-1", "web-2", "db-1", "", "h%st", "h_st", "hxst", "a'b", "web-\U0010ffff", "\ud7ffz"]
RULES = [
    "alpha.memfd_exec",
    "alpha.ptrace",
    "beta.ssh_bruteforce",
    "",
    "rule%x",
    "rule_x",
    "rulexx",
]
TECHNIQUES = ["T1059", "T1059.004", "T1055", "T1055.008", "T1110", "T1046", "T10595"]
EXES = ["/tmp/x", "/usr/bin/bash", "", "/tmp/x'; DROP TABLE events; --", "/tmp/*"]
USERS = ["root", "alice", "", "ROOT", "x' OR '1'='1"]
ADDRESSES = ["192.0.2.7", "198.51.100.1", "", "2001:db8::1"]
PATHS = ["/etc/shadow", "/tmp/a", "/tmp/b", "", "/tmp/%"]


def make_events(count: int, seed: int) -> list[event_pb2.Event]:
    rng = random.Random(seed)
    events: list[event_pb2.Event] = []
    for i in range(count):
        e = event_pb2.Event(
            seq=rng.choice([0, rng.randint(1, 60)]),
            severity=classification_pb2.Severity.ValueType(rng.randint(0, 5)),
            category=classification_pb2.Category.ValueType(rng.randint(0, 13)),
        )
        e.guardian.id = rng.choice(GUARDIANS)
        e.guardian.host = rng.choice(HOSTS)
        e.rule.id = rng.choice(RULES)
        for technique in rng.sample(TECHNIQUES, rng.randint(0, 3)):
            e.rule.techniques.add(id=technique)
        if i % 50 == 0:
            e.rule.techniques.add(id="T1059")  # a repeated technique
            e.rule.techniques.add(id="T1059")
        if rng.random() < 0.9:
            e.time.SetInParent()  # also for the epoch itself, a real instant
            if i % 40 != 0:
                e.time.FromNanoseconds(
                    T0 + rng.randint(-3, 3) * 86_400 * 10**9 + rng.randint(0, 10**9)
                )
        e.process.exe = rng.choice(EXES)
        detail = rng.choice(
            ["auth", "net", "scan", "rename", "access", "link", "gap", "exec", "none"]
        )
        if detail == "auth":
            e.auth_event.user = rng.choice(USERS)
            e.auth_event.source.address = rng.choice(ADDRESSES)
        elif detail == "net":
            e.network_connection.local.address = rng.choice(ADDRESSES)
            e.network_connection.remote.address = rng.choice(ADDRESSES)
        elif detail == "scan":
            e.port_scan.source_address = rng.choice(ADDRESSES)
        elif detail == "rename":
            e.file_rename.old_path = rng.choice(PATHS)
            e.file_rename.new_path = rng.choice(PATHS)
        elif detail == "access":
            e.file_access.path = rng.choice(PATHS)
        elif detail == "link":
            e.file_link.target = rng.choice(PATHS)
            e.file_link.link_path = rng.choice(PATHS)
        elif detail == "gap":
            e.gap.SetInParent()
        elif detail == "exec":
            e.process_exec.filename = "/bin/sh"
        events.append(e)
    return events


EVENTS = make_events(400, seed=160)


def open_store(events: list[event_pb2.Event], *, sentinels: bool) -> sqlite3.Connection:
    """The store's schema filled from the catalogue. With `sentinels`, absent clear values are
    written as 0 or "" instead of NULL: the SQL must treat both as absent, as `values` does."""
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    names = list(fields.COLUMNS.values())
    for rowid, e in enumerate(events, start=1):
        row = fields.clear_columns(e)
        if sentinels:
            for name, value in row.items():
                if value is None and name != "time_ns":
                    row[name] = "" if name in ("guardian_id", "host", "rule_id", "kind") else 0
        db.execute(
            f"INSERT INTO events (rowid, {', '.join(names)})"
            f" VALUES (?, {', '.join('?' * len(names))})",
            (rowid, *(row[n] for n in names)),
        )
        db.executemany(
            "INSERT INTO event_terms (event_rowid, field, term) VALUES (?, ?, ?)",
            [(rowid, field, term) for field, term in fields.index_terms(e, blind)],
        )
    return db


AGREEMENT = [
    "",
    "severity >= HIGH",
    "severity < MEDIUM",
    "severity = INFO",
    "severity != CRITICAL",
    "NOT severity <= LOW",
    "category = FILE",
    "category != CATEGORY_NETWORK",
    "category = FILE OR category = NETWORK",
    'time >= "2026-12-01T00:00:00Z"',
    'time < "2026-11-29T12:00:00Z"',
    'time <= "1970-01-01T00:00:00Z"',
    'time = "1970-01-01T00:00:00Z"',
    'NOT time > "2026-11-29T00:00:00Z"',
    'time > "2026-11-29T00:00:00Z" AND time < "2026-12-02T00:00:00Z"',
    "seq = 5",
    "seq > 30",
    "seq <= 10",
    "NOT seq >= 1",
    "seq != 7",
    'guardian = "alpha-web-1"',
    'guardian = "alpha-*"',
    'guardian = "alpha-%*"',
    'guardian = "alpha-web-é"',
    'guardian = "*"',
    'host = "web-*"',
    'host != "web-*"',
    'host = "h%*"',
    'host = "h_*"',
    'host = "a\'b"',
    'host = "web-\U0010ffff*"',
    'host = "\ud7ff*"',
    "NOT host = *",
    'rule.id = "alpha.*"',
    'rule.id = "rule_*"',
    'rule.id = "rule%x"',
    'rule.id != "alpha.ptrace"',
    'kind = "file_*"',
    "kind = auth_event",
    "kind != gap",
    'mitre = "T1059"',
    'mitre = "T1059*"',
    'mitre = "T1059.*"',
    'mitre != "T1055"',
    'mitre = "*"',
    'NOT mitre = "*"',
    'process.exe = "/tmp/x"',
    'process.exe != "/tmp/x"',
    r'process.exe = "/tmp/\*"',
    'process.exe = "/tmp/x\'; DROP TABLE events; --"',
    'user = "root"',
    'user = "ROOT"',
    "user = \"x' OR '1'='1\"",
    'user != "root" AND kind = auth_event',
    'source_address = "192.0.2.7"',
    'destination_address = "2001:db8::1"',
    'file.path = "/tmp/a"',
    'file.path != "/tmp/a" AND kind = file_rename',
    'file.path = "/tmp/%"',
    'severity >= HIGH AND (mitre = "T1059*" OR user = "root")',
    'severity >= HIGH AND mitre = "T1059*" OR user = "root"',
    'NOT (category = FILE OR severity >= HIGH) AND host = "web-*"',
    '-(kind = file_rename OR kind = file_link) file.path = "/tmp/b"',
    'source_address = "192.0.2.7" OR destination_address = "192.0.2.7"',
    'NOT (NOT (seq > 10 AND NOT time < "2026-12-01T00:00:00Z"))',
    "(seq = 1 OR seq = 2 OR seq = 3) AND NOT (severity = INFO OR severity = LOW)",
    'guardian = "x\' OR 1=1 --" OR host = "\\"; DROP TABLE events; --"',
]


@pytest.fixture(scope="module", params=[False, True], ids=["absent-null", "absent-sentinel"])
def store(request: pytest.FixtureRequest) -> Iterator[sqlite3.Connection]:
    db = open_store(EVENTS, sentinels=request.param)
    yield db
    db.close()


def select(db: sqlite3.Connection, f: Filter) -> set[int]:
    fragment = f.to_sql(blind)
    rows = db.execute(f"SELECT rowid FROM events WHERE {fragment.sql}", fragment.params)
    return {rowid for (rowid,) in rows}


@pytest.mark.parametrize("text", AGREEMENT)
def test_sql_and_memory_agree(store: sqlite3.Connection, text: str) -> None:
    f = parse(text)
    in_memory = {rowid for rowid, e in enumerate(EVENTS, start=1) if f.matches(e)}
    assert select(store, f) == in_memory
    assert select(store, parse(f.canonical())) == in_memory  # and so does its canonical text


def test_agreement_filters_select_proper_subsets() -> None:
    # The property test is only as good as its data: most filters must split the events.
    proper = 0
    for text in AGREEMENT:
        hits = sum(parse(text).matches(e) for e in EVENTS)
        proper += 0 < hits < len(EVENTS)
    assert proper >= len(AGREEMENT) - 8


@pytest.mark.parametrize("text", AGREEMENT)
def test_sql_never_holds_a_value(text: str) -> None:
    fragment = parse(text).to_sql(blind)
    # The only quotes in the SQL are the constant '' of the absent-string guard.
    assert "'" not in fragment.sql.replace("''", "")
    if text:  # (the empty filter is the constant "1")
        assert not re.search(r"\d", fragment.sql.replace("<> 0", "")), fragment.sql
    assert fragment.sql.count("?") == len(fragment.params)


def test_blind_values_are_bound_as_hmac_only() -> None:
    fragment = parse('process.exe = "/tmp/x" AND user != "root"').to_sql(blind)
    assert fragment.params == (
        "process.exe",
        blind("process.exe", "/tmp/x"),
        "user",
        blind("user", "root"),
    )
    assert "/tmp/x" not in fragment.sql
    assert "root" not in fragment.sql


def test_injection_attempts_stay_literal(store: sqlite3.Connection) -> None:
    attempts = [
        "host = \"x' OR '1'='1\"",
        'host = "\\"; DROP TABLE events; --"',
        'rule.id = "\'); DELETE FROM events; --"',
        'guardian = "%\' OR 1=1 --*"',
        'user = "\' UNION SELECT rowid FROM events --"',
    ]
    for text in attempts:
        assert select(store, parse(text)) == set()
    (count,) = store.execute("SELECT COUNT(*) FROM events").fetchone()
    assert count == len(EVENTS)
    # A literal that is SQL finds exactly the events that hold it.
    dropper = parse('process.exe = "/tmp/x\'; DROP TABLE events; --"')
    expected = {i for i, e in enumerate(EVENTS, start=1) if e.process.exe.startswith("/tmp/x'")}
    assert expected
    assert select(store, dropper) == expected


def test_order_sql_sorts_by_time(store: sqlite3.Connection) -> None:
    for order in (parse_order_by(""), parse_order_by("time desc")):
        rows = store.execute(
            f"SELECT time_ns FROM events WHERE time_ns IS NOT NULL ORDER BY {order.sql()}"
        ).fetchall()
        times = [t for (t,) in rows]
        assert times == sorted(times, reverse=order.descending)


def test_not_equal_is_not_of_equal_in_both_worlds(store: sqlite3.Connection) -> None:
    for text in ('mitre = "T1059"', 'file.path = "/tmp/a"', 'host = "web-*"', "seq = 5"):
        eq, ne = parse(text), parse(text.replace(" = ", " != ", 1))
        assert eq.root is not None
        assert ne == Filter(Not(eq.root))
        assert select(store, eq) | select(store, ne) == set(range(1, len(EVENTS) + 1))
        assert not select(store, eq) & select(store, ne)


@pytest.mark.parametrize(
    ("alias", "name", "value"),
    [
        ("auth.source_address", "source_address", '"192.0.2.7"'),
        ("guardian.host", "host", '"web-1"'),
        ("guardian.id", "guardian", '"alpha-web-1"'),
        ("auth.user", "user", '"alice"'),
        ("network.destination_address", "destination_address", '"198.51.100.2"'),
    ],
)
def test_aliases_mean_their_field_and_share_its_canonical_text(
    alias: str, name: str, value: str
) -> None:
    assert parse(f"{alias} = {value}").canonical() == parse(f"{name} = {value}").canonical()
