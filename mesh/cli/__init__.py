"""`qsc`: the operator command line. One module per command group (pki, keys, ...).

Each group's `register(groups)` adds its subcommands with `set_defaults(handler=...)`; exit codes
and error messages are mesh.command's (`qsc: error: ...`; 0 ok, 1 failed, 2 usage, 130 Ctrl-C).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mesh.cli import doctor, keys, pki, tail
from mesh.command import command_parser, run_cli

PROG = "qsc"


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        PROG,
        description="Operate a QSC (Quantic Security Cortex) deployment.",
        epilog="Run `qsc COMMAND --help` for the options of each command.",
    )
    groups = parser.add_subparsers(title="commands", metavar="COMMAND")
    pki.register(groups)
    keys.register(groups)
    tail.register(groups)
    doctor.register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, build_parser(), argv)
