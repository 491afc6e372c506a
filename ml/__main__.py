"""`qsc-ml`: train, serve, tune and inspect Isolation Forest models; generate synthetic telemetry.

    qsc-ml generate --out train.csv --hosts 8 --days 14 --seed 1
    qsc keys init --dir /var/lib/qsc/ml-keys --component ml
    qsc-ml train --input train.csv --out /var/lib/qsc/models --keyring /var/lib/qsc/ml-keys
    qsc-ml tune --input feedback.csv --models /var/lib/qsc/models --keyring ... --objective f1
    qsc-ml show --models /var/lib/qsc/models --keyring ...     # authenticate, print the card
    qsc-ml promote --models ... --keyring ... --version V --reason TEXT   # deliberate rollback
    qsc-ml serve --config /etc/qsc/ml.toml                      # also: qsc-ml --config PATH

`serve` is mesh.service's entry (SIGTERM drains, SIGHUP looks for a new model at once,
`--port-file`, `--check-config` loads config, keyring and model); the other commands run in
mesh.command's frame.
Errors print `qsc-ml: error: ...` without a traceback: exit 2 for bad arguments, configuration
or input files, 1 for anything else (a model that fails authentication, an unreadable keyring).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from crypto.keyring import KeyManager
from mesh.command import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    ErrorExit,
    command_parser,
    run_cli,
)
from mesh.config import parse_duration
from mesh.errors import InvalidArgumentError
from mesh.service import serve
from ml.config import COMPONENT, MlConfig, load_ml_config
from ml.data import JSONL_SUFFIXES, read_windows, write_windows
from ml.forest import TrainParams, parse_fraction_or_auto
from ml.store import card_path, load_card, load_model, newest
from ml.synthetic import ANOMALY_KINDS, DEFAULT_START, SyntheticConfig, generate
from ml.tune import Metrics, Objective

if TYPE_CHECKING:
    from ml.app import MlService

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

PROG = "qsc-ml"
# Bad input (a malformed data file, an impossible parameter) is the caller's to fix: usage.
_ERRORS: Final = (ErrorExit((InvalidArgumentError,), EXIT_USAGE),)


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


class _TreeProgress:
    """`fitting trees 120/200` on one rewritten line on a terminal, else a line per step."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        line = f"{PROG}: fitting trees {done}/{total} ({time.monotonic() - self.start:.1f}s)"
        if self.tty:
            end = "\n" if done == total else ""
            print(f"\r{line}", end=end, file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _max_samples(text: str) -> int | float | str:
    try:
        return parse_fraction_or_auto(text, integer=True)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected auto, a row count or a fraction"
        ) from None


def _contamination(text: str) -> float | str:
    try:
        value = parse_fraction_or_auto(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected auto or a fraction") from None
    return float(value) if not isinstance(value, str) else value


def _features(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _keys(path: Path) -> KeyManager:
    return KeyManager.open(path, COMPONENT)


def _cmd_train(args: argparse.Namespace) -> int:
    from ml.training import train_model  # sklearn and onnx load only for the commands using them

    params = TrainParams(
        n_estimators=args.n_estimators,
        max_samples=args.max_samples,
        contamination=args.contamination,
        max_features=args.max_features,
        seed=args.seed,
    )
    keys = _keys(args.keyring)
    say = (lambda _m: None) if args.quiet else _say
    say(f"reading {len(args.input)} file(s)")
    windows = read_windows(args.input, features=args.features)
    span = windows.time_range()
    say(
        f"{windows.rows} rows, {len(windows.features)} features"
        + (f", {span[0]:%Y-%m-%d %H:%M} to {span[1]:%Y-%m-%d %H:%M} UTC" if span else "")
    )
    stored, info, check = train_model(
        windows,
        params,
        args.out,
        keys,
        say=say,
        tree_progress=None if args.quiet else _TreeProgress(),
    )
    card = stored.card
    say(f"wrote {stored.model_path} and {stored.card_path}")
    print(
        json.dumps(
            {
                "version": card.version,
                "model": str(stored.model_path),
                "card": str(stored.card_path),
                "graph_nodes": info.graph_nodes,
                "trees": info.trees,
                "offset": card.offset,
                "threshold": card.threshold,
                "max_abs_diff_vs_sklearn": max(
                    check.max_abs_diff_score_samples, check.max_abs_diff_decision_function
                ),
            },
            indent=2,
        )
    )
    return EXIT_OK


def _cmd_tune(args: argparse.Namespace) -> int:
    from ml.training import tune_model

    keys = _keys(args.keyring)
    version = args.version or newest(args.models).version
    stored = load_model(args.models, version, keys)
    feedback = read_windows(args.input, features=stored.card.features, require_labels=True)
    objective: Objective = "target_fpr" if args.target_fpr is not None else "f1"
    result = tune_model(
        stored,
        feedback,
        args.out or args.models,
        keys,
        objective=objective,
        target_fpr=args.target_fpr,
    )

    def line(name: str, m: Metrics) -> str:
        d = m.to_json()
        return (
            f"{name}: threshold {d['threshold']:.6f}  precision {d['precision']:.3f}  recall "
            f"{d['recall']:.3f}  F1 {d['f1']:.3f}  FPR {d['fpr']:.4f}"
        )

    anomalous = 0 if feedback.labels is None else int(feedback.labels.sum())
    _say(f"{feedback.rows} labelled rows ({anomalous} anomalous)")
    _say(line("before", result.before))
    _say(line("after ", result.after))
    if not result.changed:
        _say(f"threshold unchanged; {version} stays")
    else:
        _say(f"wrote {result.stored.model_path} (parent {version})")
    print(
        json.dumps(
            {
                "version": result.stored.card.version,
                "parent_version": version if result.changed else None,
                "changed": result.changed,
                "objective": objective,
                "before": result.before.to_json(),
                "after": result.after.to_json(),
            },
            indent=2,
        )
    )
    return EXIT_OK


def _cmd_promote(args: argparse.Namespace) -> int:
    from ml.promote import promote_model

    stored = promote_model(args.models, args.version, _keys(args.keyring), reason=args.reason)
    card = stored.card
    _say(
        f"{card.version} is the newest model again (it replaces {card.promoted_from}); the "
        "service serves it at its next poll or on SIGHUP and logs the rollback at WARNING"
    )
    print(
        json.dumps(
            {
                "version": card.version,
                "promoted_from": card.promoted_from,
                "created": card.doc["created"],
                "reason": args.reason,
                "card": str(stored.card_path),
            },
            indent=2,
        )
    )
    return EXIT_OK


def _cmd_show(args: argparse.Namespace) -> int:
    keys = _keys(args.keyring)
    version = args.version or newest(args.models).version
    if args.card_only:
        card = load_card(card_path(args.models, version), keys)
        doc = dict(card.doc)
    else:
        doc = dict(load_model(args.models, version, keys).card.doc)
    doc.pop("auth", None)
    print(json.dumps(doc, indent=2))
    _say(f"{version}: card and model authenticated")
    return EXIT_OK


def _cmd_generate(args: argparse.Namespace) -> int:
    try:
        config = SyntheticConfig(
            hosts=args.hosts,
            days=args.days,
            window=args.window,
            start=args.start,
            anomaly_rate=args.anomaly_rate,
            kinds=args.kinds,
            seed=args.seed,
        )
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None
    windows = generate(config)
    write_windows(args.out, windows)
    labels = windows.labels
    anomalous = int(labels.sum()) if labels is not None else 0
    _say(
        f"wrote {windows.rows} windows ({config.hosts} hosts x {config.windows_per_host}), "
        f"{anomalous} anomalous, to {args.out}"
    )
    return EXIT_OK


def _build_service(config: MlConfig) -> MlService:
    from ml.app import MlService  # onnxruntime and the server, only for `serve`

    return MlService(config)


def check_config(config: MlConfig) -> str:
    """What --check-config verifies beyond parsing: the keyring opens, the newest model
    authenticates and loads. Raises the error that would stop a start."""
    model = _build_service(config).registry.require()
    return (
        f"{PROG}: configuration OK: model {model.version} ({len(model.features)} features, "
        f"{model.card.n_estimators} trees), listen {config.server.listen}"
    )


def _duration(text: str) -> dt.timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _time(text: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in ANOMALY_KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown kind(s) {', '.join(unknown)}; kinds: {', '.join(ANOMALY_KINDS)}"
        )
    return kinds


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        PROG, description="Isolation Forest anomaly scores for QSC: train, serve, tune, generate."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train a model version from telemetry windows")
    train.add_argument(
        "--input",
        type=Path,
        nargs="+",
        required=True,
        metavar="FILE",
        help="CSV or JSON lines windows (see ml.data)",
    )
    train.add_argument("--out", type=Path, required=True, metavar="DIR", help="model directory")
    train.add_argument(
        "--keyring",
        type=Path,
        required=True,
        metavar="DIR",
        help="the ML keyring (qsc keys init --dir DIR --component ml)",
    )
    train.add_argument(
        "--features",
        type=_features,
        metavar="A,B,...",
        help="features to train on (default: every schema feature in the input)",
    )
    train.add_argument("--n-estimators", type=int, default=200, metavar="N")
    train.add_argument("--max-samples", type=_max_samples, default="auto", metavar="auto|N|F")
    train.add_argument("--contamination", type=_contamination, default="auto", metavar="auto|F")
    train.add_argument("--max-features", type=_fraction, default=1.0, metavar="F")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--quiet", action="store_true", help="no progress on stderr")
    train.set_defaults(handler=_cmd_train)

    tune = sub.add_parser("tune", help="set the threshold from labelled feedback (new version)")
    tune.add_argument(
        "--input",
        type=Path,
        nargs="+",
        required=True,
        metavar="FILE",
        help="windows with a label column (1 = anomaly)",
    )
    tune.add_argument("--models", type=Path, required=True, metavar="DIR")
    tune.add_argument("--keyring", type=Path, required=True, metavar="DIR")
    tune.add_argument("--version", help="model to tune (default: the newest)")
    tune.add_argument("--out", type=Path, metavar="DIR", help="where to write (default --models)")
    goal = tune.add_mutually_exclusive_group()
    goal.add_argument(
        "--objective", choices=["f1"], default="f1", help="maximise F1 on the feedback (default)"
    )
    goal.add_argument(
        "--target-fpr",
        type=_fraction,
        metavar="F",
        help="most recall with a false-positive rate at most F",
    )
    tune.set_defaults(handler=_cmd_tune)

    show = sub.add_parser("show", help="authenticate a model and print its card")
    show.add_argument("--models", type=Path, required=True, metavar="DIR")
    show.add_argument("--keyring", type=Path, required=True, metavar="DIR")
    show.add_argument("--version", help="default: the newest")
    show.add_argument("--card-only", action="store_true", help="do not read the model file")
    show.set_defaults(handler=_cmd_show)

    promote = sub.add_parser(
        "promote",
        help="roll back on purpose: make an older version the newest (re-sealed, logged)",
        description="Authenticate VERSION and re-seal its card as the newest model, recording "
        "the version it replaces and REASON. The service refuses an older model otherwise "
        "(deleting the newest is refused as a rollback).",
    )
    promote.add_argument("--models", type=Path, required=True, metavar="DIR")
    promote.add_argument("--keyring", type=Path, required=True, metavar="DIR")
    promote.add_argument("--version", required=True, help="the version to serve")
    promote.add_argument(
        "--reason", required=True, help="why (kept in the card and logged when it serves)"
    )
    promote.set_defaults(handler=_cmd_promote)

    gen = sub.add_parser("generate", help="write seeded synthetic telemetry, labelled")
    gen.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FILE",
        help=f"CSV, or JSON lines for {', '.join(JSONL_SUFFIXES)}",
    )
    gen.add_argument("--hosts", type=int, default=8)
    gen.add_argument("--days", type=float, default=7.0)
    gen.add_argument("--window", type=_duration, default=dt.timedelta(minutes=5))
    gen.add_argument(
        "--start",
        type=_time,
        default=DEFAULT_START,
        help=f"RFC 3339, default {DEFAULT_START:%Y-%m-%dT%H:%MZ}",
    )
    gen.add_argument("--anomaly-rate", type=_fraction, default=0.02, metavar="F")
    gen.add_argument(
        "--kinds",
        type=_kinds,
        default=ANOMALY_KINDS,
        metavar="A,B,...",
        help=f"anomaly kinds (default all: {', '.join(ANOMALY_KINDS)})",
    )
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(handler=_cmd_generate)

    # `serve` has its own parser (mesh.service); listed here for the help.
    sub.add_parser("serve", help="run the AnomalyService (`qsc-ml serve --help`)", add_help=False)
    return parser


def serve_main(argv: Sequence[str]) -> int:
    """`qsc-ml serve --config PATH [--port-file PATH] [--check-config]`."""
    return serve(
        PROG,
        argv,
        component=COMPONENT,
        command="serve",
        load_config=load_ml_config,
        build=_build_service,
        description="Run the AnomalyService (Isolation Forest scores over mTLS).",
        check=check_config,
        check_help="load config, keyring and model; exit",
        reload=lambda service: service.registry.wake(),
        errors=_ERRORS,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # `qsc-ml --config PATH` (how the unit file runs it) means `qsc-ml serve --config PATH`.
    if args and args[0].startswith("--") and args[0] != "--help":
        args.insert(0, "serve")
    if args and args[0] == "serve":
        return serve_main(args[1:])
    return run_cli(PROG, build_parser(), args, errors=_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
