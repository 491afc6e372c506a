"""Loading YAML correlation files into a validated `RuleSet`.

A file is a YAML list of correlations:

    - correlation: Credential stuffing, then a login from a new address, then exfiltration
      id: cortex.credential_stuffing_exfiltration
      description: ...
      type: sequence                  # event_count | value_count | temporal | sequence
      group_by: [host]                # keys that must agree (rules.KEY_FIELDS)
      timespan: 30m                   # the sliding window (a sequence's maxspan)
      severity: high                  # info | low | medium | high | critical
      mitre: [T1110.004, T1078, T1048]
      prior: 0.02                     # P(malicious) before evidence
      threshold: 0.7                  # raise an assessment at or above this confidence
      until: 'kind = "process_exit"'  # sequences: drop the open sequence of a key
      enabled: true
      steps:
        - step: failed_burst
          source: alpha.auth          # rules.SOURCES
          filter: 'rule.id = "alpha.credential_stuffing"'
          lr: 6                       # likelihood ratio, > 0
          count: 1                    # events needed (default 1)
          distinct: {field: user, count: 3}   # optional: different values needed
          by: {user: user}            # optional: which event field gives a group key here
          family: auth_failures       # optional: same evidence seen by several sensors
          optional: false

Files load in order; a later file may switch a rule off with `- correlation: ID` and
`enabled: false` alone, or replace it whole by giving its id again with `replace: true`.
Everything wrong is a `CorrelationRuleError` naming FILE:LINE and the reason: YAML syntax,
unknown or missing keys, bad types, filter syntax (with the position inside the filter), unknown
key fields, steps a type does not allow, duplicate ids, MITRE ids that are not ids.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import yaml

from cortex.correlate.rules import (
    KEY_FIELDS,
    SEVERITIES,
    SOURCES,
    CorrelationRule,
    RuleSet,
    RuleType,
    Step,
)
from cortex.errors import CorrelationRuleError, FilterError
from cortex.filter import Filter, parse
from mesh.mitre import TECHNIQUE_ID
from mesh.yamldoc import YamlDoc, read_texts

DEFAULT_DIR: Final = Path(__file__).with_name("default")
MAX_STEPS: Final = 16
MAX_TIMESPAN_S: Final = 7 * 86400
_ID: Final = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+")
_STEP_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_RULE_KEYS: Final = (
    "correlation",
    "id",
    "description",
    "type",
    "group_by",
    "timespan",
    "severity",
    "mitre",
    "prior",
    "threshold",
    "until",
    "enabled",
    "steps",
    "replace",
)
_REQUIRED: Final = ("id", "type", "group_by", "timespan", "severity", "prior", "steps")
_STEP_KEYS: Final = (
    "step",
    "source",
    "filter",
    "lr",
    "count",
    "distinct",
    "by",
    "family",
    "optional",
)


def default_files() -> tuple[Path, ...]:
    return tuple(sorted(DEFAULT_DIR.glob("*.yaml")))


def load_files(paths: Sequence[Path] | None = None) -> RuleSet:
    """The rule set of `paths` (the default files when None), in order."""
    files = default_files() if paths is None else tuple(paths)
    return load_texts(read_texts(files, CorrelationRuleError))


def load_texts(texts: Iterable[tuple[str, str]]) -> RuleSet:
    """The rule set of (name, text) pairs, in order."""
    rules: dict[str, CorrelationRule] = {}
    names: list[str] = []
    digest = hashlib.sha256()
    for name, text in texts:
        names.append(name)
        raw = text.encode("utf-8", "surrogateescape")
        digest.update(len(raw).to_bytes(8, "big") + raw)
        _File(name, text).load_into(rules)
    return RuleSet(tuple(rules.values()), tuple(names), digest.hexdigest()[:16])


class _File(YamlDoc):
    def __init__(self, name: str, text: str) -> None:
        super().__init__(name, text, CorrelationRuleError)

    def load_into(self, rules: dict[str, CorrelationRule]) -> None:
        root = self.root()
        if root is None:
            return
        items = self.sequence(root, "a correlation file (a YAML list of `- correlation:` items)")
        for item in items:
            keys = self.mapping(item, "a correlation")
            if "correlation" not in keys:
                raise self.fail(item, "each item is a `- correlation: TITLE` mapping")
            if set(keys) <= {"correlation", "enabled"} and "enabled" in keys:
                self._switch(keys, rules)
                continue
            rule = self._rule(item, keys)
            replace = "replace" in keys and self.boolean(keys["replace"][1], "replace")
            if rule.id in rules and not replace:
                first = rules[rule.id]
                raise self.fail(
                    keys["id"][1],
                    f"duplicate correlation id {rule.id!r} (first at {first.file}:{first.line}; "
                    "say `replace: true` to replace it)",
                )
            if replace and rule.id not in rules:
                raise self.fail(keys["replace"][1], f"nothing to replace: no rule {rule.id!r}")
            rules[rule.id] = rule

    def _switch(
        self, keys: dict[str, tuple[yaml.Node, yaml.Node]], rules: dict[str, CorrelationRule]
    ) -> None:
        node = keys["correlation"][1]
        rule_id = self.string(node, "the correlation id")
        if rule_id not in rules:
            raise self.fail(node, f"no correlation {rule_id!r} to switch on or off")
        old = rules[rule_id]
        rules[rule_id] = CorrelationRule(
            **{**old.__dict__, "enabled": self.boolean(keys["enabled"][1], "enabled")}
        )

    def _rule(
        self, node: yaml.Node, keys: dict[str, tuple[yaml.Node, yaml.Node]]
    ) -> CorrelationRule:
        title = self.string(keys["correlation"][1], "the correlation title")
        self.check_keys(keys, _RULE_KEYS, f"correlation {title!r}", required=_REQUIRED, at=node)
        rule_id = self.string(keys["id"][1], "id")
        if not _ID.fullmatch(rule_id):
            raise self.fail(keys["id"][1], f"id {rule_id!r} must look like `cortex.some_name`")
        type_node = keys["type"][1]
        type_text = self.string(type_node, "type")
        if type_text == "temporal_ordered":
            type_text = "sequence"
        try:
            kind = RuleType(type_text)
        except ValueError:
            raise self.fail(
                type_node,
                f"type {type_text!r} is not one of {', '.join(t.value for t in RuleType)}",
            ) from None
        group_by = tuple(
            self._key(n, "group_by") for n in self.sequence(keys["group_by"][1], "group_by")
        )
        if len(set(group_by)) != len(group_by):
            raise self.fail(keys["group_by"][1], "group_by names a key twice")
        timespan = self.duration(keys["timespan"][1], "timespan")
        if timespan.total_seconds() > MAX_TIMESPAN_S:
            raise self.fail(keys["timespan"][1], "timespan is at most 7d")
        severity = self.string(keys["severity"][1], "severity").lower()
        if severity not in SEVERITIES:
            raise self.fail(keys["severity"][1], f"severity is one of {', '.join(SEVERITIES)}")
        mitre: list[str] = []
        if "mitre" in keys:
            for m in self.sequence(keys["mitre"][1], "mitre"):
                tag = self.string(m, "a MITRE technique")
                if not TECHNIQUE_ID.fullmatch(tag):
                    raise self.fail(m, f"{tag!r} is not an ATT&CK technique id (T1059, T1059.004)")
                mitre.append(tag)
        prior = self.number(keys["prior"][1], "prior", low=1e-6, high=0.5)
        threshold = (
            self.number(keys["threshold"][1], "threshold", low=0.01, high=0.999)
            if "threshold" in keys
            else 0.7
        )
        until = None
        if "until" in keys:
            if kind is not RuleType.SEQUENCE:
                raise self.fail(keys["until"][0], "until applies to sequences only")
            until = self._filter(keys["until"][1], "until")
        steps_node = keys["steps"][1]
        steps = [self._step(n, group_by) for n in self.sequence(steps_node, "steps")]
        self._check_steps(steps_node, kind, steps)
        return CorrelationRule(
            id=rule_id,
            title=title,
            description=self.string(keys["description"][1], "description").strip()
            if "description" in keys
            else "",
            type=kind,
            steps=tuple(steps),
            group_by=group_by,
            timespan=timespan,
            severity=severity,
            mitre=tuple(mitre),
            prior=prior,
            threshold=threshold,
            until=until,
            enabled=self.boolean(keys["enabled"][1], "enabled") if "enabled" in keys else True,
            file=self.name,
            line=self.line(node),
        )

    def _step(self, node: yaml.Node, group_by: tuple[str, ...]) -> Step:
        keys = self.mapping(node, "a step")
        if "step" not in keys:
            raise self.fail(node, "each step is a `- step: NAME` mapping")
        name = self.string(keys["step"][1], "the step name")
        if not _STEP_NAME.fullmatch(name):
            raise self.fail(keys["step"][1], f"step name {name!r}: lower case, digits and _")
        self.check_keys(
            keys, _STEP_KEYS, f"step {name!r}", required=("source", "filter", "lr"), at=node
        )
        source = self.string(keys["source"][1], "source")
        if source not in SOURCES:
            raise self.fail(
                keys["source"][1], f"source {source!r} is not one of {', '.join(SOURCES)}"
            )
        lr = self.number(keys["lr"][1], "lr", low=0.01, high=1000)
        count = self.integer(keys["count"][1], "count", minimum=1) if "count" in keys else 1
        distinct, distinct_field = 0, ""
        if "distinct" in keys:
            d = self.mapping(keys["distinct"][1], "distinct")
            self.check_keys(
                d,
                ("field", "count"),
                "distinct",
                required=("field", "count"),
                at=keys["distinct"][1],
            )
            distinct_field = self._key(d["field"][1], "distinct field")
            distinct = self.integer(d["count"][1], "distinct count", minimum=2)
        by: list[tuple[str, str]] = []
        if "by" in keys:
            for group_key, (k_node, v_node) in self.mapping(keys["by"][1], "by").items():
                if group_key not in group_by:
                    raise self.fail(k_node, f"by: {group_key!r} is not one of group_by")
                by.append((group_key, self._key(v_node, f"by {group_key}")))
        family = self.string(keys["family"][1], "family") if "family" in keys else ""
        optional = self.boolean(keys["optional"][1], "optional") if "optional" in keys else False
        return Step(
            name=name,
            source=source,
            filter=self._filter(keys["filter"][1], "filter"),
            lr=lr,
            optional=optional,
            count=count,
            distinct=distinct,
            distinct_field=distinct_field,
            by=tuple(by),
            family=family,
            line=self.line(node),
        )

    def _check_steps(self, node: yaml.Node, kind: RuleType, steps: list[Step]) -> None:
        if not steps or len(steps) > MAX_STEPS:
            raise self.fail(node, f"a correlation has 1 to {MAX_STEPS} steps")
        names = [s.name for s in steps]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise self.fail(node, f"step {name!r} is named twice")
        required = [s for s in steps if not s.optional]
        if not required:
            raise self.fail(node, "at least one step must not be optional")
        if kind is RuleType.EVENT_COUNT and (len(required) != 1 or required[0].count < 2):
            raise self.fail(node, "event_count takes one required step with `count` of 2 or more")
        if kind is RuleType.VALUE_COUNT and (len(required) != 1 or not required[0].distinct):
            raise self.fail(node, "value_count takes one required step with `distinct`")
        if kind in (RuleType.TEMPORAL, RuleType.SEQUENCE) and len(required) < 2:
            raise self.fail(node, f"{kind.value} needs at least two required steps")

    def _key(self, node: yaml.Node, what: str) -> str:
        key = self.string(node, what)
        if key not in KEY_FIELDS:
            raise self.fail(node, f"{what} {key!r} is not one of {', '.join(KEY_FIELDS)}")
        return key

    def _filter(self, node: yaml.Node, what: str) -> Filter:
        text = self.string(node, what)
        try:
            flt = parse(text)
        except FilterError as exc:
            raise self.fail(node, f"{what} position {exc.position}: {exc.reason}") from None
        if flt.root is None:
            raise self.fail(node, f"{what} must select something (an empty filter is every event)")
        return flt
