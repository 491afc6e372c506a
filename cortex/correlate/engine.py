"""The correlation engine: events in, hits out, state bounded. Pure: no I/O, no clock.

    engine = Correlator(ruleset)
    for hit in engine.observe(event):   # a rule's condition now holds for a key (or holds more)
        ...
    engine.expire(now_ns)               # windows that closed: their hits end ("closed")

Per (rule, key) the engine keeps a state: per step, the recent matching events inside the rule's
window (time, event id, exec id, the distinct value). Windows slide on event time: evidence
older than the newest event minus the timespan is dropped, so a burst that straddles a minute
boundary counts whole. A sequence keeps the stage it reached and restarts when its first step is
older than the maxspan; its `until` filter drops an open sequence of that key.

A rule fires ("opened") when its condition holds for a key, then reports "updated" only when its
evidence changes in kind (a step seen for the first time) or in size (a step's count reaches the
next power of two), so an alert storm is a handful of updates, not one per event. "closed" comes
from `expire` when the key's window has passed with no new evidence.

Bounds: at most `max_keys` states per rule (the least recently active evicted and counted in
`evicted`) and at most `max_evidence` entries per step (older ones forgotten, counts kept).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final, Literal

from cortex.correlate.keys import dispatch_values, event_dispatch, key_values
from cortex.correlate.rules import CorrelationRule, RuleSet, RuleType, Step
from qsc.common.v1 import event_pb2

DEFAULT_MAX_KEYS: Final = 10_000
DEFAULT_MAX_EVIDENCE: Final = 64
MAX_KEY_COMBINATIONS: Final = 16  # keys one event may join (multi-valued fields, ancestry)
_MAX_PLANS: Final = 4096  # (rule id, kind) dispatch plans kept

Change = Literal["opened", "updated", "closed"]
Key = tuple[str, ...]


@dataclass(frozen=True)
class Evidence:
    """One step's evidence in a hit: how many events (and distinct values) in the window, and
    the most recent ones."""

    step: str
    count: int
    distinct: int
    event_ids: tuple[str, ...]
    exec_ids: tuple[str, ...]
    first_ns: int
    last_ns: int


@dataclass(frozen=True)
class Hit:
    rule: CorrelationRule
    key: tuple[tuple[str, str], ...]  # (group key, value), in group_by order
    change: Change
    evidence: tuple[Evidence, ...]  # the steps seen, in rule order
    first_ns: int
    last_ns: int
    revision: int

    @property
    def key_text(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.key)


@dataclass(slots=True)
class _StepState:
    times: deque[tuple[int, str, str, str]] = field(default_factory=deque)  # ns, id, exec, value
    total: int = 0  # events ever matched in this state (kept beyond the evidence cap)

    def prune(self, oldest_ns: int) -> None:
        while self.times and self.times[0][0] < oldest_ns:
            self.times.popleft()

    def count(self) -> int:
        return len(self.times)

    def distinct(self) -> int:
        return len({v for *_, v in self.times if v})


@dataclass(slots=True)
class _State:
    anchor: Key
    first_ns: int
    last_ns: int
    steps: dict[str, _StepState] = field(default_factory=dict)
    stage: int = 0  # sequences: required steps completed, in order
    fired: bool = False
    revision: int = 0
    signature: tuple[tuple[str, int], ...] = ()


class _KeyCache:
    """One event's key values, computed once however many rules group by them."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[str, tuple[str, ...]] = {}

    def get(self, field: str, event: event_pb2.Event) -> tuple[str, ...]:
        found = self._values.get(field)
        if found is None:
            found = self._values[field] = key_values(event, field)
        return found


@dataclass
class RuleStats:
    states: int = 0
    evicted: int = 0  # states dropped for the per-rule cap
    hits: int = 0


class _RuleRunner:
    def __init__(self, rule: CorrelationRule, max_keys: int, max_evidence: int) -> None:
        self.rule = rule
        self.max_keys = max_keys
        self.max_evidence = max_evidence
        self.states: OrderedDict[Key, _State] = OrderedDict()
        self.stats = RuleStats()
        self.watermark = 0
        self.required = rule.required

    # -- keys -

    def _candidates(self, event: event_pb2.Event, step: Step, cache: _KeyCache) -> list[Key]:
        """The keys `event` may belong to for `step` (several for multi-valued keys)."""
        per_key = []
        for group_key in self.rule.group_by:
            values = cache.get(step.key_field(group_key), event)
            if not values:
                return []
            per_key.append(values)
        if len(per_key) == 1 and len(per_key[0]) == 1:
            return [per_key[0]]
        return list(itertools.islice(itertools.product(*per_key), MAX_KEY_COMBINATIONS))

    def _anchor(self, candidates: list[Key]) -> Key:
        # A new state is anchored at the event's own values: the first candidate (own exec id
        # first for process_tree; see keys.lineage).
        return candidates[0]

    # -- observing -

    def observe(
        self,
        event: event_pb2.Event,
        steps: Iterable[Step],
        now: int | None,
        until: bool,
        cache: _KeyCache,
    ) -> list[Hit]:
        if now is None:
            now = self.watermark
        self.watermark = max(self.watermark, now)
        hits: list[Hit] = []
        if until and self.rule.until is not None and self.rule.until.matches(event):
            self._until(event, cache)
        touched: dict[Key, _State] = {}
        for step in steps:
            if not step.filter.matches(event):
                continue
            candidates = self._candidates(event, step, cache)
            if not candidates:
                continue
            states = [self.states[k] for k in candidates if k in self.states]
            if not states:
                if not self._may_start(step):
                    continue
                state = self._new_state(self._anchor(candidates), now)
                states = [state]
            for state in states:
                self._add(state, step, event, now, cache)
                touched[state.anchor] = state
        for state in touched.values():
            hit = self._evaluate(state)
            if hit is not None:
                hits.append(hit)
        return hits

    def _may_start(self, step: Step) -> bool:
        # A sequence starts only at its first required step (optional steps ride along).
        if self.rule.type is not RuleType.SEQUENCE:
            return True
        return step is self.required[0]

    def _new_state(self, anchor: Key, now: int) -> _State:
        state = _State(anchor=anchor, first_ns=now, last_ns=now)
        self.states[anchor] = state
        while len(self.states) > self.max_keys:
            self.states.popitem(last=False)
            self.stats.evicted += 1
        self.stats.states = len(self.states)
        return state

    def _add(
        self, state: _State, step: Step, event: event_pb2.Event, now: int, cache: _KeyCache
    ) -> None:
        rule = self.rule
        if rule.type is RuleType.SEQUENCE:
            if now - state.first_ns > rule.timespan_ns and not state.fired:
                # The maxspan passed: this sequence is over; a first step starts a fresh one.
                state.steps.clear()
                state.stage, state.first_ns = 0, now
                if step is not self.required[0]:
                    return
            required = self.required
            if not step.optional:
                index = required.index(step)
                if index > state.stage:
                    return  # out of order: a later step before an earlier one counts nothing
        step_state = state.steps.setdefault(step.name, _StepState())
        value = ""
        if step.distinct_field:
            found = cache.get(step.distinct_field, event)
            value = found[0] if found else ""
        step_state.times.append((now, event.id, event.process.exec_id, value))
        step_state.total += 1
        while len(step_state.times) > max(self.max_evidence, step.count, step.distinct):
            step_state.times.popleft()
        state.last_ns = max(state.last_ns, now)
        self.states.move_to_end(state.anchor)
        if rule.type is RuleType.SEQUENCE and not step.optional:
            index = self.required.index(step)
            if index == state.stage and self._holds(step, step_state):
                state.stage += 1

    def _holds(self, step: Step, s: _StepState) -> bool:
        return s.count() >= step.count and (not step.distinct or s.distinct() >= step.distinct)

    def _evaluate(self, state: _State) -> Hit | None:
        rule = self.rule
        if rule.type is not RuleType.SEQUENCE:
            oldest = self.watermark - rule.timespan_ns
            for s in state.steps.values():
                s.prune(oldest)
            ok = all(
                step.name in state.steps and self._holds(step, state.steps[step.name])
                for step in self.required
            )
        else:
            ok = state.stage >= len(self.required)
        if not ok:
            return None
        signature = tuple(
            (name, s.count().bit_length()) for name, s in state.steps.items() if s.count()
        )
        if state.fired and signature == state.signature:
            return None  # nothing new in kind or size: no update
        change: Change = "updated" if state.fired else "opened"
        state.fired, state.signature = True, signature
        state.revision += 1
        self.stats.hits += 1
        return self._hit(state, change)

    def _hit(self, state: _State, change: Change) -> Hit:
        evidence = []
        for step in self.rule.steps:
            s = state.steps.get(step.name)
            if s is None or not s.times:
                continue
            evidence.append(
                Evidence(
                    step=step.name,
                    count=s.count(),
                    distinct=s.distinct(),
                    event_ids=tuple(t[1] for t in s.times)[-16:],
                    exec_ids=tuple(dict.fromkeys(t[2] for t in s.times if t[2]))[:16],
                    first_ns=s.times[0][0],
                    last_ns=s.times[-1][0],
                )
            )
        return Hit(
            rule=self.rule,
            key=tuple(zip(self.rule.group_by, state.anchor, strict=True)),
            change=change,
            evidence=tuple(evidence),
            first_ns=state.first_ns,
            last_ns=state.last_ns,
            revision=state.revision,
        )

    def _until(self, event: event_pb2.Event, cache: _KeyCache) -> None:
        # Only the state anchored at the event's own values ends: a child's exit does not end
        # its parent's sequence.
        for step in self.rule.steps:
            candidates = self._candidates(event, step, cache)
            state = self.states.get(candidates[0]) if candidates else None
            if state is not None and not state.fired:
                del self.states[state.anchor]
        self.stats.states = len(self.states)

    # -- expiry -

    def expire(self, now_ns: int) -> Iterator[Hit]:
        cut = max(now_ns, self.watermark) - self.rule.timespan_ns
        for key in [k for k, s in self.states.items() if s.last_ns < cut]:
            state = self.states.pop(key)
            if state.fired:
                state.revision += 1
                yield self._hit(state, "closed")
        self.stats.states = len(self.states)


class Correlator:
    """Every enabled rule of a rule set over one stream of events (see the module docstring)."""

    def __init__(
        self,
        ruleset: RuleSet,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        max_evidence: int = DEFAULT_MAX_EVIDENCE,
    ) -> None:
        self.ruleset = ruleset
        self._runners = {r.id: _RuleRunner(r, max_keys, max_evidence) for r in ruleset.enabled}
        # (field, value) -> [(runner, step)]: the steps an event with that rule id or kind can
        # match; prefixes (`alpha.*`) are looked up by trying each; `_anywhere` is every event.
        self._by_value: dict[tuple[str, str], list[tuple[_RuleRunner, Step]]] = {}
        self._by_prefix: dict[tuple[str, str], list[tuple[_RuleRunner, Step]]] = {}
        self._anywhere: list[tuple[_RuleRunner, Step]] = []
        self._until_by_value: dict[tuple[str, str], list[_RuleRunner]] = {}
        self._until_anywhere: list[_RuleRunner] = []
        for runner in self._runners.values():
            for step in runner.rule.steps:
                found = dispatch_values(step.filter)
                if found is None:
                    self._anywhere.append((runner, step))
                    continue
                name, values = found
                for value in values:
                    table = self._by_prefix if value.endswith("*") else self._by_value
                    table.setdefault((name, value.rstrip("*")), []).append((runner, step))
            if runner.rule.until is not None:
                found = dispatch_values(runner.rule.until)
                if found is None or any(v.endswith("*") for v in found[1]):
                    self._until_anywhere.append(runner)
                else:
                    for value in found[1]:
                        self._until_by_value.setdefault((found[0], value), []).append(runner)
        self._prefixes = tuple(self._by_prefix.items())
        # (rule id, kind) -> the runners to call, their steps in rule order, whether `until`
        # is to be checked: rule ids and kinds are few, so this is nearly always a hit.
        self._plans: dict[tuple[str, str], list[tuple[_RuleRunner, list[Step], bool]]] = {}

    def observe(self, event: event_pb2.Event) -> list[Hit]:
        dispatch = event_dispatch(event)
        plan = self._plans.get(dispatch)
        if plan is None:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            plan = self._plans[dispatch] = self._plan(*dispatch)
        now = event.time.ToNanoseconds() if event.HasField("time") else None
        cache = _KeyCache()
        hits: list[Hit] = []
        for runner, steps, until in plan:
            hits.extend(runner.observe(event, steps, now, until, cache))
        return hits

    def _plan(self, rule_id: str, kind: str) -> list[tuple[_RuleRunner, list[Step], bool]]:
        wanted: dict[str, tuple[_RuleRunner, set[int]]] = {}
        for pairs in (
            self._by_value.get(("rule.id", rule_id), ()),
            self._by_value.get(("kind", kind), ()),
            self._anywhere,
            *(
                pairs
                for (name, prefix), pairs in self._prefixes
                if (rule_id if name == "rule.id" else kind).startswith(prefix)
            ),
        ):
            for runner, step in pairs:
                wanted.setdefault(runner.rule.id, (runner, set()))[1].add(id(step))
        until: set[str] = set()
        for runners in (
            self._until_by_value.get(("rule.id", rule_id), ()),
            self._until_by_value.get(("kind", kind), ()),
            self._until_anywhere,
        ):
            for runner in runners:
                until.add(runner.rule.id)
                wanted.setdefault(runner.rule.id, (runner, set()))
        return [
            (runner, [s for s in runner.rule.steps if id(s) in step_ids], rid in until)
            for rid, (runner, step_ids) in wanted.items()
        ]

    def expire(self, now_ns: int) -> list[Hit]:
        return [hit for runner in self._runners.values() for hit in runner.expire(now_ns)]

    def stats(self) -> dict[str, RuleStats]:
        return {rule_id: runner.stats for rule_id, runner in self._runners.items()}
