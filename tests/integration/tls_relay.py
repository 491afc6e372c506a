"""A TLS-terminating relay for the transport tests: what a proxy in front of a server sees.

It accepts TLS 1.3 from the client and dials the server with its own client certificate, both
with Python's OpenSSL (3.0 here: no ML-KEM), so both legs negotiate classical X25519 whatever
grpcio offers. Everything the client sends is kept in `seen` (the plaintext a recorder on a
classical link could later decrypt), so a test can tell whether a request ever left the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

from mesh.identity import TlsFiles


def _context(purpose: ssl.Purpose, files: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose, cafile=str(files.ca))
    context.load_cert_chain(files.cert, files.key)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["h2"])
    if purpose is ssl.Purpose.CLIENT_AUTH:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class TlsRelay:
    """Listens on 127.0.0.1:0 as `front` (a server certificate the client accepts), relays each
    connection to 127.0.0.1:`backend_port` as `back` (a client certificate the server accepts)."""

    def __init__(self, front: TlsFiles, back: TlsFiles, backend_port: int) -> None:
        self._front = _context(ssl.Purpose.CLIENT_AUTH, front)
        self._back = _context(ssl.Purpose.SERVER_AUTH, back)
        self._backend_port = backend_port
        self.seen = bytearray()
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(
            self._relay, "127.0.0.1", 0, ssl=self._front, ssl_handshake_timeout=10
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", self._backend_port, ssl=self._back, server_hostname="127.0.0.1"
            )
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer, record=True),
            self._pipe(up_reader, writer, record=False),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, record: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if record:
                    self.seen += data
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


def pki_files(base: Path, stem: str) -> TlsFiles:
    return TlsFiles(base / f"{stem}.crt", base / f"{stem}.key", base / "ca.crt")
