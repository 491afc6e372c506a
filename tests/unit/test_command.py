"""mesh.command: the one exit-code table, the error-to-message mapping, the parser and run_cli."""

from __future__ import annotations

import argparse
import errno
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from crypto.errors import CryptoError
from mesh import command
from mesh.command import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    ErrorExit,
    UsageError,
    command_parser,
    run_cli,
    run_command,
)
from mesh.config import ConfigLoadError
from mesh.errors import ConfigError, NotFoundError


class RuleError(Exception):
    """A component's own error class, added to the mapping as a usage error."""


def test_the_exit_code_table() -> None:
    assert (EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED) == (0, 1, 2, 130)


def _raises(exc: BaseException) -> Callable[[], int]:
    def body() -> int:
        raise exc

    return body


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (
            ConfigError("server.listen", "expected HOST:PORT"),
            2,
            "server.listen: expected HOST:PORT",
        ),
        (ConfigLoadError("a.toml", "x", "unknown key"), 2, "a.toml: x: unknown key"),
        (UsageError("give --path"), 2, "give --path"),
        (NotFoundError("no such model"), 1, "no such model"),
        (CryptoError("authentication failed"), 1, "authentication failed"),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "/etc/x.key"),
            1,
            "No such file or directory: /etc/x.key",
        ),
        (PermissionError(errno.EACCES, "Permission denied"), 1, "Permission denied"),
    ],
)
def test_errors_become_one_line_and_a_code(
    capsys: pytest.CaptureFixture[str], error: Exception, code: int, message: str
) -> None:
    assert run_command("qsc-x", _raises(error)) == code
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"qsc-x: error: {message}\n")


def test_interrupt_is_130_and_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command("qsc-x", _raises(KeyboardInterrupt())) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == ""


def test_a_component_adds_its_own_rules_before_the_base_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rules = (
        ErrorExit((RuleError,), EXIT_USAGE),
        ErrorExit((NotFoundError,), 3, label="MISSING"),
    )
    assert run_command("qsc-x", _raises(RuleError("bad rule")), errors=rules) == EXIT_USAGE
    assert capsys.readouterr().err == "qsc-x: error: bad rule\n"
    assert run_command("qsc-x", _raises(NotFoundError("gone")), errors=rules) == 3
    assert capsys.readouterr().err == "qsc-x: MISSING: gone\n"


def test_anything_else_is_a_bug_and_keeps_its_traceback() -> None:
    with pytest.raises(ZeroDivisionError):
        run_command("qsc-x", _raises(ZeroDivisionError()))


def test_a_closed_stdout_ends_quietly_with_1() -> None:
    script = (
        "import sys\n"
        "from mesh.command import run_command\n"
        "def body():\n"
        "    for i in range(200000):\n"
        "        print('line', i)\n"
        "    return 0\n"
        "sys.exit(run_command('qsc-x', body))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(command.__file__).resolve().parents[1],
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()  # the reader leaves, like `| head`
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == EXIT_FAILURE
    assert err == b""


def _parser() -> argparse.ArgumentParser:
    parser = command_parser("qsc-x", description="a test command")
    groups = parser.add_subparsers(metavar="COMMAND")
    group = groups.add_parser("pki")
    group.set_defaults(group_parser=group)
    issue = group.add_subparsers().add_parser("issue")
    issue.add_argument("--days", type=int, required=True)
    issue.set_defaults(handler=lambda args: 7 if args.days == 7 else EXIT_OK)
    return parser


def test_run_cli_runs_the_handler() -> None:
    assert run_cli("qsc-x", _parser(), ["pki", "issue", "--days", "7"]) == 7


def test_run_cli_without_a_handler_shows_what_can_follow(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_cli("qsc-x", _parser(), []) == EXIT_USAGE
    assert "usage: qsc-x" in capsys.readouterr().err
    assert run_cli("qsc-x", _parser(), ["pki"]) == EXIT_USAGE
    assert "usage: qsc-x pki" in capsys.readouterr().err


def test_usage_errors_of_subcommands_name_the_program(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run_cli("qsc-x", _parser(), ["pki", "issue", "--days", "many"])
    assert exc.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: qsc-x pki issue")
    assert "qsc-x: error: argument --days: invalid int value: 'many'" in err
