"""GetPlaybookRun and ListPlaybookRuns over the store's runs. No gRPC here.

Filters use `cortex.record_filter` over:

    name playbook assessment trigger   = !=; a string, `*` prefix (`assessment = "assessments/…"`)
    target                             = !=; holds a step reaching that endpoint or guardian
    state                              = !=; AWAITING_APPROVAL PENDING RUNNING SUCCEEDED FAILED
                                       CANCELLED (RUN_STATE_… may be written)
    dead_letter                        = !=; true or false
    assessment_revision attempts       integers (attempts: over all steps)
    create_time start_time end_time    RFC 3339 timestamps

`order_by` is `create_time` (default newest first) or `end_time`, `asc` or `desc`; ties go by
id. Pages resume after the (value, id) of the last one listed, with a token bound to the filter
and order like every other List of the Cortex.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cortex.errors import PlaybookRunNotFoundError, ResourceNameError
from cortex.filter.literals import shown
from cortex.paging import PageBinding, PageTokens, keyset_page, page_size, parse_order
from cortex.record_filter import Enum, RecordFields, parse_record_filter
from cortex.store.runs import RunRecord, RunTable

__all__ = ["FIELDS", "RunQueries", "RunsPage", "run_id_of"]

_NAME: Final = re.compile(r"playbookRuns/([0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12})")
STATES: Final = ("AWAITING_APPROVAL", "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")

FIELDS: Final[RecordFields[RunRecord]] = RecordFields(
    strings={
        "name": lambda r: r.name,
        "playbook": lambda r: r.playbook,
        "assessment": lambda r: f"assessments/{r.assessment_id}",
        "trigger": lambda r: r.trigger,
    },
    sets={"target": lambda r: tuple(s.target for s in r.steps)},
    enums={"state": Enum(lambda r: r.state.upper(), STATES, "RUN_STATE_")},
    bools={"dead_letter": lambda r: r.dead_letter},
    integers={
        "assessment_revision": lambda r: r.revision,
        "attempts": lambda r: sum(s.attempts for s in r.steps),
    },
    times={
        "create_time": lambda r: r.create_ns,
        "start_time": lambda r: r.start_ns or 0,
        "end_time": lambda r: r.end_ns or 0,
    },
)
_ORDER_KEYS: Final[dict[str, Callable[[RunRecord], int]]] = {
    "create_time": lambda r: r.create_ns,
    "end_time": lambda r: r.end_ns or 0,
}


@dataclass(frozen=True)
class RunsPage:
    runs: tuple[RunRecord, ...]
    next_page_token: str
    total_size: int


def run_id_of(name: str) -> str:
    match = _NAME.fullmatch(name) if len(name) <= 300 else None
    if match is None:
        shape = "playbookRuns/{run_id}, the id a UUID"
        raise ResourceNameError(
            f"name {shown(name[:80]) if name else 'empty'} is not {shape}", expected=shape
        )
    return match.group(1).lower()


class RunQueries:
    def __init__(self, runs: RunTable, store_id: str, token_key: bytes) -> None:
        self._runs = runs
        self._store_id = store_id
        self._tokens = PageTokens(token_key)

    def get(self, name: str) -> RunRecord:
        run = self._runs.get(run_id_of(name))
        if run is None:
            raise PlaybookRunNotFoundError(f"{name} does not exist", name=name[:300])
        return run

    def list(self, page_size_: int, page_token: str, filter_: str, order_by: str) -> RunsPage:
        size = page_size(page_size_)
        flt = parse_record_filter(filter_, FIELDS)
        order = parse_order(order_by, _ORDER_KEYS, what="runs", default="create_time")
        binding = PageBinding("playbookRuns", self._store_id, flt.canonical, order.canonical)
        key = _ORDER_KEYS[order.field]
        matching = sorted(
            (r for r in self._runs.list_all(with_steps=True) if flt.matches(r)),
            key=lambda r: (key(r), r.run_id),
            reverse=order.descending,
        )
        page, token = keyset_page(
            matching,
            key,
            lambda r: r.run_id,
            descending=order.descending,
            size=size,
            page_token=page_token,
            tokens=self._tokens,
            binding=binding,
        )
        return RunsPage(page, token, len(matching))
