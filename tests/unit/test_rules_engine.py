"""The rule engine: kind index, matches and the events they make, failure isolation, and reloads
that swap atomically and keep the old rules when the new ones are broken."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest

from alpha.rules import RuleEngine, RuleError, load_texts
from alpha.rules.engine import KIND_CATEGORY
from alpha.rules.fields import DETAIL_KINDS
from qsc.common.v1 import classification_pb2 as cls
from qsc.common.v1 import event_pb2, file_details_pb2, process_details_pb2

Event = event_pb2.Event

RULES = """
- macro: spawned
  condition: evt.kind = process_exec
- rule: Shell
  id: t.shell
  desc: A shell.
  condition: spawned and proc.name in (bash, sh)
  output: "shell %proc.name by uid %proc.uid"
  priority: NOTICE
  tags: [T1059.004]
- rule: Root shell
  id: t.root_shell
  desc: A shell as root.
  condition: spawned and proc.name in (bash, sh) and proc.uid = 0
  output: "root shell %proc.name"
  priority: CRITICAL
  tags: [T1059.004, T1078]
- rule: Shadow read
  id: t.shadow
  desc: Shadow read.
  condition: evt.kind = file_access and fd.name = /etc/shadow
  output: "%proc.name read %fd.name"
  priority: WARNING
  category: integrity
  tags: [T1003.008]
- rule: Disabled
  id: t.disabled
  desc: Never evaluated.
  condition: spawned
  output: x
  priority: DEBUG
  enabled: false
- rule: Any ptrace
  id: t.ptrace
  desc: Every ptrace.
  condition: evt.kind = ptrace
  output: "ptrace by %proc.name"
  priority: INFO
"""


def shell(uid: int = 1000, name: str = "bash") -> Event:
    e = Event(id="e1")
    e.process.comm, e.process.uid, e.process.exe = name, uid, f"/usr/bin/{name}"
    e.process_exec.filename = e.process.exe
    e.process_exec.stdin.kind = process_details_pb2.DESCRIPTOR_KIND_TTY
    return e


def shadow_read() -> Event:
    e = Event(id="e2")
    e.process.comm = "cat"
    e.file_access.path = "/etc/shadow"
    e.file_access.access = file_details_pb2.ACCESS_MODE_READ
    return e


@pytest.fixture
def engine() -> RuleEngine:
    return RuleEngine(load_texts([("t.yaml", RULES)]))


def test_the_kind_index_holds_only_rules_that_can_match(engine: RuleEngine) -> None:
    assert [r.id for r in engine.rules_for("process_exec")] == ["t.shell", "t.root_shell"]
    assert [r.id for r in engine.rules_for("file_access")] == ["t.shadow"]
    assert [r.id for r in engine.rules_for("ptrace")] == ["t.ptrace"]
    assert engine.rules_for("gap") == ()
    assert engine.evaluate(Event()) == []  # no detail: nothing to match


def test_matches_come_in_load_order_with_everything_filled(engine: RuleEngine) -> None:
    matches = engine.evaluate(shell(uid=0))
    assert [m.rule_id for m in matches] == ["t.shell", "t.root_shell"]
    root = matches[1]
    assert (root.rule_name, root.priority, root.severity) == (
        "Root shell",
        "CRITICAL",
        cls.SEVERITY_CRITICAL,
    )
    assert root.techniques == ("T1059.004", "T1078")
    assert root.output == "root shell bash"
    assert root.category == cls.CATEGORY_PROCESS
    assert [m.rule_id for m in engine.evaluate(shell(uid=1000))] == ["t.shell"]
    assert engine.evaluate(shell(name="python3")) == []


def test_apply_makes_the_outbox_event_and_leaves_the_candidate_alone(engine: RuleEngine) -> None:
    candidate = shadow_read()
    [out] = engine.annotate(candidate)
    assert out.rule.id == "t.shadow"
    assert out.rule.techniques[0].id == "T1003.008"
    assert out.rule.techniques[0].name == "/etc/passwd and /etc/shadow"
    assert out.rule.ruleset_version == engine.ruleset.version
    assert out.severity == cls.SEVERITY_MEDIUM
    assert out.category == cls.CATEGORY_INTEGRITY  # the rule's own category wins
    assert out.summary == "cat read /etc/shadow"
    assert out.file_access.path == "/etc/shadow"
    assert not candidate.HasField("rule")
    assert candidate.summary == ""


def test_every_detail_kind_has_a_category() -> None:
    assert set(KIND_CATEGORY) == set(DETAIL_KINDS)


def test_a_rule_that_fails_is_skipped_counted_and_the_others_still_fire(
    engine: RuleEngine, caplog: pytest.LogCaptureFixture
) -> None:
    snap = engine._snapshot

    def broken(ev: Event) -> bool:
        raise RuntimeError("bug")

    plan = snap.index["process_exec"]
    slot, test, _, entry = plan.rows[0]
    rows = ((slot, test, broken, entry), *plan.rows[1:])
    patched = dataclasses.replace(plan, rows=rows)
    engine._snapshot = dataclasses.replace(snap, index={**snap.index, "process_exec": patched})
    for _ in range(3):
        assert [m.rule_id for m in engine.evaluate(shell(uid=0))] == ["t.root_shell"]
    status = engine.status()
    assert status.evaluation_errors == 3
    assert sum("t.shell" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_status_counts_matches(engine: RuleEngine) -> None:
    engine.evaluate(shell(uid=0))
    engine.evaluate(shadow_read())
    status = engine.status()
    assert status.matches == {"t.shell": 1, "t.root_shell": 1, "t.shadow": 1}
    assert (status.rules, status.enabled, status.reloads, status.last_error) == (5, 4, 0, None)


def test_reload_switches_to_the_new_files(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    engine = RuleEngine.from_files([path])
    old_version = engine.ruleset.version
    path.write_text(RULES.replace("proc.name in (bash, sh)", "proc.name in (zsh)"))
    rs = engine.reload()
    assert rs.version != old_version
    assert engine.evaluate(shell(name="bash")) == []
    assert [m.rule_id for m in engine.evaluate(shell(name="zsh"))] == ["t.shell"]
    assert engine.status().reloads == 1


def test_a_failed_reload_keeps_the_old_rules_and_reports_why(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    engine = RuleEngine.from_files([path])
    version = engine.ruleset.version
    path.write_text(RULES.replace("fd.name = /etc/shadow", "fd.nme = /etc/shadow"))
    with pytest.raises(RuleError) as err:
        engine.reload()
    assert err.value.file == str(path)
    assert err.value.line == 21  # RULES starts with a blank line
    assert engine.ruleset.version == version
    assert [m.rule_id for m in engine.evaluate(shadow_read())] == ["t.shadow"]
    status = engine.status()
    assert status.last_error is not None
    assert "fd.nme" in status.last_error
    assert status.reloads == 0
    path.write_text(RULES)
    engine.reload()
    assert engine.status().last_error is None


def test_evaluation_never_stops_or_mixes_rulesets_during_reloads(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(RULES)
    # In b, both shell rules match zsh only: a bash event matches both rules (a) or none (b).
    b.write_text(RULES.replace("proc.name in (bash, sh)", "proc.name in (zsh)"))
    engine = RuleEngine.from_files([a])
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []
    event = shell(uid=0)

    def evaluate() -> None:
        try:
            n = 0
            while not stop.is_set():
                fired = [m.rule_id for m in engine.evaluate(event)]
                assert fired in ([], ["t.shell", "t.root_shell"]), fired
                n += 1
            seen.append(n)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=evaluate) for _ in range(3)]
    for w in workers:
        w.start()
    for i in range(30):
        engine.reload([b] if i % 2 == 0 else [a])
        if i % 5 == 0:
            with pytest.raises(RuleError):
                engine.reload([tmp_path / "missing.yaml"])
    stop.set()
    for w in workers:
        w.join()
    assert not errors
    assert len(seen) == 3
    assert all(n > 0 for n in seen)
    assert engine.status().reloads == 30


def test_swap_installs_a_loaded_ruleset(engine: RuleEngine) -> None:
    engine.swap(load_texts([("x.yaml", RULES.replace("bash, sh", "fish"))]))
    assert engine.evaluate(shell()) == []
    assert engine.status().reloads == 1


def test_the_default_engine_loads_with_extra_files(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("- rule: Execution from /tmp\n  enabled: false\n")
    engine = RuleEngine.default([site])
    assert engine.ruleset.get("alpha.exec_from_tmp") is not None
    assert all(r.id != "alpha.exec_from_tmp" for r in engine.rules_for("process_exec"))
    assert engine.ruleset.files[-1] == str(site)
