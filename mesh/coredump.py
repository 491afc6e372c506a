"""Keep a component's memory out of core files: its keys, session secrets and decrypted events
live there, and a core file is written with the process's owner, wherever `core_pattern` points.

    forbid_core_dumps()   # first thing every command does (mesh.command.run_command)

Two settings, the soft
`RLIMIT_CORE` 0 (a core file is not written) and `PR_SET_DUMPABLE` 0 (no core through a
`core_pattern` pipe such as systemd-coredump, which ignores the limit, and no ptrace attach or
/proc/PID/mem read by another process of the same user; root still can). A debugging session
that needs a core sets QSC_ALLOW_CORE_DUMPS=1, which is logged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import resource
from typing import Final

from mesh.logs import log_event

PR_SET_DUMPABLE: Final = 4
ALLOW_ENV: Final = "QSC_ALLOW_CORE_DUMPS"

_log = logging.getLogger("qsc.mesh.coredump")


def forbid_core_dumps() -> bool:
    """Turn core dumps off for this process; False when QSC_ALLOW_CORE_DUMPS=1 kept them."""
    if os.environ.get(ALLOW_ENV) == "1":
        log_event(
            _log,
            f"core dumps allowed by {ALLOW_ENV}=1: a core file holds this process's keys",
            level=logging.WARNING,
        )
        return False
    # The soft limit only: children (after exec) may still raise it, e.g. a debugger's helper.
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_DUMPABLE, 0): {os.strerror(err)}")
    return True
