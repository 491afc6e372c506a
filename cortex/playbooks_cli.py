"""`qsc-cortex playbooks ...`: check playbooks, read runs and dead letters, replay them.

    qsc-cortex playbooks check --config F            playbook files, endpoints and secrets load
    qsc-cortex playbooks runs --config F [--filter F] [--json]     runs, newest first
    qsc-cortex playbooks dead-letters --config F [--json]          failed runs, last error
    qsc-cortex playbooks replay --config F (RUN_ID... | --all)     send dead letters again
    qsc-cortex playbooks endpoints --config F                      endpoints, disabled or not
    qsc-cortex playbooks enable-endpoint --config F NAME           after a 410, by hand

`runs`, `dead-letters` and `endpoints` open the store read-only, beside a running Cortex.
`replay` and `enable-endpoint` write, so they need the store's writer lock: with the Cortex
running, replay through the API instead (`ReplayPlaybookRun`, e.g. with grpcurl or buf curl;
the Cortex then sends at once), which also re-enables the endpoint the run failed on. Filters
are ListPlaybookRuns' (`state = FAILED AND playbook = "notify"`). Exit codes are mesh.command's:
0 done; 1 the store does not open or is held by a running Cortex, a run is not there or not
failed; 2 bad arguments, configuration or playbook files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

from cortex.config import CortexConfig, load_cortex_config
from cortex.errors import (
    CortexError,
    FilterError,
    PlaybookDefinitionError,
    PlaybookError,
    ResourceNameError,
)
from cortex.filter.literals import format_time
from cortex.playbooks.definitions import endpoint_refs, load_playbooks
from cortex.playbooks.endpoints import Endpoint
from cortex.playbooks.run_queries import FIELDS, run_id_of
from cortex.record_filter import parse_record_filter
from cortex.store import SqliteEventStore
from cortex.store.runs import RunRecord, RunStateError
from cortex.store_cli import config_arg, open_configured, open_writer
from mesh.command import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ErrorExit, command_parser, run_cli

__all__ = ["add_commands", "main", "run_document"]

PROG: Final = "qsc-cortex"
ERRORS: Final = (
    ErrorExit((PlaybookDefinitionError, FilterError, ResourceNameError), EXIT_USAGE),
    ErrorExit((CortexError,), EXIT_FAILURE),
)


def add_commands(groups: Any) -> None:
    group = groups.add_parser(
        "playbooks", help="playbooks: check, runs, dead letters, replay, endpoints"
    )
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(title="playbooks commands", metavar="COMMAND")
    check = commands.add_parser("check", help="load the playbook files, endpoints and secrets")
    config_arg(check)
    check.set_defaults(handler=_check)
    runs = commands.add_parser("runs", help="playbook runs, newest first")
    config_arg(runs)
    runs.add_argument("--filter", default="", help="a ListPlaybookRuns filter")
    runs.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    runs.add_argument("--json", action="store_true", help="JSON Lines, one run per line")
    runs.set_defaults(handler=_runs)
    dead = commands.add_parser("dead-letters", help="failed runs and their last error")
    config_arg(dead)
    dead.add_argument("--json", action="store_true", help="JSON Lines, one run per line")
    dead.set_defaults(handler=_dead)
    replay = commands.add_parser(
        "replay", help="send dead letters again (stop the Cortex first, or use the API)"
    )
    config_arg(replay)
    replay.add_argument("runs", nargs="*", metavar="RUN", help="run ids or playbookRuns/ names")
    replay.add_argument("--all", action="store_true", help="every dead letter")
    replay.set_defaults(handler=_replay)
    endpoints = commands.add_parser("endpoints", help="the configured endpoints and their state")
    config_arg(endpoints)
    endpoints.set_defaults(handler=_endpoints)
    enable = commands.add_parser(
        "enable-endpoint", help="enable an endpoint a 410 disabled (stop the Cortex first)"
    )
    config_arg(enable)
    enable.add_argument("name", help="the endpoint's name")
    enable.set_defaults(handler=_enable)


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(PROG, description="The QSC Cortex's playbooks.")
    add_commands(parser.add_subparsers(title="commands", metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`argv` from `playbooks` on (as `qsc-cortex` hands it over)."""
    return run_cli(
        PROG, build_parser(), list(sys.argv[1:] if argv is None else argv), errors=ERRORS
    )


def check_playbooks(config: CortexConfig) -> str:
    """Load what `[playbooks]` names, as the Cortex's start does; a summary line."""
    section = config.playbooks
    for e in section.endpoints:
        Endpoint.of(e)  # secrets readable, private, well formed
    refs = endpoint_refs(section.endpoints)
    playbooks = load_playbooks(
        section.files, endpoints=refs, guardians={g.id: g.role for g in config.guardians}
    )
    steps = sum(len(p.steps) for p in playbooks.playbooks)
    state = "on" if section.enabled and config.correlation.enabled else "off"
    return (
        f"{len(playbooks.playbooks)} playbook(s) with {steps} step(s) from "
        f"{len(section.files)} file(s), {len(section.endpoints)} endpoint(s); playbooks {state}"
    )


def _check(args: argparse.Namespace) -> int:
    print(f"{PROG}: playbooks OK: {check_playbooks(load_cortex_config(args.config))}")
    return EXIT_OK


def _time(ns: int | None) -> str | None:
    return format_time(ns) if ns else None


def run_document(run: RunRecord) -> dict[str, Any]:
    """A run as plain JSON (what `--json` prints): the API's fields, lower-case states."""
    return {
        "name": run.name,
        "playbook": run.playbook,
        "assessment": f"assessments/{run.assessment_id}",
        "assessment_revision": run.revision,
        "trigger": run.trigger,
        "state": run.state,
        "dead_letter": run.dead_letter,
        "error": run.error,
        "create_time": _time(run.create_ns),
        "start_time": _time(run.start_ns),
        "end_time": _time(run.end_ns),
        "decided_by": run.approved_by,
        "steps": [
            {
                "name": s.name,
                "target": s.target,
                "state": s.state,
                "attempts": s.attempts,
                "message": s.message,
                "webhook_id": s.webhook_id if s.spec.get("kind") != "guardian" else "",
                "next_attempt_time": _time(s.next_ns) if s.state == "pending" else None,
            }
            for s in run.steps
        ],
    }


def _line(run: RunRecord) -> str:
    last = next((s for s in reversed(run.steps) if s.attempts), None)
    tail = f" — {run.error or (last.message if last else '')}".rstrip(" —")
    return (
        f"{run.name}  {run.state:17s} {run.playbook}  assessments/{run.assessment_id} "
        f"r{run.revision}  {format_time(run.create_ns)}{tail}"
    )


def _print(runs: Sequence[RunRecord], as_json: bool, empty: str) -> None:
    if as_json:
        for r in runs:
            print(json.dumps(run_document(r), sort_keys=True))
    elif not runs:
        print(empty)
    else:
        for r in runs:
            print(_line(r))


def _listed(store: SqliteEventStore, flt_text: str, limit: int) -> list[RunRecord]:
    flt = parse_record_filter(flt_text, FIELDS)
    found = [r for r in store.runs.list_all(with_steps=True) if flt.matches(r)]
    found.sort(key=lambda r: (r.create_ns, r.run_id), reverse=True)
    return found[:limit]


def _runs(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise FilterError(1, "--limit must be at least 1", argument="limit")
    with open_configured(load_cortex_config(args.config), writer=False) as store:
        _print(_listed(store, args.filter, args.limit), args.json, "no playbook run matches")
    return EXIT_OK


def _dead(args: argparse.Namespace) -> int:
    with open_configured(load_cortex_config(args.config), writer=False) as store:
        _print(_listed(store, "dead_letter = true", 1_000_000), args.json, "no dead letter")
    return EXIT_OK


_REPLAY_HELD: Final = (
    "replay through its API (qsc.cortex.v1.CortexService/ReplayPlaybookRun), or stop the "
    "Cortex first"
)


def _replay(args: argparse.Namespace) -> int:
    if bool(args.runs) == bool(args.all):
        raise FilterError(1, "name runs to replay, or --all (not both)", argument="runs")
    config = load_cortex_config(args.config)
    with open_writer(config, _REPLAY_HELD) as store:
        if args.all:
            ids = [r.run_id for r in store.runs.list_all() if r.dead_letter]
        else:
            ids = [
                run_id_of(n if n.startswith("playbookRuns/") else f"playbookRuns/{n}")
                for n in args.runs
            ]
        now = time.time_ns()
        for run_id in ids:
            try:
                run = store.runs.replay(run_id, now)
            except KeyError:
                raise PlaybookError(f"playbookRuns/{run_id} does not exist") from None
            except RunStateError as exc:
                raise PlaybookError(str(exc)) from None
            print(f"{run.name}: replayed from its failed step (sent when the Cortex runs)")
    if not ids:
        print("no dead letter")
    return EXIT_OK


def _endpoints(args: argparse.Namespace) -> int:
    config = load_cortex_config(args.config)
    with open_configured(config, writer=False) as store:
        disabled = store.runs.disabled_endpoints()
    for e in config.playbooks.endpoints:
        state = "enabled"
        if e.name in disabled:
            since, reason = disabled[e.name]
            state = f"DISABLED since {format_time(since)}: {reason}"
        print(f"{e.name}  {e.url}  auth {e.auth}  {state}")
    for name in sorted(set(disabled) - {e.name for e in config.playbooks.endpoints}):
        print(f"{name}  (no longer configured)  DISABLED")
    return EXIT_OK


def _enable(args: argparse.Namespace) -> int:
    config = load_cortex_config(args.config)
    with open_writer(config, "stop the Cortex first") as store:
        if store.runs.enable_endpoint(args.name):
            print(f"endpoint {args.name} enabled")
        else:
            print(f"endpoint {args.name} was not disabled")
    return EXIT_OK
