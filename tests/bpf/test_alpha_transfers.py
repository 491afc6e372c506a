"""Transfers that slip between socket polls are still counted: the real `qsc-alpha` (eBPF) with
its socket poll once in 10 minutes, so every byte counted here comes from the kernel's record
of each TCP socket's end, with its final counters.

Loopback counts as leaving the host here (`transfer_ignore_networks = []`); the threshold and
rules are the product's defaults (100 MiB). The senders are a copy of the interpreter outside
the system program directories (a system program is one of alpha.large_outbound_transfer's
exceptions, an intruder's tool is not).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bpf.test_alpha_e2e import (
    WAIT,
    Event,
    SealedStream,
    pki,  # noqa: F401  (the module's PKI fixture)
    running_alpha,
)

pytestmark = pytest.mark.root

MiB = 1 << 20

# argv: port, connections, bytes per connection. Each connection is opened, filled, closed.
SEND = """
import socket, sys
port, n, size = map(int, sys.argv[1:4])
chunk = bytes(min(size, 1 << 20))
for _ in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    left = size
    while left:
        left -= c.send(chunk[:left])
    c.close()
"""


class Receiver:
    """A loopback sink counting what it receives, on its own threads."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = self.server.getsockname()[1]
        self.received = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        with conn:
            while chunk := conn.recv(1 << 20):
                with self._lock:
                    self.received += len(chunk)

    def close(self) -> None:
        self.server.close()


@pytest.fixture(scope="module")
def alpha(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SealedStream]:  # noqa: F811
    env = {
        "QSC_ALPHA_NETWORK__POLL_INTERVAL": "10m",
        "QSC_ALPHA_NETWORK__TRANSFER_IGNORE_NETWORKS": "[]",
    }
    with running_alpha(pki, tmp_path_factory.mktemp("alpha-transfers"), env) as (_, stream):
        yield stream


@pytest.fixture
def exfil(tmp_path: Path) -> Path:
    exe = tmp_path / "exfil"
    shutil.copy(os.path.realpath(sys.executable), exe)
    return exe


def send(exe: Path, port: int, connections: int, size: int) -> int:
    subprocess.run(
        [str(exe), "-I", "-c", SEND, str(port), str(connections), str(size)],
        check=True,
        timeout=120,
    )
    return connections * size


def _transfer_of(stream: SealedStream, comm: str) -> Event:
    return stream.wait_for(
        lambda e: (
            e.WhichOneof("detail") == "transfer_volume"
            and e.rule.id == "alpha.large_outbound_transfer"
            and e.process.comm == comm
        ),
        f"alpha.large_outbound_transfer of {comm}",
        WAIT,
    )


def test_300_mib_on_one_short_connection(alpha: SealedStream, exfil: Path) -> None:
    receiver = Receiver()
    try:
        sent = send(exfil, receiver.port, 1, 300 * MiB)
        event = _transfer_of(alpha, "exfil")
    finally:
        receiver.close()
    tv = event.transfer_volume
    assert tv.bytes >= sent  # the kernel's bytes_acked also counts the SYN and the FIN
    assert tv.connections == 1
    assert tv.top_remote.port == receiver.port


def test_200_connections_of_1_mib_to_one_destination(alpha: SealedStream, tmp_path: Path) -> None:
    exe = tmp_path / "exfil-many"
    shutil.copy(os.path.realpath(sys.executable), exe)
    receiver = Receiver()
    try:
        send(exe, receiver.port, 200, MiB)
        event = _transfer_of(alpha, "exfil-many")
    finally:
        receiver.close()
    tv = event.transfer_volume
    assert tv.bytes >= 100 * MiB  # reported when the total crossed the threshold
    assert tv.connections >= 100
    assert tv.top_remote.address == "127.0.0.1"
    assert tv.top_remote.port == receiver.port


def test_small_short_connections_stay_quiet(alpha: SealedStream, tmp_path: Path) -> None:
    """A benign look-alike: 50 connections of 64 KiB (3 MiB in all) raise nothing."""
    exe = tmp_path / "fetcher"
    shutil.copy(os.path.realpath(sys.executable), exe)
    receiver = Receiver()
    try:
        send(exe, receiver.port, 50, 64 << 10)
        # A marker after it: once its event is in, the fetcher's would have been too.
        marker = tmp_path / "marker"
        shutil.copy(os.path.realpath(sys.executable), marker)
        send(marker, receiver.port, 1, 120 * MiB)
        _transfer_of(alpha, "marker")
    finally:
        receiver.close()
    assert not [
        e
        for e in list(alpha.events)
        if e.WhichOneof("detail") == "transfer_volume" and e.process.comm == "fetcher"
    ]
