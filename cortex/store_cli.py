"""`qsc-cortex store ...`: the event store's tools, on the store a Cortex configuration names.

    qsc-cortex store verify --config F [--checkpoint CP] [--json] [--progress|--no-progress]
    qsc-cortex store checkpoint --config F --out CP
    qsc-cortex store retain --config F --older-than 90d

- `verify` opens the store read-only (beside a running Cortex), proves the hash chain, every
  signed checkpoint and every payload, and names the first bad record. With `--checkpoint`, an
  exported checkpoint kept off the host, it also finds a truncated tail. A progress line goes to
  stderr when stderr is a terminal (or with `--progress`).
- `checkpoint` writes a signed checkpoint with the signer's certificate to `--out` (0600,
  atomically; an existing file is refused). With no Cortex running it signs a fresh one of the
  current head; beside a running Cortex it exports the latest one the Cortex signed.
- `retain` deletes records stored longer ago than `--older-than` and signs the cut, so the chain
  stays verifiable. It needs the writer's place: stop the Cortex first.

Exit codes are mesh.command's (0 done and, for verify, intact; 1 the command could not run: a
store that refuses to open, a keyring, an unreadable checkpoint file; 2 usage or configuration;
130 Ctrl-C) plus one of its own: 3 verify ran and found the store tampered or damaged.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from cryptography import x509

from cortex.config import COMPONENT, CortexConfig, load_cortex_config
from cortex.errors import CortexError, StoreOpenError
from cortex.store import CheckpointSigner, SqliteEventStore
from cortex.store.api import Checkpoint, VerifyReport
from cortex.store.checkpoint import export_checkpoint, read_checkpoint_file
from mesh.command import EXIT_FAILURE, EXIT_OK, ErrorExit, command_parser, run_cli
from mesh.config import parse_duration
from mesh.identity import load_tls

__all__ = ["EXIT_TAMPERED", "add_commands", "config_arg", "main", "open_configured"]

PROG: Final = "qsc-cortex"
EXIT_TAMPERED: Final = 3
ERRORS: Final = (ErrorExit((CortexError,), EXIT_FAILURE),)
_PROGRESS_INTERVAL: Final = 0.2  # seconds between progress line redraws


def add_commands(groups: Any) -> None:
    """`store` and its subcommands, under `groups` (the top-level subparsers)."""
    store = groups.add_parser("store", help="event store tools: verify, checkpoint, retain")
    store.set_defaults(group_parser=store)
    commands = store.add_subparsers(title="store commands", metavar="COMMAND")

    verify = commands.add_parser("verify", help="prove the chain, checkpoints and payloads")
    config_arg(verify)
    verify.add_argument(
        "--checkpoint", type=Path, help="an exported checkpoint: also find a truncated tail"
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    shown = verify.add_mutually_exclusive_group()
    shown.add_argument("--progress", dest="progress", action="store_true", default=None)
    shown.add_argument("--no-progress", dest="progress", action="store_false")
    verify.set_defaults(handler=_verify)

    checkpoint = commands.add_parser("checkpoint", help="export a signed checkpoint")
    config_arg(checkpoint)
    checkpoint.add_argument("--out", type=Path, required=True, help="file to write (0600)")
    checkpoint.set_defaults(handler=_checkpoint)

    retain = commands.add_parser("retain", help="delete old records, keeping the chain whole")
    config_arg(retain)
    retain.add_argument(
        "--older-than", required=True, type=_age, help="age of records to delete (e.g. 90d, 12h)"
    )
    retain.set_defaults(handler=_retain)


def config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="the Cortex configuration file")


def _age(text: str) -> Any:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(PROG, description="The QSC Cortex's event store tools.")
    add_commands(parser.add_subparsers(title="commands", metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`argv` from `store` on (as `qsc-cortex` hands it over)."""
    return run_cli(
        PROG, build_parser(), list(sys.argv[1:] if argv is None else argv), errors=ERRORS
    )


# --- opening -----------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> CortexConfig:
    return load_cortex_config(args.config)


def open_configured(config: CortexConfig, *, writer: bool) -> SqliteEventStore:
    """The store `config` names: read-only beside a running Cortex, or as its writer (which
    needs the writer lock a running Cortex holds)."""
    signer = CheckpointSigner.from_tls(load_tls(config.server.tls)) if writer else None
    return SqliteEventStore.open_with_keyring(
        config.store.store_config(),
        config.keyring.directory,
        component=COMPONENT,
        signer=signer,
        readonly=not writer,
    )


def open_writer(config: CortexConfig, held: str) -> SqliteEventStore:
    """The store as its writer, for a tool; `held` says what to do instead when a running
    Cortex holds the writer lock."""
    try:
        return open_configured(config, writer=True)
    except StoreOpenError as exc:
        if "open for writing by another process" not in exc.reason:
            raise
        raise StoreOpenError(
            exc.path, f"is open for writing by another process, a running Cortex: {held}"
        ) from None


# --- verify --------------------------------------------------------------------------------------


class _ProgressLine:
    """`records/total  percent  records/s` redrawn in place, at most every 0.2 s."""

    def __init__(self, out: TextIO, enabled: bool) -> None:
        self.out, self.enabled = out, enabled
        self.start = time.monotonic()
        self.last = 0.0
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < _PROGRESS_INTERVAL and done < total):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        percent = 100.0 * done / total if total else 100.0
        self.out.write(f"\r\x1b[Kverify: {done}/{total} records  {percent:5.1f}%  {rate:,.0f}/s")
        self.out.flush()
        self.drawn = True

    def end(self) -> None:
        if self.drawn:
            self.out.write("\n")
            self.out.flush()


def _verify(args: argparse.Namespace) -> int:
    config = _config(args)
    exported: tuple[Checkpoint, x509.Certificate] | None = None
    if args.checkpoint is not None:
        exported = read_checkpoint_file(args.checkpoint)
    enabled = sys.stderr.isatty() if args.progress is None else bool(args.progress)
    line = _ProgressLine(sys.stderr, enabled)
    with open_configured(config, writer=False) as store:
        try:
            report = store.verify(
                checkpoint=None if exported is None else exported[0],
                certificate=None if exported is None else exported[1],
                progress=line,
            )
        finally:
            line.end()
    if args.json:
        print(json.dumps(_report_json(store, report), indent=2))
    else:
        print(_report_text(store, report))
    return EXIT_OK if report.ok else EXIT_TAMPERED


def _report_json(store: SqliteEventStore, report: VerifyReport) -> dict[str, Any]:
    problem = report.problem
    return {
        "store": str(store.config.db_path),
        "ok": report.ok,
        "records": report.records,
        "first_record": report.first_record,
        "last_record": report.last_record,
        "checkpoints": report.checkpoints,
        "problem": None
        if problem is None
        else {
            "record": problem.rowid,
            "guardian_id": problem.guardian_id,
            "seq": problem.seq,
            "reason": problem.reason,
        },
        "notes": list(report.notes),
    }


def _report_text(store: SqliteEventStore, report: VerifyReport) -> str:
    span = (
        f"records {report.first_record}..{report.last_record}"
        if report.first_record is not None
        else "no records"
    )
    lines = [
        f"{store.config.db_path}: {report.records} records checked ({span}), "
        f"{report.checkpoints} signed checkpoints"
    ]
    lines += [f"  note: {n}" for n in report.notes]
    if report.ok:
        lines.append("OK: the chain, the checkpoints and every payload verify")
    else:
        lines.append(f"TAMPERED: {report.problem}")
    return "\n".join(lines)


# --- checkpoint and retain ---------------------------------------------------------------------


def _checkpoint(args: argparse.Namespace) -> int:
    config = _config(args)
    try:
        store = open_configured(config, writer=True)
    except StoreOpenError as exc:
        if "open for writing by another process" not in exc.reason:
            raise
        store = open_configured(config, writer=False)  # a Cortex runs: export what it signed last
        fresh = False
    else:
        fresh = True
    with store:
        cp = store.checkpoint() if fresh else store.latest_checkpoint()
        if cp is None:
            raise StoreOpenError(
                config.store.store_config().db_path,
                "has no checkpoint yet: the running Cortex signs one every "
                "store.checkpoint_every records or store.checkpoint_interval; try again then",
            )
        cert = store.signer_certificate(cp.key_id)
        if cert is None:
            raise StoreOpenError(
                config.store.store_config().db_path,
                f"does not hold the certificate of signing key {cp.key_id}",
            )
        export_checkpoint(args.out, cp, cert, overwrite=False)
    how = "signed now" if fresh else "the latest the running Cortex signed"
    print(
        f"{args.out}: checkpoint of {cp.count} records, head {cp.head.hex()[:16]}..., "
        f"key {cp.key_id} ({how})"
    )
    return EXIT_OK


def _retain(args: argparse.Namespace) -> int:
    config = _config(args)
    with open_configured(config, writer=True) as store:
        result = store.retain(args.older_than)
    if result.cut is None:
        print(f"nothing stored longer ago than {args.older_than}: no record deleted")
    else:
        print(
            f"deleted {result.deleted} records (up to record {result.cut.count}); "
            f"the signed cut keeps the chain verifiable from head {result.cut.head.hex()[:16]}..."
        )
    return EXIT_OK
