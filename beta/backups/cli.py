"""`qsc-beta manifest create|verify`: backup manifests from the command line.

Exit codes are mesh.command's (0 done, verify: passed; 1 the command could not run: keyring,
unreadable root, existing manifest...; 2 usage; 130 Ctrl-C) plus one of its own: 3 verify ran and
found failures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from google.protobuf import json_format

from beta.backups.convert import result_to_proto
from beta.backups.manifest import create_manifest
from beta.backups.scan import Progress
from beta.backups.verify import VerifyDepth, VerifyResult, verify_backup_set
from beta.errors import BetaError
from crypto.keyring import KeyManager
from mesh.command import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    ErrorExit,
    command_parser,
    fail,
    run_cli,
)

__all__ = [
    "ERRORS",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_VERIFY_FAILED",
    "main",
    "register",
]

EXIT_VERIFY_FAILED: Final = 3
PROG = "qsc-beta"
# A manifest command that cannot run failed, whatever the kind: a Beta setting it was handed
# (a bad glob) or a value it refused are not usage errors here.
ERRORS: Final = (ErrorExit((BetaError, ValueError), EXIT_FAILURE),)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError("must be in (0, 1], e.g. 0.25 for 4 rotating subsets")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", type=Path, help="the backup set's root directory")
    p.add_argument("-m", "--manifest", type=Path, required=True, help="manifest file")
    p.add_argument("--keys", type=Path, required=True, help="keyring directory (qsc keys init)")
    p.add_argument("--component", default="beta", help="keyring component (default: beta)")
    p.add_argument("--workers", type=int, default=None, help="hashing threads (default: cores)")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None)
    prog.add_argument("--no-progress", dest="progress", action="store_false")


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(PROG, description="Beta, the QSC integrity guardian.")
    register(parser.add_subparsers(title="commands", metavar="COMMAND"))
    return parser


def register(groups: argparse._SubParsersAction[Any]) -> None:
    """Add the `manifest` command group (for a larger `qsc-beta` parser to include)."""
    manifest = groups.add_parser(
        "manifest",
        help="create or verify an authenticated backup manifest",
        epilog="verify exits 0 when the set passed, 3 when it found failures, 1 on errors.",
    )
    manifest.set_defaults(group_parser=manifest)
    sub = manifest.add_subparsers(title="subcommands", metavar="SUBCOMMAND")

    create = sub.add_parser("create", help="hash a backup set and write its manifest")
    _common(create)
    create.add_argument("--name", help="backup set name (default: the root's name)")
    create.add_argument(
        "--exclude", action="append", default=[], metavar="GLOB", help="leave matching paths out"
    )
    create.add_argument(
        "--encrypted", action="store_true", help="files are Beta sealed files (verify decrypts)"
    )
    create.add_argument("--force", action="store_true", help="replace an existing manifest")
    create.set_defaults(handler=_create)

    verify = sub.add_parser("verify", help="verify a backup set against its manifest")
    _common(verify)
    verify.add_argument(
        "--depth", choices=[d.value for d in VerifyDepth], default=VerifyDepth.FULL.value
    )
    verify.add_argument(
        "--subset-fraction",
        type=_fraction,
        default=1.0,
        help="re-hash this fraction per run, rotating (needs --cursor)",
    )
    verify.add_argument("--cursor", type=Path, help="rotation cursor file")
    verify.add_argument("--whole-set", action="store_true", help="ignore the rotation this once")
    verify.add_argument(
        "--decrypt-purpose",
        metavar="PURPOSE",
        help="keyring purpose whose keys open an encrypted set (e.g. vault)",
    )
    verify.add_argument("--max-failures", type=int, default=100, help="failures listed")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(handler=_verify)


class _Meter:
    """One self-overwriting status line on a terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.start = time.monotonic()
        self.width = 0

    def __call__(self, p: Progress) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        pct = 100 * p.bytes_done / p.bytes_total if p.bytes_total else 100.0
        if p.phase == "scan":
            line = f"scanning: {p.files_done}/{p.files_total} files"
        else:
            line = (
                f"hashing: {p.files_done}/{p.files_total} files, "
                f"{_size(p.bytes_done)}/{_size(p.bytes_total)} ({pct:.0f}%), "
                f"{p.bytes_done / elapsed / 1e6:.0f} MB/s"
            )
        self.out.write("\r" + line.ljust(self.width))
        self.width = len(line)
        self.out.flush()

    def close(self) -> None:
        if self.width:
            self.out.write("\r" + " " * self.width + "\r")
            self.out.flush()


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def _meter(args: argparse.Namespace) -> _Meter | None:
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    return _Meter(sys.stderr) if show else None


def _keys(args: argparse.Namespace) -> KeyManager:
    return KeyManager.open(args.keys, args.component)


def _create(args: argparse.Namespace) -> int:
    km = _keys(args)
    meter = _meter(args)
    try:
        m = create_manifest(
            args.root,
            args.manifest,
            km,
            backup_set=args.name or args.root.resolve().name,
            exclude=tuple(args.exclude),
            encrypted=args.encrypted,
            overwrite=args.force,
            workers=args.workers,
            progress=meter,
        )
    finally:
        if meter:
            meter.close()
    print(
        f"manifest {args.manifest}: backup set {m.backup_set}, {m.file_count} files, "
        f"{m.total_size} bytes, authenticated by {m.key_id}"
    )
    return EXIT_OK


def _print_result(r: VerifyResult) -> None:
    scope = f" subset {r.subset_index + 1}/{r.subset_count}" if r.subset_count > 1 else ""
    verdict = "PASSED" if r.passed else f"FAILED ({r.failure_count} failures)"
    print(
        f"backup set {r.backup_set}: {r.depth.value} verify{scope} {verdict}: "
        f"{r.files_checked}/{r.files_expected} files checked, {_size(r.bytes_checked)} read "
        f"in {r.duration.total_seconds():.1f} s"
    )
    for f in r.failures:
        print(f"  {f.kind.value:<18} {f.path}: {f.message}")
    if r.failure_count > len(r.failures):
        print(f"  ... and {r.failure_count - len(r.failures)} more")
    for note in r.notes:
        print(f"  note: {note}")


def _verify(args: argparse.Namespace) -> int:
    km = _keys(args)
    if args.subset_fraction < 1 and args.cursor is None and not args.whole_set:
        return fail(PROG, "--subset-fraction below 1 needs --cursor FILE to remember the rotation")
    decrypt = km.decryption_keys(args.decrypt_purpose) if args.decrypt_purpose else None
    meter = _meter(args)
    try:
        result = verify_backup_set(
            args.root,
            args.manifest,
            km,
            depth=VerifyDepth(args.depth),
            subset_fraction=args.subset_fraction,
            cursor_path=args.cursor,
            whole_set=args.whole_set,
            decryption_keys=decrypt,
            progress=meter,
            max_failures=args.max_failures,
            workers=args.workers,
        )
    finally:
        if meter:
            meter.close()
    if args.json:
        doc = json_format.MessageToDict(result_to_proto(result))
        doc["notes"] = list(result.notes)
        print(json.dumps(doc, indent=2))
    else:
        _print_result(result)
    return EXIT_OK if result.passed else EXIT_VERIFY_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, build_parser(), argv, errors=ERRORS)


if __name__ == "__main__":
    sys.exit(main())
