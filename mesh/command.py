"""The frame every QSC command line runs in: one table of exit codes, one mapping of errors to
messages.

    parser = command_parser("qsc", description="...")
    ...subcommands with set_defaults(handler=fn), groups with set_defaults(group_parser=p)...
    return run_cli("qsc", parser, argv, errors=(ErrorExit((RuleError,), EXIT_USAGE),))

Exit codes, for every command (`qsc`, `qsc-alpha`, `qsc-beta`, `qsc-ml`, `qsc-guardian`):

    0    EXIT_OK           done
    1    EXIT_FAILURE      the command ran and failed (an unreadable key, a tampered model, I/O)
    2    EXIT_USAGE        bad arguments or configuration; argparse uses the same code
    130  EXIT_INTERRUPTED  Ctrl-C

A command may add outcomes of its own from 3 up (`qsc-beta manifest verify`: 3 the set failed
verification), never redefining these four.

Errors print one line, `PROG: error: MESSAGE`, and no traceback. The mapping, first match wins:
a command's own `ErrorExit` rules; then `ConfigError` and `UsageError` -> 2; `MeshError` and
`CryptoError` -> 1; `OSError` -> 1, as its strerror and file name. A closed stdout
(`qsc ... | head`) ends the command quietly with 1, like other Unix tools; KeyboardInterrupt
ends it quietly with 130. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from crypto.errors import CryptoError
from mesh.coredump import forbid_core_dumps
from mesh.errors import ConfigError, MeshError

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "ErrorExit",
    "UsageError",
    "command_parser",
    "dispatch",
    "fail",
    "run_cli",
    "run_command",
]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130


class UsageError(Exception):
    """The command was asked for something it cannot do as asked (exit 2); the message says why."""


@dataclass(frozen=True)
class ErrorExit:
    """How errors of `kinds` end a command: exit `code`, the message `PROG: LABEL: str(error)`."""

    kinds: tuple[type[Exception], ...]
    code: int
    label: str = "error"


_BASE_RULES: Final = (
    ErrorExit((ConfigError, UsageError), EXIT_USAGE),
    ErrorExit((MeshError, CryptoError), EXIT_FAILURE),
)


def fail(prog: str, message: str, code: int = EXIT_FAILURE, *, label: str = "error") -> int:
    """Print `PROG: LABEL: MESSAGE` on stderr; return `code`."""
    print(f"{prog}: {label}: {message}", file=sys.stderr)
    return code


def command_parser(
    prog: str, *, usage_prog: str | None = None, **kwargs: Any
) -> argparse.ArgumentParser:
    """An argparse parser whose usage errors, its subcommands' included, print the usage and
    `PROG: error: ...` and exit 2. `usage_prog` names the usage line (`qsc-beta run`) when it is
    not `prog`."""

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            self.print_usage(sys.stderr)
            self.exit(EXIT_USAGE, f"{prog}: error: {message}\n")

    return Parser(prog=usage_prog or prog, **kwargs)


def run_command(prog: str, body: Callable[[], int], *, errors: Sequence[ErrorExit] = ()) -> int:
    """Run `body` and return its exit code, or the code the mapping gives its error. Core dumps
    are off first (`mesh.coredump`): every command may hold a key."""
    try:
        forbid_core_dumps()
        code = body()
        sys.stdout.flush()  # surface a closed pipe here, not at interpreter exit
    except BrokenPipeError:
        # The reader left; stdout is pointed at /dev/null so the interpreter's last flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        for rule in (*errors, *_BASE_RULES):
            if isinstance(exc, rule.kinds):
                return fail(prog, str(exc), rule.code, label=rule.label)
        if isinstance(exc, OSError):
            where = f": {exc.filename}" if exc.filename else ""
            return fail(prog, f"{exc.strerror or exc}{where}")
        raise
    return code


def run_cli(
    prog: str,
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    errors: Sequence[ErrorExit] = (),
) -> int:
    """Parse `argv` and run the chosen subcommand's `handler(args) -> int` under `run_command`.
    Without a handler (`qsc`, `qsc pki`) print the help of what can follow and exit 2."""
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        (getattr(args, "group_parser", None) or parser).print_help(sys.stderr)
        return EXIT_USAGE
    return run_command(prog, lambda: handler(args), errors=errors)


def dispatch(
    argv: Sequence[str] | None,
    commands: Mapping[str, Callable[[list[str]], int]],
    parser: Callable[[], argparse.ArgumentParser],
) -> int:
    """The top level of a command with groups (`qsc-beta run|baseline|manifest`): run the
    group `argv[0]` names with the whole argument list (each group parses its own); else let
    `parser()` (the top-level help) answer -h or an unknown group, and exit 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    handler = commands.get(args[0]) if args else None
    if handler is not None:
        return handler(args)
    parser().parse_args(args)  # -h, or an unknown command: argparse says so
    parser().print_help(sys.stderr)
    return EXIT_USAGE
