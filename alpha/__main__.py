"""`qsc-alpha --config PATH [--port-file PATH] [--check-config]`: run Guardian-Alpha.

Once listening (and its sensors started) it writes the bound port to `--port-file` atomically.
SIGTERM or SIGINT drains and exits 0; SIGHUP reloads the rule files (a bad file keeps the old
rules and is reported as a degraded `rules` sensor). `--check-config` loads the configuration,
the rules and the TLS identity, prints a summary and exits: 0 when all is well.

Errors print `qsc-alpha: error: ...` without a traceback: exit 2 for bad arguments,
configuration or rule files, 1 for anything else (unreadable key, locked outbox, I/O errors).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from alpha.app import Alpha
from alpha.config import COMPONENT, AlphaConfig, load_alpha_config
from alpha.rules import RuleEngine, RuleError
from crypto.errors import CryptoError
from crypto.keyfile import write_file_atomic
from mesh.config import config_path_from_env
from mesh.errors import ConfigError, MeshError
from mesh.identity import load_tls
from mesh.logs import configure_from

PROG = "qsc-alpha"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{PROG}: error: {message}\n")


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def write_port_file(path: Path, port: int) -> None:
    """Readers see no file or the whole line, never a partial one."""
    write_file_atomic(path, f"{port}\n".encode(), mode=0o644, overwrite=True)


def check_config(config: AlphaConfig) -> str:
    """What --check-config verifies beyond parsing: the rules load, the certificate is an
    Alpha's. Returns a summary; raises the error that would stop a start."""
    engine = RuleEngine.default(config.rules.files)
    identity = load_tls(config.server.tls).identity
    if identity.role != "alpha":
        raise ConfigError(
            "server.tls.cert", f"certifies role {identity.role!r}, not 'alpha' ({identity})"
        )
    status = engine.status()
    return (
        f"{PROG}: configuration OK: identity {identity.spiffe_id}, rules {status.version} "
        f"({status.enabled} enabled of {status.rules}), outbox {config.outbox.directory}"
    )


async def serve(config: AlphaConfig, port_file: Path | None) -> None:
    alpha = Alpha(config)

    def listening(port: int) -> None:
        if port_file is not None:
            write_port_file(port_file, port)

    await alpha.run(on_listening=listening)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog=PROG, description="Run Guardian-Alpha (host intrusion detection).")
    parser.add_argument("--config", type=Path, help="TOML file (default: $QSC_ALPHA_CONFIG)")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once ready")
    parser.add_argument(
        "--check-config", action="store_true", help="validate config, rules and identity; exit"
    )
    args = parser.parse_args(argv)
    path = args.config or config_path_from_env(COMPONENT)
    if path is None:
        parser.error("--config is required (or set QSC_ALPHA_CONFIG)")
    try:
        config = load_alpha_config(path)
        configure_from(config.log)
    except (ConfigError, ValueError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        if args.check_config:
            print(check_config(config))
            return EXIT_OK
        asyncio.run(serve(config, args.port_file))
    except (ConfigError, RuleError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (MeshError, CryptoError) as exc:
        return _fail(str(exc), EXIT_FAILURE)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}", EXIT_FAILURE)
    except KeyboardInterrupt:  # a second Ctrl-C during the drain
        return 130
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
