"""The field table: every field a rule condition or output may name.

A field has a type, a description and, per detail kind, an extractor from `qsc.common.v1.Event`.
Extractors return None when the field does not apply (wrong kind, unset optional value, ancestor
beyond the known chain, empty string): a comparison on a missing field is false, as in Falco, and
`exists` tests exactly that. Names follow Falco where a Falco user would look for them (`proc.name`,
`proc.aname[2]`, `fd.name`, `fd.sport`...), with the QSC name canonical and the Falco one an alias.

Extractors are resolved per kind at compile time (`Field.extractor(kind)`): the engine evaluates a
rule only on events of the kinds it can match, so `fd.name` on a `file_access` event compiles to a
direct attribute read, with no dispatch per event.

The table: `table` (`Field`, `FieldType`: STRING, INT, BOOL, ENUM (a closed set), ADDR (an IP
address or CIDR network); the registry and lookups), `extractors` (builders), then one module
per namespace, registered in this order: `evt`, `proc`, `process_exec` (`exec.*`), `process_exit`
(`exit.*`), `ptrace`, `priv`, `memfd`, `file`, `net`, `mem`, `kernel`, `auth`, `tamper`.
"""

from __future__ import annotations

# Importing a namespace module registers its fields; this order is the table's order
# (`all_names`, `describe`).
# isort: off
from alpha.rules.fields import (  # noqa: F401
    evt,
    proc,
    process_exec,
    process_exit,
    ptrace,
    priv,
    memfd,
    file,
    net,
    mem,
    kernel,
    auth,
    tamper,
)

# isort: on
from alpha.rules.fields.table import (
    ALIASES,
    ALL_KINDS,
    DETAIL_KINDS,
    FIELDS,
    Event,
    Extractor,
    Field,
    FieldType,
    Value,
    all_names,
    describe,
    lookup,
)

__all__ = [
    "ALIASES",
    "ALL_KINDS",
    "DETAIL_KINDS",
    "FIELDS",
    "Event",
    "Extractor",
    "Field",
    "FieldType",
    "Value",
    "all_names",
    "describe",
    "lookup",
]
