"""`qsc-cortex`: the Cortex and its tools.

    qsc-cortex run --config PATH [--port-file PATH] [--check-config]    the Cortex
    qsc-cortex store verify|checkpoint|retain --config PATH ...   store tools (`cortex.store_cli`)
    qsc-cortex assessments export --config PATH [--format ocsf|json] [--filter F] [--out FILE]
                                             stored assessments as OCSF or JSON Lines
                                             (`cortex.assessment_cli`)
    qsc-cortex model show|reset --config PATH   the verdict model (`cortex.model_cli`)
    qsc-cortex playbooks check|runs|dead-letters|replay|endpoints|enable-endpoint --config PATH
                                             playbooks, their runs and dead letters
                                             (`cortex.playbooks_cli`)
    qsc-cortex export-windows --config PATH --since 30d [--until T] [--host H] --out FILE
                                             host telemetry windows for `qsc-ml train`
    qsc-cortex export-labels --config PATH --since 30d [--until T] [--host H] --out FILE
                                             windows labelled by verdicts, for `qsc-ml tune`
                                             (`cortex.windows_cli`)

`run` follows every configured guardian into the event store and serves CortexService (health
and reflection at least); its command line is mesh.service's, shared by every component: once
listening it writes the bound port to `--port-file` atomically, SIGTERM or SIGINT drains and
exits 0, SIGHUP re-reads the guardian list, the correlation rules and the playbook files,
errors print
`qsc-cortex: error: ...` without a traceback (2 for bad arguments or configuration, a rule file
that does not load included, naming FILE:LINE; 1 for anything else: a store that refuses to
open, an unreadable key). `--check-config` also checks the identity, opens the keyring and
loads the correlation rules and the playbooks (files, endpoints, secret files).

The store's own commands live in `cortex.store_cli`, the assessments' in
`cortex.assessment_cli`, the verdict model's in `cortex.model_cli`, the exports for the ML
service in `cortex.windows_cli`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cortex import assessment_cli, model_cli, playbooks_cli, store_cli, windows_cli
from cortex.config import COMPONENT, CortexConfig, load_cortex_config
from cortex.correlate import load_files
from cortex.errors import CorrelationRuleError, PlaybookDefinitionError
from mesh.command import EXIT_USAGE, ErrorExit, command_parser, dispatch
from mesh.identity import load_tls_of_role
from mesh.service import serve

if TYPE_CHECKING:
    from cortex.app import Cortex

PROG = "qsc-cortex"


def build_parser() -> argparse.ArgumentParser:
    """The top-level help; each command parses its own arguments."""
    parser = command_parser(PROG, description="The QSC Cortex: ingest, store, correlation.")
    groups = parser.add_subparsers(dest="group", title="commands", metavar="COMMAND")
    groups.add_parser("run", help="run the Cortex (ingest and CortexService)")
    store_cli.add_commands(groups)
    assessment_cli.add_commands(groups)
    model_cli.add_commands(groups)
    playbooks_cli.add_commands(groups)
    windows_cli.add_commands(groups)
    return parser


def check_config(config: CortexConfig) -> str:
    """What --check-config verifies beyond parsing: the certificate is a Cortex's and the
    keyring opens. The store itself is not opened (a running Cortex holds its writer lock)."""
    from crypto.keyring import KeyManager

    identity = load_tls_of_role(config.server.tls, COMPONENT).identity
    keys = KeyManager.open(config.keyring.directory, COMPONENT)
    correlation = "correlation off"
    if config.correlation.enabled:
        rules = load_files(list(config.correlation.rules) or None)
        correlation = (
            f"{len(rules.enabled)} correlation rule(s) enabled of {len(rules.rules)} "
            f"(version {rules.version})"
        )
    ml = f"ML scoring through {config.ml.address}" if config.ml.enabled else "ML scoring off"
    playbooks = playbooks_cli.check_playbooks(config)
    return (
        f"{PROG}: configuration OK: identity {identity.spiffe_id}, keyring {keys}, store "
        f"{config.store.directory}, {len(config.guardians)} guardian(s), {correlation}, {ml}, "
        f"{playbooks}"
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


def _run(args: list[str]) -> int:
    loader = _Loader()
    return serve(
        PROG,
        args[1:],
        component=COMPONENT,
        load_config=loader,
        build=loader.build,
        command="run",
        description="Run the QSC Cortex: follow the guardians into the event store and "
        "serve CortexService over mTLS.",
        check=check_config,
        check_help="validate config, identity and keyring; exit",
        reload=_reload,
        # A bad rule or playbook file is configuration.
        errors=(ErrorExit((CorrelationRuleError, PlaybookDefinitionError), EXIT_USAGE),),
    )


def main(argv: Sequence[str] | None = None) -> int:
    commands: dict[str, Callable[[list[str]], int]] = {
        "run": _run,
        "store": store_cli.main,
        "assessments": assessment_cli.main,
        "model": model_cli.main,
        "playbooks": playbooks_cli.main,
        **dict.fromkeys(windows_cli.COMMANDS, windows_cli.main),
    }
    return dispatch(argv, commands, build_parser)


if __name__ == "__main__":
    sys.exit(main())
