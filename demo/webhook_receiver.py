"""A real webhook receiver (HTTPS or plain HTTP) for integration tests of playbook deliveries.

The Cortex delivers playbook actions as Standard Webhooks: signed POSTs carrying `webhook-id`,
`webhook-timestamp` and `webhook-signature`. This receiver listens on 127.0.0.1 (a port of its
own), verifies each POST (the signature with `standardwebhooks`, any one of `secrets` verifying
any one of the space-separated signatures; or a static header token), answers as its `script`
says (a status with Retry-After, a hang past the client's timeout, a dropped connection) and
records everything. Like a real receiver it is idempotent: a webhook-id already processed (a
verified delivery answered 2xx) is answered 200 again but counted in `duplicates`, not processed.

    cert, key, ca = receiver_leaf(tmp_path / "pki")
    with WebhookReceiver(cert, key, secrets=["whsec_..."], script=[Reply(503, "2")]) as rx:
        ...  # deliver to rx.url(), verifying the server against `ca`
        rx.wait_for(lambda r: "msg_1" in r.processed, timeout=10)

`down()` closes the listening socket (and cuts open connections), so connections are refused;
`up()` listens on the same port again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, cast

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from crypto.pki import CA_CERT_FILE, init_ca, issue_leaf, load_ca, write_leaf

__all__ = [
    "MAX_BODY",
    "Action",
    "Drop",
    "Hang",
    "Received",
    "Reply",
    "WebhookReceiver",
    "receiver_leaf",
]

MAX_BODY: Final = 1 << 20  # 1 MiB; a larger body is answered 413
HOST: Final = "127.0.0.1"
RECEIVER_ROLE: Final = "soar"
RECEIVER_HOST: Final = "webhook-receiver"
_DRAIN_LIMIT: Final = 16 << 20  # an oversized body up to this is read and discarded
_IDLE_TIMEOUT: Final = 30.0  # seconds a connection may sit idle (handshake or keep-alive)


# --- script actions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """Answer with `status` (and a Retry-After header when given)."""

    status: int
    retry_after: str | None = None
    body: bytes = b""


@dataclass(frozen=True)
class Hang:
    """Wait `seconds` before answering 200, so the client's timeout fires first."""

    seconds: float


@dataclass(frozen=True)
class Drop:
    """Close the connection without any response."""


Action = Reply | Hang | Drop


@dataclass(frozen=True)
class Received:
    """One request as received; `status` is what it was answered (None: not, or not yet)."""

    webhook_id: str | None
    timestamp: str | None
    headers: dict[str, str]  # lower-case names
    body: bytes
    path: str
    verified: bool
    status: int | None

    def json(self) -> Any:
        return json.loads(self.body)


# --- certificates ---------------------------------------------------------------------------


def receiver_leaf(pki_dir: Path, trust_domain: str = "webhook.test") -> tuple[Path, Path, Path]:
    """(cert, key, ca) for a receiver on this host: SANs localhost and IP 127.0.0.1.

    Uses the CA in `pki_dir` (creating one for `trust_domain` if there is none) and reuses the
    leaf if an earlier call wrote it.
    """
    if not (pki_dir / CA_CERT_FILE).exists():
        init_ca(pki_dir, trust_domain)
    stem = pki_dir / f"{RECEIVER_ROLE}-{RECEIVER_HOST}"
    cert, key = stem.with_suffix(".crt"), stem.with_suffix(".key")
    if not cert.exists():
        ca = load_ca(pki_dir)
        leaf = issue_leaf(ca, RECEIVER_ROLE, RECEIVER_HOST, dns=["localhost"], ips=[HOST])
        files = write_leaf(leaf, pki_dir, ca.cert)
        cert, key = files.cert, files.key
    return cert, key, pki_dir / CA_CERT_FILE


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


# --- the HTTP side --------------------------------------------------------------------------


class _BodyTooLargeError(Exception):
    pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # SO_REUSEADDR: up() binds the same port again

    def __init__(self, port: int, receiver: WebhookReceiver) -> None:
        self.receiver = receiver
        super().__init__((HOST, port), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        conn = cast(socket.socket, request)
        rx = self.receiver
        conn.settimeout(_IDLE_TIMEOUT)
        try:
            if rx._tls is not None:
                # The handshake runs here, in the connection's own thread, not in accept().
                conn = rx._tls.wrap_socket(conn, server_side=True)
            if not rx._track(conn):
                return
            try:
                _Handler(conn, client_address, self)
            finally:
                rx._untrack(conn)
        except OSError:  # handshake failures, resets, timeouts: the client's problem
            pass
        finally:
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # finish_request swallows connection errors; anything else shows in the records


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a delivery client's pool expects
    server_version = "qsc-test-webhook-receiver"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def _rx(self) -> WebhookReceiver:
        return cast(_Server, self.server).receiver

    def do_POST(self) -> None:
        self._rx._handle(self)

    def _not_allowed(self) -> None:
        self.respond(405, b"POST only\n", {"Allow": "POST"})

    def do_GET(self) -> None:
        self._not_allowed()

    def do_PUT(self) -> None:
        self._not_allowed()

    def do_DELETE(self) -> None:
        self._not_allowed()

    def do_PATCH(self) -> None:
        self._not_allowed()

    def do_HEAD(self) -> None:
        self._not_allowed()

    def read_body(self) -> bytes:
        """The request body (Content-Length or chunked); _BodyTooLargeError beyond MAX_BODY."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        if length > MAX_BODY:
            self._discard(length)
            raise _BodyTooLargeError
        return self.rfile.read(length)

    def _discard(self, length: int) -> None:
        # Read (a bounded) unwanted body so the 413 reaches the client instead of a reset.
        left = length if length <= _DRAIN_LIMIT else 0
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                return
            left -= len(chunk)

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline(1024).split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY:
                raise _BodyTooLargeError
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def respond(self, status: int, body: bytes = b"", extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if body:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()


# --- the receiver ---------------------------------------------------------------------------


class WebhookReceiver:
    """A webhook endpoint on 127.0.0.1:`port`, HTTPS when `cert`/`key` are given, else HTTP.

    `secrets` (whsec_...) verify Standard Webhooks signatures; `header=(name, token)` requires a
    static header; with both, both must pass; with neither, every POST is verified. `script`
    is consumed one action per verified request, then every verified request is answered 200.
    """

    def __init__(
        self,
        cert: Path | None,
        key: Path | None,
        *,
        secrets: Sequence[str] = (),
        header: tuple[str, str] | None = None,
        script: Sequence[Action] = (),
    ) -> None:
        if (cert is None) != (key is None):
            raise ValueError("give both cert and key (HTTPS) or neither (plain HTTP)")
        self._tls = _server_context(cert, key) if cert is not None and key is not None else None
        self._webhooks = [Webhook(s) for s in secrets]
        self._header = (header[0].lower(), header[1]) if header is not None else None
        self._lock = threading.Lock()
        self._script: deque[Action] = deque(script)
        self._requests: list[Received] = []
        self._processed: dict[str, int] = {}
        self._duplicates: dict[str, int] = {}
        self._conns: set[socket.socket] = set()
        self._down = threading.Event()  # set by down(): wakes hangs of this generation
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.port = 0
        self.up()

    # --- lifecycle

    def up(self) -> None:
        """Listen (again, on the same port after down()) and serve."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the receiver is closed")
            if self._server is not None:
                return
            self._down = threading.Event()
        server = _Server(self.port, self)
        self.port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"webhook-receiver:{self.port}",
            daemon=True,
        )
        with self._lock:
            self._server, self._thread = server, thread
        thread.start()

    def down(self) -> None:
        """Stop listening (connections are refused) and cut the open connections."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            self._down.set()
            conns = list(self._conns)
        if server is None:
            return
        server.shutdown()
        server.server_close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)

    def close(self) -> None:
        self.down()
        with self._lock:
            self._closed = True

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_up(self) -> bool:
        with self._lock:
            return self._server is not None

    def url(self, path: str = "/hook") -> str:
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{HOST}:{self.port}{path}"

    # --- script

    def set_script(self, actions: Iterable[Action]) -> None:
        """Replace the actions still to come."""
        with self._lock:
            self._script = deque(actions)

    @property
    def script(self) -> list[Action]:
        with self._lock:
            return list(self._script)

    # --- records (copies, safe to read while requests arrive)

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._requests)

    @property
    def processed(self) -> dict[str, int]:
        with self._lock:
            return dict(self._processed)

    @property
    def duplicates(self) -> dict[str, int]:
        with self._lock:
            return dict(self._duplicates)

    def verified(self) -> list[Received]:
        return [r for r in self.requests if r.verified]

    def bodies_json(self, *, verified_only: bool = True) -> list[Any]:
        """The JSON bodies of the (verified) requests, in arrival order."""
        return [r.json() for r in self.requests if r.verified or not verified_only]

    def summary(self) -> str:
        lines = [
            f"{self.url()} up={self.is_up} processed={self.processed} "
            f"duplicates={self.duplicates} script left={self.script}"
        ]
        for r in self.requests:
            lines.append(
                f"  POST {r.path} id={r.webhook_id} verified={r.verified} status={r.status} "
                f"{len(r.body)} bytes"
            )
        return "\n".join(lines)

    def wait_for(
        self, predicate: Callable[[WebhookReceiver], bool], timeout: float, poll: float = 0.02
    ) -> None:
        """Poll until predicate(self) holds; AssertionError with a summary after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"webhook receiver: condition not met within {timeout} s\n{self.summary()}"
                )
            time.sleep(poll)

    # --- serving (called from connection threads)

    def _track(self, conn: socket.socket) -> bool:
        with self._lock:
            if self._down.is_set():
                return False
            self._conns.add(conn)
            return True

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _record(self, received: Received) -> int:
        with self._lock:
            self._requests.append(received)
            return len(self._requests) - 1

    def _set_status(self, index: int, status: int) -> None:
        with self._lock:
            self._requests[index] = dataclasses.replace(self._requests[index], status=status)

    def _verify(self, body: bytes, headers: dict[str, str]) -> bool:
        if self._header is not None:
            name, token = self._header
            if not hmac.compare_digest(headers.get(name, "").encode(), token.encode()):
                return False
        if self._webhooks:
            for wh in self._webhooks:
                try:
                    wh.verify(body, headers, json_parse=False)
                except WebhookVerificationError:
                    continue
                return True
            return False
        return True

    def _next_action(self) -> Action:
        with self._lock:
            return self._script.popleft() if self._script else Reply(200)

    def _settle(self, webhook_id: str | None, status: int) -> int:
        """Count a 2xx answer as processed, or as a duplicate of an earlier one (answered 200)."""
        if not 200 <= status < 300 or webhook_id is None:
            return status
        with self._lock:
            if webhook_id in self._processed:
                self._duplicates[webhook_id] = self._duplicates.get(webhook_id, 0) + 1
                return 200
            self._processed[webhook_id] = 1
            return status

    def _handle(self, h: _Handler) -> None:
        down = self._down  # this generation's: a hang ends early when down() cuts it
        headers = {k.lower(): v for k, v in h.headers.items()}
        wid, ts = headers.get("webhook-id"), headers.get("webhook-timestamp")

        def received(body: bytes, verified: bool, status: int | None) -> int:
            return self._record(Received(wid, ts, headers, body, h.path, verified, status))

        try:
            body = h.read_body()
        except _BodyTooLargeError:
            h.close_connection = True
            received(b"", False, 413)
            h.respond(413, b"body over 1 MiB\n")
            return
        except ValueError:
            h.close_connection = True
            received(b"", False, 400)
            h.respond(400, b"malformed body framing\n")
            return
        if not self._verify(body, headers):
            received(body, False, 401)
            h.respond(401, b"signature not verified\n")
            return
        index = received(body, True, None)
        action = self._next_action()
        if isinstance(action, Drop):
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        extra: dict[str, str] = {}
        reply_body = b""
        if isinstance(action, Hang):
            if down.wait(action.seconds):  # down() came first: never answered
                h.close_connection = True
                return
            status = 200
        else:
            status = action.status
            reply_body = action.body
            if action.retry_after is not None:
                extra["Retry-After"] = action.retry_after
        final = self._settle(wid, status)
        if final != status:
            reply_body = b""
        self._set_status(index, final)
        h.respond(final, reply_body, extra)
