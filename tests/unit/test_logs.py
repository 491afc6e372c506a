"""`mesh.logs`: JSON lines and text that carry structured fields, never secrets or raw bytes."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest

from mesh.config import config_from_dict
from mesh.logs import (
    REDACTED,
    LogConfig,
    LogFormat,
    LogLevel,
    configure_from,
    configure_logging,
    is_sensitive_name,
    log_event,
)

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def json_lines(level: str = "debug") -> tuple[io.StringIO, logging.Logger]:
    stream = io.StringIO()
    configure_logging(level, "json", stream)
    return stream, logging.getLogger("qsc.test")


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.usefixtures("restore_root")
def test_json_lines_parse_and_carry_the_standard_keys_and_fields() -> None:
    stream, log = json_lines()
    log_event(log, "call done", peer="spiffe://mesh.test/soar/x", rpc="/qsc.v1.S/M", code="OK",
              duration_ms=1.5, attempt=2, ok=True, nothing=None)  # fmt: skip
    log.warning("plain %s", "args", extra={"fields": {"listen": "127.0.0.1:7443"}})
    first, second = records(stream)
    assert RFC3339_UTC.fullmatch(first["time"])
    assert first["level"] == "info"
    assert first["logger"] == "qsc.test"
    assert first["message"] == "call done"
    assert first["peer"] == "spiffe://mesh.test/soar/x"
    assert first["rpc"] == "/qsc.v1.S/M"
    assert (first["code"], first["duration_ms"], first["attempt"]) == ("OK", 1.5, 2)
    assert (first["ok"], first["nothing"]) == (True, None)
    assert second["level"] == "warning"
    assert second["message"] == "plain args"
    assert second["listen"] == "127.0.0.1:7443"


@pytest.mark.usefixtures("restore_root")
def test_fields_named_like_secrets_are_redacted_at_any_depth() -> None:
    stream, log = json_lines()
    log_event(
        log,
        "loaded",
        password="hunter2",
        api_token="tok-123",
        clientSecret="cs-456",
        private_key="-----BEGIN PRIVATE KEY-----",
        key="k-789",
        nested={"db_password": "pw-000", "host": "db"},
        key_id="kid-1",
        key_exchange_group="X25519MLKEM768",
        key_path="/pki/a.key",
    )
    (rec,) = records(stream)
    for name in ("password", "api_token", "clientSecret", "private_key", "key"):
        assert rec[name] == REDACTED
    assert rec["nested"] == {"db_password": REDACTED, "host": "db"}
    # Names that describe a secret, not hold one, stay: operators debug with them.
    assert rec["key_id"] == "kid-1"
    assert rec["key_exchange_group"] == "X25519MLKEM768"
    assert rec["key_path"] == "/pki/a.key"
    raw = stream.getvalue()
    for secret in ("hunter2", "tok-123", "cs-456", "BEGIN PRIVATE", "k-789", "pw-000"):
        assert secret not in raw


@pytest.mark.parametrize(
    ("name", "sensitive"),
    [
        ("token", True),
        ("accessToken", True),
        ("x-api-key", True),
        ("passphrase", True),
        ("seed", True),
        ("key_id", False),
        ("ssl_negotiated_key_exchange_group", False),
        ("keepalive_ms", False),
        ("peer", False),
        ("monkey", False),
    ],
)
def test_sensitive_names(name: str, sensitive: bool) -> None:
    assert is_sensitive_name(name) is sensitive


@pytest.mark.usefixtures("restore_root")
def test_bytes_are_never_printed_only_their_length() -> None:
    stream, log = json_lines()
    blob = b"\x00\x01SECRETBYTES" + bytes(20)
    log_event(log, "sealed", payload=blob, parts=[bytearray(3), memoryview(bytes(4))])
    log.info("got %s and %r", blob, blob)
    log.info(blob)
    first, second, third = records(stream)
    assert first["payload"] == f"<{len(blob)} bytes>"
    assert first["parts"] == ["<3 bytes>", "<4 bytes>"]
    assert second["message"] == f"got <{len(blob)} bytes> and '<{len(blob)} bytes>'"
    assert third["message"] == f"<{len(blob)} bytes>"
    assert "SECRETBYTES" not in stream.getvalue()


@pytest.mark.usefixtures("restore_root")
def test_traceback_is_a_json_field() -> None:
    stream, log = json_lines()
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("handler failed", extra={"fields": {"rpc": "/x.v1.S/M"}})
    (rec,) = records(stream)
    assert rec["level"] == "error"
    assert rec["traceback"].startswith("Traceback (most recent call last):")
    assert rec["traceback"].rstrip().endswith("ValueError: boom")
    assert rec["rpc"] == "/x.v1.S/M"


@pytest.mark.usefixtures("restore_root")
def test_a_field_cannot_overwrite_the_standard_keys() -> None:
    stream, log = json_lines()
    log.info("real", extra={"fields": {"message": "fake", "level": "fake", "time": "fake"}})
    (rec,) = records(stream)
    assert (rec["message"], rec["level"]) == ("real", "info")
    assert (rec["field_message"], rec["field_level"], rec["field_time"]) == ("fake",) * 3


@pytest.mark.usefixtures("restore_root")
def test_text_format_is_one_line_with_key_values() -> None:
    stream = io.StringIO()
    configure_logging("info", "text", stream)
    log = logging.getLogger("qsc.text")
    log_event(log, "call\ninjected", peer="spiffe://td/operator/ops-1", note="two words",
              token="abc", data=b"xyz", n=3)  # fmt: skip
    (line,) = stream.getvalue().splitlines()
    when, level, name, rest = line.split(" ", 3)
    assert RFC3339_UTC.fullmatch(when)
    assert (level, name) == ("INFO", "qsc.text")
    assert rest.startswith("call\\ninjected ")
    assert "peer=spiffe://td/operator/ops-1" in rest
    assert 'note="two words"' in rest
    assert f"token={REDACTED}" in rest
    assert 'data="<3 bytes>"' in rest
    assert rest.endswith("n=3")


@pytest.mark.usefixtures("restore_root")
def test_text_format_appends_the_traceback() -> None:
    stream = io.StringIO()
    configure_logging("info", "text", stream)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logging.getLogger("qsc.text").exception("failed")
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("failed")
    assert lines[-1] == "ZeroDivisionError: division by zero"


@pytest.mark.usefixtures("restore_root")
def test_level_filters_and_reconfiguring_replaces_the_handler() -> None:
    stream, log = json_lines("warning")
    log_event(log, "hidden")
    log_event(log, "shown", level=logging.ERROR)
    assert [r["message"] for r in records(stream)] == ["shown"]
    other = io.StringIO()
    configure_from(LogConfig(level=LogLevel.DEBUG, format=LogFormat.JSON), other)
    log.debug("debug now")
    assert [r["message"] for r in records(stream)] == ["shown"]  # old handler gone
    assert [r["message"] for r in records(other)] == ["debug now"]


def test_bad_level_or_format_is_refused_before_anything_changes() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("loud", "json")
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        configure_logging("info", "xml")
    assert root.handlers == before


def test_log_config_loads_as_a_config_section() -> None:
    cfg = config_from_dict(LogConfig, {"level": "debug", "format": "json"})
    assert cfg == LogConfig(LogLevel.DEBUG, LogFormat.JSON)
