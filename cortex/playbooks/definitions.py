"""Playbooks as data: YAML files of triggers and ordered steps, checked against the endpoints
the configuration allows.

    playbooks = load_playbooks([Path("/etc/qsc/playbooks/soar.yaml")], endpoints={"soar": ...})
    for p in playbooks.triggered_by(assessment, "created"): ...

A file is a YAML list:

    - playbook: Tell the SOAR about confident intrusions
      id: notify-soar                    # [a-z0-9][a-z0-9._-]*, unique across files
      trigger:
        filter: 'severity >= HIGH AND confidence >= 0.8'   # ListAssessments' filter language
        on: [created, updated]           # which changes start a run (default: created)
      approval: false                    # true: a run waits for an operator's approval
      suppress_for: 1h                   # the same playbook, the same correlation key: once
      steps:
        - webhook: soar                  # an endpoint named in [[playbooks.endpoints]]
          format: ocsf                   # json (default: the API's Assessment) or ocsf
        - n8n: n8n-local
        - thehive: hive
          tlp: amber                     # white green amber red (TheHive's TLP)
        - guardian: beta-web-01          # a guardian of [[guardians]]
          action: verify_backup          # verify_backup scan_integrity approve_heal scan_memory
          backup_set: etc-nightly        # verify_backup: the set's name (whole_set: true/false)

Guardian actions: `verify_backup` (`backup_set`, optional `whole_set`) and `scan_integrity`
(optional `paths`, default every configured path) on Beta; `approve_heal` approves the heal
proposals the assessment's Beta events name; `scan_memory` scans the processes (pids) the
assessment's events from that guardian's host name, on Alpha.

Every mistake is `FILE:LINE: reason` (`PlaybookDefinitionError`), and a step may only name an
endpoint or guardian the configuration lists: egress goes nowhere else. The kinds' own rules:
`webhook` any endpoint, `n8n` one with a header token (n8n's header auth) at a production
webhook URL (`/webhook/...`, not the editor's `/webhook-test/...`), `thehive` one with a header
token (its API key), `guardian` a configured guardian and an action of its role.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import yaml

from cortex.assessment_queries import FIELDS
from cortex.assessments import Assessment
from cortex.errors import FilterError, PlaybookDefinitionError
from cortex.record_filter import RecordFilter, parse_record_filter
from mesh.yamldoc import YamlDoc, read_texts

if TYPE_CHECKING:
    from cortex.config import EndpointSection

__all__ = [
    "GUARDIAN_ACTIONS",
    "GuardianStep",
    "Playbook",
    "PlaybookSet",
    "SendStep",
    "Step",
    "endpoint_refs",
    "load_playbook_texts",
    "load_playbooks",
]

Change = Literal["created", "updated"]
_ID: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
SEND_KINDS: Final = ("webhook", "n8n", "thehive")
GUARDIAN_ACTIONS: Final = {
    "verify_backup": "beta",
    "scan_integrity": "beta",
    "approve_heal": "beta",
    "scan_memory": "alpha",
}
_TLP: Final = ("white", "green", "amber", "red")
MAX_SUPPRESS: Final = timedelta(days=30)


@dataclass(frozen=True)
class SendStep:
    """POST the assessment to an endpoint (`webhook`, `n8n`, `thehive`)."""

    kind: Literal["webhook", "n8n", "thehive"]
    endpoint: str
    format: Literal["json", "ocsf", "thehive"]
    tlp: str = "amber"


@dataclass(frozen=True)
class GuardianStep:
    """Ask a guardian to act."""

    guardian: str
    action: str
    backup_set: str = ""
    whole_set: bool = False
    paths: tuple[str, ...] = ()


Step = SendStep | GuardianStep


@dataclass(frozen=True)
class Playbook:
    id: str
    title: str
    trigger: RecordFilter[Assessment]
    on: frozenset[Change]
    approval: bool
    suppress_for: timedelta
    steps: tuple[Step, ...]
    source: str  # FILE:LINE it was defined at

    def triggered_by(self, a: Assessment, change: Change) -> bool:
        return change in self.on and self.trigger.matches(a)


@dataclass(frozen=True)
class PlaybookSet:
    playbooks: tuple[Playbook, ...]
    files: tuple[str, ...]

    def get(self, playbook_id: str) -> Playbook | None:
        return next((p for p in self.playbooks if p.id == playbook_id), None)

    def triggered_by(self, a: Assessment, change: Change) -> list[Playbook]:
        return [p for p in self.playbooks if p.triggered_by(a, change)]


@dataclass(frozen=True)
class EndpointRef:
    """What the loader needs to know of a configured endpoint."""

    name: str
    header_token: bool  # sends a static header token (TheHive's API key, n8n's header auth)
    url: str = ""


def endpoint_refs(sections: Iterable[EndpointSection]) -> dict[str, EndpointRef]:
    """The loader's view of `[[playbooks.endpoints]]`."""
    return {e.name: EndpointRef(e.name, e.token_file is not None, e.url) for e in sections}


def load_playbooks(
    paths: Sequence[Path],
    *,
    endpoints: Mapping[str, EndpointRef],
    guardians: Mapping[str, str],
) -> PlaybookSet:
    """The playbooks of `paths`, in order; `guardians` maps configured guardian ids to roles."""
    texts = read_texts(paths, PlaybookDefinitionError)
    return load_playbook_texts(texts, endpoints=endpoints, guardians=guardians)


def load_playbook_texts(
    texts: Iterable[tuple[str, str]],
    *,
    endpoints: Mapping[str, EndpointRef],
    guardians: Mapping[str, str],
) -> PlaybookSet:
    found: dict[str, Playbook] = {}
    names = []
    for name, text in texts:
        names.append(name)
        _File(name, text, endpoints, guardians).load_into(found)
    return PlaybookSet(tuple(found.values()), tuple(names))


class _File(YamlDoc):
    def __init__(
        self,
        name: str,
        text: str,
        endpoints: Mapping[str, EndpointRef],
        guardians: Mapping[str, str],
    ) -> None:
        super().__init__(name, text, PlaybookDefinitionError)
        self._endpoints = endpoints
        self._guardians = guardians

    def load_into(self, found: dict[str, Playbook]) -> None:
        root = self.root()
        if root is None:
            return
        for item in self.sequence(root, "a playbook file (a YAML list of `- playbook:` items)"):
            p = self._playbook(item)
            if p.id in found:
                raise self.fail(
                    item, f"playbook id {p.id!r} is also defined at {found[p.id].source}"
                )
            found[p.id] = p

    def _playbook(self, item: yaml.Node) -> Playbook:
        keys = self.mapping(item, "a playbook")
        if "playbook" not in keys:
            raise self.fail(item, "each item is a `- playbook: TITLE` mapping")
        self.check_keys(
            keys,
            ("playbook", "id", "trigger", "approval", "suppress_for", "steps"),
            "a playbook",
            required=("id", "trigger", "steps"),
            at=item,
        )
        title = self.string(keys["playbook"][1], "playbook (its title)")
        pid = self.string(keys["id"][1], "id")
        if not _ID.fullmatch(pid):
            raise self.fail(keys["id"][1], f"id {pid!r} must match {_ID.pattern}")
        trigger, on = self._trigger(keys["trigger"][1])
        approval = self.boolean(keys["approval"][1], "approval") if "approval" in keys else False
        suppress = timedelta(0)
        if "suppress_for" in keys:
            node = keys["suppress_for"][1]
            suppress = self.duration(node, "suppress_for")
            if suppress > MAX_SUPPRESS:
                raise self.fail(node, f"suppress_for is at most {MAX_SUPPRESS.days}d")
        step_nodes = self.sequence(keys["steps"][1], "steps")
        if not step_nodes:
            raise self.fail(keys["steps"][1], "a playbook needs at least one step")
        steps = tuple(self._step(n) for n in step_nodes)
        return Playbook(
            pid, title, trigger, on, approval, suppress, steps, f"{self.name}:{self.line(item)}"
        )

    def _trigger(self, node: yaml.Node) -> tuple[RecordFilter[Assessment], frozenset[Change]]:
        keys = self.mapping(node, "trigger")
        self.check_keys(keys, ("filter", "on"), "trigger", required=("filter",), at=node)
        text_node = keys["filter"][1]
        text = self.string(text_node, "trigger filter")
        try:
            flt = parse_record_filter(text, FIELDS)
        except FilterError as exc:
            raise self.fail(text_node, f"trigger filter: {exc}") from None
        on: set[Change] = {"created"}
        if "on" in keys:
            values = self.strings(keys["on"][1], "on")
            bad = [v for v in values if v not in ("created", "updated")]
            if bad or not values:
                raise self.fail(keys["on"][1], "on lists created and/or updated")
            on = {v for v in ("created", "updated") if v in values}
        return flt, frozenset(on)

    def _guardian_step(
        self,
        keys: dict[str, tuple[yaml.Node, yaml.Node]],
        node: yaml.Node,
        target: str,
        action: str,
    ) -> GuardianStep:
        takes = {"verify_backup": ("backup_set", "whole_set"), "scan_integrity": ("paths",)}
        allowed = takes.get(action, ())
        for extra in ("backup_set", "whole_set", "paths"):
            if extra in keys and extra not in allowed:
                raise self.fail(keys[extra][0], f"{extra} is not an argument of {action}")
        if action == "verify_backup":
            if "backup_set" not in keys:
                raise self.fail(node, "verify_backup needs backup_set (a configured set's name)")
            whole = (
                self.boolean(keys["whole_set"][1], "whole_set") if "whole_set" in keys else False
            )
            return GuardianStep(
                target, action, backup_set=self.string(keys["backup_set"][1], "backup_set"),
                whole_set=whole,
            )  # fmt: skip
        if action == "scan_integrity" and "paths" in keys:
            paths = self.strings(keys["paths"][1], "paths")
            if any(not p.startswith("/") for p in paths):
                raise self.fail(keys["paths"][1], "paths are absolute")
            return GuardianStep(target, action, paths=tuple(paths))
        return GuardianStep(target, action)

    def _step(self, node: yaml.Node) -> Step:
        keys = self.mapping(node, "a step")
        kinds = [k for k in (*SEND_KINDS, "guardian") if k in keys]
        if len(kinds) != 1:
            raise self.fail(
                node, f"a step is exactly one of {', '.join((*SEND_KINDS, 'guardian'))}"
            )
        kind = kinds[0]
        target_node = keys[kind][1]
        target = self.string(target_node, kind)
        if kind == "guardian":
            self.check_keys(
                keys,
                ("guardian", "action", "backup_set", "whole_set", "paths"),
                "a guardian step",
                required=("action",),
                at=node,
            )
            role = self._guardians.get(target)
            if role is None:
                raise self.fail(
                    target_node,
                    f"guardian {target!r} is not in the configuration's [[guardians]]",
                )
            action_node = keys["action"][1]
            action = self.string(action_node, "action")
            wants = GUARDIAN_ACTIONS.get(action)
            if wants is None:
                raise self.fail(action_node, f"action must be one of {', '.join(GUARDIAN_ACTIONS)}")
            if wants != role:
                raise self.fail(
                    action_node, f"{action} is an action of {wants} guardians; {target} is {role}"
                )
            return self._guardian_step(keys, node, target, action)
        allowed = ("format",) if kind == "webhook" else (("tlp",) if kind == "thehive" else ())
        self.check_keys(keys, (kind, *allowed), f"a {kind} step")
        endpoint = self._endpoints.get(target)
        if endpoint is None:
            raise self.fail(
                target_node,
                f"endpoint {target!r} is not in the configuration's [[playbooks.endpoints]] "
                "(egress goes only to listed endpoints)",
            )
        if kind == "thehive":
            if not endpoint.header_token:
                raise self.fail(
                    target_node,
                    f"TheHive takes its API key as a header token: "
                    f'endpoint {target!r} needs auth = "header"',
                )
            tlp = "amber"
            if "tlp" in keys:
                tlp = self.string(keys["tlp"][1], "tlp").lower()
                if tlp not in _TLP:
                    raise self.fail(keys["tlp"][1], f"tlp must be one of {', '.join(_TLP)}")
            return SendStep("thehive", target, "thehive", tlp)
        if kind == "n8n":
            if not endpoint.header_token:
                raise self.fail(
                    target_node,
                    f"an n8n Webhook node takes header auth: endpoint {target!r} needs "
                    "header and token_file",
                )
            if "/webhook-test/" in endpoint.url:
                raise self.fail(
                    target_node,
                    f"endpoint {target!r} is n8n's test URL (/webhook-test/), which listens only "
                    "while the editor waits: use the production URL (/webhook/...)",
                )
        fmt = "json"
        if "format" in keys:
            fmt = self.string(keys["format"][1], "format")
            if fmt not in ("json", "ocsf"):
                raise self.fail(keys["format"][1], "format is json or ocsf")
        return SendStep(kind, target, fmt)  # type: ignore[arg-type]
