"""What file integrity monitoring watches, and how: frozen dataclasses the mesh loader can build.

TOML (a `[fim]` section of Beta's config, or a file of its own for `qsc-beta baseline`)::

    baseline = "/var/lib/qsc/beta/fim-baseline.qsc"
    io_budget = 52428800            # bytes/s a scan may read; 0 = unlimited
    full_scan_interval = "12h"

    [[paths]]
    path = "/etc"
    exclude = ["*.swp", "mtab", "ld.so.cache"]
    heal = "approve"

    [[paths]]
    path = "/var/log/auth.log"
    log = true

Globs, matched against the path relative to the rule's root (gitignore-like): a pattern without
"/" matches a name at any depth (`*.swp`); one with "/" is anchored at the rule's root
(`ssh/*.pub`), or at "/" if it starts with one (`/etc/ssh/moduli`); `**` is any number of
directories (`**/cache/**`); a trailing "/" matches directories only (`cache/`). An excluded
directory excludes its whole subtree; `include` (when set) selects the files recorded inside a
directory rule, directories are still walked.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Final, Literal

from beta.errors import BetaConfigError
from mesh.errors import ConfigError

__all__ = [
    "DEFAULT_BASELINE",
    "METADATA_FIELD_NAMES",
    "FimConfig",
    "FimConfigError",
    "GlobSet",
    "HealPolicyName",
    "WatchPath",
    "compile_glob",
]

HealPolicyName = Literal["auto", "approve", "never"]
DEFAULT_BASELINE: Final = Path("/var/lib/qsc/beta/fim-baseline.qsc")
# The names `ignore` accepts; the same values as `beta.fim.metadata.MetaField`.
METADATA_FIELD_NAMES: Final = (
    "file_type",
    "mode",
    "uid",
    "gid",
    "inode",
    "size",
    "mtime",
    "ctime",
    "xattrs",
    "capabilities",
    "selinux_label",
    "symlink_target",
)


class FimConfigError(BetaConfigError, ConfigError):
    """A FIM setting is invalid. A `mesh.errors.ConfigError` too, so the config loader names the
    file and the dotted key; a `BetaConfigError` for Beta's callers."""


# --- globs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Glob:
    text: str
    regex: re.Pattern[str]
    anchored: bool  # matched against the whole relative (or absolute) path, not one name
    absolute: bool
    dir_only: bool


def _translate_segment(seg: str, pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(seg):
        c = seg[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < len(seg) and seg[j] in "!^":
                j += 1
            if j < len(seg) and seg[j] == "]":
                j += 1  # a leading ']' is a member, as in fnmatch
            end = seg.find("]", j)
            if end < 0:
                raise ValueError(f"bad glob {pattern!r}: '[' without a closing ']'")
            body = seg[i + 1 : end]
            negate = body[:1] in ("!", "^")
            body = (body[1:] if negate else body).replace("\\", "\\\\").replace("[", "\\[")
            # A negated class never matches '/': globs match within one path segment.
            out.append(f"[^/{body}]" if negate else f"[{body}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> _Glob:
    """Compile one pattern; ValueError with a readable reason for a bad one."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise ValueError("empty glob pattern")
    if "\0" in pattern:
        raise ValueError(f"bad glob {pattern!r}: contains a NUL character")
    text = pattern
    dir_only = text.endswith("/") and text != "/"
    text = text.rstrip("/") if dir_only else text
    absolute = text.startswith("/")
    anchored = "/" in text
    segments = text.lstrip("/").split("/") if anchored else [text]
    if any(s == "" for s in segments):
        raise ValueError(f"bad glob {pattern!r}: empty path segment ('//')")
    parts: list[str] = []
    for index, seg in enumerate(segments):
        last = index == len(segments) - 1
        if seg == "**":
            # `a/**/b` matches a/b too; a trailing `**` matches everything below.
            parts.append(".*" if last else "(?:[^/]+/)*")
            continue
        if "**" in seg:
            raise ValueError(f"bad glob {pattern!r}: '**' must be a whole path segment")
        parts.append(_translate_segment(seg, pattern) + ("" if last else "/"))
    try:
        regex = re.compile("".join(parts), re.DOTALL)
    except re.error as exc:
        raise ValueError(f"bad glob {pattern!r}: {exc}") from None
    return _Glob(pattern, regex, anchored, absolute, dir_only)


@dataclass(frozen=True)
class GlobSet:
    """Compiled patterns; `matches` takes the rule-relative and the absolute path."""

    globs: tuple[_Glob, ...]

    @classmethod
    def of(cls, patterns: tuple[str, ...]) -> GlobSet:
        return cls(tuple(compile_glob(p) for p in patterns))

    def __bool__(self) -> bool:
        return bool(self.globs)

    def matches(self, rel: str, abspath: str, *, is_dir: bool) -> bool:
        name = abspath.rpartition("/")[2]
        for g in self.globs:
            if g.dir_only and not is_dir:
                continue
            if g.absolute:
                target = abspath.lstrip("/")
            elif g.anchored:
                target = rel
            else:
                target = name
            if g.regex.fullmatch(target):
                return True
        return False


# --- rules ----------------------------------------------------------------------------------


def _check_globs(name: str, patterns: tuple[str, ...]) -> None:
    for p in patterns:
        try:
            compile_glob(p)
        except ValueError as exc:
            raise FimConfigError(name, str(exc)) from None


@dataclass(frozen=True)
class WatchPath:
    """One watched file or directory and its options."""

    path: Path
    recursive: bool = True  # for a directory: its whole subtree, or only its direct entries
    include: tuple[str, ...] = ()  # globs of files to record; empty = all
    exclude: tuple[str, ...] = ()
    # Growing/rotated logs: appends are not content changes (the old prefix must be intact),
    # rotation is recognised, truncation is reported; rotated archives (`x.log.1`,
    # `x.log-20240101.gz`) inside a log rule are not tracked.
    log: bool = False
    heal: HealPolicyName = "never"
    realtime: bool = True  # False: only full scans watch it (very large or noisy trees)
    same_filesystem: bool = True  # do not descend into other mounts (/proc under /, ...)
    ignore: tuple[str, ...] = ()  # metadata fields not compared, e.g. ["mtime"]

    def __post_init__(self) -> None:
        raw = os.fspath(self.path)
        if not raw or "\0" in raw:
            raise FimConfigError("path", "must be a non-empty path")
        if not raw.startswith("/"):
            raise FimConfigError("path", f"must be absolute, got {raw!r}")
        # Normalised once so every comparison below is plain string prefix logic.
        object.__setattr__(self, "path", Path(os.path.normpath(raw)))
        _check_globs("include", self.include)
        _check_globs("exclude", self.exclude)
        if self.heal not in ("auto", "approve", "never"):
            raise FimConfigError("heal", f"must be auto, approve or never, got {self.heal!r}")
        unknown = [f for f in self.ignore if f not in METADATA_FIELD_NAMES]
        if unknown:
            raise FimConfigError(
                "ignore",
                f"unknown metadata field(s) {', '.join(map(repr, unknown))}; known: "
                + ", ".join(METADATA_FIELD_NAMES),
            )
        if self.log and self.heal == "auto":
            raise FimConfigError("heal", "a log is never healed automatically; use never")

    @property
    def root(self) -> str:
        return os.fspath(self.path)

    @functools.cached_property
    def _include(self) -> GlobSet:
        return GlobSet.of(self.include)

    @functools.cached_property
    def _exclude(self) -> GlobSet:
        return GlobSet.of(self.exclude)

    def contains(self, path: str) -> bool:
        """Whether `path` is the root or lies where this rule reaches (depth only, no globs)."""
        root = self.root
        if path == root:
            return True
        prefix = root if root == "/" else root + "/"
        if not path.startswith(prefix):
            return False
        return self.recursive or "/" not in path[len(prefix) :]

    def rel(self, path: str) -> str:
        root = self.root
        if path == root:
            return ""
        return path[len(root) :].lstrip("/")


@dataclass(frozen=True)
class FimConfig:
    """File integrity monitoring: watched paths, the baseline file, scan schedule and budget."""

    paths: tuple[WatchPath, ...] = ()
    exclude: tuple[str, ...] = ()  # applied to every rule
    baseline: Path = DEFAULT_BASELINE
    io_budget: int = 0  # bytes per second a scan may read; 0 = unlimited
    full_scan_interval: timedelta = timedelta(hours=12)
    # While realtime coverage is incomplete (watch limit, inotify unavailable).
    degraded_scan_interval: timedelta = timedelta(minutes=5)
    realtime: bool = True
    # Realtime coalescing: a path is checked `coalesce` after its last "write finished" event
    # (close after write, attribute change, rename, delete), `settle` after its last plain
    # modification (a writer still holding the file open), and at most `max_delay` after the
    # first event however busy it stays.
    coalesce: timedelta = timedelta(milliseconds=10)
    settle: timedelta = timedelta(milliseconds=200)
    max_delay: timedelta = timedelta(seconds=2)

    def __post_init__(self) -> None:
        _check_globs("exclude", self.exclude)
        raw = os.fspath(self.baseline)
        if not raw.startswith("/"):
            raise FimConfigError("baseline", f"must be an absolute path, got {raw!r}")
        object.__setattr__(self, "baseline", Path(os.path.normpath(raw)))
        seen: set[str] = set()
        for index, rule in enumerate(self.paths):
            if rule.root in seen:
                raise FimConfigError(f"paths[{index}].path", f"{rule.root} is listed twice")
            seen.add(rule.root)
        if isinstance(self.io_budget, bool) or self.io_budget < 0:
            raise FimConfigError("io_budget", "must be bytes per second, 0 for unlimited")
        if 0 < self.io_budget < 64 * 1024:
            raise FimConfigError("io_budget", "below 64 KiB/s a scan would never finish")
        for name in ("full_scan_interval", "degraded_scan_interval"):
            if getattr(self, name) < timedelta(seconds=1):
                raise FimConfigError(name, "must be at least 1s")
        if not timedelta(0) <= self.coalesce <= self.settle <= self.max_delay:
            raise FimConfigError("coalesce", "need 0 <= coalesce <= settle <= max_delay")

    @functools.cached_property
    def _global_exclude(self) -> GlobSet:
        return GlobSet.of(self.exclude)

    @functools.cached_property
    def _by_depth(self) -> tuple[WatchPath, ...]:
        # Deepest root first: the most specific rule owns a path.
        return tuple(sorted(self.paths, key=lambda r: r.root.count("/"), reverse=True))

    @functools.cached_property
    def _own_files(self) -> frozenset[str]:
        # The baseline authenticates itself; watching it would report our own writes.
        b = os.fspath(self.baseline)
        return frozenset({b, b + ".lock"})

    def rule_for(self, path: str) -> WatchPath | None:
        """The rule owning `path` (deepest root reaching it), whatever the globs say."""
        for rule in self._by_depth:
            if rule.contains(path):
                return rule
        return None

    def is_own_file(self, path: str) -> bool:
        if path in self._own_files:
            return True
        # Atomic-write temporaries of the baseline (crypto.keyfile names them .NAME.HEX.tmp).
        b = self.baseline
        return path.startswith(os.fspath(b.parent / f".{b.name}.")) and path.endswith(".tmp")

    def excluded(self, rule: WatchPath, path: str, *, is_dir: bool) -> bool:
        """Whether `path` (not its ancestors) is excluded by `rule` or the global excludes."""
        if path == rule.root:
            return False  # a configured path is watched whatever the globs say
        rel = rule.rel(path)
        return rule._exclude.matches(rel, path, is_dir=is_dir) or self._global_exclude.matches(
            rel, path, is_dir=is_dir
        )

    def _ancestors_excluded(self, rule: WatchPath, path: str) -> bool:
        """Whether a directory between the rule's root and `path` (both excluded) is excluded."""
        root = rule.root
        parent = os.path.dirname(path)
        while path != root and parent != root and len(parent) > len(root):
            if self.excluded(rule, parent, is_dir=True):
                return True
            parent = os.path.dirname(parent)
        return False

    def covers(self, path: str, *, is_dir: bool) -> WatchPath | None:
        """The rule under which `path` is recorded, or None: outside every rule, excluded (itself
        or an ancestor directory), not included, a rotated archive in a log rule, or ours."""
        rule = self.rule_for(path)
        if rule is None or self._ancestors_excluded(rule, path):
            return None
        return rule if self.recorded(rule, path, is_dir=is_dir) else None

    def walkable(self, directory: str) -> WatchPath | None:
        """The rule whose walk descends into `directory`, or None (excluded, not recursive...)."""
        rule = self.rule_for(directory)
        if rule is None:
            return None
        if directory != rule.root and (
            not rule.recursive
            or self._ancestors_excluded(rule, directory)
            or self.excluded(rule, directory, is_dir=True)
        ):
            return None
        return rule

    def recorded(self, rule: WatchPath, path: str, *, is_dir: bool) -> bool:
        """Whether `rule` records `path`, its ancestors being known not excluded (a walk)."""
        if self.is_own_file(path):
            return False
        if path == rule.root:
            return True
        if self.excluded(rule, path, is_dir=is_dir):
            return False
        if rule._include and not rule._include.matches(rule.rel(path), path, is_dir=is_dir):
            return False
        return not (rule.log and not is_dir and _is_rotated_archive(path.rpartition("/")[2]))

    @functools.cached_property
    def roots(self) -> frozenset[str]:
        return frozenset(r.root for r in self.paths)

    @property
    def digest_text(self) -> str:
        """A canonical text of what is watched: stored in the baseline, so a scan can tell that
        the configuration changed since (newly covered files then show up as created)."""
        rules = sorted(
            (r.root, r.recursive, r.include, r.exclude, r.log, r.same_filesystem)
            for r in self.paths
        )
        return repr((rules, tuple(self.exclude)))


# Rotated log archives: x.1, x.2.gz, x-20240101, x-20240101.xz, x.2024-01-01, x.old.
_ROTATED: Final = re.compile(
    r".+(?:\.\d{1,4}|[-.]\d{8}(?:\d{2}(?:\d{2}){0,2})?|[-.]\d{4}-\d{2}-\d{2}|\.old)"
    r"(?:\.(?:gz|xz|bz2|zst|lz4|z|Z))?"
    r"|.+\.(?:gz|xz|bz2|zst|lz4)"
)


def _is_rotated_archive(name: str) -> bool:
    return _ROTATED.fullmatch(name) is not None


def is_rotated_archive(name: str) -> bool:
    """Whether a file name looks like a rotated log archive (see `WatchPath.log`)."""
    return _is_rotated_archive(name)
