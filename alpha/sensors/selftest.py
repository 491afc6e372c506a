"""The start-up check of kernel-side process identity against /proc.

The offsets come from the kernel's BTF, so they should be right; this proves it on the running
kernel before the sensor relies on them. The sensor starts a child it knows (`sleep`, kept
alive until checked), and compares what the kernel said at its exec with what /proc says of it
now. Any difference turns kernel-side identity off (the sensor reads /proc after the fact, as
before, and reports itself degraded saying why).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from alpha.sensors.decode import KernelIdentity
from alpha.sensors.proctable import PROC, read_snapshot

TIMEOUT_NS: Final = 10_000_000_000  # no exec record of the child by then: a failure too


@dataclass(frozen=True, slots=True)
class ProbeChild:
    pid: int
    argv: tuple[str, ...]
    process: subprocess.Popen[bytes]

    def end(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)


def start_child() -> ProbeChild:
    """A child that lives until it is checked: `sleep 60` (or this interpreter, sleeping)."""
    sleep = shutil.which("sleep")
    argv = (sleep, "60") if sleep else (sys.executable, "-S", "-c", "import time; time.sleep(60)")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )
    return ProbeChild(proc.pid, argv, proc)


def compare(
    identity: KernelIdentity | None,
    args: tuple[str, ...],
    child: ProbeChild,
    parent_pid: int,
    proc: Path = PROC,
) -> list[str]:
    """What the kernel said of the child at exec against /proc now: the differences."""
    if identity is None:
        return ["the exec record carries no kernel-side identity"]
    snap = read_snapshot(child.pid, proc)
    if snap is None:
        return [f"the self-test child {child.pid} is gone from /proc"]
    problems = []

    def check(name: str, kernel: object, procfs: object) -> None:
        if kernel != procfs:
            problems.append(f"{name}: kernel {kernel!r}, /proc {procfs!r}")

    check("exe", identity.exe, snap.exe)
    check("argv", args, child.argv)
    check("ppid", identity.ppid, parent_pid)
    check("euid", identity.euid, snap.euid)
    check("auid", identity.auid, snap.auid)
    check("tty", identity.tty, snap.tty)
    return problems
