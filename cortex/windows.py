"""Stored host telemetry windows as the ML service's training and feedback rows.

Alpha emits one `host_telemetry` event per host and window; the Cortex stores every one. This
module maps them, and the analysts' verdicts on assessments, to the rows `qsc-ml train` and
`qsc-ml tune` read (`ml.data`): CSV with a header (or JSON lines, one object per row), columns

    time, host, <the 12 features of schema version 1, in `qsc.ml.v1.HostFeature` order>
    [, label, kind]                                       (labelled rows, for `qsc-ml tune`)

`time` is the window's start (RFC 3339, UTC), `host` the guardian's host (the certified one
the assessments' keys name), each feature its measured value; `label` is 1 for a window of a
true positive, 0 for one of a false positive or a benign verdict, and `kind` names the
correlation rule(s) whose verdicts gave the label. Nothing else: `ml.data` refuses an unknown
column, so a misspelt feature cannot slip through.

What a window must be to become a row (else it is counted as skipped, by reason):

- schema version 1 (`feature_schema_version`): another version's features mean other things;
- every feature of the schema present once (features Alpha does not know are left out);
- every value inside its feature's domain (`ml.schema.DOMAINS`: percentages in [0, 100],
  counts and rates finite, non-negative, at most the largest float32), as `qsc-ml train`
  refuses anything else;
- no feature listed `unmeasured`, unless asked (`include_unmeasured`): an unmeasured feature
  reads 0, and a model trained on those zeros learns that "nothing counted" is normal.

Labels: a resolved assessment with a verdict labels every window on its hosts that overlaps its
events' time span (a window [start, end) overlaps [first, last] when start <= last and
end > first). A window overlapped by several judged assessments is one row: malicious when any
of them is a true positive (a confirmed attack is not undone by a false alarm in the same
minute), benign otherwise.

The Cortex does not import the ML service (it may run without numpy and scikit-learn): the
feature names and domains are read from the same proto enum, the same way, and tests keep them
equal to `ml.schema`'s.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from cortex.assessments import Assessment
from cortex.filter.literals import format_time
from mesh.host_features import FEATURES, SCHEMA_VERSION, in_domain
from qsc.common.v1 import event_pb2

__all__ = [
    "BENIGN_VERDICTS",
    "FEATURES",
    "JSONL_SUFFIXES",
    "KIND",
    "MALICIOUS_VERDICTS",
    "SCHEMA_VERSION",
    "LabelSpan",
    "LabelledWindows",
    "RowFormat",
    "Tally",
    "Window",
    "label_span",
    "window_of",
]

KIND: Final = "host_telemetry"
TIME_COLUMN: Final = "time"
HOST_COLUMN: Final = "host"
LABEL_COLUMN: Final = "label"
KIND_COLUMN: Final = "kind"
JSONL_SUFFIXES: Final = (".jsonl", ".ndjson", ".json")  # ml.data's; anything else is CSV
MALICIOUS_VERDICTS: Final = frozenset({"true_positive"})
BENIGN_VERDICTS: Final = frozenset({"false_positive", "benign"})

# Why a stored window is not a row (Tally.skipped keys).
SKIP_SCHEMA: Final = "other_schema_version"
SKIP_INCOMPLETE: Final = "incomplete"
SKIP_DOMAIN: Final = "out_of_domain"
SKIP_UNMEASURED: Final = "unmeasured"


@dataclass(frozen=True)
class Window:
    """One stored host telemetry window, its features in `FEATURES` order."""

    host: str
    start_ns: int
    end_ns: int
    values: tuple[float, ...]
    unmeasured: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.host, self.start_ns, self.end_ns)

    def overlaps(self, first_ns: int, last_ns: int) -> bool:
        """Whether [start, end) meets the closed span [first_ns, last_ns]."""
        return self.start_ns <= last_ns and self.end_ns > first_ns


def window_of(event: event_pb2.Event) -> Window | str:
    """The window a `host_telemetry` event holds, or why it cannot be a row (a SKIP_ reason;
    unmeasured features are the caller's choice, see `Tally.admit`)."""
    if event.WhichOneof("detail") != KIND:
        raise ValueError(f"not a {KIND} event")
    t = event.host_telemetry
    if t.feature_schema_version != SCHEMA_VERSION:
        return SKIP_SCHEMA
    given: dict[str, float] = {}
    for f in t.features:
        if f.name in given:
            return SKIP_INCOMPLETE  # named twice: which one was meant?
        given[f.name] = f.value
    if any(name not in given for name in FEATURES):
        return SKIP_INCOMPLETE
    values = tuple(given[name] for name in FEATURES)
    if not all(in_domain(n, v) for n, v in zip(FEATURES, values, strict=True)):
        return SKIP_DOMAIN
    start = t.window_start.ToNanoseconds()
    end = t.window_end.ToNanoseconds() if t.HasField("window_end") else event.time.ToNanoseconds()
    if not t.HasField("window_start") or end <= start:
        return SKIP_INCOMPLETE
    return Window(
        host=event.guardian.host or t.host,
        start_ns=start,
        end_ns=end,
        values=values,
        unmeasured=tuple(sorted(set(t.unmeasured) & set(FEATURES))),
    )


@dataclass
class Tally:
    """What an export read, kept and skipped (and why)."""

    include_unmeasured: bool = False
    read: int = 0
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    unmeasured: Counter[str] = field(default_factory=Counter)  # feature -> windows without it
    hosts: set[str] = field(default_factory=set)
    first_ns: int | None = None
    last_ns: int | None = None

    def admit(self, event: event_pb2.Event) -> Window | None:
        """The event's window when it becomes a row, counted either way."""
        self.read += 1
        window = window_of(event)
        if isinstance(window, str):
            self.skipped[window] += 1
            return None
        if window.unmeasured:
            self.unmeasured.update(window.unmeasured)
            if not self.include_unmeasured:
                self.skipped[SKIP_UNMEASURED] += 1
                return None
        return window

    def kept_row(self, window: Window) -> None:
        self.kept += 1
        self.hosts.add(window.host)
        self.first_ns = min(window.start_ns, self.first_ns or window.start_ns)
        self.last_ns = max(window.end_ns, self.last_ns or window.end_ns)

    def skipped_text(self) -> str:
        """`skipped 3 window(s): 2 unmeasured (exec_rate 2, ...), 1 out_of_domain`, or ''."""
        total = sum(self.skipped.values())
        if not total:
            return ""
        parts = []
        for reason, n in sorted(self.skipped.items()):
            text = f"{n} {reason.replace('_', ' ')}"
            if reason == SKIP_UNMEASURED:
                names = ", ".join(f"{f} {c}" for f, c in sorted(self.unmeasured.items()))
                text += f" ({names})"
            parts.append(text)
        return f"skipped {total} window(s): " + "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "windows_read": self.read,
            "rows": self.kept,
            "hosts": sorted(self.hosts),
            "time_start": None if self.first_ns is None else format_time(self.first_ns),
            "time_end": None if self.last_ns is None else format_time(self.last_ns),
            "skipped": dict(sorted(self.skipped.items())),
            "unmeasured_features": dict(sorted(self.unmeasured.items())),
            "unmeasured_included": self.include_unmeasured,
        }


class RowFormat:
    """Rows as `ml.data` reads them: CSV with its header line, or JSON lines."""

    def __init__(self, *, jsonl: bool, labelled: bool) -> None:
        self.jsonl = jsonl
        self.labelled = labelled
        self.columns: tuple[str, ...] = (TIME_COLUMN, HOST_COLUMN, *FEATURES) + (
            (LABEL_COLUMN, KIND_COLUMN) if labelled else ()
        )

    @classmethod
    def for_name(cls, name: str, *, labelled: bool) -> RowFormat:
        return cls(jsonl=name.lower().endswith(JSONL_SUFFIXES), labelled=labelled)

    def header(self) -> str:
        return "" if self.jsonl else self._csv(self.columns)

    def row(self, window: Window, label: bool | None = None, kind: str = "") -> str:
        if self.labelled != (label is not None):
            raise ValueError("a labelled format takes a label per row, an unlabelled one none")
        values: list[Any] = [format_time(window.start_ns), window.host]
        values += [_number(v) for v in window.values]
        if label is not None:
            values += [int(label), kind]
        if self.jsonl:
            record = dict(zip(self.columns, values, strict=True))
            return json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"
        return self._csv(str(v) for v in values)

    @staticmethod
    def _csv(cells: Iterable[str]) -> str:
        out = io.StringIO(newline="")
        csv.writer(out, lineterminator="\n").writerow(cells)
        return out.getvalue()


def _number(value: float) -> int | float:
    # Counts as integers (ml.data writes them so too); repr keeps any other float exact.
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


@dataclass(frozen=True)
class LabelSpan:
    """What one judged assessment says about the windows of its hosts over its events."""

    assessment_id: str
    rule_id: str
    hosts: tuple[str, ...]
    first_ns: int
    last_ns: int
    malicious: bool


def label_span(a: Assessment, event_hosts: Iterable[str] = ()) -> LabelSpan | None:
    """The label a resolved assessment's verdict gives, or None (no verdict, not resolved).
    Its hosts are those of its key; for a key without one (a user, an address), the hosts of
    its contributing events (`event_hosts`)."""
    if a.state != "resolved" or a.verdict is None:
        return None
    verdict = a.verdict.verdict
    if verdict not in MALICIOUS_VERDICTS | BENIGN_VERDICTS:
        return None
    hosts = a.hosts or tuple(sorted({h for h in event_hosts if h}))
    if not hosts or a.first_event_ns <= 0:
        return None
    return LabelSpan(
        assessment_id=a.id,
        rule_id=a.rule_id,
        hosts=tuple(dict.fromkeys(hosts)),
        first_ns=a.first_event_ns,
        last_ns=max(a.last_event_ns, a.first_event_ns),
        malicious=verdict in MALICIOUS_VERDICTS,
    )


@dataclass
class _Labelled:
    window: Window
    malicious: bool
    rules: set[str]


class LabelledWindows:
    """Windows and the label the judged assessments overlapping them give (one row each)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, int, int], _Labelled] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, window: Window, span: LabelSpan) -> bool:
        """Label `window` with `span` if they overlap; malicious wins over benign."""
        if window.host not in span.hosts or not window.overlaps(span.first_ns, span.last_ns):
            return False
        row = self._rows.get(window.key)
        if row is None:
            self._rows[window.key] = _Labelled(window, span.malicious, {span.rule_id})
        elif span.malicious and not row.malicious:
            row.malicious, row.rules = True, {span.rule_id}
        elif span.malicious == row.malicious:
            row.rules.add(span.rule_id)
        return True

    def rows(self) -> Iterator[tuple[Window, bool, str]]:
        """(window, malicious, rule ids) by window start, then host."""
        for key in sorted(self._rows, key=lambda k: (k[1], k[0], k[2])):
            row = self._rows[key]
            yield row.window, row.malicious, ",".join(sorted(row.rules))

    def counts(self) -> tuple[int, int]:
        """(malicious rows, benign rows)."""
        malicious = sum(1 for r in self._rows.values() if r.malicious)
        return malicious, len(self._rows) - malicious
