"""`qsc-cortex model show|reset`: the verdict model the Cortex learns from analysts' verdicts.

    qsc-cortex model show --config F [--json]
    qsc-cortex model reset --config F

- `show` opens the store read-only (beside a running Cortex) and rebuilds the model as the
  Cortex does when it starts (`cortex.correlation.stored_book`: every stored assessment
  revision read back, the verdicts since the latest reset taught to a `VerdictModel`). For each
  correlation rule the configuration loads and each of its steps it prints the seed likelihood
  ratio (the rule file's), the learned one (what scores the next hit), and the verdicts behind
  it: of the rule's true-positive, false-positive and benign verdicts, how many had the step
  present. A Cortex running now may have learned verdicts given since it last stored one; what
  is stored is what it restarts with.
- `reset` restores the seeds: it stores a marker record (`cortex.assessment_records
  .reset_event`, one of the Cortex's own events, chained and signed like the others) after
  which only new verdicts teach the model, at every later start. The verdicts themselves stay
  stored (and shown by the API). It needs the store's writer lock, which a running Cortex
  holds: stop the Cortex first.

Exit codes are mesh.command's: 0 done; 1 the store does not open, or is held by a running
Cortex (reset); 2 bad arguments or configuration, a rule file that does not load.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cortex import assessment_records as records
from cortex.assessments import VERDICTS, AssessmentBook
from cortex.config import COMPONENT, CorrelationSection, load_cortex_config
from cortex.correlate import RuleSet, load_files
from cortex.correlation import stored_book
from cortex.errors import CorrelationRuleError, CortexError
from cortex.filter import parse
from cortex.filter.literals import format_time
from cortex.ingest import OwnIdentity
from cortex.store import SqliteEventStore
from cortex.store_cli import config_arg, open_configured, open_writer
from mesh.command import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ErrorExit, command_parser, run_cli
from mesh.identity import load_tls_of_role
from mesh.ids import uuid7
from mesh.stream.cursor import StoredCursor
from qsc.common.v1 import identity_pb2

__all__ = ["add_commands", "main", "model_report", "reset_model"]

PROG: Final = "qsc-cortex"
ERRORS: Final = (
    ErrorExit((CorrelationRuleError,), EXIT_USAGE),  # a rule file is configuration
    ErrorExit((CortexError,), EXIT_FAILURE),
)


def add_commands(groups: Any) -> None:
    """`model` and its subcommands, under `groups` (the top-level subparsers)."""
    group = groups.add_parser("model", help="the verdict model: show, reset")
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(title="model commands", metavar="COMMAND")
    show = commands.add_parser("show", help="likelihood ratios per rule and step, and why")
    config_arg(show)
    show.add_argument("--json", action="store_true", help="print the model as JSON")
    show.set_defaults(handler=_show)
    reset = commands.add_parser(
        "reset", help="back to the rules' seed ratios (stop the Cortex first)"
    )
    config_arg(reset)
    reset.set_defaults(handler=_reset)


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(PROG, description="The QSC Cortex's verdict model.")
    add_commands(parser.add_subparsers(title="commands", metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`argv` from `model` on (as `qsc-cortex` hands it over)."""
    return run_cli(
        PROG, build_parser(), list(sys.argv[1:] if argv is None else argv), errors=ERRORS
    )


# --- show -----------------------------------------------------------------------------------


@dataclass
class _RuleVerdicts:
    verdicts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERDICTS, 0))
    present: dict[str, dict[str, int]] = field(default_factory=dict)  # step -> verdict -> n


def model_report(book: AssessmentBook, ruleset: RuleSet) -> dict[str, Any]:
    """What `show` prints, as plain data: per rule and step the seed and learned likelihood
    ratios of `book.model` and the verdict counts behind them."""
    by_rule: dict[str, _RuleVerdicts] = {}
    taught = 0
    for a in book.teaching():
        assert a.verdict is not None
        counts = by_rule.setdefault(a.rule_id, _RuleVerdicts())
        counts.verdicts[a.verdict.verdict] += 1
        for step in a.steps_present:
            present = counts.present.setdefault(step, dict.fromkeys(VERDICTS, 0))
            present[a.verdict.verdict] += 1
        taught += 1
    rules = []
    for rule in ruleset.rules:
        counts = by_rule.pop(rule.id, _RuleVerdicts())
        rules.append(
            {
                "rule": rule.id,
                "title": rule.title,
                "enabled": rule.enabled,
                "prior": rule.prior,
                "threshold": rule.threshold,
                "verdicts": counts.verdicts,
                "steps": [
                    {
                        "step": step.name,
                        "source": step.source,
                        "seed_lr": step.lr,
                        "lr": book.model.lr(rule.id, step),
                        "present": counts.present.get(step.name, dict.fromkeys(VERDICTS, 0)),
                    }
                    for step in rule.steps
                ],
            }
        )
    return {
        "verdicts_taught": taught,
        "model_reset_time": format_time(book.model_reset_ns) if book.model_reset_ns else None,
        "rules": rules,
        # Verdicts on rules the configuration no longer loads: kept, and learned again if the
        # rule comes back.
        "other_rules": {rule_id: c.verdicts for rule_id, c in sorted(by_rule.items())},
    }


def _show(args: argparse.Namespace) -> int:
    config = load_cortex_config(args.config)
    ruleset = load_files(list(config.correlation.rules) or None)
    with open_configured(config, writer=False) as store:
        book = stored_book(store, config.correlation)
        report = model_report(book, ruleset)
        db = store.config.db_path
    if args.json:
        print(json.dumps({"store": str(db), **report}, indent=2))
    else:
        print(_report_text(str(db), report, correlation=config.correlation.enabled))
    return EXIT_OK


def _ratio(counts: dict[str, int], present: dict[str, int], verdict: str) -> str:
    return f"{present[verdict]}/{counts[verdict]}"


def _report_text(db: str, report: dict[str, Any], *, correlation: bool) -> str:
    since = report["model_reset_time"]
    lines = [
        f"{db}: {report['verdicts_taught']} verdict(s) teach the model"
        + (f" (since the reset of {since})" if since else " (never reset)")
        + ("" if correlation else "; correlation is off in this configuration")
    ]
    for rule in report["rules"]:
        v = rule["verdicts"]
        lines.append("")
        lines.append(
            f"{rule['rule']}{'' if rule['enabled'] else ' (disabled)'}: prior {rule['prior']:g}, "
            f"threshold {rule['threshold']:g}; verdicts {v['true_positive']} true positive, "
            f"{v['false_positive']} false positive, {v['benign']} benign"
        )
        lines.append(
            f"  {'step':28s} {'seed LR':>9s} {'learned LR':>11s} {'TP':>7s} {'FP':>7s} "
            f"{'benign':>7s}   (verdicts with the step present / all)"
        )
        for s in rule["steps"]:
            p = s["present"]
            lines.append(
                f"  {s['step']:28s} {s['seed_lr']:9.4g} {s['lr']:11.4g} "
                + " ".join(f"{_ratio(v, p, verdict):>7s}" for verdict in VERDICTS)
            )
    for rule_id, v in report["other_rules"].items():
        lines.append(
            f"\n{rule_id} (not loaded): verdicts {v['true_positive']} true positive, "
            f"{v['false_positive']} false positive, {v['benign']} benign"
        )
    return "\n".join(lines)


# --- reset ----------------------------------------------------------------------------------


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, no LOGNAME
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()} (qsc-cortex model reset)"


def reset_model(
    store: SqliteEventStore,
    own: OwnIdentity,
    actor: str,
    section: CorrelationSection,
    now_ns: int | None = None,
) -> int:
    """Store the reset marker as the Cortex's next own event (numbered after its cursor, timed
    after every stored assessment record so it reads back in order). Returns how many stored
    verdicts taught the model until now."""
    where = parse(records.STORED).to_sql(store.blind)
    last = store.query(where, descending=True, limit=1).events
    after_ns = last[0].time.ToNanoseconds() + 1 if last else 0
    now = max(time.time_ns() if now_ns is None else now_ns, after_ns)
    before = sum(1 for _ in stored_book(store, section).teaching())
    cursor = store.cursor(own.guardian_id)
    seq = (0 if cursor is None else cursor.seq) + 1
    event = records.reset_event(actor)
    event.id = uuid7(now / 1e9)
    event.seq = seq
    event.guardian.CopyFrom(
        identity_pb2.GuardianRef(id=own.guardian_id, role=identity_pb2.ROLE_CORTEX, host=own.host)
    )
    event.time.FromNanoseconds(now)
    event.observed_time.FromNanoseconds(now)
    store.append_batch(own.guardian_id, [event], StoredCursor(own.spiffe_id, seq))
    return before


def _reset(args: argparse.Namespace) -> int:
    config = load_cortex_config(args.config)
    own = OwnIdentity.of(load_tls_of_role(config.server.tls, COMPONENT).identity)
    with open_writer(
        config, "stop the Cortex first (it reads the reset back when it starts)"
    ) as store:
        forgotten = reset_model(store, own, _actor(), config.correlation)
    print(
        f"verdict model reset: the likelihood ratios are the rules' seeds again; "
        f"{forgotten} stored verdict(s) no longer teach it, verdicts given from now on do "
        f"(the Cortex reads the reset when it starts)"
    )
    return EXIT_OK
