"""The `serve` entry every long-running component shares: `PROG --config PATH [--port-file PATH]`.

    def main(argv=None) -> int:
        return serve("qsc-alpha", argv, component="alpha", load_config=load_alpha_config,
                     build=Alpha, description="...", check=check_config,
                     reload=Alpha.reload_rules_in_background, errors=(ErrorExit((RuleError,), 2),))

`serve` parses the arguments (the config file defaults to `$QSC_<COMPONENT>_CONFIG`), loads the
configuration (`load_config` is the component's mesh.config loader, so `QSC_<COMPONENT>_*`
overrides apply) and applies its `[log]` section. With `check`, a `--check-config` flag prints
`check(config)` and exits. Otherwise it builds the service inside the event loop (`build(config)`
returns a `Service`: servers and workers may need the loop while building), starts it, writes the
bound port to `--port-file` atomically, and serves until SIGTERM or SIGINT, then drains
(`service.stop()`) and exits 0. Signals that arrive during the drain are absorbed. With `reload`,
SIGHUP calls `reload(service)` on the event loop thread (Alpha reloads its rules, the ML service
looks for a new model); without it SIGHUP keeps its default action. Components never install
signal handlers themselves.

Errors are mesh.command's: `PROG: error: ...` without a traceback; 2 for bad arguments or
configuration (`ConfigError`, a `ValueError` while loading, or a rule of `errors`), 1 for
anything else a component refuses to start on (`MeshError`, `CryptoError`, `OSError`: an
unreadable key, a locked outbox), 130 for a Ctrl-C before the service could listen.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from crypto.files import write_file_atomic
from mesh.command import EXIT_OK, ErrorExit, UsageError, command_parser, run_command
from mesh.config import config_path_from_env, env_prefix
from mesh.logs import LogConfig, configure_from, log_event

__all__ = ["Service", "serve", "write_port_file"]

_log = logging.getLogger("qsc.service")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Configured(Protocol):
    @property
    def log(self) -> LogConfig: ...


class Service(Protocol):
    """A built component (mesh.guardian.Guardian, alpha.app.Alpha, ml.app.MlService, ...)."""

    async def start(self) -> int:
        """Listen and start working; return the bound port."""
        ...

    async def stop(self) -> None:
        """Drain and release everything; idempotent, and safe after a failed start."""
        ...


C = TypeVar("C", bound=_Configured)
S = TypeVar("S", bound=Service)


def write_port_file(path: Path, port: int) -> None:
    """Readers see no file or the whole line, never a partial one."""
    write_file_atomic(path, f"{port}\n".encode(), mode=0o644, overwrite=True)


async def _run(
    build: Callable[[], S], reload: Callable[[S], object] | None, port_file: Path | None
) -> None:
    service = build()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def on_stop_signal(signum: signal.Signals) -> None:
        if not stopping.is_set():
            log_event(_log, "signal received, draining", signal=signum.name)
        stopping.set()

    installed: list[signal.Signals] = []
    try:
        # Before start: a SIGTERM that comes while starting still drains what has started.
        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, on_stop_signal, signum)
            installed.append(signum)
        port = await service.start()
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, reload, service)
            installed.append(signal.SIGHUP)
        if port_file is not None:
            write_port_file(port_file, port)
        await stopping.wait()
    finally:
        try:
            await service.stop()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)


def serve(
    prog: str,
    argv: Sequence[str] | None,
    *,
    component: str,
    load_config: Callable[[Path], C],
    build: Callable[[C], S],
    description: str,
    command: str = "",
    check: Callable[[C], str] | None = None,
    check_help: str = "validate the configuration; exit",
    reload: Callable[[S], object] | None = None,
    errors: Sequence[ErrorExit] = (),
) -> int:
    """Run one component process; return its exit code (see the module docstring). `command`
    names a subcommand (`qsc-beta run`) in the usage line; errors still start `PROG: error:`."""
    env = env_prefix(component) + "CONFIG"
    parser = command_parser(
        prog, usage_prog=f"{prog} {command}" if command else None, description=description
    )
    parser.add_argument("--config", type=Path, help=f"TOML file (default: ${env})")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    if check is not None:
        parser.add_argument("--check-config", action="store_true", help=check_help)
    args = parser.parse_args(argv)
    path: Path | None = args.config or config_path_from_env(component)

    def body() -> int:
        if path is None:
            raise UsageError(f"--config is required (or set {env})")
        try:
            config = load_config(path)
            configure_from(config.log)
        except ValueError as exc:  # a loader's own check; ConfigError is usage already
            raise UsageError(str(exc)) from None
        if check is not None and args.check_config:
            print(check(config))
            return EXIT_OK
        asyncio.run(_run(lambda: build(config), reload, args.port_file))
        return EXIT_OK

    return run_command(prog, body, errors=errors)
