"""`qsc-alpha --config PATH [--port-file PATH] [--check-config]`: run Guardian-Alpha.

Once listening (and its sensors started) it writes the bound port to `--port-file` atomically.
SIGTERM or SIGINT drains and exits 0; SIGHUP reloads the rule files (a bad file keeps the old
rules and is reported as a degraded `rules` sensor). `--check-config` loads the configuration,
the rules and the TLS identity, prints a summary and exits: 0 when all is well.

Errors print `qsc-alpha: error: ...` without a traceback: exit 2 for bad arguments,
configuration or rule files, 1 for anything else (unreadable key, locked outbox, I/O errors).
The command line itself is mesh.service's, shared by every component.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Sequence

from alpha.app import Alpha
from alpha.config import COMPONENT, AlphaConfig, load_alpha_config
from alpha.rules import RuleEngine, RuleError
from mesh.command import EXIT_USAGE, ErrorExit
from mesh.identity import load_tls_of_role
from mesh.service import serve

PROG = "qsc-alpha"


def check_config(config: AlphaConfig) -> str:
    """What --check-config verifies beyond parsing: the rules load, the certificate is an
    Alpha's. Returns a summary; raises the error that would stop a start."""
    engine = RuleEngine.default(config.rules.files)
    identity = load_tls_of_role(config.server.tls, "alpha").identity
    status = engine.status()
    return (
        f"{PROG}: configuration OK: identity {identity.spiffe_id}, rules {status.version} "
        f"({status.enabled} enabled of {status.rules}), outbox {config.outbox.directory}"
    )


def _few_malloc_arenas() -> None:
    """glibc gives each of the guardian's ~18 threads its own malloc arena, and freed memory
    stays in them: two arenas keep Alpha's resident size down (measured by
    tests/bench/bench_alpha_memory.py) at no measurable cost for its few busy threads."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(None).mallopt(-8, 2)  # M_ARENA_MAX


def main(argv: Sequence[str] | None = None) -> int:
    _few_malloc_arenas()
    return serve(
        PROG,
        argv,
        component=COMPONENT,
        load_config=load_alpha_config,
        build=Alpha,
        description="Run Guardian-Alpha (host intrusion detection).",
        check=check_config,
        check_help="validate config, rules and identity; exit",
        reload=Alpha.reload_rules_in_background,
        errors=(ErrorExit((RuleError,), EXIT_USAGE),),  # a broken rule file is a config error
    )


if __name__ == "__main__":
    sys.exit(main())
