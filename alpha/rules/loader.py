"""Loading YAML rule files into a validated `Ruleset`.

A file is a YAML sequence of items, each a mapping with one of these keys:

    - list: NAME            items: [...]                     (append: true | override: {items: ...})
    - macro: NAME           condition: TEXT                  (append | override: {condition: ...})
    - rule: NAME            id, desc, condition, output, priority, tags, enabled, exceptions,
                            allow, category, action, enforce
                                                        (append | override: {KEY: append|replace})
    - required_engine_version: N

Files load in order and later files tune earlier ones, as in Falco: a list or macro defined again
in a later file replaces the earlier definition (the usual way to fill a placeholder such as
`user_known_ptrace_binaries`); `append`/`override` extend or replace parts of an existing item; a
`- rule: X` item with only `enabled` switches a rule on or off. Conditions are bound only after the
last file, so a macro redefined late applies to every rule that uses it.

Everything that can be wrong is found at load time and reported as a `RuleError` with FILE:LINE and
the reason: YAML syntax, unknown or missing keys, bad priority, malformed MITRE ids, condition
syntax, unknown fields, macros and lists, operator/type mismatches, circular macros and lists,
duplicate names and ids, unknown output fields.

`action: kill` (default `alert`) asks the sensor to kill the matching process in the kernel, at
the tracepoint: it needs `enforce`, the kernel check that carries it out (memfd_exec,
socket_stdio_exec, process_memory_write), because the condition itself runs in user space after
the fact. The kernel check is coarser than the condition (no exceptions): its allow list is the
sensor's `enforce_allow_exes`/`enforce_allow_cgroups`. Nothing is killed unless the sensor's
`enforcement` is `enforce` (`dry_run` reports what would have been).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from alpha.rules.compiler import (
    BOOL_FIELDS,
    Binder,
    BNode,
    MacroDef,
    compile_tree,
    conjoin,
    disjoin,
    negate,
    unquote_item,
)
from alpha.rules.errors import ConditionError, RuleError
from alpha.rules.fields import DETAIL_KINDS
from alpha.rules.lang import Compare, Literal, Node, SourceText, parse
from alpha.rules.output import OutputTemplate, parse_output
from alpha.sensors.model import ENFORCE_CHECKS
from mesh import mitre
from mesh.yamldoc import YamlDoc, read_texts
from qsc.common.v1 import classification_pb2

ENGINE_VERSION = 1
DEFAULT_RULES_DIR = Path(__file__).with_name("default")


# Falco's priorities and QSC's own severity names, to the API's Severity.
PRIORITIES: dict[str, int] = {
    "EMERGENCY": classification_pb2.SEVERITY_CRITICAL,
    "ALERT": classification_pb2.SEVERITY_CRITICAL,
    "CRITICAL": classification_pb2.SEVERITY_CRITICAL,
    "ERROR": classification_pb2.SEVERITY_HIGH,
    "HIGH": classification_pb2.SEVERITY_HIGH,
    "WARNING": classification_pb2.SEVERITY_MEDIUM,
    "WARN": classification_pb2.SEVERITY_MEDIUM,
    "MEDIUM": classification_pb2.SEVERITY_MEDIUM,
    "NOTICE": classification_pb2.SEVERITY_LOW,
    "LOW": classification_pb2.SEVERITY_LOW,
    "INFORMATIONAL": classification_pb2.SEVERITY_INFO,
    "INFO": classification_pb2.SEVERITY_INFO,
    "DEBUG": classification_pb2.SEVERITY_INFO,
}
CATEGORIES: dict[str, int] = {
    v.name.removeprefix("CATEGORY_").lower(): v.number
    for v in classification_pb2.Category.DESCRIPTOR.values
    if v.number != 0
}
_RULE_ID = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_FIELD_REF = re.compile(r"([A-Za-z_][A-Za-z0-9_.]*)(?:\[(\d+)\])?")
_EXCEPTION_COMPS = frozenset(
    {
        "=",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "in",
        "intersects",
        "pmatch",
        "startswith",
        "endswith",
        "contains",
        "icontains",
        "glob",
        "iglob",
        "regex",
    }
)
_SET_COMPS = frozenset({"in", "intersects", "pmatch"})

RULE_KEYS = frozenset(
    {
        "rule",
        "id",
        "desc",
        "condition",
        "output",
        "priority",
        "tags",
        "enabled",
        "exceptions",
        "allow",
        "category",
        "action",
        "enforce",
        "append",
        "override",
    }
)
_RULE_OVERRIDABLE = {
    "condition": {"append", "replace"},
    "output": {"replace"},
    "desc": {"replace"},
    "priority": {"replace"},
    "tags": {"append", "replace"},
    "enabled": {"replace"},
    "exceptions": {"append", "replace"},
    "allow": {"append", "replace"},
    "category": {"replace"},
    "action": {"replace"},
    "enforce": {"replace"},
}
# What a rule does when it matches: alert (an event), or kill the process in the kernel at the
# tracepoint, through the kernel check named by `enforce` (the sensor's ENFORCE_CHECKS).
ACTIONS = ("alert", "kill")
_REQUIRED_RULE_KEYS = ("condition", "desc", "output", "priority")


# --- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Technique:
    id: str
    name: str
    tactics: tuple[int, ...]


@dataclass(frozen=True)
class Rule:
    """One loaded rule. `tree` is the bound condition with exceptions folded in."""

    id: str
    name: str
    desc: str
    condition: str
    output: OutputTemplate
    priority: str
    severity: int
    tags: tuple[str, ...]
    techniques: tuple[Technique, ...]
    enabled: bool
    category: int | None
    tree: BNode
    kinds: frozenset[str]
    location: Location
    exception_count: int = 0  # allowlist entries: exception rows and `allow` conditions
    action: str = "alert"  # or "kill": enforced in the kernel through `enforce`
    enforce: str | None = None  # the kernel check that can carry out `action: kill`


@dataclass(frozen=True)
class Ruleset:
    rules: tuple[Rule, ...]
    lists: Mapping[str, tuple[str, ...]]
    macros: Mapping[str, str]
    files: tuple[str, ...]
    version: str
    warnings: tuple[str, ...] = ()

    @property
    def enabled_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.enabled)

    def get(self, rule_id: str) -> Rule | None:
        for r in self.rules:
            if r.id == rule_id:
                return r
        return None


# --- drafts: what files say, before binding -----------------------------------------------------


@dataclass
class _ListDraft:
    items: list[str]
    location: Location


@dataclass
class _MacroDraft:
    source: SourceText
    tree: Node
    location: Location


@dataclass
class _ExceptionDraft:
    name: str
    fields: list[tuple[str, int | None]]
    single: bool  # `fields: proc.name` rather than a list: values are one flat list
    comps: list[str]
    values: list[tuple[list[str | list[str]], Location]]
    location: Location


@dataclass
class _RuleDraft:
    name: str
    id: str
    desc: str
    source: SourceText
    tree: Node
    output: tuple[str, Location]
    priority: str
    tags: list[tuple[str, Location]]
    enabled: bool
    exceptions: list[_ExceptionDraft]
    allows: list[tuple[SourceText, Node]]
    category: int | None
    location: Location
    action: str = "alert"
    enforce: str | None = None
    action_location: Location | None = None


class _File(YamlDoc):
    """One rules file being read: YAML helpers failing with RuleError, and condition line
    mapping."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(name, text, RuleError)

    def loc(self, node: yaml.Node) -> Location:
        return Location(self.name, self.line(node))

    def fail(self, node: yaml.Node, reason: str) -> RuleError:
        return RuleError(reason, self.name, self.line(node))

    def source(self, node: yaml.Node, what: str) -> SourceText:
        """A condition's text with the file line of each of its characters."""
        text = self.string(node, what)
        return SourceText.plain(text, self.name, node.start_mark.line + 1, self._char_lines(node))

    def _char_lines(self, node: yaml.Node) -> list[int]:
        # Walk the raw text of the scalar and note the line of every non-blank character; the
        # folded value has the same non-blank characters in the same order (see lang.Segment).
        start, end = node.start_mark, node.end_mark
        line, col = start.line, start.column
        style = getattr(node, "style", None)
        if style in ("|", ">"):
            line, col = line + 1, 0  # the content starts below the block indicator
        elif style in ("'", '"'):
            col += 1
        out: list[int] = []
        while line < len(self.lines) and (line, col) < (end.line, end.column):
            text = self.lines[line]
            stop = end.column if line == end.line else len(text)
            out.extend(line + 1 for c in text[col:stop] if not c.isspace())
            line, col = line + 1, 0
        return out


# --- the loader ----------------------------------------------------------------------------------


class _Builder:
    def __init__(self) -> None:
        self.lists: dict[str, _ListDraft] = {}
        self.macros: dict[str, _MacroDraft] = {}
        self.rules: dict[str, _RuleDraft] = {}
        self.files: list[str] = []
        self.digest = hashlib.sha256()
        self.warnings: list[str] = []

    # - reading -

    def add_text(self, name: str, text: str) -> None:
        self.files.append(name)
        encoded = text.encode("utf-8", "surrogateescape")
        self.digest.update(len(encoded).to_bytes(8, "big") + encoded)
        f = _File(name, text)
        root = f.root()
        if root is None:
            return  # an empty file: nothing to load
        if not isinstance(root, yaml.SequenceNode):
            raise f.fail(
                root, "a rules file must be a YAML list of items (- rule:, - macro:, - list:)"
            )
        seen: dict[tuple[str, str], Location] = {}
        for item in root.value:
            self._item(f, item, seen)

    def _item(self, f: _File, node: yaml.Node, seen: dict[tuple[str, str], Location]) -> None:
        keys = f.mapping(node, "an item")
        kinds = [k for k in ("rule", "macro", "list", "required_engine_version") if k in keys]
        if len(kinds) != 1:
            raise f.fail(
                node,
                "each item needs exactly one of rule, macro, list, required_engine_version"
                + (f"; found {', '.join(kinds)}" if kinds else f"; found keys {', '.join(keys)}"),
            )
        kind = kinds[0]
        if kind == "required_engine_version":
            self._engine_version(f, keys)
            return
        name_node = keys[kind][1]
        name = f.string(name_node, f"the {kind} name")
        if kind != "rule" and _NAME.fullmatch(name) is None:
            raise f.fail(name_node, f"{kind} name {name!r} must be letters, digits, _ or -")
        modifies = "append" in keys or "override" in keys
        first = seen.get((kind, name))
        if (
            first is not None
            and not modifies
            and not (kind == "rule" and set(keys) <= {"rule", "enabled"})
        ):
            raise f.fail(node, f"duplicate {kind} {name!r} (first defined at {first})")
        if kind == "list":
            self._list(f, node, name, keys)
        elif kind == "macro":
            self._macro(f, node, name, keys)
        else:
            self._rule(f, node, name, keys)
        seen.setdefault((kind, name), f.loc(node))

    def _engine_version(self, f: _File, keys: dict[str, tuple[yaml.Node, yaml.Node]]) -> None:
        if set(keys) != {"required_engine_version"}:
            raise f.fail(keys["required_engine_version"][0], "required_engine_version stands alone")
        node = keys["required_engine_version"][1]
        text = f.string(node, "required_engine_version")
        if not text.isdigit():
            raise f.fail(node, f"required_engine_version must be an integer, not {text!r}")
        if int(text) > ENGINE_VERSION:
            raise f.fail(
                node,
                f"this file needs engine version {text}; this engine is version {ENGINE_VERSION}",
            )

    def _modes(
        self,
        f: _File,
        keys: dict[str, tuple[yaml.Node, yaml.Node]],
        overridable: Mapping[str, set[str]],
        legacy_key: str,
    ) -> dict[str, str] | None:
        """How an item modifies an existing one: {key: append|replace}, or None if it defines."""
        if "append" in keys and "override" in keys:
            raise f.fail(keys["override"][0], "use either append or override, not both")
        if "append" in keys:
            if not f.boolean(keys["append"][1], "append"):
                return None
            modes: dict[str, str] = {}
            for key, (key_node, _) in keys.items():
                if key in overridable:
                    if "append" not in overridable[key]:
                        raise f.fail(
                            key_node,
                            f"{key!r} cannot be appended to; use override: {{{key}: replace}}",
                        )
                    modes[key] = "append"
            if not modes:
                raise f.fail(
                    keys["append"][0], f"append: true but nothing to append (give {legacy_key})"
                )
            return modes
        if "override" not in keys:
            return None
        node = keys["override"][1]
        modes = {}
        for key, (key_node, value_node) in f.mapping(node, "override").items():
            if key not in overridable:
                raise f.fail(
                    key_node,
                    f"override: {key!r} cannot be overridden; allowed: {', '.join(overridable)}",
                )
            mode = f.string(value_node, f"override of {key}")
            if mode not in overridable[key]:
                raise f.fail(
                    value_node,
                    f"override: {key} can be {' or '.join(sorted(overridable[key]))}, not {mode!r}",
                )
            if key not in keys:
                raise f.fail(key_node, f"override names {key!r} but the item does not give it")
            modes[key] = mode
        for key, (key_node, _) in keys.items():
            if key in overridable and key not in modes:
                raise f.fail(key_node, f"{key!r} is given but not listed under override")
        return modes

    def _list(
        self, f: _File, node: yaml.Node, name: str, keys: dict[str, tuple[yaml.Node, yaml.Node]]
    ) -> None:
        f.check_keys(keys, ("list", "items", "append", "override"), f"list {name!r}")
        if "items" not in keys:
            raise f.fail(node, f"list {name!r} has no items")
        items_node = keys["items"][1]
        items = [
            f.string(n, f"an item of list {name!r}")
            for n in f.sequence(items_node, f"items of list {name!r}")
        ]
        modes = self._modes(f, keys, {"items": {"append", "replace"}}, "items")
        if modes is None or modes.get("items") == "replace":
            if modes is not None and name not in self.lists:
                raise f.fail(node, f"override of list {name!r}, which is not defined")
            self.lists[name] = _ListDraft(items, f.loc(node))
            return
        existing = self.lists.get(name)
        if existing is None:
            raise f.fail(node, f"append to list {name!r}, which is not defined")
        existing.items.extend(items)

    def _macro(
        self, f: _File, node: yaml.Node, name: str, keys: dict[str, tuple[yaml.Node, yaml.Node]]
    ) -> None:
        f.check_keys(keys, ("macro", "condition", "append", "override"), f"macro {name!r}")
        if "condition" not in keys:
            raise f.fail(node, f"macro {name!r} has no condition")
        source = f.source(keys["condition"][1], "a condition")
        modes = self._modes(f, keys, {"condition": {"append", "replace"}}, "condition")
        if modes is not None and modes.get("condition") == "append":
            existing = self.macros.get(name)
            if existing is None:
                raise f.fail(node, f"append to macro {name!r}, which is not defined")
            source = existing.source.append(source)
        elif modes is not None and name not in self.macros:
            raise f.fail(node, f"override of macro {name!r}, which is not defined")
        self.macros[name] = _MacroDraft(source, _parse(source), f.loc(node))

    def _rule(
        self, f: _File, node: yaml.Node, name: str, keys: dict[str, tuple[yaml.Node, yaml.Node]]
    ) -> None:
        f.check_keys(keys, RULE_KEYS, f"rule {name!r}")
        existing = self.rules.get(name)
        if set(keys) == {"rule", "enabled"}:  # Falco's short form to switch a rule on or off
            if existing is None:
                raise f.fail(
                    node, f"rule {name!r} is not defined, so it cannot be enabled or disabled"
                )
            existing.enabled = f.boolean(keys["enabled"][1], "enabled")
            return
        modes = self._modes(f, keys, _RULE_OVERRIDABLE, "condition")
        if modes is not None:
            if existing is None:
                raise f.fail(
                    node, f"rule {name!r} is not defined, so it cannot be appended to or overridden"
                )
            if "id" in keys:
                raise f.fail(keys["id"][0], "a rule's id cannot be changed by append or override")
            self._modify_rule(f, existing, keys, modes)
            return
        if existing is not None:
            raise f.fail(
                node,
                f"duplicate rule {name!r} (first defined at {existing.location}); "
                "use override to change it",
            )
        for key in _REQUIRED_RULE_KEYS:
            if key not in keys:
                raise f.fail(node, f"rule {name!r} has no {key}")
        rule_id = self._rule_id(f, name, keys)
        source = f.source(keys["condition"][1], "a condition")
        output_node = keys["output"][1]
        draft = _RuleDraft(
            name=name,
            id=rule_id,
            desc=f.string(keys["desc"][1], "desc").strip(),
            source=source,
            tree=_parse(source),
            output=(f.string(output_node, "output").strip(), f.loc(output_node)),
            priority=self._priority(f, keys["priority"][1]),
            tags=self._tags(f, keys["tags"][1]) if "tags" in keys else [],
            enabled=f.boolean(keys["enabled"][1], "enabled") if "enabled" in keys else True,
            exceptions=self._exceptions(f, keys["exceptions"][1]) if "exceptions" in keys else [],
            allows=self._allows(f, keys["allow"][1]) if "allow" in keys else [],
            category=self._category(f, keys["category"][1]) if "category" in keys else None,
            location=f.loc(node),
        )
        if "action" in keys:
            draft.action, draft.action_location = self._action(f, keys["action"][1])
        if "enforce" in keys:
            draft.enforce = self._enforce(f, keys["enforce"][1])
        self._check_unique_exceptions(draft.exceptions)
        self.rules[name] = draft

    @staticmethod
    def _action(f: _File, node: yaml.Node) -> tuple[str, Location]:
        action = f.string(node, "action")
        if action not in ACTIONS:
            raise f.fail(node, f"action {action!r} is not one of {', '.join(ACTIONS)}")
        return action, f.loc(node)

    @staticmethod
    def _enforce(f: _File, node: yaml.Node) -> str:
        check = f.string(node, "enforce")
        if check not in ENFORCE_CHECKS:
            raise f.fail(
                node, f"enforce {check!r} is no kernel check; known: {', '.join(ENFORCE_CHECKS)}"
            )
        return check

    def _modify_rule(
        self,
        f: _File,
        rule: _RuleDraft,
        keys: dict[str, tuple[yaml.Node, yaml.Node]],
        modes: dict[str, str],
    ) -> None:
        for key, mode in modes.items():
            value = keys[key][1]
            if key == "condition":
                source = f.source(value, "a condition")
                rule.source = rule.source.append(source) if mode == "append" else source
                rule.tree = _parse(rule.source)
            elif key == "output":
                rule.output = (f.string(value, "output").strip(), f.loc(value))
            elif key == "desc":
                rule.desc = f.string(value, "desc").strip()
            elif key == "priority":
                rule.priority = self._priority(f, value)
            elif key == "tags":
                tags = self._tags(f, value)
                rule.tags = rule.tags + tags if mode == "append" else tags
            elif key == "enabled":
                rule.enabled = f.boolean(value, "enabled")
            elif key == "category":
                rule.category = self._category(f, value)
            elif key == "action":
                rule.action, rule.action_location = self._action(f, value)
            elif key == "enforce":
                rule.enforce = self._enforce(f, value)
            elif key == "allow":
                allows = self._allows(f, value)
                rule.allows = rule.allows + allows if mode == "append" else allows
            elif key == "exceptions":
                new = self._exceptions(f, value, partial=mode == "append")
                if mode == "replace":
                    self._check_unique_exceptions(new)
                    rule.exceptions = new
                else:
                    self._append_exceptions(f, rule, new)

    def _append_exceptions(self, f: _File, rule: _RuleDraft, new: list[_ExceptionDraft]) -> None:
        by_name = {e.name: e for e in rule.exceptions}
        for exc in new:
            old = by_name.get(exc.name)
            if old is None:
                if not exc.fields:
                    raise RuleError(
                        f"exception {exc.name!r} is new to rule {rule.name!r} and needs fields",
                        exc.location.file,
                        exc.location.line,
                    )
                rule.exceptions.append(exc)
                by_name[exc.name] = exc
                continue
            if exc.fields and (exc.fields != old.fields or exc.comps != old.comps):
                raise RuleError(
                    f"exception {exc.name!r}: appended fields/comps differ from the original ones",
                    exc.location.file,
                    exc.location.line,
                )
            for row, loc in exc.values:
                if not exc.fields and old.single and len(row) != 1:
                    # A list row appended to a one-field exception is one list value.
                    row = [[c for c in row if isinstance(c, str)]]
                if len(row) != len(old.fields):
                    raise RuleError(
                        f"exception {exc.name!r}: a row has {len(row)} values "
                        f"for {len(old.fields)} fields",
                        loc.file,
                        loc.line,
                    )
                old.values.append((row, loc))

    @staticmethod
    def _check_unique_exceptions(excs: list[_ExceptionDraft]) -> None:
        names: set[str] = set()
        for exc in excs:
            if exc.name in names:
                raise RuleError(
                    f"duplicate exception name {exc.name!r}", exc.location.file, exc.location.line
                )
            names.add(exc.name)

    def _rule_id(self, f: _File, name: str, keys: dict[str, tuple[yaml.Node, yaml.Node]]) -> str:
        if "id" in keys:
            node = keys["id"][1]
            rule_id = f.string(node, "id")
            if _RULE_ID.fullmatch(rule_id) is None:
                raise f.fail(
                    node,
                    f"rule id {rule_id!r} must be lowercase words joined by '.', e.g. site.my_rule",
                )
        else:
            slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "rule"
            rule_id = f"custom.{slug}"
        for other in self.rules.values():
            if other.id == rule_id:
                raise f.fail(
                    keys["id"][1] if "id" in keys else keys["rule"][1],
                    f"rule id {rule_id!r} is already used by rule {other.name!r} "
                    f"({other.location})",
                )
        return rule_id

    @staticmethod
    def _priority(f: _File, node: yaml.Node) -> str:
        text = f.string(node, "priority").strip().upper()
        if text not in PRIORITIES:
            raise f.fail(
                node,
                f"unknown priority {text!r}; use one of EMERGENCY, ALERT, CRITICAL, ERROR, "
                "WARNING, NOTICE, INFORMATIONAL, DEBUG (or CRITICAL, HIGH, MEDIUM, LOW, INFO)",
            )
        return text

    @staticmethod
    def _tags(f: _File, node: yaml.Node) -> list[tuple[str, Location]]:
        out: list[tuple[str, Location]] = []
        for item in f.sequence(node, "tags"):
            tag = f.string(item, "a tag")
            if mitre.looks_like_technique(tag) and mitre.TECHNIQUE_ID.fullmatch(tag) is None:
                raise f.fail(
                    item,
                    f"bad MITRE technique id {tag!r}; expected T#### or T####.### (e.g. T1055.008)",
                )
            if mitre.looks_like_tactic(tag) and mitre.tactic_of(tag) is None:
                known = ", ".join(sorted(mitre.TACTIC_BY_TAG))
                raise f.fail(item, f"unknown MITRE tactic {tag!r}; use TA#### or one of {known}")
            out.append((tag, f.loc(item)))
        return out

    @staticmethod
    def _category(f: _File, node: yaml.Node) -> int:
        text = f.string(node, "category").strip().lower()
        if text not in CATEGORIES:
            raise f.fail(node, f"unknown category {text!r}; use one of {', '.join(CATEGORIES)}")
        return CATEGORIES[text]

    def _allows(self, f: _File, node: yaml.Node) -> list[tuple[SourceText, Node]]:
        out: list[tuple[SourceText, Node]] = []
        for item in f.sequence(node, "allow"):
            source = f.source(item, "an allow condition")
            out.append((source, _parse(source)))
        return out

    def _exceptions(
        self, f: _File, node: yaml.Node, partial: bool = False
    ) -> list[_ExceptionDraft]:
        out: list[_ExceptionDraft] = []
        for item in f.sequence(node, "exceptions"):
            keys = f.mapping(item, "an exception")
            f.check_keys(keys, ("name", "fields", "comps", "values"), "an exception")
            if "name" not in keys:
                raise f.fail(item, "an exception needs a name")
            name = f.string(keys["name"][1], "exception name")
            if "fields" not in keys and not partial:
                raise f.fail(item, f"exception {name!r} needs fields")
            fields: list[tuple[str, int | None]] = []
            single = False
            comps: list[str] = []
            if "fields" in keys:
                fnode = keys["fields"][1]
                single = isinstance(fnode, yaml.ScalarNode)
                names = [f.string(fnode, "fields")] if single else f.strings(fnode, "fields")
                if not names:
                    raise f.fail(fnode, f"exception {name!r} has an empty fields list")
                for written in names:
                    m = _FIELD_REF.fullmatch(written)
                    if m is None:
                        raise f.fail(fnode, f"exception {name!r}: {written!r} is not a field name")
                    fields.append((m.group(1), int(m.group(2)) if m.group(2) else None))
                if "comps" in keys:
                    cnode = keys["comps"][1]
                    comps = [f.string(cnode, "comps")] if single else f.strings(cnode, "comps")
                    if len(comps) != len(fields):
                        raise f.fail(
                            cnode,
                            f"exception {name!r}: {len(comps)} comps for {len(fields)} fields",
                        )
                    for comp in comps:
                        if comp not in _EXCEPTION_COMPS:
                            raise f.fail(cnode, f"exception {name!r}: unknown comparison {comp!r}")
                else:
                    comps = ["in" if single else "="] * len(fields)
            values: list[tuple[list[str | list[str]], Location]] = []
            if "values" in keys:
                # Appended values without fields take their shape from the original exception.
                loose = partial and not fields
                for row in f.sequence(keys["values"][1], f"values of exception {name!r}"):
                    if loose:
                        as_single = not isinstance(row, yaml.SequenceNode)
                        cells = self._exception_row(f, row, name, as_single, 0)
                    else:
                        cells = self._exception_row(f, row, name, single, len(fields))
                    values.append((cells, f.loc(row)))
            out.append(_ExceptionDraft(name, fields, single, comps, values, f.loc(item)))
        return out

    @staticmethod
    def _exception_row(
        f: _File, row: yaml.Node, name: str, single: bool, width: int
    ) -> list[str | list[str]]:
        if single:
            if isinstance(row, yaml.SequenceNode):
                return [f.strings(row, f"a value of exception {name!r}")]
            return [f.string(row, f"a value of exception {name!r}")]
        cells: list[str | list[str]] = []
        for cell in f.sequence(row, f"a row of exception {name!r} (a list, one value per field)"):
            if isinstance(cell, yaml.SequenceNode):
                cells.append(f.strings(cell, f"a value of exception {name!r}"))
            else:
                cells.append(f.string(cell, f"a value of exception {name!r}"))
        if width and len(cells) != width:
            raise f.fail(
                row, f"exception {name!r}: this row has {len(cells)} values for {width} fields"
            )
        return cells

    # - finishing -

    def finish(self) -> Ruleset:
        lists = self._flatten_lists()
        macros = {name: MacroDef(name, d.tree, d.source) for name, d in self.macros.items()}
        binder = Binder(lists, macros)
        for name, draft in self.macros.items():
            try:
                binder.bind_macro(name)
            except ConditionError as err:
                raise err.at(draft.location.file, draft.location.line) from None
        rules = tuple(self._finish_rule(binder, d) for d in self.rules.values())
        return Ruleset(
            rules=rules,
            lists=lists,
            macros={name: d.source.text for name, d in self.macros.items()},
            files=tuple(self.files),
            version="sha256:" + self.digest.hexdigest()[:32],
            warnings=tuple(self.warnings),
        )

    def _flatten_lists(self) -> dict[str, tuple[str, ...]]:
        done: dict[str, tuple[str, ...]] = {}

        def resolve(name: str, stack: list[str]) -> tuple[str, ...]:
            if name in done:
                return done[name]
            if name in stack:
                draft = self.lists[name]
                cycle = " -> ".join([*stack[stack.index(name) :], name])
                raise RuleError(
                    f"circular list reference: {cycle}", draft.location.file, draft.location.line
                )
            stack.append(name)
            items: list[str] = []
            for item in self.lists[name].items:
                if item in self.lists:
                    items.extend(resolve(item, stack))
                else:
                    items.append(item)
            stack.pop()
            done[name] = tuple(dict.fromkeys(items))  # ordered, without duplicates
            return done[name]

        for name in self.lists:
            resolve(name, [])
        return done

    def _finish_rule(self, binder: Binder, d: _RuleDraft) -> Rule:
        tree = binder.bind(d.tree, d.source)
        excluded: list[BNode] = []
        for exc in d.exceptions:
            excluded.extend(self._bind_exception(binder, d, exc))
        for source, allow_tree in d.allows:
            excluded.append(binder.bind(allow_tree, source))
        if excluded:
            tree = conjoin([tree, negate(disjoin(excluded))])
        try:
            output = parse_output(d.output[0])
        except RuleError as err:
            raise err.at(d.output[1].file, d.output[1].line) from None
        kinds = frozenset(k for k in DETAIL_KINDS if compile_tree(tree, k) is not False)
        if not kinds and d.enabled:
            self.warnings.append(
                f"{d.location}: rule {d.name!r} can never match (no event kind fits its condition)"
            )
        elif len(kinds) == len(DETAIL_KINDS):
            self.warnings.append(
                f"{d.location}: rule {d.name!r} is tried on every event kind; add an evt.kind test"
            )
        if d.action == "kill" and d.enforce is None:
            where = d.action_location or d.location
            raise RuleError(
                f"{where}: rule {d.name!r} has action kill but no kernel check to carry it out "
                f"(enforce: one of {', '.join(ENFORCE_CHECKS)}); its condition alone is "
                "evaluated in user space, after the fact"
            )
        tag_names = tuple(t for t, _ in d.tags)
        tactics = tuple(
            dict.fromkeys(t for t in (mitre.tactic_of(tag) for tag in tag_names) if t is not None)
        )
        techniques = tuple(
            Technique(
                tag,
                mitre.TECHNIQUES.get(tag, ("", ()))[0],
                tactics or mitre.TECHNIQUES.get(tag, ("", ()))[1],
            )
            for tag in dict.fromkeys(tag_names)
            if mitre.TECHNIQUE_ID.fullmatch(tag)
        )
        return Rule(
            id=d.id,
            name=d.name,
            desc=d.desc,
            condition=d.source.text,
            output=output,
            priority=d.priority,
            severity=PRIORITIES[d.priority],
            tags=tag_names,
            techniques=techniques,
            enabled=d.enabled,
            category=d.category,
            tree=tree,
            kinds=kinds,
            location=d.location,
            exception_count=len(excluded),
            action=d.action,
            enforce=d.enforce,
        )

    @staticmethod
    def _bind_exception(binder: Binder, rule: _RuleDraft, exc: _ExceptionDraft) -> list[BNode]:
        """One bound alternative per row: the AND of `field comp value` over the row's cells.

        With in/intersects/pmatch a cell may be a list or a list name, as in Falco. With any other
        comparison a list (or list name) in a cell means "any of these values".
        """
        out: list[BNode] = []
        for row, loc in exc.values:
            source = SourceText.plain("", loc.file, loc.line)
            parts: list[BNode] = []
            for (name, index), comp, value in zip(exc.fields, exc.comps, row, strict=True):
                try:
                    if comp in _SET_COMPS:
                        items = value if isinstance(value, list) else [value]
                        literals = tuple(Literal(v, False, 0) for v in items)
                        parts.append(binder.bind(Compare(name, index, comp, literals, 0), source))
                        continue
                    if isinstance(value, list):
                        choices = value
                    elif value in binder.lists:
                        choices = [unquote_item(v) for v in binder.lists[value]]
                    else:
                        choices = [value]
                    alternatives = [
                        binder.bind(Compare(name, index, comp, (Literal(v, True, 0),), 0), source)
                        for v in choices
                    ]
                except ConditionError as err:
                    raise RuleError(
                        f"rule {rule.name!r}, exception {exc.name!r}: {err.reason}",
                        loc.file,
                        loc.line,
                    ) from None
                parts.append(disjoin(alternatives))
            out.append(conjoin(parts))
        return out


def _parse(source: SourceText) -> Node:
    try:
        return parse(source.text, BOOL_FIELDS)
    except ConditionError as err:
        raise source.error(err) from None


# --- public API ---------------------------------------------------------------------------------


def load_texts(texts: Sequence[tuple[str, str]]) -> Ruleset:
    """Load rule files given as (name, text) pairs, in order."""
    loader = _Builder()
    for name, text in texts:
        loader.add_text(name, text)
    return loader.finish()


def load_files(paths: Sequence[str | Path]) -> Ruleset:
    """Load rule files in order; a directory stands for its *.yaml and *.yml files, sorted."""
    return load_texts(read_texts(expand_paths(paths), RuleError))


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(
                sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml") and q.is_file())
            )
        else:
            out.append(p)
    return out


def default_rule_files() -> list[Path]:
    """The default ruleset shipped with Alpha, in load order."""
    return expand_paths([DEFAULT_RULES_DIR])


def load_default() -> Ruleset:
    return load_files(default_rule_files())
