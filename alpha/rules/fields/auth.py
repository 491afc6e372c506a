"""`auth.*`: sshd authentication events."""

from __future__ import annotations

from operator import attrgetter

from alpha.rules.fields.extractors import enum_at, enum_names, int_at, seconds_at, string_at
from alpha.rules.fields.table import ADDR, BOOL, ENUM, INT, STRING, add_field
from qsc.common.v1 import auth_details_pb2

_AUTH = "auth_event"
_OUTCOMES = enum_names(auth_details_pb2.AuthOutcome.DESCRIPTOR, "AUTH_OUTCOME_")
_METHODS = enum_names(auth_details_pb2.AuthMethod.DESCRIPTOR, "AUTH_METHOD_")
add_field(
    "auth.service",
    STRING,
    "Authenticating service, e.g. sshd.",
    per_kind={_AUTH: string_at(f"{_AUTH}.service")},
)
add_field(
    "auth.outcome",
    ENUM,
    "Accepted or failed.",
    per_kind={_AUTH: enum_at(f"{_AUTH}.outcome", _OUTCOMES)},
    choices=tuple(_OUTCOMES.values()),
)
add_field(
    "auth.method",
    ENUM,
    "Password, publickey, keyboard_interactive, gssapi, hostbased, none.",
    per_kind={_AUTH: enum_at(f"{_AUTH}.method", _METHODS)},
    choices=tuple(_METHODS.values()),
)
add_field(
    "auth.user",
    STRING,
    "User name as given by the client (attacker-chosen text).",
    per_kind={_AUTH: string_at(f"{_AUTH}.user")},
)
add_field(
    "auth.invalid_user",
    BOOL,
    "True when the user does not exist on the host.",
    per_kind={_AUTH: attrgetter(f"{_AUTH}.invalid_user")},
)
add_field(
    "auth.source", ADDR, "Client address.", per_kind={_AUTH: string_at(f"{_AUTH}.source.address")}
)
add_field("auth.source_port", INT, "Client port.", per_kind={_AUTH: int_at(f"{_AUTH}.source.port")})
add_field(
    "auth.failures",
    INT,
    "Failed attempts from the same address in the sensor's window, this one included.",
    per_kind={_AUTH: int_at(f"{_AUTH}.failures_in_window")},
)
add_field(
    "auth.distinct_users",
    INT,
    "Distinct user names tried from the same address in the window.",
    per_kind={_AUTH: int_at(f"{_AUTH}.distinct_users_in_window")},
)
add_field(
    "auth.user_failures",
    INT,
    "Failed attempts on the same user in the window, from any address.",
    per_kind={_AUTH: int_at(f"{_AUTH}.user_failures_in_window")},
)
add_field(
    "auth.user_sources",
    INT,
    "Distinct addresses that failed on the same user in the window.",
    per_kind={_AUTH: int_at(f"{_AUTH}.user_distinct_sources_in_window")},
)
add_field(
    "auth.window", INT, "Window length, seconds.", per_kind={_AUTH: seconds_at(f"{_AUTH}.window")}
)
add_field(
    "auth.new_source",
    BOOL,
    "For an accepted login: true when the user never logged in from this address before.",
    per_kind={_AUTH: attrgetter(f"{_AUTH}.new_source_address")},
)
add_field(
    "auth.key_fingerprint",
    STRING,
    "Public key fingerprint (SHA256:...).",
    per_kind={_AUTH: string_at(f"{_AUTH}.key_fingerprint")},
)
