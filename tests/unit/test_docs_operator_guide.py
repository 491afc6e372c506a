"""docs/operator-guide.md's alert tables are generated from the default rules, and current.

The section between `<!-- alerts:begin -->` and `<!-- alerts:end -->` is what `render()` makes
of alpha/rules/default and cortex/correlate/default: one row per rule (id, severity, ATT&CK
techniques, what it means). After changing a default rule, rewrite it with

    .venv/bin/python -m tests.unit.test_docs_operator_guide --write
"""

from __future__ import annotations

import re
import sys
from datetime import timedelta
from pathlib import Path

from alpha.rules.loader import load_default
from cortex.correlate.loader import load_files
from qsc.common.v1 import classification_pb2

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operator-guide.md"
BEGIN, END = "<!-- alerts:begin -->", "<!-- alerts:end -->"
HOW_TO_FIX = "run `.venv/bin/python -m tests.unit.test_docs_operator_guide --write`"


def _cell(text: str) -> str:
    """One table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    match = re.match(r"(.+?[.!?])(\s|$)", flat)
    return match.group(1) if match else flat


def _span(window: timedelta) -> str:
    minutes = int(window.total_seconds()) // 60
    return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}m"


def _severity(value: int) -> str:
    return classification_pb2.Severity.Name(value).removeprefix("SEVERITY_").lower()  # type: ignore[arg-type]


def render() -> str:
    lines = [
        BEGIN,
        "",
        "Alpha's default rules (`alpha/rules/default/`): each is an event the Cortex stores with",
        "`rule.id` set, and which `qsc tail` and ListEvents show.",
        "",
        "| rule id | severity | ATT&CK | name: what it means |",
        "|---|---|---|---|",
    ]
    for r in sorted(load_default().rules, key=lambda r: r.id):
        techniques = ", ".join(t.id for t in r.techniques) or "-"
        meaning = f"**{r.name}**: {_first_sentence(r.desc)}"
        off = "" if r.enabled else " (disabled by default)"
        severity = f"{_severity(r.severity)}{off}"
        lines.append(f"| `{r.id}` | {severity} | {techniques} | {_cell(meaning)} |")
    lines += [
        "",
        "The Cortex's default correlations (`cortex/correlate/default/`): each raises an",
        'assessment (ListAssessments `rule = "ID"`) once its confidence reaches the threshold.',
        "",
        "| correlation id | severity | ATT&CK | type, window | title: what it means |",
        "|---|---|---|---|---|",
    ]
    for c in sorted(load_files().rules, key=lambda c: c.id):
        window = f"{c.type}, {_span(c.timespan)}"
        meaning = f"**{c.title}**: {_first_sentence(c.description)}"
        mitre = ", ".join(c.mitre) or "-"
        lines.append(f"| `{c.id}` | {c.severity} | {mitre} | {window} | {_cell(meaning)} |")
    lines += ["", END]
    return "\n".join(lines)


def _section(text: str) -> str:
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def test_the_alert_tables_are_generated_from_the_default_rules() -> None:
    assert _section(GUIDE.read_text()) == render(), HOW_TO_FIX


def test_every_default_rule_id_appears_in_the_guide() -> None:
    text = GUIDE.read_text()
    ids = [r.id for r in load_default().rules] + [c.id for c in load_files().rules]
    assert len(ids) > 50
    missing = [i for i in ids if f"`{i}`" not in text]
    assert not missing, f"{missing}: {HOW_TO_FIX}"


def main() -> None:
    text = GUIDE.read_text()
    GUIDE.write_text(text.replace(_section(text), render()))


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    main()
