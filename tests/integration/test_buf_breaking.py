"""tools/buf-breaking.sh compares against the right base, with the real buf.

Each test builds a throwaway git repository holding a one-file buf module and runs the script in
it. A break made several commits back on a branch must fail however the branch reaches main; an
additive change must pass; a shallow clone must fail and say why rather than pass unchecked. buf
is part of the test toolchain (npm): when missing the test fails, it does not skip.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "buf-breaking.sh"
BUF = ROOT / "tools" / "npm" / "node_modules" / ".bin" / "buf"
HOW_TO_FIX = "run `make test`, or `npm ci --prefix tools/npm` with Node.js installed"

BUF_YAML = "version: v2\nmodules:\n  - path: proto\nbreaking:\n  use:\n    - FILE\n"
PROTO = Path("proto/demo/v1/thing.proto")
FIELDS = {"name": "string name = 1;", "size": "uint32 size = 2;", "tag": "string tag = 3;"}
BUF_FAILED = 100  # buf's exit code when it found breaking changes
SCRIPT_REFUSED = 2  # the script's own "cannot check" exit code


def _thing(*fields: str) -> str:
    body = "".join(f"  {FIELDS[f]}\n" for f in fields)
    return f'syntax = "proto3";\n\npackage demo.v1;\n\nmessage Thing {{\n{body}}}\n'


def _env() -> dict[str, str]:
    who = {"name": "QSC Test", "email": "test@qsc.invalid"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "BUF_BREAKING_"))}
    env |= {
        f"GIT_{role}_{key.upper()}": value
        for role in ("AUTHOR", "COMMITTER")
        for key, value in who.items()
    }
    env |= {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "BUF": str(BUF)}
    return env


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, env=_env(), check=True, capture_output=True, text=True
    )
    return done.stdout


def _commit(repo: Path, message: str, thing: str | None = None) -> None:
    if thing is not None:
        (repo / PROTO).write_text(thing)
    else:
        with (repo / "NOTES").open("a") as notes:
            notes.write(f"{message}\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)


def _check(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT)], cwd=repo, env=_env(), capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    """main with two commits: the API (name, size), then an unrelated change."""
    if not os.access(BUF, os.X_OK):
        pytest.fail(f"buf not found at {BUF}: {HOW_TO_FIX}", pytrace=False)
    repo = tmp_path / "upstream"
    (repo / PROTO.parent).mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    (repo / "buf.yaml").write_text(BUF_YAML)
    _commit(repo, "the API", _thing("name", "size"))
    _commit(repo, "unrelated on main")
    return repo


@pytest.fixture
def clone(upstream: Path, tmp_path: Path) -> Path:
    """A clone of main, as CI has it: origin/main is HEAD."""
    repo = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(upstream), str(repo))
    return repo


def test_a_break_two_commits_back_on_a_branch_fails(clone: Path) -> None:
    _git(clone, "checkout", "-q", "-b", "feature")
    _commit(clone, "drop size", _thing("name"))
    _commit(clone, "unrelated on the branch")
    done = _check(clone)
    assert done.returncode == BUF_FAILED, done
    assert 'Previously present field "2" with name "size"' in done.stdout
    assert "merge-base with origin/main" in done.stdout


def test_an_additive_branch_passes(clone: Path) -> None:
    _git(clone, "checkout", "-q", "-b", "feature")
    _commit(clone, "add tag", _thing("name", "size", "tag"))
    _commit(clone, "unrelated on the branch")
    done = _check(clone)
    assert done.returncode == 0, done
    assert "merge-base with origin/main" in done.stdout


def test_a_break_fast_forwarded_onto_main_fails_without_a_release_tag(upstream: Path) -> None:
    # Linear history: HEAD~1 is the unrelated commit and would pass; the first version catches it.
    _commit(upstream, "drop size", _thing("name"))
    _commit(upstream, "unrelated after the break")
    done = _check(upstream)
    assert done.returncode == BUF_FAILED, done
    assert 'with name "size"' in done.stdout
    assert "first commit with the buf module" in done.stdout


def test_main_compares_with_the_last_release_tag(upstream: Path) -> None:
    _commit(upstream, "drop size", _thing("name"))
    _git(upstream, "tag", "v1.0.0")  # released without size: that is the API now
    _commit(upstream, "add tag", _thing("name", "tag"))
    done = _check(upstream)
    assert done.returncode == 0, done
    assert "last release tag v1.0.0" in done.stdout
    _commit(upstream, "drop name", _thing("tag"))
    _commit(upstream, "unrelated after the break")
    done = _check(upstream)
    assert done.returncode == BUF_FAILED, done
    assert 'with name "name"' in done.stdout


def test_an_uncommitted_break_on_main_fails(clone: Path) -> None:
    (clone / PROTO).write_text(_thing("size"))
    done = _check(clone)
    assert done.returncode == BUF_FAILED, done
    assert 'with name "name"' in done.stdout


def test_a_shallow_clone_is_refused_not_passed(upstream: Path, tmp_path: Path) -> None:
    shallow = tmp_path / "shallow"
    _git(tmp_path, "clone", "-q", "--depth", "1", upstream.as_uri(), str(shallow))
    done = _check(shallow)
    assert done.returncode == SCRIPT_REFUSED, done
    assert "shallow clone" in done.stderr
    assert "fetch-depth: 0" in done.stderr
