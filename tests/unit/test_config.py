"""`mesh.config`: TOML plus `QSC_<COMPONENT>_*` overrides into frozen dataclasses; its errors."""

from __future__ import annotations

import enum
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal

import pytest

from mesh.channel import ChannelConfig, RetryPolicy
from mesh.config import (
    ConfigLoadError,
    ListenAddress,
    TlsFiles,
    config_from_dict,
    config_path_from_env,
    dump_config,
    format_duration,
    load_config,
    parse_duration,
    secret_field,
)
from mesh.errors import ConfigError, MeshError


class Mode(enum.Enum):
    FAST = "fast"
    SAFE = "safe"


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 4_194_304
    ratio: float = 0.5

    def __post_init__(self) -> None:
        if self.max_message_bytes <= 0:
            raise ConfigError("max_message_bytes", "must be positive")


@dataclass(frozen=True)
class Server:
    listen: ListenAddress
    tls: TlsFiles
    limits: Limits = field(default_factory=Limits)
    grace: timedelta = timedelta(seconds=10)


@dataclass(frozen=True)
class Peer:
    name: str
    address: ListenAddress
    weight: int = 1


@dataclass(frozen=True)
class Sample:
    name: str
    server: Server
    debug: bool = False
    mode: Mode = Mode.FAST
    format: Literal["text", "json"] = "text"
    data_dir: Path = Path("/var/lib/qsc")
    retention: timedelta = timedelta(days=90)
    tags: tuple[str, ...] = ()
    ports: list[int] = field(default_factory=list)
    pair: tuple[str, int] = ("a", 1)
    groups: frozenset[str] = frozenset()
    labels: dict[str, str] = field(default_factory=dict)
    peers: tuple[Peer, ...] = ()
    note: str | None = None
    timeout: timedelta | None = None
    extra: Limits | None = None
    token: str = secret_field(default="")
    pin: int = secret_field(default=0)

    def __post_init__(self) -> None:
        if self.timeout is not None and self.timeout > self.retention:
            raise ValueError("timeout must not exceed retention")


FULL = """\
name = "alpha-1"
debug = true
mode = "safe"
format = "json"
data_dir = "/srv/qsc"
retention = "30d"
tags = ["edge", "dmz"]
ports = [1, 2]
pair = ["b", 2]
groups = ["x", "y"]
labels = { site = "paris" }
note = "hello"
timeout = 2.5
token = "s3cr3t-value"
pin = 1234

[server]
listen = "[::1]:7443"
grace = "1m30s"

[server.tls]
cert = "/pki/alpha.crt"
key = "/pki/alpha.key"
ca = "/pki/ca.crt"

[server.limits]
max_message_bytes = 1024
ratio = 1

[extra]
ratio = 0.25

[[peers]]
name = "cortex"
address = "10.0.0.2:7443"

[[peers]]
name = "ml"
address = "ml.example.org:0"
weight = 3
"""

MINIMAL = """\
name = "alpha-1"
[server]
listen = "127.0.0.1:7443"
[server.tls]
cert = "a.crt"
key = "a.key"
ca = "ca.crt"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "alpha.toml"
    path.write_text(text)
    return path


def load(path: Path | None, **env: str) -> Sample:
    return load_config(Sample, component="alpha", path=path, env=env)


def error(path: Path | None, **env: str) -> ConfigLoadError:
    with pytest.raises(ConfigLoadError) as info:
        load(path, **env)
    return info.value


# --- every type from TOML -------------------------------------------------------------------


def test_every_type_loads_from_toml(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, FULL))
    assert cfg.name == "alpha-1"
    assert cfg.debug is True
    assert cfg.mode is Mode.SAFE
    assert cfg.format == "json"
    assert cfg.data_dir == Path("/srv/qsc")
    assert cfg.retention == timedelta(days=30)
    assert cfg.tags == ("edge", "dmz")
    assert cfg.ports == [1, 2]
    assert cfg.pair == ("b", 2)
    assert cfg.groups == frozenset({"x", "y"})
    assert cfg.labels == {"site": "paris"}
    assert cfg.note == "hello"
    assert cfg.timeout == timedelta(seconds=2.5)
    assert cfg.token == "s3cr3t-value"
    assert cfg.pin == 1234
    assert cfg.server.listen == ListenAddress("::1", 7443)
    assert cfg.server.grace == timedelta(seconds=90)
    assert cfg.server.tls == TlsFiles(
        Path("/pki/alpha.crt"), Path("/pki/alpha.key"), Path("/pki/ca.crt")
    )
    assert cfg.server.limits == Limits(max_message_bytes=1024, ratio=1.0)
    assert isinstance(cfg.server.limits.ratio, float)
    assert cfg.extra == Limits(ratio=0.25)
    assert cfg.peers == (
        Peer("cortex", ListenAddress("10.0.0.2", 7443)),
        Peer("ml", ListenAddress("ml.example.org", 0), weight=3),
    )


def test_defaults_fill_what_the_file_leaves_out(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, MINIMAL))
    assert cfg.server.limits == Limits()
    assert (cfg.note, cfg.timeout, cfg.extra, cfg.peers) == (None, None, None, ())
    assert cfg.retention == timedelta(days=90)


# --- environment overrides ------------------------------------------------------------------


def test_environment_overrides_the_file_which_overrides_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "[server.limits]\nmax_message_bytes = 2048\nratio = 0.75\n")
    cfg = load(
        path,
        QSC_ALPHA_SERVER__LISTEN="0.0.0.0:9000",
        QSC_ALPHA_SERVER__LIMITS__MAX_MESSAGE_BYTES="4096",
    )
    assert cfg.server.listen == ListenAddress("0.0.0.0", 9000)  # env over file
    assert cfg.server.limits.max_message_bytes == 4096  # env over file, two levels down
    assert cfg.server.limits.ratio == 0.75  # file over default
    assert cfg.server.grace == timedelta(seconds=10)  # default


def test_every_type_loads_from_the_environment(tmp_path: Path) -> None:
    cfg = load(
        write(tmp_path, MINIMAL),
        QSC_ALPHA_NAME="from-env",
        QSC_ALPHA_DEBUG="yes",
        QSC_ALPHA_FORMAT="json",
        QSC_ALPHA_DATA_DIR="/data",
        QSC_ALPHA_RETENTION="12h",
        QSC_ALPHA_TAGS="a, b ,c",
        QSC_ALPHA_PORTS="[80, 443]",
        QSC_ALPHA_PAIR="z,9",
        QSC_ALPHA_GROUPS="g1",
        QSC_ALPHA_LABELS='{ team = "blue", site = "lyon" }',
        QSC_ALPHA_PEERS='[{ name = "c", address = "[::1]:1" }]',
        QSC_ALPHA_NOTE="",
        QSC_ALPHA_TIMEOUT="250ms",
        QSC_ALPHA_EXTRA__RATIO="2",
        QSC_ALPHA_SERVER__GRACE="45",
        QSC_ALPHA_SERVER__TLS__KEY="/run/secrets/alpha.key",
        QSC_ALPHA_TOKEN="t0k",
    )
    assert cfg.name == "from-env"
    assert cfg.debug is True
    assert cfg.format == "json"
    assert cfg.data_dir == Path("/data")
    assert cfg.retention == timedelta(hours=12)
    assert cfg.tags == ("a", "b", "c")
    assert cfg.ports == [80, 443]
    assert cfg.pair == ("z", 9)
    assert cfg.groups == frozenset({"g1"})
    assert cfg.labels == {"team": "blue", "site": "lyon"}
    assert cfg.peers == (Peer("c", ListenAddress("::1", 1)),)
    assert cfg.note is None  # empty value: an optional field set to None
    assert cfg.timeout == timedelta(milliseconds=250)
    assert cfg.extra == Limits(ratio=2.0)  # an absent optional section created by one variable
    assert cfg.server.grace == timedelta(seconds=45)
    assert cfg.server.tls.key == Path("/run/secrets/alpha.key")
    assert cfg.server.tls.cert == Path("a.crt")
    assert cfg.token == "t0k"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("ON", True), ("1", True), ("no", False), ("off", False), ("0", False)],
)
def test_env_booleans(tmp_path: Path, text: str, expected: bool) -> None:
    assert load(write(tmp_path, MINIMAL), QSC_ALPHA_DEBUG=text).debug is expected


def test_an_empty_env_array_is_empty(tmp_path: Path) -> None:
    assert load(write(tmp_path, 'tags = ["x"]\n' + MINIMAL), QSC_ALPHA_TAGS="").tags == ()


def test_only_environment_no_file() -> None:
    cfg = load(
        None,
        QSC_ALPHA_NAME="n",
        QSC_ALPHA_SERVER__LISTEN="127.0.0.1:0",
        QSC_ALPHA_SERVER__TLS__CERT="c.crt",
        QSC_ALPHA_SERVER__TLS__KEY="c.key",
        QSC_ALPHA_SERVER__TLS__CA="ca.crt",
    )
    assert cfg.server.listen.port == 0


def test_other_components_and_the_config_path_variable_are_not_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    env = {"QSC_ALPHA_CONFIG": str(path), "QSC_BETA_WHATEVER": "1", "QSC_ALPHAX": "1"}
    assert load(path, **env).name == "alpha-1"
    assert config_path_from_env("alpha", env) == path
    assert config_path_from_env("beta", env) is None


# --- errors name the source, the key and the reason -----------------------------------------


def test_unknown_key_in_the_file(tmp_path: Path) -> None:
    err = error(write(tmp_path, MINIMAL.replace("listen =", "listn =")))
    assert str(err).startswith(f"{tmp_path / 'alpha.toml'}: server.listn: unknown key;")
    assert "did you mean 'server.listen'?" in str(err)
    assert isinstance(err, ConfigError)
    assert isinstance(err, MeshError)
    assert (err.source, err.key) == (str(tmp_path / "alpha.toml"), "server.listn")


def test_unknown_top_level_key_and_unknown_section(tmp_path: Path) -> None:
    assert error(write(tmp_path, MINIMAL + "[serverx]\na = 1\n")).key == "serverx"
    assert error(write(tmp_path, "bogus = 1\n" + MINIMAL)).key == "bogus"


def test_unknown_environment_variable(tmp_path: Path) -> None:
    err = error(write(tmp_path, MINIMAL), QSC_ALPHA_SERVER__LISTN="1.2.3.4:5")
    assert str(err).startswith("QSC_ALPHA_SERVER__LISTN: server.listn: unknown key;")
    assert "did you mean 'server.listen'?" in str(err)
    err = error(write(tmp_path, MINIMAL), QSC_ALPHA_SERVR__LISTEN="1.2.3.4:5")
    assert (err.source, err.key) == ("QSC_ALPHA_SERVR__LISTEN", "servr")


def test_environment_variable_naming_a_section_or_descending_into_a_value(tmp_path: Path) -> None:
    err = error(write(tmp_path, MINIMAL), QSC_ALPHA_SERVER="x")
    assert str(err) == (
        "QSC_ALPHA_SERVER: server: is a section; set its keys as QSC_ALPHA_SERVER__<KEY>"
    )
    err = error(write(tmp_path, MINIMAL), QSC_ALPHA_NAME__X="x")
    assert str(err) == "QSC_ALPHA_NAME__X: name: is not a section; it has no keys"


def test_wrong_type_in_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '[server.limits]\nmax_message_bytes = "x"\n')
    assert str(error(path)) == (
        f"{path}: server.limits.max_message_bytes: expected an integer, got 'x'"
    )


def test_wrong_type_in_the_environment(tmp_path: Path) -> None:
    err = error(write(tmp_path, MINIMAL), QSC_ALPHA_SERVER__LIMITS__MAX_MESSAGE_BYTES="x")
    assert str(err) == (
        "QSC_ALPHA_SERVER__LIMITS__MAX_MESSAGE_BYTES: server.limits.max_message_bytes: "
        "expected an integer, got 'x'"
    )


@pytest.mark.parametrize(
    ("line", "key", "reason"),
    [
        ("debug = 1", "debug", "expected true or false, got 1"),
        ("note = 5", "note", "expected a string, got 5"),
        ("ports = [1, true]", "ports[1]", "expected an integer, got true"),
        ("ports = 3", "ports", "expected an array, got 3"),
        ("pair = ['a']", "pair", "expected an array of 2 items, got 1"),
        ("labels = 3", "labels", "expected a table, got 3"),
        ("data_dir = ''", "data_dir", "expected a path, got an empty string"),
        ("peers = [{ name = 'x' }]", "peers[0].address", "missing required key"),
        ("extra = 3", "extra", "expected a table, got 3"),
        ("timeout = -1", "timeout", "expected a duration like '250ms', '10s', '5m', '1h30m', "),
    ],
)
def test_wrong_types_name_the_key(tmp_path: Path, line: str, key: str, reason: str) -> None:
    path = write(tmp_path, f"{line}\n{MINIMAL}")
    err = error(path)
    assert err.key == key
    assert str(err).startswith(f"{path}: {key}: {reason}")


def test_float_must_be_finite(tmp_path: Path) -> None:
    err = error(write(tmp_path, MINIMAL), QSC_ALPHA_EXTRA__RATIO="nan")
    assert err.reason == "expected a finite number, got 'nan'"


@pytest.mark.parametrize("text", ["10x", "5 m", "m5", "1h-30m", "", "-3s", "inf"])
def test_bad_duration(tmp_path: Path, text: str) -> None:
    err = error(write(tmp_path, f"retention = {text!r}\n{MINIMAL}"))
    assert err.key == "retention"
    assert err.reason.startswith("expected a duration like '250ms', '10s', '5m', '1h30m', '90d'")
    assert repr(text) in err.reason
    err = error(write(tmp_path, MINIMAL), QSC_ALPHA_SERVER__GRACE=text)
    assert (err.source, err.key) == ("QSC_ALPHA_SERVER__GRACE", "server.grace")


def test_invalid_enum_and_literal_values_list_the_allowed_ones(tmp_path: Path) -> None:
    err = error(write(tmp_path, f'mode = "turbo"\n{MINIMAL}'))
    assert err.reason == "expected one of 'fast', 'safe', got 'turbo'"
    err = error(write(tmp_path, MINIMAL), QSC_ALPHA_FORMAT="yaml")
    assert str(err) == "QSC_ALPHA_FORMAT: format: expected one of 'text', 'json', got 'yaml'"


def test_listen_address_error_reads_like_the_docs(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("127.0.0.1:7443", "abc"))
    assert str(error(path)) == f"{path}: server.listen: expected HOST:PORT, got 'abc'"


def test_missing_required_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('listen = "127.0.0.1:7443"\n', ""))
    assert str(error(path)) == f"{path}: server.listen: missing required key"
    assert str(error(write(tmp_path, 'name = "x"\n'))).endswith(
        "server.listen: missing required key"
    )


def test_post_init_field_check_names_the_field_and_its_source(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "[server.limits]\nmax_message_bytes = -1\n")
    assert str(error(path)) == f"{path}: server.limits.max_message_bytes: must be positive"
    err = error(write(tmp_path, MINIMAL), QSC_ALPHA_SERVER__LIMITS__MAX_MESSAGE_BYTES="0")
    assert str(err) == (
        "QSC_ALPHA_SERVER__LIMITS__MAX_MESSAGE_BYTES: server.limits.max_message_bytes: "
        "must be positive"
    )


def test_post_init_section_check_names_every_source_that_set_it(tmp_path: Path) -> None:
    path = write(tmp_path, 'retention = "1s"\n' + MINIMAL)
    err = error(path, QSC_ALPHA_TIMEOUT="5s")
    assert str(err) == f"{path}, QSC_ALPHA_TIMEOUT: timeout must not exceed retention"
    assert err.key == ""


def test_tls_files_checks_name_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('key = "a.key"', 'key = "a.crt"'))
    assert str(error(path)) == (
        f"{path}: server.tls.key: must be the private key file, not the cert or ca file"
    )


def test_file_problems(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert str(error(missing)) == f"{missing}: no such file"
    assert str(error(tmp_path)) == f"{tmp_path}: is a directory, not a TOML file"
    err = error(write(tmp_path, "name = \n"))
    assert err.reason.startswith("invalid TOML: ")
    assert "line 1" in err.reason


# --- secrets --------------------------------------------------------------------------------


def test_dump_hides_secrets_and_shows_the_rest(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, FULL))
    text = dump_config(cfg)
    assert "token = <hidden>" in text
    assert "pin = <hidden>" in text
    assert "s3cr3t-value" not in text
    assert "1234" not in text
    assert "s3cr3t-value" not in repr(cfg)
    assert 'listen = "[::1]:7443"' in text
    assert 'retention = "30d"' in text
    assert "[server.tls]" in text
    assert "[[peers]]" in text
    with pytest.raises(tomllib.TOMLDecodeError):  # pasting it back fails, never sets "<hidden>"
        tomllib.loads(text)


def test_wrong_type_of_a_secret_does_not_echo_it(tmp_path: Path) -> None:
    err = error(write(tmp_path, MINIMAL), QSC_ALPHA_PIN="hunter2")
    assert "hunter2" not in str(err)
    assert (
        str(err)
        == "QSC_ALPHA_PIN: pin: expected an integer, got a value that is not shown (secret)"
    )


def test_dump_round_trips_through_the_loader(tmp_path: Path) -> None:
    cfg = ChannelConfig(
        target="cortex.example.org:7443",
        tls=TlsFiles.in_dir(Path("/etc/qsc pki"), "operator-ops-1"),
        default_timeout=timedelta(milliseconds=1500),
        retry=RetryPolicy(max_attempts=6, initial_backoff=timedelta(milliseconds=50)),
    )
    text = dump_config(cfg)
    assert "# server_name_override is unset" in text
    path = tmp_path / "client.toml"
    path.write_text(text)
    assert load_config(ChannelConfig, component="qsc", path=path, env={}) == cfg


# --- the shared types and the helpers -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:0", "127.0.0.1", 0),
        ("0.0.0.0:65535", "0.0.0.0", 65535),
        ("[::1]:7443", "::1", 7443),
        ("[::]:1", "::", 1),
        ("cortex.example.org:443", "cortex.example.org", 443),
        ("localhost:50051", "localhost", 50051),
    ],
)
def test_listen_address_parses(text: str, host: str, port: int) -> None:
    addr = ListenAddress.parse(text)
    assert (addr.host, addr.port) == (host, port)
    assert str(addr) == text


@pytest.mark.parametrize(
    "text",
    ["abc", ":80", "host:", "::1:80", "[127.0.0.1]:80", "host:-1", "host:70000", "bad_host:80",
     "1.2.3.999:80", "[::1:80", "host:8o"],
)  # fmt: skip
def test_listen_address_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=repr(text).replace("[", r"\[")):
        ListenAddress.parse(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10s", timedelta(seconds=10)),
        ("5m", timedelta(minutes=5)),
        ("90d", timedelta(days=90)),
        ("1h30m", timedelta(minutes=90)),
        ("250ms", timedelta(milliseconds=250)),
        ("1.5s", timedelta(seconds=1.5)),
        ("7", timedelta(seconds=7)),
        ("0", timedelta(0)),
    ],
)
def test_durations(text: str, value: timedelta) -> None:
    assert parse_duration(text) == value
    assert parse_duration(format_duration(value)) == value


def test_format_duration_picks_the_largest_exact_unit() -> None:
    assert format_duration(timedelta(days=90)) == "90d"
    assert format_duration(timedelta(seconds=90)) == "90s"
    assert format_duration(timedelta(minutes=5)) == "5m"
    assert format_duration(timedelta(milliseconds=1500)) == "1500ms"
    assert format_duration(timedelta(0)) == "0s"


def test_tls_files_in_dir_matches_qsc_pki_issue() -> None:
    files = TlsFiles.in_dir(Path("/pki"), "alpha-web1")
    assert files == TlsFiles(
        Path("/pki/alpha-web1.crt"), Path("/pki/alpha-web1.key"), Path("/pki/ca.crt")
    )


def test_config_from_dict_and_nested_channel_config_errors() -> None:
    cfg = config_from_dict(
        ChannelConfig,
        {"target": "h:1", "tls": {"cert": "c", "key": "k", "ca": "a"}, "retry": {"jitter": False}},
    )
    assert cfg.retry == RetryPolicy(jitter=False)
    with pytest.raises(ConfigLoadError) as info:
        config_from_dict(
            ChannelConfig,
            {
                "target": "h:1",
                "tls": {"cert": "c", "key": "k", "ca": "a"},
                "retry": {"initial_backoff": "2s", "max_backoff": "1s"},
            },
            source="client.toml",
        )
    assert str(info.value) == "client.toml: retry.max_backoff: must be at least initial_backoff"


def test_programming_errors_are_type_errors() -> None:
    @dataclass(frozen=True)
    class Bad:
        value: complex = 1j

    with pytest.raises(TypeError, match="unsupported config field type"):
        config_from_dict(Bad, {})
    with pytest.raises(TypeError, match="not a dataclass"):
        config_from_dict(int, {})
    with pytest.raises(ValueError, match="component"):
        load_config(Sample, component="Alpha!", path=None, env={})
