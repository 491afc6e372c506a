"""The command line every guardian shares: `PROG --config PATH [--port-file PATH]`.

    def main(argv=None) -> int:
        return run_main("qsc-alpha", load_alpha_config, Alpha, argv, component="alpha",
                        description="...", check=check_config, usage_errors=(RuleError,))

`run_main` parses the arguments (the config file defaults to `$QSC_<COMPONENT>_CONFIG`), loads
the configuration and applies its `[log]` section, builds the guardian inside the event loop
(`build(config)` returns anything with `async run(on_listening=...)`), writes the bound port to
`--port-file` atomically once listening, and serves until SIGTERM/SIGINT. With `check`, a
`--check-config` flag prints `check(config)` and exits instead of serving.

Errors print `PROG: error: ...` without a traceback. Exit codes: 0 after a clean drain; 2 for bad
arguments or configuration (`ConfigError`, or a `ValueError` while loading, or one of
`usage_errors`); 1 for anything else a guardian refuses to start on (`MeshError`, `CryptoError`,
`OSError`: an unreadable key, a locked outbox); 130 on a second Ctrl-C during the drain.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, Protocol, TypeVar

from crypto.errors import CryptoError
from crypto.files import write_file_atomic
from mesh.config import config_path_from_env, env_prefix
from mesh.errors import ConfigError, MeshError
from mesh.logs import LogConfig, configure_from

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Runnable",
    "run_main",
    "write_port_file",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Configured(Protocol):
    @property
    def log(self) -> LogConfig: ...


class Runnable(Protocol):
    """A built guardian (mesh.guardian.Guardian, alpha.app.Alpha, ...)."""

    async def run(self, *, on_listening: Callable[[int], object] | None = None) -> None: ...


C = TypeVar("C", bound=_Configured)


def write_port_file(path: Path, port: int) -> None:
    """Readers see no file or the whole line, never a partial one."""
    write_file_atomic(path, f"{port}\n".encode(), mode=0o644, overwrite=True)


def _parser(
    prog: str, command: str, description: str, component: str, check_help: str | None
) -> argparse.ArgumentParser:
    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            self.print_usage(sys.stderr)
            self.exit(EXIT_USAGE, f"{prog}: error: {message}\n")

    env = env_prefix(component) + "CONFIG"
    parser = Parser(prog=f"{prog} {command}" if command else prog, description=description)
    parser.add_argument("--config", type=Path, help=f"TOML file (default: ${env})")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    if check_help is not None:
        parser.add_argument("--check-config", action="store_true", help=check_help)
    return parser


async def _serve(runnable: Callable[[], Runnable], port_file: Path | None) -> None:
    guardian = runnable()  # inside the loop: servers and workers may need it while building

    def listening(port: int) -> None:
        if port_file is not None:
            write_port_file(port_file, port)

    await guardian.run(on_listening=listening)


def run_main(
    prog: str,
    load_config: Callable[[Path], C],
    build: Callable[[C], Runnable],
    argv: Sequence[str] | None,
    *,
    component: str,
    description: str,
    command: str = "",
    check: Callable[[C], str] | None = None,
    check_help: str = "validate the configuration; exit",
    usage_errors: tuple[type[Exception], ...] = (),
) -> int:
    """Run one guardian process; return its exit code (see the module docstring). `command`
    names a subcommand (`qsc-beta run`) in the usage line; errors still start `PROG: error:`."""
    parser = _parser(prog, command, description, component, None if check is None else check_help)
    usage: tuple[type[Exception], ...] = (ConfigError, *usage_errors)
    args = parser.parse_args(argv)
    path = args.config or config_path_from_env(component)
    if path is None:
        parser.error(f"--config is required (or set {env_prefix(component)}CONFIG)")

    def fail(message: str, code: int) -> int:
        print(f"{prog}: error: {message}", file=sys.stderr)
        return code

    try:
        config = load_config(path)
        configure_from(config.log)
    except (ConfigError, ValueError) as exc:
        return fail(str(exc), EXIT_USAGE)
    try:
        if check is not None and args.check_config:
            print(check(config))
            return EXIT_OK
        asyncio.run(_serve(lambda: build(config), args.port_file))
    except usage as exc:
        return fail(str(exc), EXIT_USAGE)
    except (MeshError, CryptoError) as exc:
        return fail(str(exc), EXIT_FAILURE)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return fail(f"{exc.strerror or exc}{where}", EXIT_FAILURE)
    except KeyboardInterrupt:  # a second Ctrl-C during the drain
        return EXIT_INTERRUPTED
    return EXIT_OK
