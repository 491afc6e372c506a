"""Structured logging for every component: readable text, or JSON lines for collectors.

    configure_logging("info", "json")
    log_event(log, "call refused", peer="spiffe://td/soar/x", rpc="/qsc.x.v1.S/M", code="DENIED")
    log.info("started", extra={"fields": {"listen": "0.0.0.0:7443"}})

JSON: one object per line with `time` (RFC 3339, UTC, milliseconds), `level`, `logger`,
`message`, the structured fields at top level (a field that collides with one of those names is
written as `field_<name>`), and `traceback` when an exception is logged.
Text: `time LEVEL logger message key=value ...`, one line per record plus any traceback.

Guards, applied to fields in both formats: a field whose name says key/secret/token/password
(and the like) is written as `<redacted>`, nested mappings included; bytes are never printed,
only their length (`<32 bytes>`), also when passed as %-arguments of the message.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import logging
import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TextIO

REDACTED: Final = "<redacted>"
_RESERVED: Final = frozenset({"time", "level", "logger", "message", "traceback", "stack"})
_HANDLER_MARK: Final = "_qsc_logs_handler"
_MAX_DEPTH: Final = 6

# A field is sensitive when one of its name's words is one of these...
_SENSITIVE_WORDS: Final = frozenset(
    {
        "key",
        "keys",
        "secret",
        "secrets",
        "token",
        "tokens",
        "password",
        "passwords",
        "passwd",
        "passphrase",
        "pwd",
        "credential",
        "credentials",
        "private",
        "privkey",
        "apikey",
        "authorization",
        "cookie",
        "seed",
        "psk",
    }
)
# ...or contains one of these (accesstoken, dbpassword, clientsecret)...
_SENSITIVE_PARTS: Final = ("secret", "password", "passwd", "passphrase", "token", "privkey")
# ...unless its last word says it describes the secret rather than holds it (key_id,
# key_exchange_group, key_path): those are what operators need to debug.
_DESCRIPTIVE_LAST_WORDS: Final = frozenset(
    {
        "id",
        "ids",
        "fingerprint",
        "count",
        "len",
        "length",
        "size",
        "type",
        "kind",
        "group",
        "groups",
        "alg",
        "algorithm",
        "epoch",
        "version",
        "path",
        "file",
        "name",
        "expiry",
        "age",
    }
)
_CAMEL_RE: Final = re.compile(r"([a-z0-9])([A-Z])")
_WORD_SPLIT_RE: Final = re.compile(r"[^a-z0-9]+")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
_BARE_TEXT_RE: Final = re.compile(r"[^\s\"=\\]+")


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


@dataclasses.dataclass(frozen=True)
class LogConfig:
    """The `[log]` section components embed in their config."""

    level: LogLevel = LogLevel.INFO
    format: LogFormat = LogFormat.TEXT


def is_sensitive_name(name: str) -> bool:
    """True if a field called `name` may hold a secret (see the module docstring)."""
    words = [w for w in _WORD_SPLIT_RE.split(_CAMEL_RE.sub(r"\1_\2", name).lower()) if w]
    if not words or words[-1] in _DESCRIPTIVE_LAST_WORDS:
        return False
    lowered = name.lower()
    return any(w in _SENSITIVE_WORDS for w in words) or any(p in lowered for p in _SENSITIVE_PARTS)


def _bytes_note(value: bytes | bytearray | memoryview) -> str:
    return f"<{value.nbytes if isinstance(value, memoryview) else len(value)} bytes>"


def sanitize(value: Any, _depth: int = 0) -> Any:
    """A JSON-ready copy of `value`: bytes as their length, nested secrets redacted."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return _bytes_note(value)
    if isinstance(value, enum.Enum):
        return sanitize(value.value, _depth)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if _depth >= _MAX_DEPTH:
        return "<...>"
    if isinstance(value, Mapping):
        return redact_fields(value, _depth + 1)
    if isinstance(value, list | tuple | set | frozenset):
        return [sanitize(v, _depth + 1) for v in value]
    return str(value)


def redact_fields(fields: Mapping[Any, Any], _depth: int = 0) -> dict[str, Any]:
    """Fields with sensitive names replaced by `<redacted>`, the rest sanitized."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        name = str(k)
        out[name] = REDACTED if is_sensitive_name(name) else sanitize(v, _depth)
    return out


def _message(record: logging.LogRecord) -> str:
    """`record.getMessage()`, except that bytes never reach the output raw."""
    msg = record.msg
    if isinstance(msg, bytes | bytearray | memoryview):
        return _bytes_note(msg)
    args: Any = record.args
    if not args:
        return str(msg)
    if isinstance(args, Mapping):
        args = {
            k: _bytes_note(v) if isinstance(v, bytes | bytearray | memoryview) else v
            for k, v in args.items()
        }
    else:
        args = tuple(
            _bytes_note(a) if isinstance(a, bytes | bytearray | memoryview) else a for a in args
        )
    return str(str(msg) % args)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return redact_fields(fields) if isinstance(fields, Mapping) else {}


def _rfc3339(created: float) -> str:
    t = dt.datetime.fromtimestamp(created, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _message(record),
        }
        for name, value in _fields(record).items():
            out[f"field_{name}" if name in _RESERVED else name] = value
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["traceback"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def _text_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value if _BARE_TEXT_RE.fullmatch(value) else json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


def _one_line(text: str) -> str:
    # A message must not forge extra log lines (newlines from a peer-supplied string).
    return _CONTROL_RE.sub(lambda m: json.dumps(m.group())[1:-1], text)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger message key=value ...`, then the traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            _rfc3339(record.created),
            record.levelname,
            record.name,
            _one_line(_message(record)),
        ]
        parts += [f"{_one_line(k)}={_one_line(_text_value(v))}" for k, v in _fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelNamesMapping().get(str(level).upper())
    if number is None:
        allowed = ", ".join(m.value for m in LogLevel)
        raise ValueError(f"unknown log level {level!r}; use one of {allowed}")
    return number


def configure_logging(
    level: str | int = LogLevel.INFO,
    fmt: str = LogFormat.TEXT,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every logger's records to `stream` (default: stderr) in `fmt`, at `level`.

    Idempotent: a second call replaces the handler the first one installed.
    """
    number = _level_number(level)  # validate both before touching the root logger
    try:
        fmt = LogFormat(fmt)
    except ValueError:
        raise ValueError(f"unknown log format {fmt!r}; use text or json") from None
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt is LogFormat.JSON else TextFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(number)
    logging.captureWarnings(True)
    return handler


def configure_from(config: LogConfig, stream: TextIO | None = None) -> logging.Handler:
    return configure_logging(config.level, config.format, stream)


def log_event(
    logger: logging.Logger,
    msg: str,
    /,
    *,
    level: int = logging.INFO,
    exc_info: bool | BaseException | None = None,
    **fields: Any,
) -> None:
    """Log `msg` with structured `fields` (redacted and sanitized by the formatters)."""
    if logger.isEnabledFor(level):
        logger.log(level, msg, exc_info=exc_info, extra={"fields": fields}, stacklevel=2)
