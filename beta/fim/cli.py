"""`qsc-beta baseline init|scan|show`: build, check and inspect the authenticated FIM baseline.

`--config` (default `$QSC_BETA_CONFIG`) is Beta's own file, read through
beta.config.load_baseline_tool_config: its `[fim]` and `[keys]` sections with the same
`QSC_BETA_*` overrides `qsc-beta run` applies; the command line adds paths and excludes and may
replace the baseline file, the I/O budget and (`--keys`) the keyring.

Exit status, in mesh.command's frame: 0 no difference, 1 failure (keys, I/O), 2 bad usage or
configuration, 3 the baseline failed verification, 4 differences found (scan), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, TextIO

from beta.config import COMPONENT, KEY_DIR_ENV, load_baseline_tool_config
from beta.fim.baseline import (
    Baseline,
    BaselineMissingError,
    BaselineStore,
    BaselineTamperedError,
    Change,
    config_digest,
)
from beta.fim.config import FimConfig, WatchPath
from beta.fim.scanner import Scanner, ScanProgress, ScanReport
from crypto.keyring import KeyManager
from mesh.command import EXIT_OK, EXIT_USAGE, ErrorExit, UsageError, command_parser, run_cli
from mesh.config import config_path_from_env
from mesh.errors import ConfigError

__all__ = ["ERRORS", "EXIT_CHANGES", "EXIT_TAMPERED", "main"]

PROG: Final = "qsc-beta"
EXIT_TAMPERED: Final = 3
EXIT_CHANGES: Final = 4
# Before mesh.command's own rules: a FIM setting is a BetaError too, but a usage error here.
ERRORS: Final = (
    ErrorExit((BaselineTamperedError,), EXIT_TAMPERED, label="BASELINE TAMPERED"),
    ErrorExit((BaselineMissingError, ConfigError), EXIT_USAGE),
)
_RATE_RE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?(?:/s)?", re.IGNORECASE)
_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

_EPILOG = """\
examples:
  qsc-beta baseline init --config /etc/qsc/beta.toml --keys /var/lib/qsc/beta/keys
  qsc-beta baseline init --path /etc --path /usr/bin --exclude '*.swp' \\
      --baseline /var/lib/qsc/beta/fim-baseline.qsc --keys /var/lib/qsc/beta/keys
  qsc-beta baseline scan --config /etc/qsc/beta.toml --keys /var/lib/qsc/beta/keys --io-budget 50M
  qsc-beta baseline show --baseline /var/lib/qsc/beta/fim-baseline.qsc --keys KEYS --path /etc/ssh

The configuration is Beta's TOML file (default $QSC_BETA_CONFIG): its [fim] and [keys] tables,
with the QSC_BETA_FIM__* and QSC_BETA_KEYS__* overrides `qsc-beta run` applies.
Keys come from the Beta keyring (`qsc keys init --dir DIR --component beta`): --keys, else
$QSC_BETA_KEY_DIR, else the config's [keys] directory; the baseline is sealed with its
"baseline" purpose key. Exit status: 0 no difference, 1 failure, 2 bad usage or configuration,
3 baseline failed verification, 4 differences found.
"""


def _rate(text: str) -> int:
    match = _RATE_RE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate like 50M, 200MiB/s or 0")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _parser() -> argparse.ArgumentParser:
    parser = command_parser(
        PROG,
        description="QSC Guardian-Beta tools.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups = parser.add_subparsers(dest="group", metavar="GROUP")
    base = groups.add_parser(
        "baseline",
        help="the file integrity baseline",
        description="Build, check and inspect the authenticated file integrity baseline.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    base.set_defaults(group_parser=base)
    sub = base.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser, *, scanning: bool) -> None:
        p.add_argument(
            "--config", type=Path, help="Beta TOML file ([fim], [keys]; default $QSC_BETA_CONFIG)"
        )
        p.add_argument("--baseline", type=Path, help="baseline file (overrides the config)")
        p.add_argument(
            "--keys",
            type=Path,
            help=f"Beta key directory (default ${KEY_DIR_ENV}, or the config's [keys] directory)",
        )
        if not scanning:
            return
        p.add_argument("--path", action="append", default=[], help="watch this path (repeatable)")
        p.add_argument(
            "--log-path",
            action="append",
            default=[],
            help="watch this growing/rotated log (repeatable)",
        )
        p.add_argument("--exclude", action="append", default=[], help="exclude glob for every path")
        p.add_argument(
            "--io-budget", type=_rate, help="read at most this many bytes/s (e.g. 50M); 0 = no cap"
        )
        progress = p.add_mutually_exclusive_group()
        progress.add_argument(
            "--progress",
            dest="progress",
            action="store_true",
            default=None,
            help="show a progress line (default: when stderr is a terminal)",
        )
        progress.add_argument("--no-progress", dest="progress", action="store_false")

    init = sub.add_parser("init", help="scan the watched paths and write a new baseline")
    common(init, scanning=True)
    init.add_argument(
        "--force",
        action="store_true",
        help="replace an existing baseline (also one that fails verification)",
    )
    init.add_argument(
        "--allow-missing", action="store_true", help="accept watched paths that do not exist"
    )
    init.set_defaults(handler=_timed(_init))
    scan = sub.add_parser("scan", help="compare the watched paths with the baseline")
    common(scan, scanning=True)
    scan.add_argument(
        "--quick", action="store_true", help="re-hash only files whose size, times or inode moved"
    )
    scan.add_argument("--json", action="store_true", help="one JSON document on stdout")
    scan.add_argument(
        "--no-refresh",
        action="store_true",
        help="do not record accepted log rotations in the baseline",
    )
    scan.set_defaults(handler=_timed(_scan))
    show = sub.add_parser("show", help="print the baseline (after verifying it)")
    common(show, scanning=False)
    show.add_argument("--path", dest="prefix", help="only entries at or below this path")
    show.add_argument("--json", action="store_true", help="JSON on stdout")
    show.set_defaults(handler=_timed(_show))
    return parser


def _timed(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`command`, saying how long it ran when Ctrl-C stops it (a scan can take hours)."""

    def run(args: argparse.Namespace) -> int:
        started = time.monotonic()
        try:
            return command(args)
        except KeyboardInterrupt:
            elapsed = time.monotonic() - started
            print(f"\n{PROG}: interrupted after {elapsed:.1f}s", file=sys.stderr)
            raise

    return run


# --- configuration --------------------------------------------------------------------------


def _load_config(args: argparse.Namespace) -> tuple[FimConfig, Path]:
    """The [fim] configuration with the command line's additions (`show` takes its --baseline
    verbatim instead), and the keyring directory."""
    path = args.config or config_path_from_env(COMPONENT)
    tool = load_baseline_tool_config(path)
    config = tool.fim
    extra = [WatchPath(Path(p)) for p in getattr(args, "path", [])]
    extra += [WatchPath(Path(p), log=True) for p in getattr(args, "log_path", [])]
    budget = getattr(args, "io_budget", None)
    scanning = hasattr(args, "path")
    config = replace(
        config,
        paths=config.paths + tuple(extra),
        exclude=config.exclude + tuple(getattr(args, "exclude", [])),
        baseline=(args.baseline if scanning else None) or config.baseline,
        io_budget=budget if budget is not None else config.io_budget,
    )
    return config, args.keys or tool.keys.directory


def _store(args: argparse.Namespace, baseline: Path, keys: Path) -> BaselineStore:
    # A keyring nobody named on the command line that is not there: say how to name one.
    if args.keys is None and not (keys / "keyring.json").exists():
        raise UsageError(
            f"no keyring in {keys}: give --keys DIR (or set {KEY_DIR_ENV}, or [keys] directory "
            "in --config)"
        )
    return BaselineStore(baseline, KeyManager.open(keys, COMPONENT))


# --- output ---------------------------------------------------------------------------------


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = int(seconds + 0.5)
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


class _ProgressLine:
    def __init__(self, out: TextIO, enabled: bool) -> None:
        self.out = out
        self.enabled = enabled
        self.width = 100

    def __call__(self, p: ScanProgress) -> None:
        if not self.enabled:
            return
        head = (
            f"{p.files_done}/{p.files_total} files  {_size(p.bytes_done)}/{_size(p.bytes_total)}"
            f"  {_size(p.rate)}/s  {p.files_rate:.0f} files/s  ETA {_duration(p.eta)}"
        )
        room = self.width - len(head) - 2
        current = p.current if len(p.current) <= room else "..." + p.current[-(room - 3) :]
        line = f"{head}  {current}" if room > 10 and not p.finished else head
        self.out.write("\r\x1b[K" + line + ("\n" if p.finished else ""))
        self.out.flush()


def _scanner(config: FimConfig, args: argparse.Namespace) -> Scanner:
    enabled = sys.stderr.isatty() if args.progress is None else bool(args.progress)
    return Scanner(config, on_progress=_ProgressLine(sys.stderr, enabled), progress_interval=0.2)


def _summary(report: ScanReport) -> str:
    rate = report.bytes / report.seconds if report.seconds > 0 else 0.0
    return (
        f"{report.files} files, {_size(report.bytes)} in {report.seconds:.1f}s "
        f"({_size(rate)}/s, {report.files / max(report.seconds, 1e-9):.0f} files/s)"
    )


def _change_json(c: Change) -> dict[str, Any]:
    return {
        "path": c.path,
        "change": c.kind.value,
        "fields": [f.value for f in c.fields],
        "old_blake3": c.old_blake3.hex() if c.old_blake3 else None,
        "new_blake3": c.new_blake3.hex() if c.new_blake3 else None,
        "detail": c.detail,
        "detection": c.detection.value,
        "baseline_version": c.baseline_version,
        "heal": c.heal,
    }


def _change_line(c: Change) -> str:
    line = f"{c.kind.value.upper():<17} {c.path}"
    if c.fields:
        line += f"  [{', '.join(f.value for f in c.fields)}]"
    if c.old_blake3 and c.new_blake3 and c.old_blake3 != c.new_blake3:
        line += f"  {c.old_blake3.hex()[:16]} -> {c.new_blake3.hex()[:16]}"
    if c.detail:
        line += f"  ({c.detail})"
    return line


# --- commands -------------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    config, keys = _load_config(args)
    if not config.paths:
        raise UsageError("no watched paths: give --path or a config with [[fim.paths]]")
    missing = [r.root for r in config.paths if not os.path.lexists(r.root)]
    if missing and not args.allow_missing:
        raise UsageError(
            f"watched path(s) do not exist: {', '.join(missing)} (pass --allow-missing to "
            "record them as absent)"
        )
    store = _store(args, config.baseline, keys)
    if store.exists() and not args.force:
        raise UsageError(
            f"a baseline already exists at {config.baseline}; pass --force to accept the "
            "current state as its next version"
        )
    report = _scanner(config, args).snapshot()
    for issue in report.issues:
        print(f"warning: {issue.path}: {issue.reason}", file=sys.stderr)
    assert report.entries is not None
    baseline = store.create(
        report.entries.values(),
        config_digest=config_digest(config.digest_text),
        replace_tampered=args.force,
    )
    print(
        f"baseline {config.baseline}: version {baseline.version}, {len(baseline)} entries, "
        f"sealed with key {baseline.key_id}; {_summary(report)}"
    )
    return EXIT_OK


def _scan(args: argparse.Namespace) -> int:
    config, keys = _load_config(args)
    store = _store(args, config.baseline, keys)
    baseline = store.load()
    if baseline.config_digest and baseline.config_digest != config_digest(config.digest_text):
        print(
            "warning: the watched paths changed since this baseline was made; newly covered "
            "files show as created. Run `baseline init --force` to accept them",
            file=sys.stderr,
        )
    report = _scanner(config, args).scan(baseline, quick=args.quick)
    if report.refreshed and not args.no_refresh:
        store.update(lambda b: b.evolve(report.refreshed))
    if args.json:
        doc = {
            "baseline": str(config.baseline),
            "baseline_version": baseline.version,
            "changes": [_change_json(c) for c in report.changes],
            "issues": [{"path": i.path, "reason": i.reason} for i in report.issues],
            "files": report.files,
            "bytes": report.bytes,
            "seconds": round(report.seconds, 3),
        }
        json.dump(doc, sys.stdout, indent=2)
        print()
    else:
        for c in report.changes:
            print(_change_line(c))
        for issue in report.issues:
            print(f"ISSUE             {issue.path}  ({issue.reason})")
        print(
            f"{len(report.changes)} change(s), {len(report.issues)} issue(s) against baseline "
            f"version {baseline.version}; {_summary(report)}",
            file=sys.stderr,
        )
    return EXIT_CHANGES if report.changes else EXIT_OK


def _show(args: argparse.Namespace) -> int:
    config, keys = _load_config(args)
    path = args.baseline or config.baseline
    baseline = _store(args, path, keys).load()
    entries = list(baseline.under(args.prefix.rstrip("/") or "/")) if args.prefix else None
    if entries is None:
        entries = [baseline.entries[p] for p in sorted(baseline.entries)]
    if args.json:
        json.dump(
            {
                **_header(baseline, path),
                "entries": [
                    {
                        "path": e.path,
                        "type": e.meta.file_type.value,
                        "mode": f"{e.meta.mode:04o}",
                        "uid": e.meta.uid,
                        "gid": e.meta.gid,
                        "inode": e.meta.inode,
                        "size": e.meta.size,
                        "mtime_ns": e.meta.mtime_ns,
                        "ctime_ns": e.meta.ctime_ns,
                        "blake3": e.blake3.hex() if e.blake3 else None,
                        "symlink_target": e.meta.symlink_target,
                        "xattrs": [name for name, _ in e.meta.xattrs],
                    }
                    for e in entries
                ],
            },
            sys.stdout,
            indent=2,
        )
        print()
        return EXIT_OK
    for key, value in _header(baseline, path).items():
        print(f"{key + ':':<16}{value}")
    for e in entries:
        m = e.meta
        digest = e.blake3.hex()[:16] if e.blake3 else "-" * 16
        extra = f" -> {m.symlink_target}" if m.symlink_target is not None else ""
        xattrs = f"  xattrs={','.join(n for n, _ in m.xattrs)}" if m.xattrs else ""
        print(
            f"{m.file_type.value[0]} {m.mode:04o} {m.uid:>5}:{m.gid:<5} {m.size:>12} {digest} "
            f"{e.path}{extra}{xattrs}"
        )
    return EXIT_OK


def _header(baseline: Baseline, path: Path) -> dict[str, Any]:
    def when(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    return {
        "baseline": str(path),
        "version": baseline.version,
        "revision": baseline.revision,
        "created": when(baseline.created),
        "updated": when(baseline.updated),
        "host": baseline.host,
        "key_id": baseline.key_id,
        "entries_count": len(baseline),
        "content_bytes": baseline.total_bytes,
    }


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, _parser(), argv, errors=ERRORS)


if __name__ == "__main__":
    sys.exit(main())
