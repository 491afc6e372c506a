"""YAML files read as nodes, so every value keeps its line: loaders of rule files (Alpha's
detection rules, the Cortex's correlations) report `FILE:LINE: reason` for anything wrong.

    doc = YamlDoc("rules.yaml", text, RuleError)      # RuleError(reason, file, line)
    root = doc.root()                                  # None for an empty file
    keys = doc.mapping(root, "an item")                # {key: (key node, value node)}
    title = doc.string(keys["title"][1], "title")

`error` builds the component's own exception from (reason, file, line), so each loader keeps its
error tree. YAML syntax errors carry the line the parser names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Final

import yaml

__all__ = ["ErrorFactory", "YamlDoc", "read_texts"]

ErrorFactory = Callable[[str, str | None, int | None], Exception]

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # C when built
_NULL: Final = "tag:yaml.org,2002:null"
_DURATION: Final = re.compile(r"(\d+)(ms|s|m|h|d)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def read_texts(paths: Iterable[Path], error: ErrorFactory) -> list[tuple[str, str]]:
    """(name, text) of each file, in order; an unreadable or non-UTF-8 file is `error` naming
    it (and the first bad byte)."""
    texts = []
    for path in paths:
        try:
            texts.append((str(path), path.read_bytes().decode("utf-8")))
        except UnicodeDecodeError as err:
            raise error(f"not UTF-8 text (byte {err.start})", str(path), None) from None
        except OSError as err:
            raise error(f"cannot read ({err.strerror or err})", str(path), None) from None
    return texts


class YamlDoc:
    """One file being read: its name, its lines and typed accessors that fail with its line."""

    def __init__(self, name: str, text: str, error: ErrorFactory) -> None:
        self.name = name
        self.text = text
        self.lines = text.splitlines(keepends=True)
        self._error = error

    def root(self) -> yaml.Node | None:
        """The document's root node; None when the file holds nothing."""
        try:
            loader = _Loader(self.text)
            try:
                root = loader.get_single_node()
            finally:
                loader.dispose()
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            line = mark.line + 1 if mark is not None else None
            reason = " ".join(p for p in (err.context, err.problem) if p)
            raise self._error(f"YAML syntax: {reason}", self.name, line) from None
        except yaml.YAMLError as err:
            raise self._error(f"YAML syntax: {err}", self.name, None) from None
        if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == _NULL):
            return None
        return root

    def line(self, node: yaml.Node) -> int:
        return int(node.start_mark.line) + 1

    def fail(self, node: yaml.Node, reason: str) -> Exception:
        return self._error(reason, self.name, self.line(node))

    def string(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL:
            raise self.fail(node, f"{what} must be a string")
        return str(node.value)

    def boolean(self, node: yaml.Node, what: str) -> bool:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:bool":
            raise self.fail(node, f"{what} must be true or false")
        return str(node.value).lower() in ("true", "yes", "on", "y")

    def integer(self, node: yaml.Node, what: str, *, minimum: int = 0) -> int:
        text = self.string(node, what)
        if not re.fullmatch(r"-?\d+", text) or int(text) < minimum:
            raise self.fail(node, f"{what} must be an integer of at least {minimum}, not {text!r}")
        return int(text)

    def number(self, node: yaml.Node, what: str, *, low: float, high: float) -> float:
        """A number in the closed range [low, high]."""
        text = self.string(node, what)
        try:
            value = float(text)
        except ValueError:
            raise self.fail(node, f"{what} must be a number, not {text!r}") from None
        if not low <= value <= high:  # NaN fails too
            raise self.fail(node, f"{what} must be between {low:g} and {high:g}, not {text}")
        return value

    def duration(self, node: yaml.Node, what: str) -> timedelta:
        """`90s`, `5m`, `1h30m`, `500ms`, `2d`: positive."""
        text = self.string(node, what).strip()
        parts = _DURATION.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise self.fail(node, f"{what} must be a duration such as 90s, 5m or 1h, not {text!r}")
        seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)
        if seconds <= 0:
            raise self.fail(node, f"{what} must be longer than 0")
        return timedelta(seconds=seconds)

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{what} must be a list")
        return list(node.value)

    def strings(self, node: yaml.Node, what: str) -> list[str]:
        return [self.string(n, f"each item of {what}") for n in self.sequence(node, what)]

    def mapping(self, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in node.value:
            name = self.string(key, "a key")
            if name in out:
                raise self.fail(key, f"{what}: key {name!r} given twice")
            out[name] = (key, value)
        return out

    def check_keys(
        self,
        keys: dict[str, tuple[yaml.Node, yaml.Node]],
        allowed: Iterable[str],
        what: str,
        *,
        required: Iterable[str] = (),
        at: yaml.Node | None = None,
    ) -> None:
        """Refuse keys not `allowed`, and (naming `at`'s line) `required` keys missing."""
        allowed = set(allowed)
        for key, (key_node, _) in keys.items():
            if key not in allowed:
                raise self.fail(
                    key_node,
                    f"unknown key {key!r} in {what}; allowed: {', '.join(sorted(allowed))}",
                )
        missing = [k for k in required if k not in keys]
        if missing and at is not None:
            raise self.fail(at, f"{what} lacks {', '.join(missing)}")
