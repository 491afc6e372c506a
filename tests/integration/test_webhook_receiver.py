"""The test webhook receiver itself: Standard Webhooks verification, scripts, idempotency, down/up.

Deliveries here are signed with `standardwebhooks` and posted with http.client over HTTPS,
verifying the receiver's certificate against the test CA, as the Cortex's deliveries will.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from demo.webhook_receiver import MAX_BODY, Drop, Hang, Reply, WebhookReceiver, receiver_leaf

SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()
OTHER = "whsec_" + base64.b64encode(os.urandom(24)).decode()
BODY = json.dumps({"playbook": "isolate-host", "host": "h1"}).encode()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return receiver_leaf(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def rx(tls: tuple[Path, Path, Path]) -> Iterator[WebhookReceiver]:
    cert, key, _ = tls
    with WebhookReceiver(cert, key, secrets=[SECRET]) as receiver:
        yield receiver


def signed(
    msg_id: str, body: bytes = BODY, *, secret: str = SECRET, age: dt.timedelta | None = None
) -> dict[str, str]:
    when = dt.datetime.now(dt.UTC) - (age or dt.timedelta())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, body),
        "Content-Type": "application/json",
    }


def post(
    rx: WebhookReceiver,
    ca: Path,
    headers: dict[str, str],
    body: bytes = BODY,
    *,
    timeout: float = 10,
    host: str = "127.0.0.1",
) -> http.client.HTTPResponse:
    ctx = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection(host, rx.port, timeout=timeout, context=ctx)
    conn.request("POST", "/hook", body=body, headers=headers)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_a_valid_signature_is_answered_200_and_processed(
    rx: WebhookReceiver, tls: tuple[Path, Path, Path]
) -> None:
    ca = tls[2]
    assert post(rx, ca, signed("msg_1")).status == 200
    assert post(rx, ca, signed("msg_2"), host="localhost").status == 200  # both SANs
    assert rx.processed == {"msg_1": 1, "msg_2": 1}
    first = rx.requests[0]
    assert (first.webhook_id, first.path, first.verified, first.status) == (
        "msg_1",
        "/hook",
        True,
        200,
    )
    assert first.headers["content-type"] == "application/json"
    assert rx.bodies_json()[0] == {"playbook": "isolate-host", "host": "h1"}
    assert rx.url().startswith(f"https://127.0.0.1:{rx.port}/")


def test_a_bad_or_stale_signature_is_answered_401(
    rx: WebhookReceiver, tls: tuple[Path, Path, Path]
) -> None:
    ca = tls[2]
    assert post(rx, ca, signed("msg_bad", secret=OTHER)).status == 401
    assert post(rx, ca, signed("msg_old", age=dt.timedelta(minutes=10))).status == 401
    tampered = signed("msg_tampered")
    assert post(rx, ca, tampered, BODY + b" ").status == 401
    assert [r.verified for r in rx.requests] == [False, False, False]
    assert [r.status for r in rx.requests] == [401, 401, 401]
    assert rx.processed == {}


def test_rotation_one_valid_signature_among_several_passes(
    rx: WebhookReceiver, tls: tuple[Path, Path, Path]
) -> None:
    headers = signed("msg_rot")
    old = Webhook(OTHER).sign("msg_rot", dt.datetime.now(dt.UTC), BODY)
    headers["webhook-signature"] = f"{old} {headers['webhook-signature']}"
    assert post(rx, tls[2], headers).status == 200
    # and the receiver side of a rotation: either of two secrets verifies
    rx_cert, rx_key, ca = tls
    with WebhookReceiver(rx_cert, rx_key, secrets=[OTHER, SECRET]) as both:
        assert post(both, ca, signed("msg_new")).status == 200
        assert post(both, ca, signed("msg_prev", secret=OTHER)).status == 200
        assert both.processed == {"msg_new": 1, "msg_prev": 1}


def test_a_scripted_500_then_the_default_200(
    rx: WebhookReceiver, tls: tuple[Path, Path, Path]
) -> None:
    rx.set_script([Reply(500, body=b"boom")])
    assert post(rx, tls[2], signed("msg_retry")).status == 500
    assert rx.processed == {}
    assert post(rx, tls[2], signed("msg_retry")).status == 200
    assert rx.processed == {"msg_retry": 1}
    assert rx.duplicates == {}
    assert [r.status for r in rx.requests] == [500, 200]


def test_429_carries_retry_after(rx: WebhookReceiver, tls: tuple[Path, Path, Path]) -> None:
    rx.set_script([Reply(429, retry_after="7")])
    resp = post(rx, tls[2], signed("msg_slow"))
    assert resp.status == 429
    assert resp.getheader("Retry-After") == "7"


def test_a_redelivered_webhook_id_is_a_duplicate_not_processed_again(
    rx: WebhookReceiver, tls: tuple[Path, Path, Path]
) -> None:
    assert post(rx, tls[2], signed("msg_dup")).status == 200
    assert post(rx, tls[2], signed("msg_dup")).status == 200
    assert rx.processed == {"msg_dup": 1}
    assert rx.duplicates == {"msg_dup": 1}


def test_a_hang_makes_the_client_time_out(
    rx: WebhookReceiver, tls: tuple[Path, Path, Path]
) -> None:
    rx.set_script([Hang(1.0)])
    with pytest.raises(TimeoutError):
        post(rx, tls[2], signed("msg_hang"), timeout=0.3)
    # the receiver answered (and processed) it after the hang, too late for the client
    rx.wait_for(lambda r: r.requests[0].status == 200, timeout=5)
    assert rx.processed == {"msg_hang": 1}


def test_a_drop_closes_the_connection_without_a_response(
    rx: WebhookReceiver, tls: tuple[Path, Path, Path]
) -> None:
    rx.set_script([Drop()])
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        post(rx, tls[2], signed("msg_drop"))
    assert rx.requests[0].status is None
    assert rx.processed == {}


def test_down_refuses_and_up_serves_on_the_same_port(
    rx: WebhookReceiver, tls: tuple[Path, Path, Path]
) -> None:
    port = rx.port
    rx.down()
    with pytest.raises(ConnectionRefusedError):
        post(rx, tls[2], signed("msg_down"))
    rx.up()
    assert rx.port == port
    assert post(rx, tls[2], signed("msg_up")).status == 200
    assert rx.processed == {"msg_up": 1}


def test_plain_http_with_a_header_token_and_the_body_limit() -> None:
    with WebhookReceiver(None, None, header=("Authorization", "Bearer t0k3n")) as plain:
        assert plain.url("/x") == f"http://127.0.0.1:{plain.port}/x"

        def send(headers: dict[str, str], body: bytes) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", plain.port, timeout=10)
            conn.request("POST", "/hook", body=body, headers={"webhook-id": "m", **headers})
            status = conn.getresponse().status
            conn.close()
            return status

        assert send({"Authorization": "Bearer t0k3n"}, b"{}") == 200
        assert send({"Authorization": "Bearer wrong"}, b"{}") == 401
        assert send({}, b"{}") == 401
        assert send({"Authorization": "Bearer t0k3n"}, b"x" * (MAX_BODY + 1)) == 413
        assert plain.processed == {"m": 1}
        with pytest.raises(AssertionError, match="condition not met"):
            plain.wait_for(lambda r: len(r.requests) > 10, timeout=0.1)
