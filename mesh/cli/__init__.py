"""`qsc`: the operator command line. One module per command group (pki, keys, ...)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from crypto.errors import CryptoError
from mesh.cli import keys, pki, tail

EXIT_OK = 0
EXIT_FAILURE = 1  # the command ran and failed (missing CA, unsafe key file, ...)
EXIT_USAGE = 2  # bad arguments; argparse uses the same code


class _Parser(argparse.ArgumentParser):
    """argparse with every usage error reported as `qsc: error: ...`, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"qsc: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="qsc",
        description="Operate a QSC (Quantic Security Cortex) deployment.",
        epilog="Run `qsc COMMAND --help` for the options of each command.",
    )
    groups = parser.add_subparsers(title="commands", metavar="COMMAND")
    pki.register(groups)
    keys.register(groups)
    tail.register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        # `qsc` or `qsc pki` alone: show what can follow.
        (getattr(args, "group_parser", None) or parser).print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code: int = handler(args)
        sys.stdout.flush()  # surface a closed pipe here, not at interpreter exit
    except BrokenPipeError:
        # `qsc ... | head`: the reader left. Stay quiet, like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except CryptoError as exc:
        return fail(str(exc))
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return fail(f"{exc.strerror or exc}{where}")
    except KeyboardInterrupt:
        return 130
    return code


def fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"qsc: error: {message}", file=sys.stderr)
    return code
