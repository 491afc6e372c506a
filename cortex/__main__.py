"""`qsc-cortex`: the Cortex and its tools.

    qsc-cortex run --config PATH [--port-file PATH] [--check-config]    the Cortex
    qsc-cortex store ...                 store tools (`cortex.store_cli`, when installed)

`run` follows every configured guardian into the event store and serves CortexService (health
and reflection at least); its command line is mesh.service's, shared by every component: once
listening it writes the bound port to `--port-file` atomically, SIGTERM or SIGINT drains and
exits 0, SIGHUP re-reads the guardian list, errors print `qsc-cortex: error: ...` without a
traceback (2 for bad arguments or configuration, 1 for anything else: a store that refuses to
open, an unreadable key). `--check-config` also checks the identity and opens the keyring.

The store's own commands live in `cortex.store_cli` (`add_commands(subparsers)` for the help,
and `main(argv)`, given the whole command line from `store` on); this module hooks them in when
that module exists (`add_store_commands`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cortex.config import COMPONENT, CortexConfig, load_cortex_config
from mesh.command import EXIT_USAGE, command_parser
from mesh.errors import ConfigError
from mesh.identity import load_tls
from mesh.service import serve

if TYPE_CHECKING:
    from cortex.app import Cortex

PROG = "qsc-cortex"
STORE_CLI = "cortex.store_cli"


def _store_cli() -> Any | None:
    """`cortex.store_cli` when it exists (another change adds it), else None."""
    if importlib.util.find_spec(STORE_CLI) is None:
        return None
    return importlib.import_module(STORE_CLI)


def add_store_commands(subparsers: Any) -> bool:
    """Let `cortex.store_cli.add_commands(subparsers)` add its commands; False without it."""
    module = _store_cli()
    if module is None:
        return False
    module.add_commands(subparsers)
    return True


def build_parser() -> argparse.ArgumentParser:
    """The top-level help; each command parses its own arguments."""
    parser = command_parser(PROG, description="The QSC Cortex: ingest, store, correlation.")
    groups = parser.add_subparsers(dest="group", title="commands", metavar="COMMAND")
    groups.add_parser("run", help="run the Cortex (ingest and CortexService)")
    add_store_commands(groups)
    return parser


def check_config(config: CortexConfig) -> str:
    """What --check-config verifies beyond parsing: the certificate is a Cortex's and the
    keyring opens. The store itself is not opened (a running Cortex holds its writer lock)."""
    from crypto.keyring import KeyManager

    identity = load_tls(config.server.tls).identity
    if identity.role != COMPONENT:
        raise ConfigError(
            "server.tls.cert", f"certifies role {identity.role!r}, not 'cortex' ({identity})"
        )
    keys = KeyManager.open(config.keyring.directory, COMPONENT)
    return (
        f"{PROG}: configuration OK: identity {identity.spiffe_id}, keyring {keys}, store "
        f"{config.store.directory}, {len(config.guardians)} guardian(s)"
    )


class _Loader:
    """Loads the configuration and remembers the file, so SIGHUP can read it again."""

    def __init__(self) -> None:
        self.path: Path | None = None

    def __call__(self, path: Path) -> CortexConfig:
        self.path = path
        return load_cortex_config(path)

    def build(self, config: CortexConfig) -> Cortex:
        from cortex.app import Cortex

        return Cortex(config, config_path=self.path)


def _reload(cortex: Cortex) -> None:
    cortex.reload()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    group, rest = (args[0], args[1:]) if args else ("", [])
    if group == "run":
        loader = _Loader()
        return serve(
            PROG,
            rest,
            component=COMPONENT,
            load_config=loader,
            build=loader.build,
            command="run",
            description="Run the QSC Cortex: follow the guardians into the event store and "
            "serve CortexService over mTLS.",
            check=check_config,
            check_help="validate config, identity and keyring; exit",
            reload=_reload,
        )
    store_cli = _store_cli()
    if group == "store" and store_cli is not None:
        code: int = store_cli.main(args)
        return code
    build_parser().parse_args(args)  # -h, or an unknown command: argparse says so
    build_parser().print_help(sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
