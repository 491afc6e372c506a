"""Real actions in child processes, shared by the sensor tests and the Alpha end-to-end tests:
how a child runs and is reaped, the syscall numbers the actions use, and the action scripts both
files run unchanged."""

from __future__ import annotations

import contextlib
import platform
import subprocess
import sys
from collections.abc import Iterator

from alpha.sensors.ebpf import MODULE_SYSCALL_NRS

PY = sys.executable
BPF_NR = {"x86_64": 321, "aarch64": 280}[platform.machine()]
INIT_NR, FINIT_NR = MODULE_SYSCALL_NRS[platform.machine()]


def py(code: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([PY, "-c", code, *map(str, args)], stdout=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen[str], timeout: float = 20) -> str:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"child failed ({p.returncode}): {out}"
    return out


@contextlib.contextmanager
def killing(*procs: subprocess.Popen[str] | subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)


MEMFD_CODE = """
import os
fd = os.memfd_create("qsc-payload", 0)
with open("/bin/sleep", "rb") as f:
    os.write(fd, f.read())
os.execve(fd, ["qsc-sleep", "5"], {})
"""

# A fileless payload that exits at once: /bin/true from a memfd, exec'd by path through
# /proc/self/fd (not fexecve), gone about a millisecond later.
MEMFD_1MS_CODE = """
import os
fd = os.memfd_create("qsc-1ms", 0)
with open("/bin/true", "rb") as f:
    os.write(fd, f.read())
os.execv(f"/proc/self/fd/{fd}", ["qsc-1ms", "now"])
"""

WRITE_ETC_CODE = """
import os, sys
with open(sys.argv[1], "w") as f:
    f.write("qsc")
os.unlink(sys.argv[1])
"""


# A loopback listener: prints its port, accepts one connection, prints the peer port, then holds
# it for argv[1] seconds.
SERVER_CODE = """
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
print(s.getsockname()[1], flush=True)
c, addr = s.accept()
print(addr[1], flush=True)
c.settimeout(float(sys.argv[1]))
try:
    c.recv(1)
except OSError:
    pass
"""
# A reverse shell: bash whose stdio is a socket to the listener on port argv[1], alive argv[2] s.
REVERSE_SHELL_CODE = """
import os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
for fd in (0, 1, 2):
    os.dup2(s.fileno(), fd)
os.execv("/bin/bash", ["bash", "-c", f"sleep {sys.argv[2]}; true"])
"""
