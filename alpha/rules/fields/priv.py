"""`priv.*`: a privilege_change event."""

from __future__ import annotations

from alpha.rules.fields.extractors import enum_at, enum_names, int_at
from alpha.rules.fields.table import ENUM, INT, add_field
from qsc.common.v1 import process_details_pb2

_PRIV_CALLS = enum_names(process_details_pb2.PrivilegeCall.DESCRIPTOR, "PRIVILEGE_CALL_")
add_field(
    "priv.call",
    ENUM,
    "The setuid-family call: setuid, setreuid, setresuid, setfsuid, setgid, ...",
    per_kind={"privilege_change": enum_at("privilege_change.call", _PRIV_CALLS)},
    choices=tuple(_PRIV_CALLS.values()),
)
for _when, _msg in (("old", "old_credentials"), ("new", "new_credentials")):
    for _cred in ("uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid"):
        add_field(
            f"priv.{_when}.{_cred}",
            INT,
            f"The {_cred} "
            + (
                "before the call."
                if _when == "old"
                else "requested by, or in effect after, the call."
            ),
            per_kind={"privilege_change": int_at(f"privilege_change.{_msg}.{_cred}")},
        )
