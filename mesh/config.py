"""Component configuration: a TOML file plus environment overrides, into frozen dataclasses.

One generic loader, driven by the dataclass field types, serves every component:

    cfg = load_config(AlphaConfig, component="alpha", path=Path("/etc/qsc/alpha.toml"))

A tool that reads only some sections of a component's file loads them with `load_sections`.

Precedence: environment > file > dataclass defaults.

Environment overrides: `QSC_<COMPONENT>_<FIELD>[__<FIELD>...]`, each field name upper-cased and
nested sections joined by a double underscore, so `[server] max_message_bytes` of component
`alpha` is `QSC_ALPHA_SERVER__MAX_MESSAGE_BYTES`. Field names are snake_case without `__`, so the
split is unambiguous. Every other variable under the prefix is an error (a typo must not be
ignored), except `QSC_<COMPONENT>_CONFIG`, reserved for the file path (`config_path_from_env`).
Values are text: str and Path verbatim; int, float; bool as true/false/1/0/yes/no/on/off;
durations as in TOML; enums by value; arrays as a TOML array (`["a", "b"]`) or comma-separated
items; tables as a TOML inline table; an empty value sets an optional (`X | None`) field to None.

Field types understood: str, int, float, bool, Path, timedelta ("250ms", "10s", "5m", "1h30m",
"90d", or a number of seconds), Enum (by value), Literal, tuple[X, ...], tuple[X, Y], list[X],
dict[str, X], nested dataclasses (TOML tables, or arrays of tables), `X | None`, and scalar classes
that define `from_config_str(text)` (see `ListenAddress`). Unknown keys, wrong types and failing
`__post_init__` checks raise `ConfigLoadError` (a `mesh.errors.ConfigError`) naming the source
(file or variable), the dotted key and the reason: `alpha.toml: server.listen: expected HOST:PORT,
got 'abc'`. A `__post_init__` blames one field with `ConfigError("<field>", reason)` (the key is
relative to its own dataclass; the loader prefixes the section and names the field's source), or
the whole section with ValueError.

Secrets: mark a field `secret_field()` (metadata {"secret": True}, repr=False); `dump_config` shows
it as `<hidden>` and error messages never echo its value.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import ipaddress
import json
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, Union

from mesh.errors import ConfigError

T = TypeVar("T")

SECRET: Final = "secret"  # noqa: S105 - the metadata key, not a password
HIDDEN: Final = "<hidden>"
_RESERVED_ENV: Final = "CONFIG"
_FIELD_NAME_RE: Final = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
_COMPONENT_RE: Final = re.compile(r"[a-z][a-z0-9]*(?:[_-][a-z0-9]+)*")


class ConfigLoadError(ConfigError):
    """`<source>: <dotted.key>: <reason>`; source is the file, an env variable or "defaults"."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(key, reason)
        self.source = source
        message = f"{source}: {key}: {reason}" if key else f"{source}: {reason}"
        self.args = (message,)

    def __str__(self) -> str:
        return str(self.args[0])


def secret_field(*, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field holding a secret: hidden from repr, `dump_config` and error messages."""
    return dataclasses.field(default=default, repr=False, metadata={SECRET: True})


# --- durations ------------------------------------------------------------------------------

_UNITS: Final = {
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
    "ms": timedelta(milliseconds=1),
}
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_HELP: Final = "expected a duration like '250ms', '10s', '5m', '1h30m', '90d' or seconds"


def parse_duration(text: str) -> timedelta:
    """'250ms', '10s', '5m', '1h30m', '90d', or a plain number of seconds; never negative."""
    s = text.strip()
    try:
        seconds = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"{_DURATION_HELP}, got {text!r}")
        return _seconds(seconds, text)
    pos, total = 0, timedelta()
    for match in _DURATION_PART.finditer(s):
        if match.start() != pos:
            break
        try:
            total += float(match.group(1)) * _UNITS[match.group(2)]
        except OverflowError:
            raise ValueError(f"{_DURATION_HELP}: {text!r} is longer than timedelta holds") from None
        pos = match.end()
    if pos == 0 or pos != len(s):
        raise ValueError(f"{_DURATION_HELP}, got {text!r}")
    return total


def _seconds(seconds: float, text: object) -> timedelta:
    """timedelta(seconds=...), ValueError (not OverflowError) past its 999,999,999 days."""
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"{_DURATION_HELP}: {text!r} is longer than timedelta holds") from None


def format_duration(value: timedelta) -> str:
    """The shortest exact form `parse_duration` reads back: '90d', '5m', '250ms', '1.5e-06s'."""
    micros = value // timedelta(microseconds=1)
    if micros == 0:
        return "0s"
    for name, unit in _UNITS.items():
        step = unit // timedelta(microseconds=1)
        if micros % step == 0:
            return f"{micros // step}{name}"
    return f"{value.total_seconds()!r}s"


# --- shared config types --------------------------------------------------------------------

_HOSTNAME_RE: Final = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _check_host(host: str) -> None:
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        return
    if len(host) > 253 or not _HOSTNAME_RE.fullmatch(host):
        raise ValueError(f"{host!r} is not a host name or IP address")
    if host.rsplit(".", 1)[-1].isdigit():  # all-numeric last label: only valid as IPv4
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv4 address") from None


@dataclasses.dataclass(frozen=True)
class ListenAddress:
    """`HOST:PORT` or `[IPv6]:PORT` (host stored without brackets); port 0 lets the OS choose."""

    host: str
    port: int

    def __post_init__(self) -> None:
        _check_host(self.host)
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError(f"port must be an integer, got {self.port!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        """Parse `HOST:PORT`, `[v6]:PORT`; ValueError says what was expected and what came."""
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            if ":" not in host:
                raise ValueError(f"expected an IPv6 address inside [...], got {text!r}")
        elif ":" in host:
            raise ValueError(f"expected HOST:PORT with an IPv6 host in brackets, got {text!r}")
        if not (port.isascii() and port.isdigit()):
            raise ValueError(f"expected HOST:PORT with a numeric port, got {text!r}")
        try:
            return cls(host, int(port))
        except ValueError as exc:
            raise ValueError(f"{exc} in {text!r}") from None

    # The loader reads a scalar class from a string through this hook.
    from_config_str = parse

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen_address(text: str) -> ListenAddress:
    return ListenAddress.parse(text)


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """A component's mTLS identity files, as `qsc pki issue` writes them.

    Only the shape is checked here; existence and the key's 0600 mode are checked where the
    files are read, so configs stay pure values.
    """

    cert: Path
    key: Path
    ca: Path

    def __post_init__(self) -> None:
        for name in ("cert", "key", "ca"):
            value = getattr(self, name)
            if not isinstance(value, Path):
                raise ConfigError(name, f"expected a path, got {type(value).__name__}")
            if value == Path(".") or not value.name:
                raise ConfigError(name, f"expected a file path, got {str(value)!r}")
        # The classic mistake: the key pointing at the certificate (or CA) file.
        if self.key in (self.cert, self.ca):
            raise ConfigError("key", "must be the private key file, not the cert or ca file")
        if self.cert == self.ca:
            raise ConfigError("ca", "must be the CA certificate, not this component's cert")

    @classmethod
    def in_dir(cls, directory: Path, stem: str, *, ca: str = "ca.crt") -> TlsFiles:
        """The files `qsc pki issue ROLE HOST --out-dir DIR` writes: DIR/ROLE-HOST.{crt,key}."""
        return cls(directory / f"{stem}.crt", directory / f"{stem}.key", directory / ca)


# --- loading --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _EnvValue:
    name: str
    text: str


class _InvalidError(Exception):
    """A value has the wrong type or form; the caller adds the source and key."""


def env_prefix(component: str) -> str:
    if not _COMPONENT_RE.fullmatch(component):
        raise ValueError(f"component must be lowercase like 'alpha', got {component!r}")
    return f"QSC_{component.upper().replace('-', '_')}_"


def config_path_from_env(component: str, env: Mapping[str, str] = os.environ) -> Path | None:
    """The file named by `QSC_<COMPONENT>_CONFIG`, if set and not empty."""
    value = env.get(env_prefix(component) + _RESERVED_ENV, "")
    return Path(value) if value else None


def load_config(
    cls: type[T],
    *,
    component: str,
    path: Path | str | None,
    env: Mapping[str, str] = os.environ,
) -> T:
    """Build `cls` from the TOML file at `path` (if any) and `QSC_<COMPONENT>_*` overrides."""
    _check_schema(cls)
    if any(f.name == _RESERVED_ENV.lower() for f in _init_fields(cls)):
        raise TypeError(f"{cls.__name__}.config: reserved (QSC_<COMPONENT>_CONFIG names the file)")
    table, source = _read_toml(path)
    overrides = _env_overrides(cls, env_prefix(component), env)
    return typing.cast(T, _build(cls, table, overrides, "", source))


def load_sections(
    cls: type[T],
    *,
    component: str,
    path: Path | str | None,
    env: Mapping[str, str] = os.environ,
) -> T:
    """Some sections of a component's file, for a tool that reads only those: `cls`'s fields
    name them (`qsc-beta baseline` reads `[fim]` and `[keys]` of beta.toml). The file's other
    tables, and `QSC_<COMPONENT>_*` variables whose first part names none of `cls`'s fields, are
    the whole file's loader's to check (`load_config`, when the component starts); for the
    sections read, precedence, conversions and messages are `load_config`'s."""
    _check_schema(cls)
    names = {f.name for f in _init_fields(cls)}
    prefix = env_prefix(component)
    table, source = _read_toml(path)
    ours = {k: v for k, v in table.items() if k in names}
    upper = {name.upper() for name in names}
    mine = {
        var: value
        for var, value in env.items()
        if var.startswith(prefix) and var[len(prefix) :].split("__", 1)[0] in upper
    }
    overrides = _env_overrides(cls, prefix, mine)
    return typing.cast(T, _build(cls, ours, overrides, "", source))


def _read_toml(path: Path | str | None) -> tuple[dict[str, Any], str]:
    """The parsed file and its name for messages; no file: an empty table from "defaults"."""
    if path is None:
        return {}, "defaults"
    source = str(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f), source
    except FileNotFoundError:
        raise ConfigLoadError(source, "", "no such file") from None
    except IsADirectoryError:
        raise ConfigLoadError(source, "", "is a directory, not a TOML file") from None
    except OSError as exc:
        raise ConfigLoadError(source, "", f"cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigLoadError(source, "", f"invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigLoadError(source, "", "invalid TOML: not UTF-8") from None
    except RecursionError:  # tomllib recurses into nested arrays and tables
        raise ConfigLoadError(source, "", "invalid TOML: nested too deeply") from None


def config_from_dict(cls: type[T], data: Mapping[str, Any], *, source: str = "<dict>") -> T:
    """Build `cls` from an already parsed TOML document (tests, embedded defaults)."""
    _check_schema(cls)
    return typing.cast(T, _build(cls, dict(data), {}, "", source))


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _init_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _check_schema(cls: type, seen: set[type] | None = None) -> None:
    """Programming errors (unsupported types, bad field names) fail loudly as TypeError."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")
    seen = seen if seen is not None else set()
    if cls in seen:
        return
    seen.add(cls)
    hints = _hints(cls)
    for f in _init_fields(cls):
        if not _FIELD_NAME_RE.fullmatch(f.name):
            raise TypeError(f"{cls.__name__}.{f.name}: config field names must be snake_case")
        _check_type(hints[f.name], f"{cls.__name__}.{f.name}", seen)


def _check_type(tp: Any, where: str, seen: set[type]) -> None:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _scalar_parser(tp) is not None or tp in (str, int, float, bool, Path, timedelta):
        return
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        _check_schema(tp, seen)
        return
    if origin is Literal:
        return
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            _check_type(rest[0], where, seen)
            return
    elif origin in _ARRAYS and args:
        for a in args:
            if a is not Ellipsis:
                _check_type(a, where, seen)
        return
    elif origin in _TABLES and len(args) == 2 and args[0] is str:
        _check_type(args[1], where, seen)
        return
    raise TypeError(f"{where}: unsupported config field type {tp!r}")


_ARRAYS: Final = (tuple, list, frozenset, set)
_TABLES: Final = (dict, Mapping)


def _scalar_parser(tp: Any) -> Any:
    return getattr(tp, "from_config_str", None) if isinstance(tp, type) else None


def _optional_inner(tp: Any) -> Any | None:
    """X for `X | None`, else None."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        return rest[0]
    return None


def _section_type(tp: Any) -> type | None:
    """The dataclass behind a field that is a nested section (`Sub` or `Sub | None`)."""
    inner = _optional_inner(tp)
    tp = inner if inner is not None else tp
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and _scalar_parser(tp) is None:
        return tp
    return None


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _unknown(name: str, valid: list[str], key: str) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"did you mean {_join(key, close[0])!r}?" if close else ""
    listing = f"valid keys: {', '.join(valid)}" if valid else "no keys are valid here"
    return f"unknown key; {hint} {listing}" if hint else f"unknown key; {listing}"


def _env_overrides(cls: type, prefix: str, env: Mapping[str, str]) -> dict[str, Any]:
    """Map `QSC_<C>_A__B` variables to a tree {a: {b: _EnvValue}}, refusing unknown names."""
    tree: dict[str, Any] = {}
    for var in sorted(env):
        if not var.startswith(prefix) or var == prefix + _RESERVED_ENV:
            continue
        parts = var[len(prefix) :].split("__")
        node, current, key = tree, cls, ""
        for i, part in enumerate(parts):
            fields = {fld.name.upper(): fld for fld in _init_fields(current)}
            f = fields.get(part)
            if f is None:
                name = part.lower()
                valid = sorted(fld.name for fld in fields.values())
                raise ConfigLoadError(var, _join(key, name), _unknown(name, valid, key))
            key = _join(key, f.name)
            section = _section_type(_hints(current)[f.name])
            last = i == len(parts) - 1
            if last and section is not None:
                raise ConfigLoadError(var, key, f"is a section; set its keys as {var}__<KEY>")
            if not last and section is None:
                raise ConfigLoadError(var, key, "is not a section; it has no keys")
            if last:
                node[f.name] = _EnvValue(var, env[var])
            else:
                assert section is not None
                node = node.setdefault(f.name, {})
                current = section
    return tree


def _build(cls: type, table: Any, env: Mapping[str, Any], key: str, source: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigLoadError(source, key, f"expected a table, got {_show(table)}")
    hints = _hints(cls)
    fields = {f.name: f for f in _init_fields(cls)}
    for name in table:
        if name not in fields:
            raise ConfigLoadError(source, _join(key, name), _unknown(name, sorted(fields), key))
    kwargs: dict[str, Any] = {}
    origin: dict[str, str] = {}  # field -> where its value came from, for __post_init__ errors
    for name, f in fields.items():
        tp, sub = hints[name], _join(key, name)
        secret = bool(f.metadata.get(SECRET, False))
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        value = env.get(name)
        section = _section_type(tp)
        if isinstance(value, _EnvValue):
            kwargs[name] = _from_env(tp, value, sub, secret)
            origin[name] = value.name
        elif section is not None and (name in env or name in table or required):
            kwargs[name] = _build(section, table.get(name, {}), env.get(name, {}), sub, source)
            origin[name] = source
        elif name in table:
            kwargs[name] = _convert(tp, table[name], sub, source, secret)
            origin[name] = source
        elif required:
            raise ConfigLoadError(source, sub, "missing required key")
    try:
        return cls(**kwargs)
    except ConfigLoadError:
        raise
    except ConfigError as exc:
        # A __post_init__ blaming one field; tolerate a key that repeats this section's name.
        rel = exc.key
        first, _, rest = rel.partition(".")
        if first not in fields and rest and key.rpartition(".")[2] == first:
            rel, first = rest, rest.partition(".")[0]
        where = origin.get(first) or _sources(origin.values(), source)
        raise ConfigLoadError(where, _join(key, rel), exc.reason) from None
    except ValueError as exc:
        raise ConfigLoadError(_sources(origin.values(), source), key, str(exc)) from None


def _sources(origins: Iterable[str], default: str) -> str:
    """Where a whole section's values came from: the file, and a few variables by name."""
    unique = list(dict.fromkeys(origins))
    env = [o for o in unique if o.startswith("QSC_")]
    if len(env) > 3:
        env = [f"{len(env)} QSC_* variables"]
    return ", ".join([o for o in unique if not o.startswith("QSC_")] + env) or default


def _from_env(tp: Any, value: _EnvValue, key: str, secret: bool) -> Any:
    inner = _optional_inner(tp)
    if inner is not None:
        if value.text == "":
            return None
        tp = inner
    origin = typing.get_origin(tp)
    stripped = value.text.strip()
    if origin in _ARRAYS or origin in _TABLES or _section_type(tp) is not None:
        if stripped.startswith(("[", "{")):
            try:
                parsed = tomllib.loads(f"v = {value.text}")["v"]
            except tomllib.TOMLDecodeError as exc:
                reason = "invalid TOML value" if secret else f"invalid TOML value ({exc})"
                raise ConfigLoadError(value.name, key, reason) from None
            return _convert(tp, parsed, key, value.name, secret)
        if origin in _TABLES or _section_type(tp) is not None:
            reason = "expected a TOML inline table like {a = 1}"
            raise ConfigLoadError(value.name, key, f"{reason}, got {_show(value.text, secret)}")
        items = [item.strip() for item in value.text.split(",")] if stripped else []
        return _convert(tp, items, key, value.name, secret, text=True)
    try:
        return _scalar(tp, value.text, secret, text=True)
    except _InvalidError as exc:
        raise ConfigLoadError(value.name, key, str(exc)) from None


def _convert(tp: Any, raw: Any, key: str, source: str, secret: bool, *, text: bool = False) -> Any:
    """Convert a parsed TOML value (or, with `text`, an env string) to `tp`."""
    inner = _optional_inner(tp)
    if inner is not None:
        if text and raw == "":
            return None
        tp = inner
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    section = _section_type(tp)
    if section is not None:
        return _build(section, raw, {}, key, source)
    if origin in _ARRAYS:
        if not isinstance(raw, list):
            raise ConfigLoadError(source, key, f"expected an array, got {_show(raw, secret)}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(raw) != len(args):
                reason = f"expected an array of {len(args)} items, got {len(raw)}"
                raise ConfigLoadError(source, key, reason)
            item_types = list(args)
        else:
            item_types = [args[0]] * len(raw)
        items = [
            _convert(t, item, f"{key}[{i}]", source, secret, text=text)
            for i, (t, item) in enumerate(zip(item_types, raw, strict=True))
        ]
        return items if origin is list else origin(items)
    if origin in _TABLES:
        if not isinstance(raw, dict):
            raise ConfigLoadError(source, key, f"expected a table, got {_show(raw, secret)}")
        return {k: _convert(args[1], v, _join(key, k), source, secret) for k, v in raw.items()}
    try:
        return _scalar(tp, raw, secret, text=text)
    except _InvalidError as exc:
        raise ConfigLoadError(source, key, str(exc)) from None


_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})
_INT_RE: Final = re.compile(r"[+-]?\d+(?:_\d+)*")


def _scalar(tp: Any, raw: Any, secret: bool, *, text: bool) -> Any:
    got = f"got {_show(raw, secret)}"
    parse = _scalar_parser(tp)
    if parse is not None:
        if isinstance(raw, tp):
            return raw
        if not isinstance(raw, str):
            raise _InvalidError(f"expected a string, {got}")
        try:
            return parse(raw)
        except ValueError as exc:
            raise _InvalidError("invalid value" if secret else str(exc)) from None
    if tp is str:
        if not isinstance(raw, str):
            raise _InvalidError(f"expected a string, {got}")
        return raw
    if tp is bool:
        if text and isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        if not text and isinstance(raw, bool):
            return raw
        raise _InvalidError(f"expected true or false, {got}")
    if tp is int:
        if text and isinstance(raw, str) and _INT_RE.fullmatch(raw.strip()):
            return int(raw.strip())
        if not text and isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        raise _InvalidError(f"expected an integer, {got}")
    if tp is float:
        value: Any = raw
        if text and isinstance(raw, str):
            try:
                value = float(raw)
            except ValueError:
                raise _InvalidError(f"expected a number, {got}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _InvalidError(f"expected a number, {got}")
        if not math.isfinite(value):
            raise _InvalidError(f"expected a finite number, {got}")
        return float(value)
    if tp is Path:
        if not isinstance(raw, str):
            raise _InvalidError(f"expected a path string, {got}")
        if not raw:
            raise _InvalidError("expected a path, got an empty string")
        return Path(raw)
    if tp is timedelta:
        if isinstance(raw, bool):
            raise _InvalidError(f"{_DURATION_HELP}, {got}")
        if isinstance(raw, int | float):
            if not math.isfinite(raw) or raw < 0:
                raise _InvalidError(f"{_DURATION_HELP}, {got}")
            try:
                return _seconds(raw, raw)
            except ValueError as exc:
                raise _InvalidError(str(exc)) from None
        if isinstance(raw, timedelta):
            return raw
        if not isinstance(raw, str):
            raise _InvalidError(f"{_DURATION_HELP}, {got}")
        try:
            return parse_duration(raw)
        except ValueError:
            raise _InvalidError(f"{_DURATION_HELP}, {got}") from None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if _same(member.value, raw, text):
                return member
        allowed = ", ".join(repr(m.value) for m in tp)
        raise _InvalidError(f"expected one of {allowed}, {got}")
    if typing.get_origin(tp) is Literal:
        for choice in typing.get_args(tp):
            if _same(choice, raw, text):
                return choice
        allowed = ", ".join(repr(c) for c in typing.get_args(tp))
        raise _InvalidError(f"expected one of {allowed}, {got}")
    raise TypeError(f"unsupported config field type {tp!r}")  # _check_schema rules this out


def _same(choice: Any, raw: Any, text: bool) -> bool:
    if text and isinstance(raw, str):
        return str(choice) == raw.strip()
    return type(choice) is type(raw) and bool(choice == raw)


def _show(raw: Any, secret: bool = False) -> str:
    """How an offending value appears in a message: short, and never a secret."""
    if secret:
        return "a value that is not shown (secret)"
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, dict):
        return "a table"
    if isinstance(raw, list):
        return "an array"
    if isinstance(raw, str):
        return repr(raw if len(raw) <= 80 else raw[:77] + "...")
    if isinstance(raw, int | float):
        return repr(raw)
    return f"a {type(raw).__name__}"


# --- dumping --------------------------------------------------------------------------------

_BARE_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]+")


def dump_config(obj: object) -> str:
    """TOML for `--print-config`; secrets appear as `<hidden>` (deliberately not valid TOML, so
    pasting the dump back fails loudly instead of setting a secret to the placeholder)."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError("dump_config expects a dataclass instance")
    lines: list[str] = []
    _dump_section(obj, [], lines)
    return "\n".join(lines).strip("\n") + "\n"


def _dump_section(obj: Any, path: list[str], lines: list[str]) -> None:
    later: list[tuple[str, Any, bool]] = []
    for f in _init_fields(type(obj)):
        value = getattr(obj, f.name)
        secret = bool(f.metadata.get(SECRET, False))
        key = _toml_key(f.name)
        if value is None:
            lines.append(f"# {key} is unset")
        elif secret:
            lines.append(f"{key} = {HIDDEN}")
        elif _is_section_value(value) or _is_table_array(value) or _is_table_map(value):
            later.append((f.name, value, secret))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, value, _ in later:
        sub = [*path, name]
        header = ".".join(_toml_key(p) for p in sub)
        if _is_table_array(value):
            for item in value:
                lines += ["", f"[[{header}]]"]
                _dump_section(item, sub, lines)
        elif isinstance(value, Mapping):
            for k, item in value.items():
                lines += ["", f"[{header}.{_toml_key(k)}]"]
                _dump_section(item, [*sub, k], lines)
        else:
            lines += ["", f"[{header}]"]
            _dump_section(value, sub, lines)


def _is_section_value(value: Any) -> bool:
    return (
        dataclasses.is_dataclass(value)
        and not isinstance(value, type)
        and _scalar_parser(type(value)) is None
    )


def _is_table_map(value: Any) -> bool:
    return (
        isinstance(value, Mapping) and bool(value) and all(map(_is_section_value, value.values()))
    )


def _is_table_array(value: Any) -> bool:
    return isinstance(value, tuple | list) and bool(value) and all(map(_is_section_value, value))


def _toml_key(name: str) -> str:
    return name if _BARE_KEY_RE.fullmatch(name) else _toml_string(name)


def _toml_string(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes; TOML also wants DEL escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return _toml_value(value.value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, timedelta):
        return _toml_string(format_duration(value))
    if isinstance(value, str | Path):
        return _toml_string(str(value))
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, set | frozenset):
        return "[" + ", ".join(sorted(_toml_value(v) for v in value)) + "]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        pairs = (f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + ", ".join(pairs) + " }"
    if _is_section_value(value):
        items: list[str] = []
        for f in _init_fields(type(value)):
            v = getattr(value, f.name)
            if v is None:
                continue
            shown = HIDDEN if f.metadata.get(SECRET, False) else _toml_value(v)
            items.append(f"{_toml_key(f.name)} = {shown}")
        return "{ " + ", ".join(items) + " }" if items else "{}"
    return _toml_string(str(value))  # scalar classes (ListenAddress) print as they parse
