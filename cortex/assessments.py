"""Assessments: what the correlation engine's hits become, and what analysts judge. Pure core.

    book = AssessmentBook(model)
    change = book.apply(hit)                   # an assessment raised, updated or expired (or None)
    book.verdict(name, "false_positive", comment, actor)   # RESOLVED; the model learns

One assessment per correlation key per window. A hit whose confidence is under its rule's
threshold is held back (kept, not shown); the first hit at or above it raises the assessment
(OPEN, revision 1), later hits of that window update it (revision + 1, confidence recomputed
with the current model), the window's end makes it EXPIRED, a verdict makes it RESOLVED.
Held-back hits never reach the API, so an alert storm under the threshold is no assessment at
all, and over it one assessment with a rising count (the engine already reports a storm as a
handful of updates).

Bounded: at most `max_assessments` kept (the oldest closed ones dropped first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Final, Literal, cast

from cortex.correlate import Factor, Hit, VerdictModel, score
from cortex.errors import AssessmentNotFoundError, AssessmentResolvedError, VerdictArgumentError
from mesh.ids import uuid7

State = Literal["open", "resolved", "expired"]
Verdict = Literal["true_positive", "false_positive", "benign"]
VERDICTS: Final = ("true_positive", "false_positive", "benign")
DEFAULT_MAX_ASSESSMENTS: Final = 100_000
MAX_EVENT_IDS: Final = 64
MAX_COMMENT_CHARS: Final = 2000


@dataclass(frozen=True)
class VerdictRecord:
    verdict: Verdict
    comment: str
    actor: str  # the caller's SPIFFE ID
    time_ns: int


@dataclass(frozen=True)
class Assessment:
    id: str
    rule_id: str
    title: str
    description: str
    severity: str
    mitre: tuple[str, ...]
    correlation_key: str
    key: tuple[tuple[str, str], ...]
    state: State
    revision: int
    confidence: float
    prior: float
    confidence_id: int
    factors: tuple[Factor, ...]
    steps_present: frozenset[str]
    event_ids: tuple[str, ...]
    event_count: int
    first_event_ns: int
    last_event_ns: int
    create_ns: int
    update_ns: int
    close_ns: int = 0
    verdict: VerdictRecord | None = None

    @property
    def name(self) -> str:
        return f"assessments/{self.id}"

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(v for k, v in self.key if k in ("host", "subject.host"))


@dataclass
class _Window:
    hit: Hit | None  # None: restored from the store, no window rebuilt for it yet
    assessment: Assessment | None = None  # None while under the threshold


@dataclass
class AssessmentBook:
    model: VerdictModel = field(default_factory=VerdictModel)
    clock: Callable[[], int] = time.time_ns
    max_assessments: int = DEFAULT_MAX_ASSESSMENTS

    def __post_init__(self) -> None:
        self._windows: dict[tuple[str, str], _Window] = {}  # (rule id, key) of open windows
        self._by_id: OrderedDict[str, Assessment] = OrderedDict()
        self.held_back = 0  # hits under their threshold (never shown)
        self.judged: list[Assessment] = []  # verdicts given, for the owner to store
        self._forgotten: set[str] = set()  # ids judged before the latest model reset
        self.model_reset_ns = 0  # time of the latest model reset read back (0: none)

    def apply(self, hit: Hit, *, replay: bool = False) -> Assessment | None:
        """The assessment `hit` raises or changes, or None (held back, or nothing to show).
        With `replay` (rebuilding the engine's windows from stored events after a restart), a
        window whose assessment was restored only takes the hit back, with no new revision."""
        window_key = (hit.rule.id, hit.key_text)
        window = self._windows.get(window_key)
        if replay and hit.change != "closed" and window is not None and window.assessment:
            window.hit = hit
            return None
        if hit.change == "closed":
            self._windows.pop(window_key, None)
            if window is None or window.assessment is None:
                return None
            current = self._by_id.get(window.assessment.id)
            if current is None or current.state != "open":
                return None
            return self._put(
                replace(
                    current,
                    state="expired",
                    close_ns=self.clock(),
                    update_ns=self.clock(),
                    revision=current.revision + 1,
                )
            )
        if window is None:
            window = self._windows[window_key] = _Window(hit)
        window.hit = hit
        s = score(hit, self.model)
        now = self.clock()
        existing = None if window.assessment is None else self._by_id.get(window.assessment.id)
        if existing is None:
            if not s.raised:
                self.held_back += 1
                return None
            assessment = self._new(hit, now)
        elif existing.state != "open":
            return None  # resolved by a verdict: the window's later evidence does not reopen it
        else:
            assessment = replace(existing, revision=existing.revision + 1, update_ns=now)
        event_ids = tuple(i for e in hit.evidence for i in e.event_ids)[-MAX_EVENT_IDS:]
        assessment = replace(
            assessment,
            confidence=s.posterior,
            prior=s.prior,
            confidence_id=s.confidence_id,
            factors=s.factors,
            steps_present=frozenset(e.step for e in hit.evidence),
            event_ids=event_ids,
            event_count=sum(e.count for e in hit.evidence),
            first_event_ns=hit.first_ns,
            last_event_ns=hit.last_ns,
        )
        window.assessment = assessment
        return self._put(assessment)

    def load(self, assessment: Assessment) -> None:
        """Take back a stored revision (the latest of each id wins); an open or resolved one
        gets its window back (so the replay of its events adds to it, or for a resolved one is
        kept from raising it again), a resolved one teaches the model its verdict again."""
        current = self._by_id.get(assessment.id)
        if current is not None and current.revision >= assessment.revision:
            return
        self._put(assessment)
        key = (assessment.rule_id, ",".join(f"{k}={v}" for k, v in assessment.key))
        if assessment.state in ("open", "resolved"):
            window = self._windows.get(key)
            if window is None:
                self._windows[key] = _Window(hit=None, assessment=assessment)
            else:
                window.assessment = assessment
        elif self._windows.get(key) is not None and self._windows[key].assessment is not None:
            held = self._windows[key].assessment
            if held is not None and held.id == assessment.id:
                del self._windows[key]

    def learn_from_verdicts(self) -> int:
        """Teach the (fresh) model every verdict held since the latest reset: after loading all
        stored revisions."""
        taught = 0
        for a in self.teaching():
            assert a.verdict is not None
            self.model.record(a.rule_id, a.steps_present, a.verdict.verdict)
            taught += 1
        return taught

    def teaching(self) -> Iterator[Assessment]:
        """The assessments whose verdicts teach the model: judged, and not before a reset."""
        return (
            a
            for a in tuple(self._by_id.values())
            if a.verdict is not None and a.id not in self._forgotten
        )

    def forget_verdicts(self, at_ns: int) -> None:
        """A verdict model reset (`qsc-cortex model reset`, read back in store order): the
        verdicts held so far teach the model nothing any more, later ones do."""
        self.model.reset()
        self._forgotten = {a.id for a in self._by_id.values() if a.verdict is not None}
        self.model_reset_ns = at_ns

    def expire_orphans(self, now_ns: int, timespans: dict[str, int]) -> list[Assessment]:
        """Open assessments no live window backs any more (restored, and their window was not
        rebuilt), past their rule's timespan: EXPIRED. A resolved one's restored window is
        just dropped then."""
        out = []
        for key, window in list(self._windows.items()):
            a = window.assessment
            if window.hit is not None or a is None or a.state == "expired":
                continue
            span = timespans.get(a.rule_id, 0)
            if a.last_event_ns + span >= now_ns:
                continue
            del self._windows[key]
            if a.state == "open":
                out.append(
                    self._put(
                        replace(
                            a,
                            state="expired",
                            close_ns=now_ns,
                            update_ns=now_ns,
                            revision=a.revision + 1,
                        )
                    )
                )
        return out

    def _new(self, hit: Hit, now: int) -> Assessment:
        rule = hit.rule
        return Assessment(
            id=uuid7(now / 1e9),
            rule_id=rule.id,
            title=rule.title,
            description=rule.description,
            severity=rule.severity,
            mitre=rule.mitre,
            correlation_key=f"{rule.id}/{hit.key_text}",
            key=hit.key,
            state="open",
            revision=1,
            confidence=0.0,
            prior=rule.prior,
            confidence_id=0,
            factors=(),
            steps_present=frozenset(),
            event_ids=(),
            event_count=0,
            first_event_ns=hit.first_ns,
            last_event_ns=hit.last_ns,
            create_ns=now,
            update_ns=now,
        )

    def _put(self, assessment: Assessment) -> Assessment:
        self._by_id[assessment.id] = assessment
        self._by_id.move_to_end(assessment.id)
        while len(self._by_id) > self.max_assessments:
            oldest = next(
                (k for k, a in self._by_id.items() if a.state != "open"), next(iter(self._by_id))
            )
            del self._by_id[oldest]
        return assessment

    def get(self, assessment_id: str) -> Assessment:
        found = self._by_id.get(assessment_id)
        if found is None:
            raise AssessmentNotFoundError(f"assessments/{assessment_id} not found")
        return found

    def all(self) -> Iterator[Assessment]:
        return iter(tuple(self._by_id.values()))

    def verdict(self, assessment_id: str, verdict: str, comment: str, actor: str) -> Assessment:
        """Resolve the assessment with `verdict`; the model learns from it (once)."""
        if verdict not in VERDICTS:
            raise VerdictArgumentError(f"verdict must be one of {', '.join(VERDICTS)}")
        chosen = cast(Verdict, verdict)
        if len(comment) > MAX_COMMENT_CHARS:
            raise VerdictArgumentError(f"comment is at most {MAX_COMMENT_CHARS} characters")
        current = self.get(assessment_id)
        if current.state == "resolved":
            raise AssessmentResolvedError(f"{current.name} already has a verdict")
        now = self.clock()
        self.model.record(current.rule_id, current.steps_present, chosen)
        judged = self._put(
            replace(
                current,
                state="resolved",
                verdict=VerdictRecord(chosen, comment, actor, now),
                revision=current.revision + 1,
                update_ns=now,
                close_ns=current.close_ns or now,
            )
        )
        self.judged.append(judged)
        return judged
