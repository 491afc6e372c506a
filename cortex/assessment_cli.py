"""`qsc-cortex assessments export`: the stored assessments as OCSF Detection Findings or JSON.

    qsc-cortex assessments export --config F [--format ocsf|json] [--filter EXPR] [--out FILE]

Opens the store read-only (beside a running Cortex, like `store verify`), reads back every
stored assessment revision and writes the latest revision of each assessment, oldest raised
first, as **JSON Lines**: one JSON object per line, UTF-8, each line ending in a newline (what
SIEM and data-lake ingest reads as a stream; `jq -s` makes an array of it).

- `--format ocsf` (the default): an OCSF Detection Finding (class 2004, `cortex.ocsf`), its
  contributing events as evidences, the factors behind the confidence under `unmapped`.
- `--format json`: the API's `qsc.cortex.v1.Assessment` (what GetAssessment returns), in the
  canonical proto3 JSON mapping.
- `--filter`: ListAssessments' filter (`cortex.assessment_queries`: rule, state, verdict,
  severity, confidence, host, technique, times...), e.g. `state = OPEN AND confidence >= 0.8`.
- `--out FILE`: written atomically with mode 0600 (assessments name hosts, users and paths the
  store keeps sealed); an existing file is refused. Without it, standard output.

Exit codes are mesh.command's: 0 written (also when nothing matched; the count goes to stderr),
1 the store does not open or the file cannot be written, 2 bad arguments, configuration or
filter (the message gives the filter position).
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Final

from google.protobuf import json_format

from cortex import _convert, ocsf
from cortex import assessment_records as records
from cortex.assessment_queries import FIELDS
from cortex.assessments import Assessment
from cortex.config import load_cortex_config
from cortex.errors import CortexError, FilterError
from cortex.filter import parse
from cortex.queries import ReadableStore
from cortex.record_filter import parse_record_filter
from cortex.store.api import Position
from cortex.store.sqlite import MAX_LIMIT
from cortex.store_cli import config_arg, open_configured
from crypto.files import atomic_file
from mesh.command import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ErrorExit, command_parser, run_cli
from qsc.common.v1 import event_pb2

__all__ = ["FORMATS", "add_commands", "latest_assessments", "main"]

PROG: Final = "qsc-cortex"
FORMATS: Final = ("ocsf", "json")
ERRORS: Final = (
    ErrorExit((FilterError,), EXIT_USAGE),
    ErrorExit((CortexError,), EXIT_FAILURE),
)


def add_commands(groups: Any) -> None:
    """`assessments` and its subcommands, under `groups` (the top-level subparsers)."""
    group = groups.add_parser("assessments", help="stored assessments: export (OCSF, JSON)")
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(title="assessments commands", metavar="COMMAND")
    export = commands.add_parser(
        "export", help="the latest revision of each stored assessment, as JSON Lines"
    )
    config_arg(export)
    export.add_argument(
        "--format",
        choices=FORMATS,
        default="ocsf",
        help="ocsf: OCSF Detection Finding (default); json: the API's Assessment",
    )
    export.add_argument("--filter", default="", help="ListAssessments' filter, e.g. 'state = OPEN'")
    export.add_argument("--out", type=Path, help="file to write (0600; not overwritten)")
    export.set_defaults(handler=_export)


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(PROG, description="The QSC Cortex's stored assessments.")
    add_commands(parser.add_subparsers(title="commands", metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`argv` from `assessments` on (as `qsc-cortex` hands it over)."""
    return run_cli(
        PROG, build_parser(), list(sys.argv[1:] if argv is None else argv), errors=ERRORS
    )


def latest_assessments(store: ReadableStore) -> list[Assessment]:
    """The latest stored revision of every assessment, oldest raised first (ties by id)."""
    latest: dict[str, Assessment] = {}
    where = parse(f"kind = {records.KIND}").to_sql(store.blind)
    after: Position | None = None
    while True:
        page = store.query(where, after=after, limit=MAX_LIMIT)
        for a in map(records.from_event, page.events):
            if a is not None and (a.id not in latest or latest[a.id].revision < a.revision):
                latest[a.id] = a
        if page.next is None:
            break
        after = page.next
    return sorted(latest.values(), key=lambda a: (a.create_ns, a.id))


def _contributing(a: Assessment, store: ReadableStore) -> Iterator[event_pb2.Event]:
    for event_id in a.event_ids[-ocsf.MAX_CONTRIBUTING :]:
        event = store.get(event_id)
        if event is not None:
            yield event


def _line(fmt: str, a: Assessment, store: ReadableStore) -> str:
    doc: dict[str, Any]
    if fmt == "ocsf":
        doc = ocsf.detection_finding(a, _contributing(a, store))
    else:
        doc = json_format.MessageToDict(_convert.assessment(a, store.get))
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n"


def _export(args: argparse.Namespace) -> int:
    flt = parse_record_filter(args.filter, FIELDS)  # a bad filter fails before the store opens
    config = load_cortex_config(args.config)
    with open_configured(config, writer=False) as store:
        chosen = [a for a in latest_assessments(store) if flt.matches(a)]
        lines = (_line(args.format, a, store) for a in chosen)
        if args.out is None:
            _write(sys.stdout, lines)
        else:
            _write_file(args.out, lines)
    where = "" if args.out is None else f" to {args.out}"
    print(f"{PROG}: exported {len(chosen)} assessment(s) as {args.format}{where}", file=sys.stderr)
    return EXIT_OK


def _write(out: IO[str], lines: Iterator[str]) -> None:
    for line in lines:
        out.write(line)


def _write_file(path: Path, lines: Iterator[str]) -> None:
    try:
        with atomic_file(path) as f:
            for line in lines:
                f.write(line.encode("utf-8"))
    except FileExistsError:
        reason = "exists already; export does not overwrite"
        raise OSError(errno.EEXIST, reason, str(path)) from None
