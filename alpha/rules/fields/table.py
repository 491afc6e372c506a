"""The field table's frame: `Field`, `FieldType`, the registry and its lookups.

The fields themselves are registered by one module per namespace (see the package docstring).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qsc.common.v1 import event_pb2

Event = event_pb2.Event
Value = str | int | bool | tuple[str, ...] | tuple[int, ...] | None
Extractor = Callable[[Event], Value]

# The detail kinds, named as the `Event.detail` oneof names them (`process_exec`, `file_access`...).
DETAIL_KINDS: tuple[str, ...] = tuple(
    f.name for f in Event.DESCRIPTOR.oneofs_by_name["detail"].fields
)
ALL_KINDS: frozenset[str] = frozenset(DETAIL_KINDS)


class FieldType(enum.Enum):
    """What a field's values are; decides which operators and literals a condition may use."""

    STRING = "string"
    INT = "int"
    BOOL = "bool"
    # A string from a closed set (a protobuf enum): literals are checked against the set.
    ENUM = "enum"
    # An IPv4 or IPv6 address: literals may be addresses or CIDR networks.
    ADDR = "addr"


@dataclass(frozen=True)
class Field:
    """One field of the table.

    `per_kind` maps a detail kind to its extractor; `generic` serves every kind not in `per_kind`
    (process fields apply to all kinds). `indexed` builds the extractor of `name[n]`.
    """

    name: str
    type: FieldType
    description: str
    per_kind: Mapping[str, Extractor] = field(default_factory=dict)
    generic: Extractor | None = None
    is_list: bool = False
    choices: tuple[str, ...] = ()
    indexed: Callable[[int], Extractor] | None = None
    # Outputs show this field in octal (file modes: 0o4755 means something, 2541 does not).
    octal: bool = False
    # 0: one attribute read; 1: builds a value (joins, tuples, dirname): evaluated late in an `and`.
    cost: int = 0

    @property
    def kinds(self) -> frozenset[str]:
        """The detail kinds on which the field can have a value."""
        if self.generic is not None:
            return ALL_KINDS
        return frozenset(self.per_kind)

    def extractor(self, kind: str, index: int | None = None) -> Extractor | None:
        """The extractor for events of `kind`, or None when the field never applies to it."""
        if index is not None:
            if self.indexed is None:
                raise ValueError(f"{self.name} takes no index")
            return self.indexed(index) if kind in self.kinds else None
        found = self.per_kind.get(kind)
        return found if found is not None else self.generic

    def extract(self, event: Event, index: int | None = None) -> Value:
        """The field's value on any event (dispatches on its kind): for outputs, not hot paths."""
        kind = event.WhichOneof("detail")
        ext = self.extractor(kind, index) if kind is not None else self.generic
        return None if ext is None else ext(event)


# What a field's values are, by the names the table uses.
STRING, INT, BOOL, ENUM, ADDR = (
    FieldType.STRING,
    FieldType.INT,
    FieldType.BOOL,
    FieldType.ENUM,
    FieldType.ADDR,
)

_FIELDS: dict[str, Field] = {}
_ALIASES: dict[str, str] = {}


def add_field(
    name: str,
    ftype: FieldType,
    description: str,
    *,
    per_kind: Mapping[str, Extractor] | None = None,
    generic: Extractor | None = None,
    is_list: bool = False,
    choices: Sequence[str] = (),
    indexed: Callable[[int], Extractor] | None = None,
    cost: int = 0,
    aliases: Sequence[str] = (),
    octal: bool = False,
) -> None:
    assert name not in _FIELDS, name
    _FIELDS[name] = Field(
        name=name,
        type=ftype,
        description=description,
        octal=octal,
        per_kind=dict(per_kind or {}),
        generic=generic,
        is_list=is_list,
        choices=tuple(choices),
        indexed=indexed,
        cost=cost,
    )
    for alias in aliases:
        _ALIASES[alias] = name


FIELDS: Mapping[str, Field] = _FIELDS
ALIASES: Mapping[str, str] = _ALIASES


def lookup(name: str) -> Field | None:
    """The field called `name` (canonical or Falco alias), or None."""
    found = _FIELDS.get(name)
    if found is None and name in _ALIASES:
        found = _FIELDS[_ALIASES[name]]
    return found


def all_names() -> Iterator[str]:
    """Every name a condition may use: canonical names then aliases."""
    yield from _FIELDS
    yield from _ALIASES


def describe() -> list[dict[str, Any]]:
    """The table as plain data, for `qsc` help output and documentation."""
    aliases: dict[str, list[str]] = {}
    for alias, target in _ALIASES.items():
        aliases.setdefault(target, []).append(alias)
    return [
        {
            "name": f.name,
            "type": f.type.value + ("[]" if f.is_list else ""),
            "description": f.description,
            "kinds": sorted(f.kinds) if f.generic is None else ["*"],
            "aliases": aliases.get(f.name, []),
            **({"choices": list(f.choices)} if f.choices else {}),
            **({"indexed": True} if f.indexed else {}),
        }
        for f in _FIELDS.values()
    ]
