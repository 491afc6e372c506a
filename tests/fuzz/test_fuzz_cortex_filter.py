"""Fuzzing the Cortex read API's parsers: event filters, record filters, order_by, page tokens.

Every one takes text a client sends. The documented refusals: `FilterError` (filter, order_by),
`PageTokenError` (page_token), `PageSizeError` (page_size). A filter that parses also keeps its
documented round trip: `parse(f.canonical()) == f`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import cast

from hypothesis import given
from hypothesis import strategies as st

from cortex import filter as event_filter
from cortex.assessment_queries import FIELDS as ASSESSMENT_FIELDS
from cortex.assessment_queries import AssessmentQueries
from cortex.assessments import AssessmentBook
from cortex.errors import FilterError, PageSizeError, PageTokenError
from cortex.guardian_view import GuardianDirectory, GuardianView
from cortex.paging import PageBinding, PageTokens
from cortex.queries import CortexQueries, parse_guardian_filter, parse_guardian_order
from cortex.record_filter import parse_record_filter
from cortex.store.api import Page, Position, WhereClause
from qsc.common.v1 import event_pb2
from tests.fuzz.harness import corpus, fuzz_settings, guarded, mutated_text, with_examples

KEY = bytes(range(32))
READ_ERRORS = (FilterError, PageTokenError, PageSizeError)

EVENT_FILTERS = [
    "",
    "severity>=SEVERITY_HIGH",
    "  category =  file ",
    'host = "x" AND seq = 1 OR seq = 2',
    "(seq = 1 AND (seq = 2 AND (seq = 3)))",
    "NOT (seq = 1 OR seq = 2)",
    "-host = x",
    'time >= "2026-12-01T01:00:00+01:00"',
    'time < "2026-11-30t19:00:00.120-05:00"',
    'time = "1969-12-31T23:59:59.999999999Z"',
    "kind = FILE_*",
    "kind = DETAIL_KIND_AUTH_EVENT",
    "mitre = T1059*",
    r'host = "a\"b\\c\*d*"',
    'user = "line\nbreak"',
    "source_address = 192.0.2.7",
    'process.exe = "/tmp/x" guardian.id = alpha-web-01 rule.id != alpha.memfd_exec',
    'file.path = "/etc/shadow" OR destination_address = "2001:db8::1"',
]
FILTER_TOKENS = [
    " AND ",
    " OR ",
    "NOT ",
    "-",
    "(",
    ")",
    '"',
    "\\",
    "*",
    " = ",
    " != ",
    " <= ",
    " > ",
    ":",
    "seq",
    "time",
    "severity",
    "mitre",
    "HIGH",
    '"2026-01-01T00:00:00Z"',
]
ASSESSMENT_FILTERS = [
    "",
    "state = OPEN",
    "state = ASSESSMENT_STATE_RESOLVED AND verdict != NONE",
    "severity >= HIGH AND confidence >= 0.8",
    'rule = "cortex.ransomware_like" host = web-01',
    "technique = T1059* OR title = x*",
    "revision > 2 event_count <= 100",
    'create_time >= "2026-12-01T00:00:00Z" -update_time < "2026-12-02T00:00:00.5Z"',
    "NOT (correlation_key = abc OR name = assessments/x)",
]
GUARDIAN_FILTERS = [
    "",
    "state = CONNECTED",
    "state = CONNECTION_STATE_LOST AND sealed = true",
    "lag_events > 100 OR events_lost > 0",
    'role = beta host = "web-*" degraded_sensors = ebpf',
    "NOT sealed = false committed_seq >= 18446744073709551615",
]
ORDERS = [
    "",
    "time",
    "time desc",
    "time ASC",
    "create_time desc",
    "confidence",
    "update_time asc",
    "name",
    "lag_events desc, name",
    "name desc",
]


def blind(field: str, value: str) -> bytes:
    return hashlib.sha256(f"{field}\0{value}".encode("utf-8", "surrogatepass")).digest()


class _Store:
    """The read API's view of an empty store: enough for ListEvents to parse and plan."""

    store_id = "store-fuzz"

    def get(self, event_id: str) -> event_pb2.Event | None:
        return None

    def query(
        self,
        where: WhereClause | None = None,
        *,
        descending: bool = False,
        after: Position | None = None,
        limit: int = 100,
    ) -> Page:
        assert where is not None
        assert where.sql.count("?") == len(where.params)
        return Page((), None)

    def count(self, where: WhereClause | None = None) -> int:
        return 0

    def blind(self, field: str, value: str) -> bytes:
        return blind(field, value)


class _Directory:
    def guardians(self) -> Sequence[GuardianView]:
        return ()


QUERIES = CortexQueries(_Store(), cast(GuardianDirectory, _Directory()), KEY)
ASSESSMENTS = AssessmentQueries(AssessmentBook(), "store-fuzz", KEY)
TOKENS = PageTokens(KEY)
SAMPLE = event_pb2.Event(seq=7, id="0b7c5d52-1f3a-4c55-9d6e-4c7f0d7f6a11")


def _check_event_filter(text: str) -> None:
    outcome = guarded(lambda: event_filter.parse(text), FilterError)
    if isinstance(outcome, event_filter.Filter):
        again = event_filter.parse(outcome.canonical())
        assert again == outcome, f"canonical {outcome.canonical()!r} does not parse back"
        outcome.to_sql(blind)
        outcome.matches(SAMPLE)


@fuzz_settings(80)
@with_examples([b.decode("utf-8", "replace") for b in corpus("cortex_filter")])
@given(mutated_text(EVENT_FILTERS, tokens=FILTER_TOKENS))
def test_event_filter_mutated(text: str) -> None:
    _check_event_filter(text)


@fuzz_settings(80)
@given(st.text(max_size=300))
def test_event_filter_any_text(text: str) -> None:
    _check_event_filter(text)


@fuzz_settings(100)
@given(mutated_text(ASSESSMENT_FILTERS + GUARDIAN_FILTERS, tokens=FILTER_TOKENS))
def test_record_filters_mutated(text: str) -> None:
    assessments = guarded(lambda: parse_record_filter(text, ASSESSMENT_FIELDS), FilterError)
    if not isinstance(assessments, BaseException):
        again = parse_record_filter(assessments.canonical, ASSESSMENT_FIELDS)
        assert again.canonical == assessments.canonical
    guardians = guarded(lambda: parse_guardian_filter(text), FilterError)
    if not isinstance(guardians, BaseException):
        assert parse_guardian_filter(guardians.canonical).canonical == guardians.canonical


@fuzz_settings(100)
@given(mutated_text(ORDERS, tokens=[",", " asc", " desc", " time", " name"]))
def test_order_by_mutated(text: str) -> None:
    guarded(lambda: event_filter.parse_order_by(text), FilterError)
    outcome = guarded(lambda: parse_guardian_order(text), FilterError)
    if not isinstance(outcome, BaseException):
        assert parse_guardian_order(outcome.canonical).canonical == outcome.canonical


def _valid_tokens() -> list[str]:
    out = []
    for filter_, order in (("", "time"), ("seq = 1", "time desc")):
        f = event_filter.parse(filter_)
        o = event_filter.parse_order_by(order)
        binding = PageBinding("events", "store-fuzz", f.canonical(), o.canonical())
        out.append(TOKENS.issue(binding, "t1700000000000000000.42 17"))
    return out


@fuzz_settings(80)
@given(
    st.one_of(mutated_text(_valid_tokens(), tokens=["-", "_", "=", "A"]), st.text(max_size=600)),
    st.sampled_from([("", "time"), ("seq = 1", "time desc"), ("", "")]),
    st.integers(-(2**63), 2**63),
)
def test_list_events_page_tokens(token: str, request: tuple[str, str], size: int) -> None:
    filter_, order = request
    guarded(lambda: QUERIES.list_events(size, token, filter_, order), READ_ERRORS)


@fuzz_settings(100)
@given(
    st.one_of(
        st.text(alphabet=st.characters(codec="ascii"), max_size=300),
        st.sampled_from(["t1.1", "n.0", "t-5.3 12", "t99999999999999999999.1 x", "o5", "1e999 id"]),
    ),
    st.sampled_from(["", "state = OPEN"]),
    st.sampled_from(["", "confidence asc", "update_time desc"]),
)
def test_authenticated_positions(position: str, filter_: str, order: str) -> None:
    """Tokens that verify but hold any position: a broken issuer, or a leaked key."""
    events_binding = PageBinding(
        "events",
        "store-fuzz",
        event_filter.parse(filter_ and "seq = 1").canonical(),
        event_filter.Order(descending=True).canonical(),
    )
    token = TOKENS.issue(events_binding, position)
    guarded(lambda: QUERIES.list_events(0, token, filter_ and "seq = 1", ""), READ_ERRORS)
    flt = parse_record_filter(filter_, ASSESSMENT_FIELDS)
    canonical_order = {"": "create_time desc", "confidence asc": "confidence"}.get(order, order)
    binding = PageBinding("assessments", "store-fuzz", flt.canonical, canonical_order)
    token = TOKENS.issue(binding, position)
    guarded(lambda: ASSESSMENTS.list(0, token, filter_, order), READ_ERRORS)
    guardians = PageBinding("guardians", "store-fuzz", "", "name")
    token = TOKENS.issue(guardians, position)
    guarded(lambda: QUERIES.list_guardians(0, token, "", ""), READ_ERRORS)


@fuzz_settings(100)
@given(
    mutated_text(ASSESSMENT_FILTERS, tokens=FILTER_TOKENS),
    mutated_text(ORDERS),
    st.text(max_size=100),
    st.integers(-5, 5000),
)
def test_list_assessments_request(filter_: str, order: str, token: str, size: int) -> None:
    guarded(lambda: ASSESSMENTS.list(size, token, filter_, order), READ_ERRORS)
