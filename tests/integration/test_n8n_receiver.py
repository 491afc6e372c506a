"""A real n8n receiving Standard Webhooks signed POSTs, as the Cortex sends them to a SOAR.

One n8n per module (startup takes tens of seconds; see tests/n8n_helpers.py): the workflow
tests/n8n/verify_webhook.json checks n8n's Header Auth itself, then a Code node verifies the
signature over the raw body and a Respond to Webhook node answers 200 or 401. Each test reads back
what the workflow recorded from n8n's database. `make test` installs tools/n8n first;
without it the tests fail saying so (N8nError), never skip.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from tests.n8n_helpers import Execution, N8n

pytestmark = [
    pytest.mark.slow,
    pytest.mark.n8n,
]

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
HEADER = ("X-QSC-Token", secrets.token_urlsafe(24))


@pytest.fixture(scope="module")
def n8n(tmp_path_factory: pytest.TempPathFactory) -> Iterator[N8n]:
    with N8n(tmp_path_factory.mktemp("n8n"), secret=SECRET, header_token=HEADER) as server:
        print(f"n8n ready in {server.startup_seconds:.1f}s at {server.url}")
        yield server


def post(
    n8n: N8n,
    body: bytes,
    *,
    msg_id: str,
    timestamp: datetime | None = None,
    secret: str = SECRET,
    signature: str | None = None,
    token: str | None = HEADER[1],
) -> tuple[int, bytes]:
    """POST `body` signed like the Cortex does; (status, response body)."""
    when = timestamp or datetime.now(UTC)
    headers = {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature or Webhook(secret).sign(msg_id, when, body.decode()),
    }
    if token is not None:
        headers[HEADER[0]] = token
    req = urllib.request.Request(n8n.webhook_url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def recorded(n8n: N8n, msg_id: str) -> Execution:
    deadline = time.monotonic() + 30
    while True:
        found = [e for e in n8n.executions() if e.webhook_id == msg_id]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(found) == 1, f"executions for {msg_id}: {n8n.executions()}\n{n8n.log_tail()}"
    return found[0]


def assessment_body() -> bytes:
    # Not re-serialisable byte for byte (spacing, key order, non-ASCII): the signature must be
    # checked over the exact bytes received.
    doc = {"kind": "assessment", "node": "alpha-1", "score": 0.93, "note": "sshd: échec ✓"}
    return json.dumps(doc, ensure_ascii=False, indent=1).encode()


def test_valid_signature_accepted(n8n: N8n) -> None:
    msg_id = f"msg_{secrets.token_hex(8)}"
    status, body = post(n8n, assessment_body(), msg_id=msg_id)
    assert status == 200, (body, n8n.log_tail())
    assert json.loads(body) == {"accepted": True, "webhook_id": msg_id}
    execution = recorded(n8n, msg_id)
    assert (execution.status, execution.verdict) == ("success", "accepted"), execution


def test_any_of_several_signatures_accepted(n8n: N8n) -> None:
    msg_id = f"msg_{secrets.token_hex(8)}"
    body, when = assessment_body(), datetime.now(UTC)
    good = Webhook(SECRET).sign(msg_id, when, body.decode())
    other = Webhook("whsec_" + base64.b64encode(b"k" * 32).decode()).sign(msg_id, when, "x")
    status, _ = post(n8n, body, msg_id=msg_id, timestamp=when, signature=f"{other} {good}")
    assert status == 200
    assert recorded(n8n, msg_id).verdict == "accepted"


@pytest.mark.parametrize(
    "case",
    ["wrong_secret", "tampered_body", "stale_timestamp", "garbage_signature"],
)
def test_bad_signature_rejected(n8n: N8n, case: str) -> None:
    msg_id = f"msg_{secrets.token_hex(8)}"
    body = assessment_body()
    kwargs: dict[str, object] = {}
    if case == "wrong_secret":
        kwargs["secret"] = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    elif case == "tampered_body":
        when = datetime.now(UTC)
        kwargs.update(timestamp=when, signature=Webhook(SECRET).sign(msg_id, when, "{}"))
    elif case == "stale_timestamp":
        kwargs["timestamp"] = datetime.now(UTC) - timedelta(minutes=6)
    else:
        kwargs["signature"] = "v1,AAAA v2,xyz nonsense"
    status, resp = post(n8n, body, msg_id=msg_id, **kwargs)  # type: ignore[arg-type]
    assert status == 401, (resp, n8n.log_tail())
    assert json.loads(resp) == {"accepted": False, "webhook_id": msg_id}
    execution = recorded(n8n, msg_id)
    assert (execution.status, execution.verdict) == ("success", "rejected"), execution
    expected = "outside tolerance" if case == "stale_timestamp" else "no valid v1 signature"
    assert expected in (execution.reason or ""), execution


@pytest.mark.parametrize("token", [None, "not-the-token"])
def test_header_token_checked_by_n8n(n8n: N8n, token: str | None) -> None:
    before = len(n8n.executions())
    msg_id = f"msg_{secrets.token_hex(8)}"
    status, _ = post(n8n, assessment_body(), msg_id=msg_id, token=token)
    assert status in (401, 403), n8n.log_tail()
    # n8n refuses it in the Webhook node's auth check: the workflow never ran.
    time.sleep(1.0)
    assert all(e.webhook_id != msg_id for e in n8n.executions())
    assert len(n8n.executions()) == before
