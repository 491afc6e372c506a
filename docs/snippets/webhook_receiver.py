"""A webhook receiver that verifies the Cortex's Standard Webhooks signatures (standard library
only). It prints one JSON line per delivery it accepts, answers 204, and 401 to anything whose
signature or timestamp does not verify; a repeated webhook-id is acknowledged, not processed.

    python3 webhook_receiver.py SECRET_FILE PORT      (PORT 0: any; the first line names it)

Serve it behind TLS (a reverse proxy, or an ssl context on the server) and set the endpoint's
`ca_file` in the Cortex; plain HTTP is for a trial on one machine.
"""

import base64
import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

TOLERANCE_S = 300  # refuse deliveries whose timestamp is further than this from our clock


class RefusedError(Exception):
    """The delivery does not verify: answer 401 and do nothing with it."""


def verify(secret: str, headers: Any, body: bytes) -> dict[str, Any]:
    """The delivery's JSON if one of its signatures is ours; RefusedError otherwise."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    if not msg_id or not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE_S:
        raise RefusedError("missing id or timestamp, or timestamp out of tolerance")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    # Several signatures, space-separated, during a secret rollover: any one of ours will do.
    for candidate in headers.get("webhook-signature", "").split():
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return dict(json.loads(body))
    raise RefusedError("no valid signature")


class Receiver(BaseHTTPRequestHandler):
    secret: ClassVar[str] = ""
    seen: ClassVar[set[str]] = set()  # webhook-ids processed; keep it durable in a real receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        try:
            delivery = verify(self.secret, self.headers, body)
        except RefusedError as refused:
            print(json.dumps({"refused": str(refused)}), flush=True)
            self.send_response(401)
            self.end_headers()
            return
        msg_id = self.headers["webhook-id"]  # the same on every retry of one delivery
        if msg_id not in self.seen:
            self.seen.add(msg_id)
            name = delivery["data"]["name"]  # the API's Assessment, in proto3 JSON
            print(json.dumps({"id": msg_id, "type": delivery["type"], "name": name}), flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    Receiver.secret = Path(sys.argv[1]).read_text().strip()
    server = HTTPServer(("127.0.0.1", int(sys.argv[2])), Receiver)
    print(json.dumps({"listening": server.server_port}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
