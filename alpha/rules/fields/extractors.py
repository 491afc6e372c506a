"""Builders of extractors: attribute paths, enums, ancestors, path parts."""

from __future__ import annotations

import os.path
from collections.abc import Callable, Mapping
from operator import attrgetter

from google.protobuf.descriptor import EnumDescriptor

from alpha.rules.fields.table import Event, Extractor, Value


def string_at(path: str) -> Extractor:
    get = attrgetter(path)

    def ext(ev: Event) -> Value:
        return get(ev) or None  # proto3 has no unset string: empty means not known

    return ext


def int_at(path: str) -> Extractor:
    return attrgetter(path)


def process_int(attr: str) -> Extractor:
    get = attrgetter(f"process.{attr}")

    def ext(ev: Event) -> Value:
        # An absent process would read as uid 0 (root): say "not known" instead.
        return get(ev) if ev.HasField("process") else None

    return ext


def optional_int(detail: str, attr: str) -> Extractor:
    get = attrgetter(detail)

    def ext(ev: Event) -> Value:
        msg = get(ev)
        return getattr(msg, attr) if msg.HasField(attr) else None

    return ext


def sequence_at(path: str) -> Extractor:
    get = attrgetter(path)

    def ext(ev: Event) -> Value:
        return tuple(get(ev))

    return ext


def enum_names(desc: EnumDescriptor, prefix: str) -> dict[int, str]:
    # Value 0 is UNSPECIFIED in every enum of the API: it reads as "not known" (None).
    return {v.number: v.name.removeprefix(prefix).lower() for v in desc.values if v.number != 0}


def enum_at(path: str, names: Mapping[int, str]) -> Extractor:
    get = attrgetter(path)
    lookup = names.get

    def ext(ev: Event) -> Value:
        return lookup(get(ev))

    return ext


def seconds_at(path: str) -> Extractor:
    get = attrgetter(path)

    def ext(ev: Event) -> Value:
        return int(get(ev).seconds)

    return ext


def dirname_of(inner: Extractor) -> Extractor:
    def ext(ev: Event) -> Value:
        path = inner(ev)
        return os.path.dirname(path) or None if isinstance(path, str) else None

    return ext


def basename_of(inner: Extractor) -> Extractor:
    def ext(ev: Event) -> Value:
        path = inner(ev)
        return os.path.basename(path) or None if isinstance(path, str) else None

    return ext


def ancestor_at(attr: str) -> Callable[[int], Extractor]:
    """`proc.aname[n]`-style access: 0 is the process itself, 1 its parent, 2 the grandparent."""

    def build(n: int) -> Extractor:
        if n == 0:
            own = attrgetter(f"process.{attr}")
            if attr in ("comm", "exe"):
                return lambda ev: own(ev) or None
            return lambda ev: own(ev) if ev.HasField("process") else None
        i = n - 1

        def ext(ev: Event) -> Value:
            chain = ev.process.ancestry
            if len(chain) <= i:
                return None
            value = getattr(chain[i], attr)
            return value if attr == "pid" else (value or None)

        return ext

    return build


def ancestor_values(attr: str) -> Extractor:
    def ext(ev: Event) -> Value:
        return tuple(getattr(a, attr) for a in ev.process.ancestry)

    return ext
