"""YAML rule files: what loads, how later files tune earlier ones, and every malformed file refused
with FILE:LINE and the reason."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from alpha.rules import RuleError, load_files, load_texts
from alpha.rules.compiler import Condition
from alpha.rules.loader import ENGINE_VERSION, Ruleset
from qsc.common.v1 import classification_pb2 as cls
from qsc.common.v1 import event_pb2

Event = event_pb2.Event

BASE = """
- list: shells
  items: [bash, sh]

- macro: spawned
  condition: evt.kind = process_exec

- rule: Shell started
  id: site.shell_started
  desc: A shell started.
  condition: spawned and proc.name in (shells)
  output: "shell %proc.name (parent %proc.pname)"
  priority: WARNING
  tags: [host, T1059.004, mitre_execution]
"""


def load(*texts: str) -> Ruleset:
    return load_texts([(f"f{i}.yaml", textwrap.dedent(t)) for i, t in enumerate(texts)])


def shell(comm: str = "bash", parent: str = "sshd", exe: str = "/usr/bin/bash") -> Event:
    e = Event()
    e.process.comm, e.process.exe = comm, exe
    e.process.args.append(comm)
    e.process.ancestry.add(comm=parent, exe=f"/usr/sbin/{parent}")
    e.process_exec.filename = exe
    return e


def fires(rs: Ruleset, event: Event, rule_id: str = "site.shell_started") -> bool:
    rule = rs.get(rule_id)
    assert rule is not None
    return rule.enabled and Condition(rule.tree).matches(event)


# --- what loads -----------------------------------------------------------------------------------


def test_a_rule_loads_with_everything_it_declares() -> None:
    rs = load(BASE)
    [rule] = rs.rules
    assert (rule.id, rule.name, rule.desc) == (
        "site.shell_started",
        "Shell started",
        "A shell started.",
    )
    assert (rule.priority, rule.severity) == ("WARNING", cls.SEVERITY_MEDIUM)
    assert rule.tags == ("host", "T1059.004", "mitre_execution")
    [tech] = rule.techniques
    assert (tech.id, tech.name, tech.tactics) == (
        "T1059.004",
        "Unix Shell",
        (cls.MITRE_TACTIC_EXECUTION,),
    )
    assert rule.kinds == {"process_exec"}
    assert rule.location.file == "f0.yaml"
    assert rule.location.line == 8
    assert rs.lists["shells"] == ("bash", "sh")
    assert rs.macros["spawned"] == "evt.kind = process_exec"
    assert rs.version.startswith("sha256:")
    assert fires(rs, shell())
    assert not fires(rs, shell("zsh"))


@pytest.mark.parametrize(
    ("written", "severity"),
    [
        ("emergency", cls.SEVERITY_CRITICAL),
        ("ALERT", cls.SEVERITY_CRITICAL),
        ("Critical", cls.SEVERITY_CRITICAL),
        ("ERROR", cls.SEVERITY_HIGH),
        ("high", cls.SEVERITY_HIGH),
        ("WARNING", cls.SEVERITY_MEDIUM),
        ("medium", cls.SEVERITY_MEDIUM),
        ("NOTICE", cls.SEVERITY_LOW),
        ("low", cls.SEVERITY_LOW),
        ("INFORMATIONAL", cls.SEVERITY_INFO),
        ("info", cls.SEVERITY_INFO),
        ("DEBUG", cls.SEVERITY_INFO),
    ],
)
def test_priorities_map_to_severities(written: str, severity: int) -> None:
    rs = load(BASE.replace("priority: WARNING", f"priority: {written}"))
    assert rs.rules[0].severity == severity
    assert rs.rules[0].priority == written.upper()


def test_tactic_tags_default_to_the_technique_table() -> None:
    rs = load(
        BASE.replace("tags: [host, T1059.004, mitre_execution]", "tags: [T1055, T9999.001, TA0005]")
    )
    techniques = {t.id: t for t in rs.rules[0].techniques}
    assert techniques["T1055"].tactics == (cls.MITRE_TACTIC_DEFENSE_EVASION,)  # the rule's TA0005
    assert techniques["T9999.001"].name == ""  # unknown to the table, still carried
    rs2 = load(BASE.replace("tags: [host, T1059.004, mitre_execution]", "tags: [T1055]"))
    assert rs2.rules[0].techniques[0].tactics == (
        cls.MITRE_TACTIC_DEFENSE_EVASION,
        cls.MITRE_TACTIC_PRIVILEGE_ESCALATION,
    )


def test_rule_ids_default_to_a_slug_and_a_category_can_be_set() -> None:
    rs = load(
        BASE.replace("  id: site.shell_started\n", "").replace(
            "tags:", "category: network\n  tags:"
        )
    )
    assert rs.rules[0].id == "custom.shell_started"
    assert rs.rules[0].category == cls.CATEGORY_NETWORK


def test_empty_files_and_comment_only_files_load() -> None:
    assert load("", "# nothing here\n").rules == ()


def test_exceptions_in_falco_form() -> None:
    rs = load(
        BASE
        + """
  exceptions:
    - name: by_parent
      fields: [proc.pname, proc.exe]
      comps: [=, pmatch]
      values:
        - [cron, [/usr/bin, /bin]]
        - [sshd, /opt]
    - name: one_field
      fields: proc.aname
      comps: in
      values: [tmux, screen]
    - name: placeholder
      fields: [proc.name]
      values: []
"""
    )
    assert not fires(rs, shell(parent="cron"))
    assert fires(rs, shell(parent="cron", exe="/tmp/bash"))
    assert fires(rs, shell(parent="sshd"))
    assert not fires(rs, shell(parent="sshd", exe="/opt/bash"))
    assert not fires(rs, shell(parent="tmux"))


def test_exception_cells_may_name_lists_and_give_alternatives() -> None:
    rs = load(
        BASE
        + """
  exceptions:
    - name: by_exe
      fields: [proc.exe]
      comps: [startswith]
      values:
        - [[/opt/, /srv/]]
        - [trusted_prefixes]
- list: trusted_prefixes
  items: [/usr/local/]
"""
    )
    assert not fires(rs, shell(exe="/srv/bash"))
    assert not fires(rs, shell(exe="/usr/local/bin/bash"))
    assert fires(rs, shell(exe="/usr/bin/bash"))


def test_allow_conditions() -> None:
    rs = load(BASE + "  allow:\n    - proc.pname = cron\n    - proc.exe startswith /opt\n")
    assert not fires(rs, shell(parent="cron"))
    assert not fires(rs, shell(exe="/opt/bash"))
    assert fires(rs, shell())


def test_later_files_replace_lists_and_macros_and_bind_late() -> None:
    rs = load(BASE, "- list: shells\n  items: [zsh]\n")
    assert fires(rs, shell("zsh"))
    assert not fires(rs, shell("bash"))
    rs2 = load(BASE, "- macro: spawned\n  condition: evt.kind = ptrace\n")
    assert rs2.rules[0].kinds == {"ptrace"}


def test_append_and_override_lists_and_macros() -> None:
    rs = load(
        BASE,
        """
        - list: shells
          items: [zsh]
          append: true
        - list: extra
          items: [fish]
        - list: shells
          override: {items: append}
          items: [extra]
        """,
    )
    assert rs.lists["shells"] == ("bash", "sh", "zsh", "fish")
    rs2 = load(BASE, "- list: shells\n  override: {items: replace}\n  items: [ksh]\n")
    assert rs2.lists["shells"] == ("ksh",)
    rs3 = load(BASE, "- macro: spawned\n  append: true\n  condition: and proc.pname = sshd\n")
    assert rs3.macros["spawned"] == "evt.kind = process_exec and proc.pname = sshd"
    assert not fires(rs3, shell(parent="cron"))
    rs4 = load(
        BASE, "- macro: spawned\n  override: {condition: replace}\n  condition: evt.kind = ptrace\n"
    )
    assert rs4.rules[0].kinds == {"ptrace"}


def test_override_rules() -> None:
    rs = load(
        BASE,
        """
        - rule: Shell started
          override:
            condition: append
            priority: replace
            tags: append
            output: replace
            desc: replace
          condition: and not proc.pname = cron
          priority: CRITICAL
          tags: [T1078]
          output: "new %proc.name"
          desc: New text.
        """,
    )
    rule = rs.rules[0]
    assert rule.condition == "spawned and proc.name in (shells) and not proc.pname = cron"
    assert rule.severity == cls.SEVERITY_CRITICAL
    assert [t.id for t in rule.techniques] == ["T1059.004", "T1078"]
    assert rule.output.text == "new %proc.name"
    assert rule.desc == "New text."
    assert not fires(rs, shell(parent="cron"))


def test_exceptions_append_rows_and_new_exceptions() -> None:
    with_exc = BASE + (
        "  exceptions:\n    - name: by_parent\n      fields: [proc.pname]\n      values: [[cron]]\n"
    )
    rs = load(
        with_exc,
        """
        - rule: Shell started
          override: {exceptions: append}
          exceptions:
            - name: by_parent
              values: [[tmux]]
            - name: by_exe
              fields: proc.exe
              comps: startswith
              values: [/opt/]
        """,
    )
    assert not fires(rs, shell(parent="cron"))
    assert not fires(rs, shell(parent="tmux"))
    assert not fires(rs, shell(exe="/opt/x/bash"))
    assert fires(rs, shell(parent="sshd"))
    legacy = load(
        with_exc,
        "- rule: Shell started\n  append: true\n  exceptions:\n"
        "    - name: by_parent\n      values: [[screen]]\n",
    )
    assert not fires(legacy, shell(parent="screen"))


def test_rules_can_be_switched_off_and_on_from_a_later_file() -> None:
    rs = load(BASE, "- rule: Shell started\n  enabled: false\n")
    assert not rs.rules[0].enabled
    assert rs.enabled_rules == ()
    rs2 = load(
        BASE.replace("priority: WARNING", "priority: WARNING\n  enabled: false"),
        "- rule: Shell started\n  enabled: true\n",
    )
    assert rs2.rules[0].enabled


def test_warnings_for_rules_tried_on_every_kind_or_never_matching() -> None:
    rs = load(BASE.replace("spawned and proc.name", "proc.name"))
    assert any("tried on every event kind" in w for w in rs.warnings)
    rs2 = load(
        BASE.replace("spawned and proc.name", "evt.kind = ptrace and fd.name = x and proc.name")
    )
    assert any("can never match" in w for w in rs2.warnings)


def test_the_version_follows_the_content() -> None:
    assert load(BASE).version == load(BASE).version
    assert load(BASE).version != load(BASE + "\n# changed\n").version


def test_files_and_directories_load_in_order(tmp_path: Path) -> None:
    d = tmp_path / "rules.d"
    d.mkdir()
    (d / "10-base.yaml").write_text(textwrap.dedent(BASE))
    (d / "20-tune.yml").write_text("- list: shells\n  items: [zsh]\n")
    (d / "notes.txt").write_text("ignored")
    rs = load_files([d])
    assert [Path(f).name for f in rs.files] == ["10-base.yaml", "20-tune.yml"]
    assert rs.lists["shells"] == ("zsh",)


def test_unreadable_files_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"- list: x\n  items: [\xff]\n")
    with pytest.raises(RuleError, match=r"bad.yaml: not UTF-8"):
        load_files([bad])
    with pytest.raises(RuleError, match=r"missing.yaml: cannot read"):
        load_files([tmp_path / "missing.yaml"])


# --- malformed files ------------------------------------------------------------------------------

RULE = """\
- rule: R
  desc: d
  condition: evt.kind = process_exec
  output: "%proc.name"
  priority: NOTICE
"""

EXC = "  exceptions:\n    - name: e\n"

MALFORMED: list[tuple[str, str, int, str]] = [
    ("yaml syntax", "- rule: R\n  desc: [unclosed\n", 3, "YAML syntax"),
    ("yaml tab", "- rule: R\n\t desc: x\n", 2, "YAML syntax"),
    ("not a list", "rule: R\n", 1, "a rules file must be a YAML list"),
    ("item not a mapping", "- just a string\n", 1, "an item must be a mapping"),
    ("no item kind", "- desc: x\n", 1, "each item needs exactly one of rule, macro, list"),
    ("two item kinds", "- rule: R\n  macro: M\n", 1, "found rule, macro"),
    ("unknown rule key", RULE + "  severity: high\n", 6, "unknown key 'severity' in rule 'R'"),
    ("duplicate key", RULE + "  desc: again\n", 6, "key 'desc' given twice"),
    (
        "missing condition",
        RULE.replace("  condition: evt.kind = process_exec\n", ""),
        1,
        "rule 'R' has no condition",
    ),
    ("missing output", RULE.replace('  output: "%proc.name"\n', ""), 1, "rule 'R' has no output"),
    ("missing desc", RULE.replace("  desc: d\n", ""), 1, "rule 'R' has no desc"),
    ("missing priority", RULE.replace("  priority: NOTICE\n", ""), 1, "rule 'R' has no priority"),
    ("bad priority", RULE.replace("NOTICE", "URGENT"), 5, "unknown priority 'URGENT'"),
    ("priority not a string", RULE.replace("NOTICE", "[a]"), 5, "priority must be a string"),
    ("bad technique", RULE + "  tags: [host, T105]\n", 6, "bad MITRE technique id 'T105'"),
    ("bad sub-technique", RULE + "  tags:\n    - T1055.8\n", 7, "bad MITRE technique id 'T1055.8'"),
    ("lowercase technique", RULE + "  tags: [t1055]\n", 6, "bad MITRE technique id 't1055'"),
    ("unknown tactic tag", RULE + "  tags: [mitre_world_domination]\n", 6, "unknown MITRE tactic"),
    ("unknown tactic id", RULE + "  tags: [TA0099]\n", 6, "unknown MITRE tactic 'TA0099'"),
    ("tags not a list", RULE + "  tags: T1055\n", 6, "tags must be a list"),
    ("enabled not a bool", RULE + "  enabled: maybe\n", 6, "enabled must be true or false"),
    ("bad id", RULE + "  id: Site-Rule\n", 6, "rule id 'Site-Rule' must be lowercase"),
    ("bad category", RULE + "  category: weird\n", 6, "unknown category 'weird'"),
    (
        "condition syntax",
        RULE.replace(
            "evt.kind = process_exec", ">\n    evt.kind = process_exec and\n    (proc.name = x"
        ),
        5,
        "expected ')'",
    ),
    (
        "unknown field on its line",
        RULE.replace(
            "evt.kind = process_exec", "|\n    evt.kind = process_exec\n    and proc.nmae = bash"
        ),
        5,
        "unknown field 'proc.nmae' (did you mean 'proc.name'?)",
    ),
    (
        "type mismatch",
        RULE.replace(
            "evt.kind = process_exec",
            '>\n    evt.kind = process_exec and\n\n    proc.pid startswith "x"',
        ),
        6,
        "operator 'startswith' does not apply to proc.pid (int field)",
    ),
    (
        "quoted condition",
        RULE.replace(
            "evt.kind = process_exec", '"evt.kind = process_exec and\n    proc.name = x and nope"'
        ),
        4,
        "unknown macro 'nope'",
    ),
    (
        "unknown macro",
        RULE.replace("evt.kind = process_exec", "spawned_process"),
        3,
        "unknown macro 'spawned_process'",
    ),
    (
        "misspelt list",
        "- list: shell_binaries\n  items: [bash]\n"
        + RULE.replace("evt.kind = process_exec", "proc.name in (shell_binary)"),
        5,
        "unknown list 'shell_binary' (did you mean 'shell_binaries'?)",
    ),
    (
        "circular macros",
        "- macro: a\n  condition: proc.pid > 1 and b\n- macro: b\n  condition: a or proc.pid = 0\n",
        4,
        "circular macro reference",
    ),
    ("self macro", "- macro: a\n  condition: a\n", 2, "circular macro reference: a -> a"),
    (
        "circular lists",
        "- list: a\n  items: [b]\n- list: b\n  items: [x, a]\n",
        1,
        "circular list reference: a -> b -> a",
    ),
    (
        "bad macro in unused macro",
        "- macro: m\n  condition: proc.pid = abc\n",
        2,
        "'abc' is not an integer",
    ),
    ("duplicate rule", RULE + RULE, 6, "duplicate rule 'R' (first defined at f0.yaml:1)"),
    (
        "duplicate list",
        "- list: a\n  items: []\n- list: a\n  items: [x]\n",
        3,
        "duplicate list 'a'",
    ),
    (
        "duplicate macro",
        "- macro: a\n  condition: proc.pid = 1\n- macro: a\n  condition: proc.pid = 2\n",
        3,
        "duplicate macro 'a'",
    ),
    (
        "duplicate id",
        RULE + "  id: x.r\n" + RULE.replace("rule: R", "rule: S") + "  id: x.r\n",
        12,
        "rule id 'x.r' is already used by rule 'R'",
    ),
    (
        "unknown output field",
        RULE.replace('"%proc.name"', '"%proc.nmae"'),
        4,
        "unknown field %proc.nmae",
    ),
    ("list without items", "- list: a\n", 1, "list 'a' has no items"),
    ("list items not a list", "- list: a\n  items: x\n", 2, "items of list 'a' must be a list"),
    ("nested list item", "- list: a\n  items: [[x]]\n", 2, "must be a string"),
    (
        "unknown list key",
        "- list: a\n  items: []\n  desc: x\n",
        3,
        "unknown key 'desc' in list 'a'",
    ),
    ("macro without condition", "- macro: m\n", 1, "macro 'm' has no condition"),
    (
        "bad macro name",
        "- macro: 'my macro'\n  condition: proc.pid = 1\n",
        1,
        "must be letters, digits",
    ),
    (
        "exception without name",
        RULE + "  exceptions:\n    - fields: [proc.name]\n      values: [[x]]\n",
        7,
        "an exception needs a name",
    ),
    (
        "exception arity",
        RULE + EXC + "      fields: [proc.name, proc.exe]\n      values:\n        - [x]\n",
        10,
        "this row has 1 values for 2 fields",
    ),
    (
        "exception comps count",
        RULE + EXC + "      fields: [proc.name]\n      comps: [=, =]\n      values: []\n",
        9,
        "2 comps for 1 fields",
    ),
    (
        "exception bad comp",
        RULE + EXC + "      fields: [proc.name]\n      comps: [like]\n      values: []\n",
        9,
        "unknown comparison 'like'",
    ),
    (
        "exception unknown field",
        RULE
        + "  exceptions:\n    - name: e\n      fields: [proc.nam]\n      values:\n        - [x]\n",
        10,
        "exception 'e': unknown field 'proc.nam'",
    ),
    (
        "exception type mismatch",
        RULE + EXC + "      fields: [proc.pid]\n      values:\n        - [abc]\n",
        10,
        "'abc' is not an integer",
    ),
    (
        "duplicate exception",
        RULE + EXC + "      fields: proc.name\n    - name: e\n      fields: proc.exe\n",
        9,
        "duplicate exception name 'e'",
    ),
    (
        "unknown exception key",
        RULE + "  exceptions:\n    - name: e\n      field: proc.name\n",
        8,
        "unknown key 'field'",
    ),
    (
        "override unknown rule",
        "- rule: R\n  override: {enabled: replace}\n  enabled: false\n",
        1,
        "rule 'R' is not defined",
    ),
    ("enable unknown rule", "- rule: R\n  enabled: false\n", 1, "rule 'R' is not defined"),
    (
        "append unknown list",
        "- list: a\n  append: true\n  items: [x]\n",
        1,
        "append to list 'a', which is not defined",
    ),
    (
        "append unknown macro",
        "- macro: m\n  append: true\n  condition: and x\n",
        1,
        "append to macro 'm'",
    ),
    (
        "override key missing",
        RULE + "- rule: R\n  override: {output: replace}\n",
        7,
        "override names 'output' but the item does not give it",
    ),
    (
        "override key unlisted",
        RULE + "- rule: R\n  override: {output: replace}\n  output: x\n  desc: y\n",
        9,
        "'desc' is given but not listed under override",
    ),
    (
        "override bad mode",
        RULE + "- rule: R\n  override: {output: append}\n  output: x\n",
        7,
        "output can be replace, not 'append'",
    ),
    (
        "override id",
        RULE + "- rule: R\n  override: {desc: replace}\n  desc: y\n  id: a.b\n",
        9,
        "id cannot be changed",
    ),
    (
        "append non-appendable",
        RULE + "- rule: R\n  append: true\n  output: x\n",
        8,
        "'output' cannot be appended to",
    ),
    ("append nothing", RULE + "- rule: R\n  append: true\n", 7, "nothing to append"),
    (
        "append and override",
        RULE + "- rule: R\n  append: true\n  override: {desc: replace}\n  desc: y\n",
        8,
        "either append or override",
    ),
    (
        "engine version",
        f"- required_engine_version: {ENGINE_VERSION + 1}\n",
        1,
        "needs engine version",
    ),
    ("engine version text", "- required_engine_version: x\n", 1, "must be an integer"),
]


@pytest.mark.parametrize(
    ("case", "text", "line", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_malformed_files_are_refused_with_file_line_and_reason(
    case: str, text: str, line: int, reason: str
) -> None:
    with pytest.raises(RuleError) as err:
        load_texts([("f0.yaml", text)])
    assert err.value.file == "f0.yaml", case
    assert reason in err.value.reason, (case, err.value.reason)
    assert err.value.line == line, (case, str(err.value))
    assert str(err.value).startswith(f"f0.yaml:{line}: ")


def test_errors_in_a_later_file_name_that_file() -> None:
    with pytest.raises(RuleError) as err:
        load_texts(
            [
                ("base.yaml", RULE),
                ("site.yaml", "- rule: R\n  append: true\n  condition: and proc.nmae = x\n"),
            ]
        )
    assert (err.value.file, err.value.line) == ("site.yaml", 3)
    assert "proc.nmae" in err.value.reason


def test_a_broken_macro_is_reported_where_it_is_defined_not_where_used() -> None:
    text = (
        RULE.replace("evt.kind = process_exec", "m")
        + "- macro: m\n  condition: >\n    proc.pid = 1 and\n    proc.pid = x\n"
    )
    with pytest.raises(RuleError) as err:
        load_texts([("f0.yaml", text)])
    assert (err.value.file, err.value.line) == ("f0.yaml", 9)


# --- action: kill ----------------------------------------------------------------------------

_KILLABLE = """
- rule: Memfd
  id: site.memfd
  desc: d
  condition: evt.kind = process_exec and exec.memfd
  output: o
  priority: CRITICAL
  enforce: memfd_exec
"""


def test_action_kill_needs_a_kernel_check() -> None:
    rules = load_texts([("a.yaml", _KILLABLE + "  action: kill\n")]).rules
    assert [(r.action, r.enforce) for r in rules] == [("kill", "memfd_exec")]
    no_check = _KILLABLE.replace("  enforce: memfd_exec\n", "  action: kill\n")
    with pytest.raises(RuleError, match=r"a\.yaml:8: rule 'Memfd' has action kill but no kernel"):
        load_texts([("a.yaml", no_check)])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("  action: explode\n", "action 'explode' is not one of alert, kill"),
        ("  enforce: everything\n", "enforce 'everything' is no kernel check; known: memfd_exec"),
    ],
)
def test_bad_action_or_check(line: str, message: str) -> None:
    text = _KILLABLE.replace("  enforce: memfd_exec\n", line)
    with pytest.raises(RuleError, match=message):
        load_texts([("a.yaml", text)])


def test_a_site_file_turns_a_default_rule_into_kill() -> None:
    override = "- rule: Memfd\n  override:\n    action: replace\n  action: kill\n"
    rules = load_texts([("a.yaml", _KILLABLE), ("site.yaml", override)]).rules
    assert rules[0].action == "kill"
    from alpha.sources.syscalls import kill_checks

    ruleset = load_texts([("a.yaml", _KILLABLE), ("site.yaml", override)])
    assert kill_checks(ruleset) == {"memfd_exec": ("site.memfd",)}
    assert kill_checks(load_texts([("a.yaml", _KILLABLE)])) == {}
