"""Playbook files: what loads, what triggers, and every refusal as FILE:LINE (egress only to the
endpoints and guardians the configuration lists)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from cortex.errors import PlaybookDefinitionError
from cortex.playbooks.definitions import (
    EndpointRef,
    GuardianStep,
    SendStep,
    load_playbook_texts,
    load_playbooks,
)
from tests.unit.test_cortex_windows import assessment

ENDPOINTS = {
    "soar": EndpointRef("soar", header_token=False),
    "n8n-local": EndpointRef("n8n-local", header_token=True),
    "hive": EndpointRef("hive", header_token=True),
    "n8n-editor": EndpointRef("n8n-editor", True, "http://n8n:5678/webhook-test/qsc"),
}
GUARDIANS = {"beta-web-01": "beta", "alpha-web-01": "alpha"}

GOOD = """
- playbook: Tell the SOAR about confident intrusions
  id: notify-soar
  trigger:
    filter: 'severity >= HIGH AND confidence >= 0.8'
    on: [created, updated]
  suppress_for: 1h
  steps:
    - webhook: soar
      format: ocsf
    - n8n: n8n-local
    - thehive: hive
      tlp: red
- playbook: Verify the backups after a ransomware-like pattern
  id: verify-backups
  approval: true
  trigger:
    filter: 'rule = "cortex.ransomware_like"'
  steps:
    - guardian: beta-web-01
      action: verify_backup
      backup_set: etc-nightly
      whole_set: true
    - guardian: beta-web-01
      action: scan_integrity
      paths: [/etc/ssh]
"""


def load(text: str) -> object:
    return load_playbook_texts([("site.yaml", text)], endpoints=ENDPOINTS, guardians=GUARDIANS)


def test_a_good_file_loads_with_its_defaults() -> None:
    playbooks = load_playbook_texts([("site.yaml", GOOD)], endpoints=ENDPOINTS, guardians=GUARDIANS)
    notify = playbooks.get("notify-soar")
    assert notify is not None
    assert notify.on == {"created", "updated"}
    assert notify.suppress_for == timedelta(hours=1)
    assert not notify.approval
    assert notify.steps == (
        SendStep("webhook", "soar", "ocsf"),
        SendStep("n8n", "n8n-local", "json"),
        SendStep("thehive", "hive", "thehive", "red"),
    )
    assert notify.source == "site.yaml:2"
    verify = playbooks.get("verify-backups")
    assert verify is not None
    assert verify.on == {"created"}
    assert verify.approval
    assert verify.steps == (
        GuardianStep("beta-web-01", "verify_backup", backup_set="etc-nightly", whole_set=True),
        GuardianStep("beta-web-01", "scan_integrity", paths=("/etc/ssh",)),
    )


def test_triggers_follow_the_filter_and_the_change() -> None:
    playbooks = load_playbook_texts([("site.yaml", GOOD)], endpoints=ENDPOINTS, guardians=GUARDIANS)
    confident = assessment(None, state="open")
    assert [p.id for p in playbooks.triggered_by(confident, "created")] == ["notify-soar"]
    assert [p.id for p in playbooks.triggered_by(confident, "updated")] == ["notify-soar"]
    unsure = replace(confident, confidence=0.5)
    assert playbooks.triggered_by(unsure, "created") == []
    ransom = replace(confident, rule_id="cortex.ransomware_like", confidence=0.5)
    assert [p.id for p in playbooks.triggered_by(ransom, "created")] == ["verify-backups"]
    assert playbooks.triggered_by(ransom, "updated") == []


def test_files_load_in_order_and_an_id_twice_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(GOOD)
    b.write_text(GOOD.split("- playbook: Verify")[0])
    with pytest.raises(PlaybookDefinitionError) as caught:
        load_playbooks([a, b], endpoints=ENDPOINTS, guardians=GUARDIANS)
    assert str(caught.value).startswith(f"{b}:2: playbook id 'notify-soar' is also defined at")
    with pytest.raises(PlaybookDefinitionError, match="cannot read"):
        load_playbooks([tmp_path / "missing.yaml"], endpoints=ENDPOINTS, guardians=GUARDIANS)
    assert load_playbooks([], endpoints=ENDPOINTS, guardians=GUARDIANS).playbooks == ()


STEP = """
- playbook: P
  id: p
  trigger:
    filter: 'state = OPEN'
  steps:
    - {step}
"""


@pytest.mark.parametrize(
    ("step", "line", "reason"),
    [
        ("webhook: elsewhere", 7, "endpoint 'elsewhere' is not in the configuration"),
        ("webhook: soar\n      format: xml", 8, "format is json or ocsf"),
        ("webhook: soar\n      tlp: red", 8, "unknown key 'tlp'"),
        ("thehive: soar", 7, 'needs auth = "header"'),
        ("thehive: hive\n      tlp: purple", 8, "tlp must be one of"),
        ("guardian: beta-db-01\n      action: verify_backup", 7, "not in the configuration's"),
        ("guardian: beta-web-01\n      action: reboot", 8, "action must be one of"),
        (
            "guardian: beta-web-01\n      action: scan_memory",
            8,
            "scan_memory is an action of alpha guardians",
        ),
        ("guardian: beta-web-01", 7, "lacks action"),
        ("guardian: beta-web-01\n      action: verify_backup", 7, "needs backup_set"),
        (
            "guardian: beta-web-01\n      action: approve_heal\n      paths: [/etc]",
            9,
            "paths is not an argument of approve_heal",
        ),
        (
            "guardian: beta-web-01\n      action: scan_integrity\n      paths: [etc]",
            9,
            "paths are absolute",
        ),
        ("webhook: soar\n      n8n: n8n-local", 7, "exactly one of"),
        ("n8n: soar", 7, "n8n Webhook node takes header auth"),
        ("n8n: n8n-editor", 7, "use the production URL"),
    ],
)
def test_bad_steps_are_refused_with_their_line(step: str, line: int, reason: str) -> None:
    with pytest.raises(PlaybookDefinitionError) as caught:
        load(STEP.format(step=step))
    assert str(caught.value).startswith(f"site.yaml:{line}: "), str(caught.value)
    assert reason in str(caught.value)


P, TRIGGER, STEPS = (
    "- playbook: P\n  id: p\n",
    "  trigger: {filter: ''}\n",
    "  steps: [{webhook: soar}]\n",
)


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("- playbook: P\n  id: P!\n" + TRIGGER + STEPS, 2, "must match"),
        (P + STEPS, 1, "lacks trigger"),
        (P + "  trigger: {filter: 'colour = red'}\n" + STEPS, 3, "trigger filter"),
        (P + "  trigger: {filter: '', on: [deleted]}\n" + STEPS, 3, "on lists"),
        (P + TRIGGER + "  steps: []\n", 4, "at least one step"),
        (P + TRIGGER + "  suppress_for: 90d\n" + STEPS, 4, "at most 30d"),
        (P + TRIGGER + STEPS + "  colour: red\n", 5, "unknown key 'colour'"),
        ("- id: p\n", 1, "`- playbook: TITLE`"),
        ("playbook: [\n", 2, "YAML syntax"),
    ],
)
def test_bad_playbooks_are_refused_with_their_line(text: str, line: int, reason: str) -> None:
    with pytest.raises(PlaybookDefinitionError) as caught:
        load(text)
    assert str(caught.value).startswith(f"site.yaml:{line}: "), str(caught.value)
    assert reason in str(caught.value)
