"""Validators: a command that must accept a heal candidate before it is swapped in.

A rule names the files it applies to by an absolute glob (the FIM glob syntax) and the command
as an argument list with ``{path}`` where the candidate goes, e.g. ``sshd -t -f {path}``. The
command runs without a shell, with a fixed PATH and locale, stdin closed, in its own session
(killed as a group at the timeout), its output (stdout and stderr together) spooled to a file
and only the first `max_output` bytes kept: a chatty or hostile validator cannot exhaust memory.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from beta.fim.config import GlobSet, compile_glob
from beta.heal.model import ValidatorResult

__all__ = ["SAFE_PATH", "ValidatorRule", "run_validator"]

SAFE_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PLACEHOLDER: Final = "{path}"


@dataclass(frozen=True)
class ValidatorRule:
    """`command` (an argument list, or one string split like a shell would, without running
    one) must accept candidates of files matching the absolute glob `path`."""

    path: str
    command: tuple[str, ...]
    timeout: timedelta = timedelta(seconds=10)

    def __post_init__(self) -> None:
        if isinstance(self.command, str):
            object.__setattr__(self, "command", tuple(shlex.split(self.command)))
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ValueError(f"validator path must be an absolute glob, got {self.path!r}")
        compile_glob(self.path)  # ValueError with the reason
        if not self.command or not self.command[0]:
            raise ValueError("validator command is empty")
        if not any(PLACEHOLDER in arg for arg in self.command):
            raise ValueError("validator command must contain {path} (the candidate file)")
        if not timedelta(0) < self.timeout <= timedelta(minutes=10):
            raise ValueError("validator timeout must be in (0, 10m]")

    def matches(self, path: str) -> bool:
        return GlobSet.of((self.path,)).matches(path, path, is_dir=False)


def run_validator(
    command: tuple[str, ...], candidate: str, *, timeout: float, max_output: int = 4096
) -> ValidatorResult:
    argv = [arg.replace(PLACEHOLDER, candidate) for arg in command]
    shown = shlex.join(argv)
    exe = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=SAFE_PATH)
    if exe is None:
        return ValidatorResult(shown, -1, False, f"validator {argv[0]!r} not found in {SAFE_PATH}")
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(
                [exe, *argv[1:]],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={"PATH": SAFE_PATH, "LC_ALL": "C"},
                cwd="/",
                close_fds=True,
                start_new_session=True,  # a process group to kill at the timeout
            )
        except OSError as exc:
            return ValidatorResult(shown, -1, False, f"cannot run validator: {exc.strerror}")
        timed_out = False
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = -1
        out.seek(0)
        text = out.read(max_output).decode("utf-8", "replace").strip()
    if timed_out:
        text = f"timed out after {timeout:g}s" + (f": {text}" if text else "")
    return ValidatorResult(shown, code, code == 0 and not timed_out, text, timed_out)
