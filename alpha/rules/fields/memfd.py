"""`memfd.*`: a memfd_create event."""

from __future__ import annotations

from alpha.rules.fields.extractors import int_at, string_at
from alpha.rules.fields.table import INT, STRING, add_field

add_field(
    "memfd.name",
    STRING,
    "Name given to the memfd.",
    per_kind={"memfd_create": string_at("memfd_create.name")},
)
add_field(
    "memfd.flags",
    INT,
    "Raw memfd_create flags (MFD_CLOEXEC=1, MFD_ALLOW_SEALING=2, MFD_EXEC=0x10...).",
    per_kind={"memfd_create": int_at("memfd_create.flags")},
)
