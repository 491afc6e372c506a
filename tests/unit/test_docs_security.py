"""docs/security.md traces each threat to code and tests: every file and test it names exists,
and every campaign test file is traced to by some threat."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"
# `path/to/file.py` or `path/to/file.py::test_name`, in backticks.
REF = re.compile(r"`((?:tests|alpha|beta|cortex|crypto|mesh|ml|deploy)/[\w/.-]+)(?:::(\w+))?")


def _refs() -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2)) for m in REF.finditer(DOC.read_text())]


def test_every_named_file_and_test_exists() -> None:
    missing = []
    for path, test in _refs():
        target = ROOT / path
        if not target.exists():
            missing.append(path)
        elif test is not None and not re.search(
            rf"^(?:async )?def {test}\b", target.read_text(), re.M
        ):
            missing.append(f"{path}::{test}")
    assert missing == []


def test_every_campaign_test_is_traced_to_a_threat() -> None:
    named = {path for path, _ in _refs()}
    campaign = {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "tests" / "campaign").glob("test_*.py")
    }
    assert sorted(campaign - named) == []
