"""Ruff's security rules (`S`, bandit's checks) are on for every hand-written module; a finding
may be silenced only in place and with the reason beside it, so a reviewer reads why."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("alpha", "beta", "cortex", "crypto", "mesh", "ml", "demo", "tools")
# A suppression comment naming an S code and nothing after it but other codes.
BARE = re.compile(r"#\s*noqa:\s*(?:[A-Z]+[0-9]+[,\s]*)*S[0-9]+(?:[,\s]*[A-Z]+[0-9]+)*\s*$")


def test_every_silenced_security_finding_says_why() -> None:
    bare = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "node_modules" in path.parts:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if BARE.search(line):
                    bare.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert bare == [], "a `# noqa: S...` needs its reason after it:\n" + "\n".join(bare)


def test_the_security_rules_are_selected() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    select = re.search(r"^select = \[(.*)\]", text, re.M)
    assert select is not None
    assert '"S"' in select.group(1)
