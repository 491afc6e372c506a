"""The read-and-judge core of assessments: GetAssessment, ListAssessments, SubmitVerdict.

No gRPC here (`cortex.service` decodes and encodes). Filters use `cortex.record_filter` over:

    name rule title correlation_key      = !=; a string, `*` prefix
    host technique                       = !=; holds that host / ATT&CK technique
    state                                = !=; OPEN RESOLVED EXPIRED (ASSESSMENT_STATE_OPEN...)
    verdict                              = !=; NONE TRUE_POSITIVE FALSE_POSITIVE BENIGN
    severity                             ordered; INFO LOW MEDIUM HIGH CRITICAL
    confidence                           a number in [0, 1]
    revision event_count                 integers
    create_time update_time first_event_time last_event_time   RFC 3339 timestamps

`order_by` is one of create_time (default, newest first), update_time or confidence, each
`asc` or `desc`; ties go by id. Pages resume after the (value, id) of the last one listed
(keyset), bound by an authenticated token to the filter and order like ListEvents'.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cortex.assessments import Assessment, AssessmentBook
from cortex.errors import ResourceNameError
from cortex.filter.literals import shown
from cortex.paging import PageBinding, PageTokens, keyset_page, page_size, parse_order
from cortex.record_filter import Enum, RecordFields, parse_record_filter

_NAME: Final = re.compile(r"assessments/([0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12})")
_SEVERITIES: Final = ("INFO", "LOW", "MEDIUM", "HIGH", "CRITICAL")

FIELDS: Final[RecordFields[Assessment]] = RecordFields(
    strings={
        "name": lambda a: a.name,
        "rule": lambda a: a.rule_id,
        "title": lambda a: a.title,
        "correlation_key": lambda a: a.correlation_key,
    },
    sets={"host": lambda a: a.hosts, "technique": lambda a: a.mitre},
    enums={
        "state": Enum(
            lambda a: a.state.upper(), ("OPEN", "RESOLVED", "EXPIRED"), "ASSESSMENT_STATE_"
        ),
        "verdict": Enum(
            lambda a: a.verdict.verdict.upper() if a.verdict else "NONE",
            ("NONE", "TRUE_POSITIVE", "FALSE_POSITIVE", "BENIGN"),
            "VERDICT_",
        ),
    },
    ordered={"severity": Enum(lambda a: a.severity.upper(), _SEVERITIES, "SEVERITY_")},
    numbers={"confidence": lambda a: a.confidence},
    integers={"revision": lambda a: a.revision, "event_count": lambda a: a.event_count},
    times={
        "create_time": lambda a: a.create_ns,
        "update_time": lambda a: a.update_ns,
        "first_event_time": lambda a: a.first_event_ns,
        "last_event_time": lambda a: a.last_event_ns,
    },
)
_ORDER_KEYS: Final[dict[str, Callable[[Assessment], int | float]]] = {
    "create_time": lambda a: a.create_ns,
    "update_time": lambda a: a.update_ns,
    "confidence": lambda a: a.confidence,
}


@dataclass(frozen=True)
class AssessmentsPage:
    assessments: tuple[Assessment, ...]
    next_page_token: str
    total_size: int


class AssessmentQueries:
    def __init__(self, book: AssessmentBook, store_id: str, token_key: bytes) -> None:
        self._book = book
        self._store_id = store_id
        self._tokens = PageTokens(token_key)

    def get(self, name: str) -> Assessment:
        return self._book.get(_id_of(name))

    def list(
        self, page_size_: int, page_token: str, filter_: str, order_by: str
    ) -> AssessmentsPage:
        size = page_size(page_size_)
        flt = parse_record_filter(filter_, FIELDS)
        order = parse_order(order_by, _ORDER_KEYS, what="assessments", default="create_time")
        binding = PageBinding("assessments", self._store_id, flt.canonical, order.canonical)
        key = _ORDER_KEYS[order.field]
        matching = sorted(
            (a for a in self._book.all() if flt.matches(a)),
            key=lambda a: (key(a), a.id),
            reverse=order.descending,
        )
        page, token = keyset_page(
            matching,
            key,
            lambda a: a.id,
            descending=order.descending,
            size=size,
            page_token=page_token,
            tokens=self._tokens,
            binding=binding,
        )
        return AssessmentsPage(page, token, len(matching))

    def verdict(self, name: str, verdict: str, comment: str, actor: str) -> Assessment:
        return self._book.verdict(_id_of(name), verdict, comment, actor)


def _id_of(name: str) -> str:
    match = _NAME.fullmatch(name) if len(name) <= 300 else None
    if match is None:
        shape = "assessments/{assessment_id}, the id a UUID"
        raise ResourceNameError(
            f"name {shown(name[:80]) if name else 'empty'} is not {shape}", expected=shape
        )
    return match.group(1).lower()
