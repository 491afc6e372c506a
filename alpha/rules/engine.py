"""The rule engine: which rules fire on a candidate event, and the events they make.

Rules are compiled once per detail kind and indexed by it: an event is tried only against the rules
that can match its kind, each as one closure whose cheapest test runs first. The compiled state is
an immutable snapshot held by one reference; `reload()` builds and validates a complete new
snapshot off to the side and then swaps the reference, so an evaluation in flight finishes on the
rules it started with, no event waits for a reload, and a failed reload leaves the old rules in
place and reports why.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpha.rules.compiler import Predicate, compile_tree, prefilter
from alpha.rules.errors import RuleError
from alpha.rules.fields import DETAIL_KINDS, Event
from alpha.rules.loader import Rule, Ruleset, default_rule_files, load_files
from qsc.common.v1 import classification_pb2 as cls

log = logging.getLogger(__name__)

# The category of an event by its detail kind, unless the rule names one.
KIND_CATEGORY: Mapping[str, int] = {
    "process_exec": cls.CATEGORY_PROCESS,
    "process_exit": cls.CATEGORY_PROCESS,
    "ptrace": cls.CATEGORY_PROCESS,
    "memfd_create": cls.CATEGORY_PROCESS,
    "process_memory_write": cls.CATEGORY_PROCESS,
    "namespace_change": cls.CATEGORY_PRIVILEGE,
    "descriptor_redirect": cls.CATEGORY_PROCESS,
    "enforcement": cls.CATEGORY_SYSTEM,
    "privilege_change": cls.CATEGORY_PRIVILEGE,
    "file_access": cls.CATEGORY_FILE,
    "permission_change": cls.CATEGORY_FILE,
    "ownership_change": cls.CATEGORY_FILE,
    "file_delete": cls.CATEGORY_FILE,
    "file_rename": cls.CATEGORY_FILE,
    "file_link": cls.CATEGORY_FILE,
    "file_attribute_change": cls.CATEGORY_FILE,
    "file_timestamp_change": cls.CATEGORY_FILE,
    "network_connection": cls.CATEGORY_NETWORK,
    "socket_create": cls.CATEGORY_NETWORK,
    "port_scan": cls.CATEGORY_NETWORK,
    "transfer_volume": cls.CATEGORY_NETWORK,
    "memory_threat": cls.CATEGORY_MEMORY,
    "module_load": cls.CATEGORY_KERNEL,
    "bpf_program_load": cls.CATEGORY_KERNEL,
    "auth_event": cls.CATEGORY_AUTHENTICATION,
    "file_integrity": cls.CATEGORY_INTEGRITY,
    "backup_integrity": cls.CATEGORY_BACKUP,
    "certificate_status": cls.CATEGORY_CERTIFICATE,
    "heal_action": cls.CATEGORY_HEALING,
    "anomaly_score": cls.CATEGORY_ANOMALY,
    "host_telemetry": cls.CATEGORY_ANOMALY,  # the anomaly score's inputs (alpha.telemetry)
    "gap": cls.CATEGORY_SYSTEM,
    "sensor_health": cls.CATEGORY_SYSTEM,
    "assessment_change": cls.CATEGORY_SYSTEM,  # the Cortex's own; no Alpha rule sees one
}


@dataclass(frozen=True)
class Match:
    """One rule that fired on one event."""

    rule: Rule
    output: str
    category: int
    rule_ref: cls.RuleRef

    @property
    def rule_id(self) -> str:
        return self.rule.id

    @property
    def rule_name(self) -> str:
        return self.rule.name

    @property
    def priority(self) -> str:
        return self.rule.priority

    @property
    def severity(self) -> int:
        return self.rule.severity

    @property
    def techniques(self) -> tuple[str, ...]:
        return tuple(t.id for t in self.rule.techniques)

    def apply(self, candidate: Event) -> Event:
        """A copy of the candidate event as this rule reports it: rule, severity, category and
        the rendered output as its summary."""
        event = Event()
        event.CopyFrom(candidate)
        event.rule.CopyFrom(self.rule_ref)
        event.severity = cls.Severity.ValueType(self.rule.severity)
        event.category = cls.Category.ValueType(self.category)
        event.summary = self.output
        return event


@dataclass(frozen=True)
class _CompiledRule:
    rule: Rule
    predicate: Predicate | None  # None: the kind alone decides, the rule always fires
    ref: cls.RuleRef
    # Cheap reject: `test(values[slot])` must hold for the rule to fire (see compiler.Prefilter).
    slot: int = -1
    test: Callable[[Any], bool] | None = None


@dataclass(frozen=True)
class _KindPlan:
    entries: tuple[_CompiledRule, ...]
    # One extractor per distinct prefilter field of the kind, run once per event.
    extractors: tuple[Callable[[Event], Any], ...]
    # (slot, test, predicate, entry) per rule: plain tuples unpack faster than attribute reads.
    rows: tuple[tuple[int, Callable[[Any], bool] | None, Predicate | None, _CompiledRule], ...]
    # All prefilter values of an event in one call.
    extract_all: Callable[[Event], tuple[Any, ...]]


def _extract_all(exts: Sequence[Callable[[Event], Any]]) -> Callable[[Event], tuple[Any, ...]]:
    # Unrolled for the usual few fields: one frame per event instead of a comprehension's.
    if not exts:
        return lambda ev: ()
    if len(exts) == 1:
        (a,) = exts
        return lambda ev: (a(ev),)
    if len(exts) == 2:
        a, b = exts
        return lambda ev: (a(ev), b(ev))
    if len(exts) == 3:
        a, b, c = exts
        return lambda ev: (a(ev), b(ev), c(ev))
    if len(exts) == 4:
        a, b, c, d = exts
        return lambda ev: (a(ev), b(ev), c(ev), d(ev))
    many = tuple(exts)
    return lambda ev: tuple(f(ev) for f in many)


@dataclass(frozen=True)
class _Snapshot:
    ruleset: Ruleset
    index: Mapping[str, _KindPlan]


def _rule_ref(rule: Rule, version: str) -> cls.RuleRef:
    ref = cls.RuleRef(id=rule.id, name=rule.name, ruleset_version=version)
    for t in rule.techniques:
        ref.techniques.add(id=t.id, name=t.name, tactics=list(t.tactics))
    return ref


def compile_ruleset(ruleset: Ruleset) -> _Snapshot:
    """Index the enabled rules by kind, each compiled for that kind (load order kept)."""
    refs = {r.id: _rule_ref(r, ruleset.version) for r in ruleset.enabled_rules}
    index: dict[str, _KindPlan] = {}
    for kind in DETAIL_KINDS:
        entries: list[_CompiledRule] = []
        slots: dict[tuple[str, int | None], int] = {}
        extractors: list[Callable[[Event], Any]] = []
        for rule in ruleset.enabled_rules:
            if kind not in rule.kinds:
                continue
            pred = compile_tree(rule.tree, kind)
            if pred is False:
                continue
            if pred is True:
                entries.append(_CompiledRule(rule, None, refs[rule.id]))
                continue
            pf = prefilter(rule.tree, kind)
            if pf is None:
                entries.append(_CompiledRule(rule, pred, refs[rule.id]))
                continue
            slot = slots.setdefault(pf.key, len(extractors))
            if slot == len(extractors):
                extractors.append(pf.extractor)
            entries.append(_CompiledRule(rule, pred, refs[rule.id], slot, pf.test))
        if entries:
            rows = tuple((e.slot, e.test, e.predicate, e) for e in entries)
            index[kind] = _KindPlan(
                tuple(entries), tuple(extractors), rows, _extract_all(extractors)
            )
    return _Snapshot(ruleset, index)


@dataclass
class EngineStatus:
    """What `GetStatus` shows about the rules."""

    version: str
    rules: int
    enabled: int
    reloads: int = 0
    last_error: str | None = None
    evaluation_errors: int = 0
    matches: dict[str, int] = field(default_factory=dict)


class RuleEngine:
    """Evaluates candidate events against a ruleset; safe to share between threads."""

    def __init__(self, ruleset: Ruleset, sources: Sequence[str | Path] | None = None) -> None:
        self._snapshot = compile_ruleset(ruleset)
        self._sources = list(sources) if sources is not None else list(ruleset.files)
        self._reload_lock = threading.Lock()
        self._reloads = 0
        self._last_error: str | None = None
        self._eval_errors = 0
        self._matches: dict[str, int] = {}
        self._broken: set[str] = set()

    @classmethod
    def from_files(cls, paths: Sequence[str | Path]) -> RuleEngine:
        return cls(load_files(paths), paths)

    @classmethod
    def default(cls, extra: Sequence[str | Path] = ()) -> RuleEngine:
        """The default ruleset, then `extra` files (site rules and tuning) in order."""
        paths: list[str | Path] = [*default_rule_files(), *extra]
        return cls.from_files(paths)

    @property
    def ruleset(self) -> Ruleset:
        return self._snapshot.ruleset

    def rules_for(self, kind: str) -> tuple[Rule, ...]:
        """The rules tried on events of `kind`, in evaluation order."""
        plan = self._snapshot.index.get(kind)
        return tuple(c.rule for c in plan.entries) if plan is not None else ()

    def evaluate(self, event: Event) -> list[Match]:
        """The rules that fire on `event`, in load order."""
        snap = self._snapshot  # one read: the whole evaluation sees one ruleset
        kind = event.WhichOneof("detail")
        if kind is None:
            return []
        plan = snap.index.get(kind)
        if plan is None:
            return []
        out: list[Match] = []
        try:
            values = plan.extract_all(event)
        except Exception:  # an extractor bug: fall back to the full predicates
            values = ()
        for slot, test, predicate, entry in plan.rows:
            try:
                if test is not None and values and not test(values[slot]):
                    continue
                if predicate is not None and not predicate(event):
                    continue
            except Exception:  # a rule bug must not stop the sensor: skip it, count, log once
                self._rule_failed(entry.rule)
                continue
            out.append(self._match(entry, event, kind))
        return out

    def annotate(self, candidate: Event) -> list[Event]:
        """One event per rule that fires on `candidate`, ready for the outbox."""
        return [m.apply(candidate) for m in self.evaluate(candidate)]

    def _match(self, entry: _CompiledRule, event: Event, kind: str) -> Match:
        rule = entry.rule
        self._matches[rule.id] = self._matches.get(rule.id, 0) + 1
        try:
            output = rule.output.render(event)
        except Exception:
            self._rule_failed(rule)
            output = rule.name
        category = rule.category if rule.category is not None else KIND_CATEGORY.get(kind, 0)
        return Match(rule, output, category, entry.ref)

    def _rule_failed(self, rule: Rule) -> None:
        self._eval_errors += 1
        if rule.id not in self._broken:
            self._broken.add(rule.id)
            log.exception("rule %s (%s) failed on an event; skipping it", rule.id, rule.location)

    def swap(self, ruleset: Ruleset) -> None:
        """Replace the rules with an already loaded ruleset."""
        snapshot = compile_ruleset(ruleset)
        with self._reload_lock:
            self._snapshot = snapshot
            self._reloads += 1
            self._last_error = None
            self._broken = set()

    def reload(self, paths: Sequence[str | Path] | None = None) -> Ruleset:
        """Load the rule files again (SIGHUP) and switch to them.

        The new rules are loaded, validated and compiled completely before the switch; on any
        error the old rules stay in force, the error is kept for `status()` and raised.
        """
        with self._reload_lock:
            sources = list(paths) if paths is not None else self._sources
            try:
                snapshot = compile_ruleset(load_files(sources))
            except RuleError as err:
                self._last_error = str(err)
                log.error("rules reload failed, keeping version %s: %s", self.ruleset.version, err)
                raise
            self._snapshot = snapshot
            self._sources = sources
            self._reloads += 1
            self._last_error = None
            self._broken = set()
            log.info(
                "rules reloaded: version %s, %d rules enabled",
                snapshot.ruleset.version,
                len(snapshot.ruleset.enabled_rules),
            )
            return snapshot.ruleset

    def status(self) -> EngineStatus:
        rs = self._snapshot.ruleset
        return EngineStatus(
            version=rs.version,
            rules=len(rs.rules),
            enabled=len(rs.enabled_rules),
            reloads=self._reloads,
            last_error=self._last_error,
            evaluation_errors=self._eval_errors,
            matches=dict(self._matches),
        )
