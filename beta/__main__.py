"""`qsc-beta`: Guardian-Beta and its tools.

    qsc-beta run --config PATH [--port-file PATH] [--check-config]    the guardian
    qsc-beta baseline init|scan|show ...          the FIM baseline (beta.fim.cli)
    qsc-beta manifest create|verify ...           backup manifests (beta.backups.cli)

`run` serves GuardianService and BetaService; its command line is mesh.service's, shared by
every component: once listening it writes the bound port to `--port-file` atomically, SIGTERM or
SIGINT drains and exits 0, errors print `qsc-beta: error: ...` without a traceback (exit 2 for
bad arguments or configuration, including a missing keyring; 1 for anything else: an unreadable
key, a locked outbox, I/O errors). `--check-config` also opens the keyring and verifies the
baseline. `baseline` reads the same file through the same loader (its [fim] and [keys], with the
`QSC_BETA_*` overrides), so one file drives both the guardian and its tools.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from beta.backups import cli as manifest_cli
from beta.config import COMPONENT, BetaConfig, load_beta_config
from beta.fim import BaselineMissingError, BaselineStore
from beta.fim import cli as baseline_cli
from mesh.command import command_parser, dispatch
from mesh.identity import load_tls_of_role
from mesh.service import serve

if TYPE_CHECKING:
    from beta.app import Beta
    from crypto.keyring import KeyManager

PROG = "qsc-beta"


def build_parser() -> argparse.ArgumentParser:
    """The top-level help; each group parses its own arguments."""
    parser = command_parser(PROG, description="Guardian-Beta: integrity assurance for a host.")
    groups = parser.add_subparsers(dest="group", title="commands", metavar="COMMAND")
    groups.add_parser("run", help="run the guardian (GuardianService and BetaService)")
    groups.add_parser("baseline", help="build, check and inspect the FIM baseline")
    manifest_cli.register(groups)
    return parser


def check_config(config: BetaConfig) -> str:
    """What --check-config verifies beyond parsing: the certificate is a Beta's, the keyring
    opens, the baseline (if any yet) verifies, the vault's index and every copy in it verify.
    Raises the error that would stop a start (or, for bad vault copies, degrade healing)."""
    from beta.app import open_keys  # the guardian's imports, only when needed

    identity = load_tls_of_role(config.server.tls, "beta").identity
    keys = open_keys(config)
    baseline = "FIM off (no [[fim.paths]])"
    if config.fim.paths:
        try:
            b = BaselineStore(config.fim.baseline, keys).load()
            baseline = f"baseline version {b.version} revision {b.revision} ({len(b)} entries)"
        except BaselineMissingError:
            baseline = f"no baseline yet at {config.fim.baseline} (`{PROG} baseline init`)"
    vault = _check_vault(config, keys)
    return (
        f"{PROG}: configuration OK: identity {identity.spiffe_id}, keyring {keys}, {baseline}, "
        f"{vault}, "
        f"{len(config.backups.sets)} backup set(s), {len(config.certs.watch)} certificate(s)"
    )


def _check_vault(config: BetaConfig, keys: KeyManager) -> str:
    from beta.sources.heal import heal_roots
    from beta.vault import Vault, VaultConfig, VaultTamperedError

    roots = heal_roots(config.fim)
    if not roots:
        return "healing off"
    directory = config.heal.vault_directory
    if not directory.exists():
        return f"no vault yet at {directory} (made at the first start)"
    vault_config = VaultConfig(
        directory,
        roots=roots,
        versions=config.heal.vault_versions,
        max_bytes=config.heal.vault_max_bytes,
    )
    with Vault(vault_config, keys) as vault:  # VaultTamperedError: the index does not verify
        result = vault.verify()
    if result.bad:
        shown = "; ".join(
            f"{b.record.path} v{b.record.version} ({b.reason})" for b in result.bad[:8]
        )
        raise VaultTamperedError(
            f"{len(result.bad)} of {result.checked} copies in {directory}",
            f"{shown}{' ...' if len(result.bad) > 8 else ''}",
        )
    return f"vault {directory}: {result.checked} copies verified"


def _build(config: BetaConfig) -> Beta:
    from beta.app import Beta

    return Beta(config)


def _run(args: list[str]) -> int:
    return serve(
        PROG,
        args[1:],
        component=COMPONENT,
        load_config=load_beta_config,
        build=_build,
        command="run",
        description="Run Guardian-Beta (integrity assurance): GuardianService and "
        "BetaService over mTLS.",
        check=check_config,
        check_help="validate config, identity, keyring and baseline; exit",
    )


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(
        argv,
        {"run": _run, "baseline": baseline_cli.main, "manifest": manifest_cli.main},
        build_parser,
    )


if __name__ == "__main__":
    sys.exit(main())
