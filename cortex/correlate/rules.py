"""Correlation rules, loaded (`cortex.correlate.loader`): what each one selects, joins and scores.

A rule names **steps** (its signals: each a filter in the Cortex's one filter language over
events, `cortex.filter`), how they combine (`RuleType`), the **group-by** keys that must agree
across the events it joins, and a **timespan**: the sliding window in which they must occur (the
`maxspan` of a sequence). Each step carries a likelihood ratio: P(the step's evidence | malicious)
over P(it | benign), which `cortex.correlate.score` turns into an explainable confidence.

Types (after Sigma correlation rules v2 and Elastic EQL sequences):

* ``event_count``: one step, at least `count` matching events per key within the timespan.
* ``value_count``: one step, at least `distinct` different values of a field per key.
* ``temporal``: every required step at least once per key within the timespan, in any order.
* ``sequence`` (``temporal_ordered``): the required steps in their order within the timespan from
  the first; `until` drops an open sequence of a key (EQL's `until`, e.g. on process exit).

A step may be `optional` (it adds evidence but does not gate), need `count` events or `distinct`
values itself, and take a key from another field (`by`, Sigma's aliases: the user of an auth
event and the owner of a process are both `user`). Steps of one `family` are the same evidence
seen twice (one memfd exec seen by the syscall sensor and by the memory scanner): the strongest
counts fully, the others less (`cortex.correlate.score`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Final

from cortex.filter import Filter

# Keys a rule may group and join by. The catalogue's fields (cortex.fields) plus the process
# lineage: `exec_id` (one execution) and `process_tree` (an execution and its descendants), and
# `subject.host`: the host an event is about (the guardian's host, or for the Cortex's own
# guardian events the host of the guardian they report on).
KEY_FIELDS: Final = (
    "host",
    "guardian",
    "user",
    "source_address",
    "destination_address",
    "file.path",
    "process.exe",
    "exec_id",
    "process_tree",
    "subject.host",
)
SEVERITIES: Final = ("info", "low", "medium", "high", "critical")
# Where a step's evidence comes from (each step says; the default rules span many).
SOURCES: Final = (
    "alpha.process",  # process, file and kernel syscalls (eBPF)
    "alpha.memory",
    "alpha.network",
    "alpha.auth",
    "beta.integrity",
    "beta.backups",
    "beta.certificates",
    "beta.healing",
    "ml.anomaly",
    "cortex.guardians",  # the Cortex's own: lost, gap, degraded
)


class RuleType(StrEnum):
    EVENT_COUNT = "event_count"
    VALUE_COUNT = "value_count"
    TEMPORAL = "temporal"
    SEQUENCE = "sequence"


@dataclass(frozen=True)
class Step:
    """One signal of a rule."""

    name: str
    source: str  # one of SOURCES
    filter: Filter
    lr: float  # likelihood ratio of this step's evidence (> 0; above 1 points to malicious)
    optional: bool = False
    count: int = 1  # events needed for the step to hold
    distinct: int = 0  # with `distinct_field`: different values needed
    distinct_field: str = ""
    by: tuple[tuple[str, str], ...] = ()  # (group key, the event field that gives it here)
    family: str = ""
    line: int = 0

    def key_field(self, key: str) -> str:
        for group_key, event_field in self.by:
            if group_key == key:
                return event_field
        return key


@dataclass(frozen=True)
class CorrelationRule:
    id: str
    title: str
    description: str
    type: RuleType
    steps: tuple[Step, ...]
    group_by: tuple[str, ...]
    timespan: timedelta
    severity: str
    mitre: tuple[str, ...]
    prior: float  # P(malicious) before any evidence, for this pattern
    threshold: float  # raise an assessment at or above this posterior
    until: Filter | None = None
    enabled: bool = True
    file: str = ""
    line: int = 0

    @property
    def sources(self) -> frozenset[str]:
        return frozenset(s.source for s in self.steps)

    @property
    def timespan_ns(self) -> int:
        return int(self.timespan.total_seconds() * 1e9)

    @property
    def required(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if not s.optional)


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[CorrelationRule, ...]
    files: tuple[str, ...]
    version: str  # a digest of the files' bytes, to say which set produced an assessment

    @property
    def enabled(self) -> tuple[CorrelationRule, ...]:
        return tuple(r for r in self.rules if r.enabled)

    def get(self, rule_id: str) -> CorrelationRule | None:
        return next((r for r in self.rules if r.id == rule_id), None)
