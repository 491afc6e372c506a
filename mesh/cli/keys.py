"""`qsc keys`: create a component's master key and keyring, show its status, rotate it."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crypto.kdf import PURPOSES, validate_name
from crypto.keyring import DEFAULT_ROTATION_PERIOD, KeyManager, KeyringStatus

if TYPE_CHECKING:  # subscriptable only in the stubs; Any: the parser class is qsc's own
    SubParsers = argparse._SubParsersAction[Any]

_DEFAULT_DAYS = DEFAULT_ROTATION_PERIOD.days

_EPILOG = """\
The directory holds master.key (32 random bytes, 0600), keyring.json (each epoch's root key,
wrapped under the master key) and keyring.lock. Back up master.key and keyring.json together:
without them, data sealed under their keys cannot be opened.
"""


def _component(text: str) -> str:
    try:
        return validate_name("component", text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _period(text: str) -> dt.timedelta:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if not 1 <= days <= 36500:
        raise argparse.ArgumentTypeError(f"{days} days is out of range (1..36500)")
    return dt.timedelta(days=days)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, required=True, help="the component's key directory")
    parser.add_argument(
        "--rotation-days",
        type=_period,
        default=DEFAULT_ROTATION_PERIOD,
        metavar="N",
        dest="rotation_period",
        help=f"rotation period in days (default {_DEFAULT_DAYS})",
    )


def register(groups: SubParsers) -> None:
    parser = groups.add_parser(
        "keys",
        help="component master keys, purpose keys and rotation",
        description="Manage a component's master key and its keyring of rotating epochs.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(group_parser=parser)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    init = sub.add_parser(
        "init",
        help="create a master key and keyring",
        description="Create master.key and a keyring with epoch 1 in --dir (made 0700). "
        "Refuses if either file exists.",
        epilog="example:\n  qsc keys init --dir /var/lib/qsc/keys --component beta",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(init)
    init.add_argument(
        "--component",
        type=_component,
        required=True,
        metavar="NAME",
        help="component the keys belong to (alpha, beta, cortex, ml, ...); bound into every key",
    )
    init.set_defaults(handler=_init)

    status = sub.add_parser(
        "status",
        help="show epochs, key ids, rotation schedule and file modes",
        description="Show the keyring: epochs, active epoch, ages, next rotation, key ids and "
        "file modes. Never prints key material.",
    )
    _add_common(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(handler=_status)

    rotate = sub.add_parser(
        "rotate",
        help="start a new epoch if rotation is due",
        description="Start a new epoch when the active one is older than the rotation period. "
        "The new epoch seals from now on; older epochs stay for decryption only.",
    )
    _add_common(rotate)
    rotate.add_argument("--force", action="store_true", help="rotate even if not yet due")
    rotate.set_defaults(handler=_rotate)


def _time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _days(delta: dt.timedelta) -> str:
    days = delta / dt.timedelta(days=1)
    return f"{days:.0f} day{'' if round(days) == 1 else 's'}"


def _mode(mode: int | None) -> str:
    if mode is None:
        return "missing"
    return f"{mode:04o}" + ("  UNSAFE: run chmod 600" if mode & 0o077 else "")


def _init(args: argparse.Namespace) -> int:
    km = KeyManager.create(args.dir, args.component, rotation_period=args.rotation_period)
    st = km.status()
    print(f"created keyring for component {st.component!r} in {st.directory}")
    print(f"  master key  {st.master_key_path} (mode {_mode(st.master_key_mode)})")
    print(f"  keyring     {st.keyring_path} (mode {_mode(st.keyring_mode)})")
    print(f"  epoch 1 active; rotation due {_time(st.next_rotation_due)}")
    return 0


def _status(args: argparse.Namespace) -> int:
    st = KeyManager.open(args.dir, rotation_period=args.rotation_period).status()
    if args.json:
        print(json.dumps(st.to_json(), indent=2))
    else:
        _print_status(st)
    return 0


def _print_status(st: KeyringStatus) -> None:
    due_in = st.next_rotation_due - st.as_of
    if st.rotation_due:
        schedule = f"OVERDUE since {_time(st.next_rotation_due)}: run `qsc keys rotate`"
    else:
        schedule = f"next due {_time(st.next_rotation_due)} (in {_days(due_in)})"
    print(f"component     {st.component}")
    print(f"master key    {st.master_key_path}  mode {_mode(st.master_key_mode)}")
    print(f"              id {st.master_key_id}")
    print(f"keyring       {st.keyring_path}  mode {_mode(st.keyring_mode)}")
    print(f"active epoch  {st.active_epoch}")
    print(f"rotation      every {_days(st.rotation_period)}; {schedule}")
    print("epochs")
    for epoch in st.epochs:
        print(
            f"  e{epoch.number:<4} {epoch.state.value:<13} created {_time(epoch.created)}"
            f"  age {_days(epoch.age)}"
        )
        for purpose, key_id in zip(PURPOSES, epoch.key_ids, strict=True):
            print(f"        {purpose:<12} {key_id}")


def _rotate(args: argparse.Namespace) -> int:
    km = KeyManager.open(args.dir, rotation_period=args.rotation_period)
    before = km.status()
    if km.rotate(force=args.force):
        after = km.status()
        old = "epoch 1" if before.active_epoch == 1 else f"epochs 1-{before.active_epoch}"
        print(f"rotated: epoch {after.active_epoch} is active; {old} kept for decryption only")
        print(f"next rotation due {_time(after.next_rotation_due)}")
    else:
        print(
            f"not rotated: epoch {before.active_epoch} is {_days(before.epochs[0].age)} old, "
            f"rotation due {_time(before.next_rotation_due)} (use --force to rotate now)"
        )
    return 0
