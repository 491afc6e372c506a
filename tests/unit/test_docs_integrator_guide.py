"""docs/integrator-guide.md's code blocks are the files of docs/snippets/, verbatim.

Each code block in the guide follows a line `<!-- snippet: docs/snippets/FILE -->` and holds
that file exactly; every file of docs/snippets/ is in the guide once. The snippets themselves
run in tests/integration/test_integrator_snippets.py. After editing a snippet, refill the
guide's blocks with

    .venv/bin/python -m tests.unit.test_docs_integrator_guide --write
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "integrator-guide.md"
SNIPPETS = ROOT / "docs" / "snippets"
HOW_TO_FIX = "run `.venv/bin/python -m tests.unit.test_docs_integrator_guide --write`"
LANGUAGES = {".sh": "sh", ".py": "python", ".go": "go", ".js": "javascript", ".yaml": "yaml"}
# A marker, then a fenced block: its language and its body (which never holds a fence line).
BLOCK = re.compile(
    r"^<!-- snippet: (?P<path>\S+) -->\n```(?P<lang>\w*)\n(?P<body>(?:(?!```).*\n)*?)```$",
    re.MULTILINE,
)
FENCE = re.compile(r"^```", re.MULTILINE)


def snippet_files() -> list[str]:
    return sorted(
        str(p.relative_to(ROOT))
        for p in SNIPPETS.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )


def fill(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        path = ROOT / match["path"]
        lang = LANGUAGES.get(path.suffix, "")
        return f"<!-- snippet: {match['path']} -->\n```{lang}\n{path.read_text()}```"

    return BLOCK.sub(one, text)


def test_every_code_block_is_a_snippet_file_verbatim() -> None:
    text = GUIDE.read_text()
    blocks = list(BLOCK.finditer(text))
    # Every fence opens or closes a marked block: no code the tests do not run.
    assert len(FENCE.findall(text)) == 2 * len(blocks), "a code block without a snippet marker"
    for match in blocks:
        path = ROOT / match["path"]
        assert path.is_file(), f"{match['path']} does not exist"
        assert match["lang"] == LANGUAGES[path.suffix], match["path"]
        assert match["body"] == path.read_text(), f"{match['path']} differs: {HOW_TO_FIX}"


def test_every_snippet_file_is_in_the_guide_once() -> None:
    included = sorted(m["path"] for m in BLOCK.finditer(GUIDE.read_text()))
    assert included == snippet_files()


def test_the_readme_links_the_guides() -> None:
    readme = (ROOT / "README.md").read_text()
    for doc in ("integrator-guide.md", "operator-guide.md", "security-model.md"):
        assert f"(docs/{doc})" in readme, doc
        assert (ROOT / "docs" / doc).is_file(), doc


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    GUIDE.write_text(fill(GUIDE.read_text()))
