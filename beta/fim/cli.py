"""`qsc-beta baseline init|scan|show`: build, check and inspect the authenticated FIM baseline.

Exit status: 0 no difference, 1 differences found (scan), 2 bad usage or configuration,
3 the baseline failed verification, 4 any other failure (keys, I/O).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import time
import tomllib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, TextIO

from beta.errors import BetaError
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
from crypto.errors import CryptoError
from crypto.keyring import KeyManager
from mesh.config import ConfigLoadError, config_from_dict
from mesh.errors import ConfigError

__all__ = ["main"]

EXIT_OK: Final = 0
EXIT_CHANGES: Final = 1
EXIT_USAGE: Final = 2
EXIT_TAMPERED: Final = 3
EXIT_FAILURE: Final = 4
KEY_DIR_ENV: Final = "QSC_BETA_KEY_DIR"
_RATE_RE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?(?:/s)?", re.IGNORECASE)
_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

_EPILOG = """\
examples:
  qsc-beta baseline init --config /etc/qsc/beta.toml --keys /var/lib/qsc/beta/keys
  qsc-beta baseline init --path /etc --path /usr/bin --exclude '*.swp' \\
      --baseline /var/lib/qsc/beta/fim-baseline.qsc --keys /var/lib/qsc/beta/keys
  qsc-beta baseline scan --config /etc/qsc/beta.toml --keys /var/lib/qsc/beta/keys --io-budget 50M
  qsc-beta baseline show --baseline /var/lib/qsc/beta/fim-baseline.qsc --keys KEYS --path /etc/ssh

The configuration is the [fim] table of Beta's TOML file (or a file holding only its keys).
Keys come from the Beta keyring (`qsc keys init --dir DIR --component beta`); the baseline is
sealed with its "baseline" purpose key. Exit status: 0 no difference, 1 differences found,
2 bad usage or configuration, 3 baseline failed verification, 4 other failure.
"""


class _UsageError(Exception):
    pass


def _rate(text: str) -> int:
    match = _RATE_RE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate like 50M, 200MiB/s or 0")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qsc-beta",
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
    sub = base.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser, *, scanning: bool) -> None:
        p.add_argument("--config", type=Path, help="Beta TOML file ([fim] table)")
        p.add_argument("--baseline", type=Path, help="baseline file (overrides the config)")
        p.add_argument(
            "--keys",
            type=Path,
            default=os.environ.get(KEY_DIR_ENV) or None,
            help=f"Beta key directory (default ${KEY_DIR_ENV})",
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
    show = sub.add_parser("show", help="print the baseline (after verifying it)")
    common(show, scanning=False)
    show.add_argument("--path", dest="prefix", help="only entries at or below this path")
    show.add_argument("--json", action="store_true", help="JSON on stdout")
    return parser


# --- configuration --------------------------------------------------------------------------


def _load_config(args: argparse.Namespace) -> FimConfig:
    table: dict[str, Any] = {}
    source = "command line"
    if args.config is not None:
        source = f"{args.config} [fim]"
        try:
            with open(args.config, "rb") as f:
                doc = tomllib.load(f)
        except OSError as exc:
            raise _UsageError(f"{args.config}: cannot read ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise _UsageError(f"{args.config}: invalid TOML: {exc}") from None
        fim = doc.get("fim", doc)
        if not isinstance(fim, dict):
            raise _UsageError(f"{args.config}: [fim] must be a table")
        table = dict(fim)
    try:
        config = config_from_dict(FimConfig, table, source=source)
        extra = [WatchPath(Path(p)) for p in getattr(args, "path", [])]
        extra += [WatchPath(Path(p), log=True) for p in getattr(args, "log_path", [])]
        exclude = tuple(getattr(args, "exclude", []))
        budget = getattr(args, "io_budget", None)
        return replace(
            config,
            paths=config.paths + tuple(extra),
            exclude=config.exclude + exclude,
            baseline=args.baseline or config.baseline,
            io_budget=budget if budget is not None else config.io_budget,
        )
    except (ConfigLoadError, ConfigError) as exc:
        raise _UsageError(str(exc)) from None


def _store(args: argparse.Namespace, baseline: Path) -> BaselineStore:
    if args.keys is None:
        raise _UsageError(f"--keys DIR is required (or set {KEY_DIR_ENV})")
    keys = KeyManager.open(args.keys, "beta")
    return BaselineStore(baseline, keys)


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
    config = _load_config(args)
    if not config.paths:
        raise _UsageError("no watched paths: give --path or a config with [[fim.paths]]")
    missing = [r.root for r in config.paths if not os.path.lexists(r.root)]
    if missing and not args.allow_missing:
        raise _UsageError(
            f"watched path(s) do not exist: {', '.join(missing)} (pass --allow-missing to "
            "record them as absent)"
        )
    store = _store(args, config.baseline)
    if store.exists() and not args.force:
        raise _UsageError(
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
    config = _load_config(args)
    store = _store(args, config.baseline)
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
    if args.baseline is None:
        config = _load_config(args)
        path = config.baseline
    else:
        path = args.baseline
    baseline = _store(args, path).load()
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
    parser = _parser()
    args = parser.parse_args(argv)
    if args.group != "baseline" or not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    started = time.monotonic()
    try:
        command = {"init": _init, "scan": _scan, "show": _show}[args.command]
        return command(args)
    except _UsageError as exc:
        print(f"qsc-beta: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BaselineTamperedError as exc:
        print(f"qsc-beta: BASELINE TAMPERED: {exc}", file=sys.stderr)
        return EXIT_TAMPERED
    except BaselineMissingError as exc:
        print(f"qsc-beta: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (BetaError, CryptoError) as exc:
        print(f"qsc-beta: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"\nqsc-beta: interrupted after {time.monotonic() - started:.1f}s", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
