"""Playbook webhooks: Standard Webhooks signatures as a receiver verifies them (rotation
included), secret files that must be private and never shown, and what each attempt's outcome
means on the retry schedule."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from cortex.errors import PlaybookSecretError
from cortex.playbooks.retry import (
    DEFAULT_SCHEDULE,
    Outcome,
    RetrySchedule,
    judge,
    parse_retry_after,
)
from cortex.playbooks.signing import HeaderToken, SigningSecrets, webhook_id


def secret_file(tmp_path: Path, name: str, text: str | None = None, mode: int = 0o600) -> Path:
    path = tmp_path / name
    if text is None:
        text = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    path.write_text(text + "\n")
    os.chmod(path, mode)
    return path


def test_a_receiver_verifies_the_signature_and_any_change_fails(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "s.whsec")
    auth = SigningSecrets.from_files([path])
    body = b'{"assessment": "assessments/x", "revision": 2}'
    now = int(time.time())
    msg_id = webhook_id("0190f000-0000-7000-8000-000000000000", 2, "notify-soar", 0)
    headers = auth.headers(msg_id, now, body)
    assert headers["webhook-id"] == msg_id
    assert headers["webhook-timestamp"] == str(now)
    receiver = Webhook(path.read_text().strip())
    assert receiver.verify(body, headers) == {"assessment": "assessments/x", "revision": 2}
    # The same MAC computed by hand, as the spec defines it.
    key = base64.b64decode(path.read_text().strip().removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{now}.".encode() + body, hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()
    for tampered in (
        {**headers, "webhook-id": msg_id + "x"},
        {**headers, "webhook-timestamp": str(now + 1)},
    ):
        with pytest.raises(WebhookVerificationError):
            receiver.verify(body, tampered)
    with pytest.raises(WebhookVerificationError):
        receiver.verify(body + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret_file(tmp_path, "other.whsec").read_text().strip()).verify(body, headers)


def test_during_a_rollover_both_secrets_sign(tmp_path: Path) -> None:
    new, old = secret_file(tmp_path, "new.whsec"), secret_file(tmp_path, "old.whsec")
    auth = SigningSecrets.from_files([new, old])
    headers = auth.headers("id-1", int(time.time()), b"{}")
    assert len(headers["webhook-signature"].split(" ")) == 2
    for held in (new, old):  # a receiver holding either one verifies
        Webhook(held.read_text().strip()).verify(b"{}", headers)


def test_secrets_never_show(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "s.whsec")
    auth = SigningSecrets.from_files([path])
    text = path.read_text().strip()
    assert text not in repr(auth)
    assert text.removeprefix("whsec_") not in repr(auth)
    assert auth.describe() == str(path)
    token = HeaderToken.from_file("X-N8N-Auth", secret_file(tmp_path, "t", "t0k3n-" + "a" * 20))
    assert "t0k3n" not in repr(token)
    assert token.headers("id", 1, b"")["X-N8N-Auth"] == "t0k3n-" + "a" * 20


@pytest.mark.parametrize(
    ("text", "mode", "reason"),
    [
        (None, 0o644, "readable by group or other"),
        (None, 0o620, "writable by group or other"),
        ("secret-without-prefix", 0o600, "must start with 'whsec_'"),
        ("whsec_!!!not-base64", 0o600, "not valid base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), 0o600, "5 bytes"),
    ],
)
def test_bad_secret_files_are_refused_naming_the_file(
    tmp_path: Path, text: str | None, mode: int, reason: str
) -> None:
    path = secret_file(tmp_path, "s.whsec", text, mode)
    with pytest.raises(PlaybookSecretError) as caught:
        SigningSecrets.from_files([path])
    assert str(path) in str(caught.value)
    assert reason in str(caught.value)
    if text is not None:
        assert text not in str(caught.value)


def test_a_missing_secret_and_bad_token_headers_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PlaybookSecretError, match="no such file"):
        SigningSecrets.from_files([tmp_path / "missing"])
    with pytest.raises(PlaybookSecretError, match="at least one"):
        SigningSecrets.from_files([])
    good = secret_file(tmp_path, "t", "x" * 20)
    for name in ("webhook-signature", "bad header", ""):
        with pytest.raises(PlaybookSecretError):
            HeaderToken.from_file(name, good)
    with pytest.raises(PlaybookSecretError, match="at least 16"):
        HeaderToken.from_file("X-Auth", secret_file(tmp_path, "short", "abc"))


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (410, Outcome.ENDPOINT_GONE),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (503, Outcome.RETRY),
        (301, Outcome.FAILED),
        (400, Outcome.FAILED),
        (401, Outcome.FAILED),
        (404, Outcome.FAILED),
        (None, Outcome.RETRY),
    ],
)
def test_each_outcome_means_what_receivers_expect(status: int | None, outcome: Outcome) -> None:
    assert judge(status, error="timed out after 10s").outcome is outcome


def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    now = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Mon, 07 Dec 2026 12:05:00 GMT", now) == 300.0
    assert parse_retry_after("Mon, 07 Dec 2026 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert judge(429, retry_after="30").retry_after_s == 30.0


def test_the_schedule_spreads_delays_honours_retry_after_and_ends() -> None:
    schedule = RetrySchedule()
    assert schedule.attempts == 8
    total = sum(d.total_seconds() for d in DEFAULT_SCHEDULE)
    assert 27 * 3600 < total < 28 * 3600
    for attempt, base in enumerate(DEFAULT_SCHEDULE, start=1):
        low = schedule.next_delay(attempt, asked_s=None, rng=lambda: 0.0)
        high = schedule.next_delay(attempt, asked_s=None, rng=lambda: 0.999999)
        assert low is not None
        assert high is not None
        assert low == pytest.approx(base.total_seconds() * 0.8)
        assert high == pytest.approx(base.total_seconds() * 1.2, rel=1e-5)
    assert schedule.next_delay(8, asked_s=None, rng=lambda: 0.5) is None  # spent: dead letter
    # A receiver asking for longer is waited for, up to the cap; a shorter ask does not hurry.
    assert schedule.next_delay(1, asked_s=600, rng=lambda: 0.5) == 600
    assert schedule.next_delay(1, asked_s=1, rng=lambda: 0.5) == 5
    assert schedule.next_delay(1, asked_s=10**9, rng=lambda: 0.5) == 24 * 3600
    with pytest.raises(ValueError, match="positive"):
        RetrySchedule(delays=(dt.timedelta(0),))
