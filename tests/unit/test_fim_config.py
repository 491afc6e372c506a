"""FIM configuration: globs, rule ownership, coverage and clear errors on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from beta.errors import BetaConfigError
from beta.fim.config import (
    FimConfig,
    FimConfigError,
    GlobSet,
    WatchPath,
    compile_glob,
    is_rotated_archive,
)
from mesh.config import ConfigLoadError, config_from_dict
from mesh.errors import ConfigError


def _matches(pattern: str, rel: str, *, is_dir: bool = False, root: str = "/etc") -> bool:
    abspath = f"{root}/{rel}" if rel else root
    return GlobSet.of((pattern,)).matches(rel, abspath, is_dir=is_dir)


@pytest.mark.parametrize(
    ("pattern", "rel", "expected"),
    [
        ("*.swp", "a.swp", True),
        ("*.swp", "deep/er/a.swp", True),  # no slash: a name at any depth
        ("*.swp", "a.swp.bak", False),
        ("ssh/*.pub", "ssh/key.pub", True),
        ("ssh/*.pub", "x/ssh/key.pub", False),  # anchored at the rule root
        ("ssh/*.pub", "ssh/sub/key.pub", False),  # '*' stays inside one segment
        ("**/cache/**", "a/b/cache/x/y", True),
        ("**/cache/**", "cache/x", True),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/y/b", True),
        ("/etc/ssh/moduli", "ssh/moduli", True),  # absolute
        ("/etc/ssh/moduli", "moduli", False),
        ("key[0-9]", "key7", True),
        ("key[!0-9]", "keyx", True),
        ("key[!0-9]", "key7", False),
        ("file?", "file1", True),
        ("file?", "file12", False),
    ],
)
def test_glob_semantics(pattern: str, rel: str, expected: bool) -> None:
    assert _matches(pattern, rel) is expected


def test_trailing_slash_matches_directories_only() -> None:
    assert _matches("cache/", "cache", is_dir=True)
    assert not _matches("cache/", "cache", is_dir=False)


@pytest.mark.parametrize("bad", ["[abc", "a/**b", "", "a//b", "x\0y"])
def test_bad_globs_are_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(ValueError, match=r"glob|empty"):
        compile_glob(bad)
    with pytest.raises(FimConfigError) as info:
        WatchPath(Path("/etc"), exclude=(bad,))
    assert info.value.key == "exclude"


def test_errors_are_beta_and_mesh_config_errors() -> None:
    with pytest.raises(FimConfigError) as info:
        WatchPath(Path("relative/path"))
    assert isinstance(info.value, BetaConfigError)
    assert isinstance(info.value, ConfigError)
    assert "must be absolute" in str(info.value)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"paths": [{"path": "/etc", "include": ["[abc"]}]}, "paths[0].include: bad glob"),
        ({"paths": [{"path": "etc"}]}, "paths[0].path: must be absolute"),
        ({"paths": [{"path": "/etc", "ignore": ["bogus"]}]}, "unknown metadata field"),
        ({"paths": [{"path": "/etc"}, {"path": "/etc/"}]}, "listed twice"),
        ({"paths": [{"path": "/var/log/x", "log": True, "heal": "auto"}]}, "never healed"),
        ({"io_budget": 1000}, "io_budget"),
        ({"coalesce": "5s", "settle": "1s"}, "coalesce"),
        ({"baseline": "relative.qsc"}, "baseline: must be an absolute path"),
    ],
)
def test_loader_names_the_key(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigLoadError) as info:
        config_from_dict(FimConfig, doc, source="beta.toml")
    assert str(info.value).startswith("beta.toml: ")
    assert message in str(info.value)


def test_loader_builds_a_full_config() -> None:
    cfg = config_from_dict(
        FimConfig,
        {
            "paths": [
                {"path": "/etc/", "exclude": ["*.swp"], "heal": "approve"},
                {"path": "/var/log/auth.log", "log": True},
            ],
            "io_budget": 50 * 1024 * 1024,
            "full_scan_interval": "6h",
        },
    )
    assert cfg.paths[0].root == "/etc"  # normalised
    assert cfg.paths[0].heal == "approve"
    assert cfg.paths[1].log
    assert cfg.full_scan_interval.total_seconds() == 6 * 3600


def test_deepest_rule_owns_a_path_and_coverage_follows_globs() -> None:
    cfg = FimConfig(
        paths=(
            WatchPath(Path("/etc"), exclude=("cache/", "*.swp")),
            WatchPath(Path("/etc/ssh"), include=("*.conf", "*_config")),
            WatchPath(Path("/etc/passwd")),
            WatchPath(Path("/srv/top"), recursive=False),
            WatchPath(Path("/var/log/app.log"), log=True),
            WatchPath(Path("/var/log/app"), log=True),
        ),
        exclude=("*~",),
        baseline=Path("/var/lib/qsc/b.qsc"),
    )
    etc, ssh, passwd, top = cfg.paths[0], cfg.paths[1], cfg.paths[2], cfg.paths[3]
    assert cfg.rule_for("/etc/hosts") is etc
    assert cfg.rule_for("/etc/ssh/sshd_config") is ssh
    assert cfg.rule_for("/etc/passwd") is passwd
    assert cfg.rule_for("/etcetera") is None
    assert cfg.covers("/etc/hosts", is_dir=False) is etc
    assert cfg.covers("/etc/a.swp", is_dir=False) is None
    assert cfg.covers("/etc/x~", is_dir=False) is None  # global exclude
    assert cfg.covers("/etc/cache/deep/file", is_dir=False) is None  # excluded ancestor
    assert cfg.covers("/etc/ssh/sshd_config", is_dir=False) is ssh
    assert cfg.covers("/etc/ssh/moduli", is_dir=False) is None  # not included
    assert cfg.walkable("/etc/ssh") is ssh
    assert cfg.walkable("/etc/cache") is None
    assert cfg.covers("/srv/top/a", is_dir=False) is top
    assert cfg.rule_for("/srv/top/a/b") is None  # not recursive
    # Rotated archives inside a log rule are churn, not tracked.
    assert cfg.covers("/var/log/app/x.log", is_dir=False) is cfg.paths[5]
    assert cfg.covers("/var/log/app/x.log.1", is_dir=False) is None
    assert cfg.covers("/var/log/app/x.log-20240101.gz", is_dir=False) is None


def test_own_baseline_files_are_never_covered() -> None:
    cfg = FimConfig(paths=(WatchPath(Path("/var/lib/qsc")),), baseline=Path("/var/lib/qsc/b.qsc"))
    assert cfg.covers("/var/lib/qsc/b.qsc", is_dir=False) is None
    assert cfg.covers("/var/lib/qsc/b.qsc.lock", is_dir=False) is None
    assert cfg.covers("/var/lib/qsc/.b.qsc.0123abcd.tmp", is_dir=False) is None
    assert cfg.covers("/var/lib/qsc/other", is_dir=False) is not None


@pytest.mark.parametrize(
    ("name", "rotated"),
    [
        ("syslog.1", True),
        ("syslog.2.gz", True),
        ("auth.log-20240101", True),
        ("auth.log-20240101.xz", True),
        ("app.log.2024-01-01", True),
        ("app.log.old", True),
        ("syslog", False),
        ("app.log", False),
        ("kern.log", False),
    ],
)
def test_rotated_archive_names(name: str, rotated: bool) -> None:
    assert is_rotated_archive(name) is rotated
