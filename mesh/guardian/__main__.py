"""`python -m mesh.guardian --config PATH [--port-file PATH]`: run a guardian.

Once listening it writes the bound port (decimal, newline) atomically to `--port-file` and logs
`guardian listening`. SIGTERM or SIGINT drains gracefully and exits 0. Startup errors print
`qsc-guardian: error: ...` (no traceback): exit 2 for bad arguments or configuration (an invalid
value, a role or host the certificate does not certify, an address that cannot be bound), 1 for
anything else (unreadable or mismatched key, locked outbox, I/O errors).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from crypto.errors import CryptoError
from crypto.keyfile import write_file_atomic
from mesh.config import config_path_from_env
from mesh.errors import ConfigError, MeshError
from mesh.logs import configure_from

from .config import COMPONENT, GuardianConfig, load_guardian_config
from .runtime import Guardian
from .synthetic import SyntheticSource

PROG = "qsc-guardian"
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


async def serve(config: GuardianConfig, port_file: Path | None) -> None:
    guardian = Guardian(config)
    if config.synthetic.enabled:
        guardian.add_worker(SyntheticSource(guardian.emit_many, guardian.sensors, config.synthetic))

    def listening(port: int) -> None:
        if port_file is not None:
            write_port_file(port_file, port)

    await guardian.run(on_listening=listening)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog=PROG, description="Run a QSC guardian (GuardianService over mTLS).")
    parser.add_argument("--config", type=Path, help="TOML file (default: $QSC_GUARDIAN_CONFIG)")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    args = parser.parse_args(argv)
    path = args.config or config_path_from_env(COMPONENT)
    if path is None:
        parser.error("--config is required (or set QSC_GUARDIAN_CONFIG)")
    try:
        config = load_guardian_config(path)
        configure_from(config.log)
    except (ConfigError, ValueError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        asyncio.run(serve(config, args.port_file))
    except ConfigError as exc:
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
