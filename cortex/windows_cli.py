"""`qsc-cortex export-windows|export-labels`: stored host telemetry as `qsc-ml` input files.

    qsc-cortex export-windows --config F --since 30d [--until T] [--host H] --out FILE
                              [--include-unmeasured] [--progress|--no-progress]
    qsc-cortex export-labels  --config F --since 30d [--until T] [--host H] --out FILE
                              [--include-unmeasured] [--progress|--no-progress]

Both open the store read-only (beside a running Cortex, like `store verify`) and write the rows
`cortex.windows` describes, which `qsc-ml` reads unchanged:

- `export-windows`: every stored `host_telemetry` window whose time (its end) is in
  [since, until), on `--host` only if given: `qsc-ml train --input FILE ...`.
- `export-labels`: for every resolved assessment with a verdict whose events fall (in part) in
  [since, until), the windows of its hosts overlapping its events, labelled 1 (true positive)
  or 0 (false positive, benign), with a `kind` naming the rule(s): `qsc-ml tune --input FILE`.
  Every stored verdict counts (`qsc-cortex model reset` concerns the correlation's likelihood
  ratios, not these labels).

`--since` and `--until` take a duration back from now (`30d`, `12h`) or an RFC 3339 time
(`2026-11-01T00:00:00Z`); `--until` defaults to now. The format follows `--out`'s suffix: JSON
lines for .jsonl, .ndjson or .json, else CSV. The file is written atomically with mode 0600
(windows name hosts and what they did); an existing file is refused. Windows with a feature
listed `unmeasured` are skipped (it reads 0, and a model would learn that silence is normal)
unless `--include-unmeasured`; the skipped ones are counted by reason on stderr. A progress
line goes to stderr when it is a terminal (or with `--progress`). A JSON summary of what was
written goes to stdout.

Exit codes are mesh.command's (0 written; 1 the store does not open, the file exists or cannot
be written; 2 bad arguments or configuration, such as a bad duration or time) and one of their
own: 3 nothing to export (no window, or none left after skipping, or no judged assessment
overlapping a window); no file is written then, and the message says what was found.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import errno
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Final, TextIO

from cortex import windows as w
from cortex.assessment_cli import latest_assessments
from cortex.config import load_cortex_config
from cortex.errors import CortexError
from cortex.filter import parse
from cortex.filter.literals import format_time
from cortex.queries import ReadableStore
from cortex.store.api import Position
from cortex.store.sqlite import MAX_LIMIT
from cortex.store_cli import config_arg, open_configured
from crypto.errors import PkiError
from crypto.files import atomic_file
from crypto.pki import normalize_host
from mesh.command import (
    EXIT_FAILURE,
    EXIT_OK,
    ErrorExit,
    UsageError,
    command_parser,
    fail,
    run_cli,
)
from mesh.config import parse_duration
from qsc.common.v1 import event_pb2

__all__ = ["COMMANDS", "EXIT_NOTHING", "add_commands", "main"]

PROG: Final = "qsc-cortex"
COMMANDS: Final = ("export-windows", "export-labels")
EXIT_NOTHING: Final = 3
ERRORS: Final = (ErrorExit((CortexError,), EXIT_FAILURE),)
_PROGRESS_INTERVAL: Final = 0.2  # seconds between redraws on a terminal
_PROGRESS_LINES: Final = 5.0  # seconds between lines when stderr is not a terminal
_FIRST_PAGE: Final = 64  # windows read first after an assessment's start (most spans are short)


class _NothingToExportError(Exception):
    """Raised inside the file's block, so the temporary file goes and nothing is linked in."""


# --- arguments -----------------------------------------------------------------------------------


def _when(text: str) -> dt.datetime:
    """A duration back from now (`30d`) or an RFC 3339 time (UTC when it has no zone)."""
    try:
        return dt.datetime.now(dt.UTC) - parse_duration(text)
    except ValueError:
        pass
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} reaches back before year 1") from None
    try:
        t = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration back from now (30d, 12h, 90m) nor an RFC 3339 "
            "time (2026-11-01T00:00:00Z)"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _host(text: str) -> str:
    try:
        return normalize_host(text)
    except PkiError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _common(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.add_argument(
        "--since",
        type=_when,
        required=True,
        metavar="DURATION|TIME",
        help="from how long ago (30d, 12h) or from when (RFC 3339)",
    )
    p.add_argument(
        "--until",
        type=_when,
        metavar="DURATION|TIME",
        help="up to how long ago or when, exclusive (default: now)",
    )
    p.add_argument("--host", type=_host, help="this host's windows only")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FILE",
        help="file to write (0600, not overwritten); JSON lines for .jsonl, else CSV",
    )
    p.add_argument(
        "--include-unmeasured",
        action="store_true",
        help="keep windows with unmeasured features (their value reads 0); default: skip them",
    )
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--progress", dest="progress", action="store_true", default=None)
    shown.add_argument("--no-progress", dest="progress", action="store_false")


def add_commands(groups: Any) -> None:
    """`export-windows` and `export-labels`, under `groups` (the top-level subparsers)."""
    windows = groups.add_parser(
        "export-windows",
        help="stored host telemetry windows as `qsc-ml train` input",
        description="Write the stored host_telemetry windows as the CSV (or JSON lines) "
        "`qsc-ml train --input` reads.",
    )
    _common(windows)
    windows.set_defaults(handler=_export_windows)
    labels = groups.add_parser(
        "export-labels",
        help="windows labelled by analysts' verdicts as `qsc-ml tune` input",
        description="Write the windows overlapping each resolved, judged assessment, labelled "
        "1 (true positive) or 0 (false positive, benign), as `qsc-ml tune --input` reads.",
    )
    _common(labels)
    labels.set_defaults(handler=_export_labels)


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(PROG, description="Stored host telemetry as qsc-ml input files.")
    add_commands(parser.add_subparsers(title="commands", metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`argv` from `export-windows` or `export-labels` on (as `qsc-cortex` hands it over)."""
    return run_cli(
        PROG, build_parser(), list(sys.argv[1:] if argv is None else argv), errors=ERRORS
    )


# --- shared --------------------------------------------------------------------------------------


class _Span:
    """[since, until) in nanoseconds, checked."""

    def __init__(self, args: argparse.Namespace) -> None:
        until: dt.datetime = args.until or dt.datetime.now(dt.UTC)
        since: dt.datetime = args.since
        if since >= until:
            raise UsageError(f"--since ({_iso(since)}) must be before --until ({_iso(until)})")
        self.since_ns = _ns(since)
        self.until_ns = _ns(until)

    def text(self) -> str:
        return f"between {format_time(self.since_ns)} and {format_time(self.until_ns)}"


def _ns(t: dt.datetime) -> int:
    delta = t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def _iso(t: dt.datetime) -> str:
    return format_time(_ns(t))


def _quote(value: str) -> str:
    """A filter string literal matching `value` exactly (no wildcard)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("*", "\\*")
    return f'"{escaped}"'


def _check_out(path: Path) -> None:
    """Refuse before reading the store: an existing file, a missing directory."""
    if os.path.lexists(path):
        raise OSError(errno.EEXIST, "exists already; export does not overwrite", str(path))
    parent = path.parent
    if not parent.is_dir():
        raise OSError(errno.ENOENT, "no such directory to write into", str(parent))


class _Progress:
    """`export-windows: 1200/5000 windows  24.0%  3,100/s`: redrawn in place on a terminal,
    a line every few seconds otherwise."""

    def __init__(self, out: TextIO, enabled: bool, what: str, unit: str) -> None:
        self.out, self.enabled, self.what, self.unit = out, enabled, what, unit
        self.tty = out.isatty()
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = -1
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        every = _PROGRESS_INTERVAL if self.tty else _PROGRESS_LINES
        if not self.enabled or done == self.shown or (now - self.last < every and done < total):
            return
        self.last, self.shown = now, done
        rate = done / max(now - self.start, 1e-9)
        percent = 100.0 * done / total if total else 100.0
        line = f"{self.what}: {done}/{total} {self.unit}  {percent:5.1f}%  {rate:,.0f}/s"
        if self.tty:
            self.out.write(f"\r\x1b[K{line}")
            self.drawn = True
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def end(self) -> None:
        if self.drawn:
            self.out.write("\n")
            self.out.flush()


def _progress(args: argparse.Namespace, what: str, unit: str) -> _Progress:
    enabled = sys.stderr.isatty() if args.progress is None else bool(args.progress)
    return _Progress(sys.stderr, enabled, what, unit)


def _pages(
    store: ReadableStore, where_text: str, *, first: int = MAX_LIMIT
) -> Iterator[event_pb2.Event]:
    """The events `where_text` selects, oldest first, a page at a time: `first` events, then
    four times as many each page up to the store's limit (a reader that stops early decrypts
    little)."""
    where = parse(where_text).to_sql(store.blind)
    after: Position | None = None
    limit = first
    while True:
        page = store.query(where, after=after, limit=limit)
        yield from page.events
        if page.next is None:
            return
        after = page.next
        limit = min(MAX_LIMIT, limit * 4)


def _write(path: Path, body: Callable[[BinaryIO], None]) -> None:
    try:
        with atomic_file(path) as f:
            body(f)
    except FileExistsError:
        raise OSError(
            errno.EEXIST, "exists already; export does not overwrite", str(path)
        ) from None


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _summary(doc: dict[str, Any]) -> None:
    print(json.dumps(doc, indent=2))


# --- export-windows ------------------------------------------------------------------------------


def _export_windows(args: argparse.Namespace) -> int:
    span = _Span(args)
    _check_out(args.out)
    config = load_cortex_config(args.config)
    fmt = w.RowFormat.for_name(args.out.name, labelled=False)
    tally = w.Tally(include_unmeasured=args.include_unmeasured)
    where = (
        f'kind = {w.KIND} AND time >= "{format_time(span.since_ns)}" '
        f'AND time < "{format_time(span.until_ns)}"'
    )
    if args.host is not None:
        where += f" AND host = {_quote(args.host)}"
    progress = _progress(args, "export-windows", "windows")

    with open_configured(config, writer=False) as store:
        total = store.count(parse(where).to_sql(store.blind))

        def body(f: BinaryIO) -> None:
            f.write(fmt.header().encode())
            for event in _pages(store, where):
                window = tally.admit(event)
                progress(tally.read, total)
                if window is None:
                    continue
                f.write(fmt.row(window).encode())
                tally.kept_row(window)
            progress(tally.read, total)
            if tally.kept == 0:
                raise _NothingToExportError

        try:
            _write(args.out, body)
        except _NothingToExportError:
            return _nothing(tally, _scope(span, args.host))
        finally:
            progress.end()
    _say(
        f"exported {tally.kept} window(s) of {len(tally.hosts)} host(s) "
        f"{_scope(span, args.host)} to {args.out}"
    )
    if tally.skipped:
        _say(tally.skipped_text() + _unmeasured_hint(tally))
    _summary({"out": str(args.out), "format": "jsonl" if fmt.jsonl else "csv", **tally.to_json()})
    return EXIT_OK


def _scope(span: _Span, host: str | None) -> str:
    return span.text() + ("" if host is None else f" on host {host}")


def _unmeasured_hint(tally: w.Tally) -> str:
    if tally.skipped.get(w.SKIP_UNMEASURED) and not tally.include_unmeasured:
        return " (--include-unmeasured keeps windows with unmeasured features)"
    return ""


def _nothing(tally: w.Tally, scope: str) -> int:
    if tally.read == 0:
        message = f"no {w.KIND} windows stored {scope}; nothing written"
    else:
        message = (
            f"{tally.read} {w.KIND} window(s) stored {scope}, none usable: "
            f"{tally.skipped_text()}{_unmeasured_hint(tally)}; nothing written"
        )
    return fail(PROG, message, EXIT_NOTHING)


# --- export-labels -------------------------------------------------------------------------------


def _event_hosts(store: ReadableStore, event_ids: Sequence[str]) -> list[str]:
    hosts = []
    for event_id in event_ids:
        event = store.get(event_id)
        if event is not None and event.guardian.host:
            hosts.append(event.guardian.host)
    return hosts


def _judged(store: ReadableStore, span: _Span, host: str | None) -> list[w.LabelSpan]:
    out = []
    for a in latest_assessments(store):
        if a.verdict is None or a.state != "resolved":
            continue
        if a.last_event_ns < span.since_ns or a.first_event_ns >= span.until_ns:
            continue
        label = w.label_span(a, () if a.hosts else _event_hosts(store, a.event_ids))
        if label is None:
            continue
        if host is not None:
            if host not in label.hosts:
                continue
            label = dataclasses.replace(label, hosts=(host,))
        out.append(label)
    return out


def _windows_of(
    store: ReadableStore,
    label: w.LabelSpan,
    host: str,
    tally: w.Tally,
    seen: dict[str, w.Window | None],
) -> Iterator[w.Window]:
    """The windows of `host` overlapping the label's span: stored in order of their end, from
    the first ending after the span's start to the last starting before its end. `seen` keeps
    each event's window, so one read for several assessments is counted once."""
    where = f'kind = {w.KIND} AND host = {_quote(host)} AND time > "{format_time(label.first_ns)}"'
    for event in _pages(store, where, first=_FIRST_PAGE):
        if event.id in seen:
            window = seen[event.id]
        else:
            window = seen[event.id] = tally.admit(event)
        if window is None:
            if event.host_telemetry.window_start.ToNanoseconds() > label.last_ns:
                return
            continue
        if window.start_ns > label.last_ns:
            return
        yield window


def _export_labels(args: argparse.Namespace) -> int:
    span = _Span(args)
    _check_out(args.out)
    config = load_cortex_config(args.config)
    fmt = w.RowFormat.for_name(args.out.name, labelled=True)
    tally = w.Tally(include_unmeasured=args.include_unmeasured)
    labelled = w.LabelledWindows()
    seen: dict[str, w.Window | None] = {}
    progress = _progress(args, "export-labels", "assessments")
    scope = _scope(span, args.host)
    with open_configured(config, writer=False) as store:
        judged = _judged(store, span, args.host)
        try:
            for i, label in enumerate(judged, 1):
                for host in label.hosts:
                    for window in _windows_of(store, label, host, tally, seen):
                        labelled.add(window, label)
                progress(i, len(judged))
        finally:
            progress.end()
    if not judged:
        return fail(
            PROG,
            f"no resolved assessment with a verdict has events {scope}; nothing written",
            EXIT_NOTHING,
        )
    if not labelled:
        skipped = f" ({tally.skipped_text()}{_unmeasured_hint(tally)})" if tally.skipped else ""
        return fail(
            PROG,
            f"{len(judged)} judged assessment(s) {scope}, but no usable {w.KIND} window of "
            f"their hosts overlaps their events{skipped}; nothing written",
            EXIT_NOTHING,
        )

    def body(f: BinaryIO) -> None:
        f.write(fmt.header().encode())
        for window, malicious, rules in labelled.rows():
            f.write(fmt.row(window, malicious, rules).encode())
            tally.kept_row(window)

    _write(args.out, body)
    malicious, benign = labelled.counts()
    _say(
        f"exported {len(labelled)} labelled window(s) ({malicious} malicious, {benign} benign) "
        f"from {len(judged)} judged assessment(s) {scope} to {args.out}"
    )
    if tally.skipped:
        _say(tally.skipped_text() + _unmeasured_hint(tally))
    if malicious == 0:
        _say(
            "no window is labelled malicious: `qsc-ml tune` maximising F1 needs at least one; "
            "--target-fpr needs only benign ones"
        )
    _summary(
        {
            "out": str(args.out),
            "format": "jsonl" if fmt.jsonl else "csv",
            "assessments": len(judged),
            "malicious": malicious,
            "benign": benign,
            **tally.to_json(),
        }
    )
    return EXIT_OK
