"""Fuzzing component configuration: TOML files through `mesh.config.load_config`.

Seeds are the shipped deploy/*.toml, each loaded with its own component's config class. The
documented refusal is `ConfigLoadError` naming the file, the key and the reason; a mutated
file must give that or a config, never another exception. Two kinds of mutation: bytes of the
file (syntax), and values of the parsed document re-written as TOML (types and ranges, so the
dataclasses' own checks are reached).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alpha.config import AlphaConfig
from beta.config import BetaConfig
from cortex.config import CortexConfig
from mesh.config import ConfigLoadError, load_config
from ml.config import MlConfig
from tests.fuzz.harness import (
    REPO,
    corpus,
    corpus_ids,
    fuzz_settings,
    guarded,
    mutated,
    with_examples,
)

CLASSES: Final[dict[str, type]] = {
    "alpha": AlphaConfig,
    "beta": BetaConfig,
    "cortex": CortexConfig,
    "ml": MlConfig,
}
SEEDS: Final = {name: (REPO / "deploy" / f"{name}.toml").read_bytes() for name in CLASSES}
TOKENS: Final = [
    b"[",
    b"]",
    b"[[",
    b"]]",
    b"=",
    b'"',
    b"'''",
    b"\n",
    b"{",
    b"}",
    b",",
    b".",
    b"#",
    b"true",
    b"1979-05-27T07:32:00Z",
    b"\\u0000",
    b"inf",
    b"nan",
    b"-0",
]
_DIR: Final = Path(tempfile.mkdtemp(prefix="qsc-fuzz-config-"))


def _load(component: str, data: bytes) -> object:
    path = _DIR / f"{component}.toml"
    path.write_bytes(data)
    return load_config(CLASSES[component], component=component, path=path, env={})


def _check(component: str, data: bytes) -> None:
    guarded(lambda: _load(component, data), ConfigLoadError)


def test_seeds_load() -> None:
    for component, data in SEEDS.items():
        loaded = guarded(lambda c=component, b=data: _load(c, b), ())  # type: ignore[misc]
        assert not isinstance(loaded, BaseException)


@fuzz_settings(70, deadline_ms=2000)
@with_examples([("alpha", data) for data in corpus("config")])
@given(
    st.sampled_from(sorted(CLASSES)).flatmap(
        lambda c: st.tuples(st.just(c), mutated([SEEDS[c]], tokens=TOKENS))
    )
)
def test_config_bytes_mutated(case: tuple[str, bytes]) -> None:
    _check(*case)


# --- structural mutation: the parsed document, values replaced, written back as TOML ---------


def _toml_key(key: str) -> str:
    return json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def to_toml(doc: dict[str, Any]) -> bytes:
    """`doc` as TOML: one line per top-level key, nested tables inline."""
    return "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in doc.items()).encode()


_TEXT: Final = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
_SCALARS: Final = st.one_of(
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 1, 65535, 65536, 2**31, 2**63, -(2**63) - 1, 10**4000]),
    st.floats(),
    _TEXT,
    st.sampled_from(
        [
            "",
            "0s",
            "-5s",
            "1h30m",
            "99999999999d",
            "0.0.0.0:0",
            "[::1]:99999",
            "host:",
            ":80",
            "/",
            "/nonexistent/x.pem",
            "a" * 5000,
            "debug",
            "json",
            "\x00",
        ]
    ),
    st.datetimes(),
    st.dates(),
    st.times(),
)
_VALUES: Final = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_TEXT, inner, max_size=3)),
    max_leaves=8,
)


def _paths(doc: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    out: list[tuple[str | int, ...]] = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.extend(_paths(v, (*prefix, i)))
    return out


PARSED: Final = {c: tomllib.loads(SEEDS[c].decode()) for c in CLASSES}
PATHS: Final = {c: _paths(PARSED[c]) for c in CLASSES}


@st.composite
def _structural(draw: st.DrawFn) -> tuple[str, bytes]:
    component = draw(st.sampled_from(sorted(CLASSES)))
    doc = tomllib.loads(to_toml(PARSED[component]).decode())  # a deep copy
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS[component]))
        parent: Any = doc
        try:
            for step in path[:-1]:
                parent = parent[step]
            action = draw(st.sampled_from(("replace", "delete", "add")))
            if action == "delete":
                del parent[path[-1]]
            elif action == "add" and isinstance(parent, dict):
                parent[draw(_TEXT)] = draw(_VALUES)
            else:
                parent[path[-1]] = draw(_VALUES)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed this path
    return component, to_toml(doc)


@fuzz_settings(70, deadline_ms=2000)
@given(_structural())
def test_config_values_mutated(case: tuple[str, bytes]) -> None:
    _check(*case)


@pytest.mark.parametrize("name", corpus_ids("config"))
def test_config_former_crashes(name: str) -> None:
    """Found by fuzzing: arrays nested ~1000 deep (RecursionError from tomllib) and durations
    past timedelta (OverflowError); now each is a ConfigLoadError naming the file."""
    with pytest.raises(ConfigLoadError):
        _load("alpha", corpus("config", "crash")[corpus_ids("config").index(name)])
