"""`qsc tail`: follow a guardian's event stream (sealed by default), readable or as JSON lines.

Where it starts: ``--from SEQ`` (SEQ itself first) or ``--latest`` (only new events); else after
the cursor in ``--cursor-file`` when it holds one; else at the oldest retained event with
``--from-oldest``, at the latest without. The cursor file is saved after each batch and on exit
(``--count`` reached, ``--timeout``, Ctrl-C or SIGTERM), so the next run prints exactly the
events that follow. A cursor older than the guardian retains is an error, unless
``--from-oldest`` was given: then the tail jumps to the oldest retained event and says loudly
on stderr which range was lost. Gap events (the guardian's own loss reports) print like any
event, plus a warning on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import signal
import sys
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from crypto.errors import CryptoError
from mesh.channel import ChannelConfig
from mesh.config import TlsFiles
from mesh.errors import MeshError
from mesh.logs import configure_logging
from mesh.stream.cursor import FileCursorStore
from mesh.stream.subscriber import (
    GUARDIAN_ROLES,
    CursorOutOfRangeError,
    GuardianSubscriber,
    ReconnectPolicy,
    SubscriberConfig,
    SubscriptionFilter,
)
from qsc.common.v1 import classification_pb2, event_pb2

if TYPE_CHECKING:  # subscriptable only in the stubs; Any: the parser class is qsc's own
    SubParsers = argparse._SubParsersAction[Any]

_CATEGORIES: Final = {
    name.removeprefix("CATEGORY_").lower(): value
    for name, value in classification_pb2.Category.items()
    if value
}
_SEVERITIES: Final = {
    name.removeprefix("SEVERITY_").lower(): value
    for name, value in classification_pb2.Severity.items()
    if value
}
# At most this many detail fields on a readable line, each value cut at _MAX_VALUE characters.
_MAX_FIELDS: Final = 6
_MAX_VALUE: Final = 80

_EPILOG = """\
examples:
  qsc tail web-01:7443 --cert ops.crt --key ops.key --ca ca.crt --guardian-role alpha
  qsc tail 10.0.0.5:7443 --cert ops.crt --key ops.key --ca ca.crt --json \\
      --cursor-file ~/.qsc/web-01.cursor --min-severity high

Exit status: 0 when --count was reached, on Ctrl-C/SIGTERM, or at --timeout without --count;
1 when the guardian fails verification, refuses, tampers, or --count was not reached in time.
"""


def register(groups: SubParsers) -> None:
    parser = groups.add_parser(
        "tail",
        help="follow a guardian's event stream",
        description="Subscribe to a guardian's events (a sealed session by default) and print "
        "them, one line each, or as JSON lines.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", metavar="HOST:PORT", help="the guardian's address")
    parser.add_argument("--cert", type=Path, required=True, help="our certificate (PEM)")
    parser.add_argument("--key", type=Path, required=True, help="our private key (PEM, 0600)")
    parser.add_argument("--ca", type=Path, required=True, help="the deployment CA (PEM)")
    parser.add_argument(
        "--server-name", metavar="NAME", help="name to verify in the guardian's TLS certificate"
    )
    parser.add_argument(
        "--guardian-role",
        choices=GUARDIAN_ROLES,
        help="the role the guardian's certificate must have (default: alpha or beta)",
    )
    parser.add_argument(
        "--guardian-host", metavar="H", help="the host the guardian's certificate must name"
    )
    parser.add_argument(
        "--unsealed",
        action="store_true",
        help="no sealed session (debugging; only roles the guardian allows, e.g. operator)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per event")
    parser.add_argument(
        "--cursor-file", type=Path, metavar="F", help="resume from, and save the cursor to, F"
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--from", type=_seq, dest="from_seq", metavar="SEQ", help="start at SEQ")
    start.add_argument(
        "--from-oldest",
        action="store_true",
        help="without a cursor, start at the oldest retained event; with one that is too old, "
        "jump there (saying which events were lost)",
    )
    start.add_argument("--latest", action="store_true", help="only events appended from now on")
    parser.add_argument(
        "--filter-category",
        type=_choice(_CATEGORIES, "category"),
        action="append",
        default=[],
        metavar="CAT",
        help="only this category (repeatable): " + ", ".join(_CATEGORIES),
    )
    parser.add_argument(
        "--min-severity",
        type=_choice(_SEVERITIES, "severity"),
        metavar="SEV",
        help="only at least this severe: " + ", ".join(_SEVERITIES),
    )
    parser.add_argument("--count", type=_positive_int, metavar="N", help="exit after N events")
    parser.add_argument("--timeout", type=_positive_float, metavar="S", help="exit after S seconds")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log connections on stderr, not only trouble"
    )
    parser.set_defaults(handler=_tail)


# --- argument types -----------------------------------------------------------------------------


def _seq(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a sequence number") from None
    if not 1 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"{value} is out of range (1..2**64-1)")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of seconds")
    return value


def _choice(table: Mapping[str, int], what: str) -> Callable[[str], int]:
    def convert(text: str) -> int:
        value = table.get(text.lower())
        if value is None:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; one of: {', '.join(table)}")
        return value

    convert.__name__ = what
    return convert


# --- output -------------------------------------------------------------------------------------


def _time(ts: Any) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    when = dt.datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.nanos // 1_000_000:03d}Z"


def _enum_name(field: FieldDescriptor, value: int) -> str:
    enum = field.enum_type
    assert enum is not None
    number = enum.values_by_number.get(value)
    if number is None:
        return str(value)
    # SEVERITY_HIGH -> high: drop the prefix every value of the enum shares.
    prefix = "_".join(enum.values[0].name.split("_")[:-1]) + "_" if enum.values else ""
    return number.name.removeprefix(prefix).lower() if prefix != "_" else number.name.lower()


def _short(text: str) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def _value(field: FieldDescriptor, value: Any) -> str | None:
    """A detail field's value for a readable line; None to leave it out."""
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _enum_name(field, value)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        name = field.message_type.full_name if field.message_type else ""
        if name == "google.protobuf.Timestamp":
            return _time(value)
        if name == "google.protobuf.Duration":
            return f"{value.ToTimedelta().total_seconds():g}s"
        if name == "qsc.common.v1.Endpoint":
            return f"{value.address}:{value.port}" if value.port else str(value.address)
        return None  # nested messages are flattened by the caller
    if field.type == FieldDescriptor.TYPE_BYTES:
        return f"<{len(value)} bytes>"
    if isinstance(value, bool):
        return "true" if value else None
    if isinstance(value, str):
        return _quote(_short(value))
    return str(value)


def _quote(text: str) -> str:
    return f'"{text}"' if (not text or any(c in text for c in ' "=')) else text


def _fields(message: Message, prefix: str = "", depth: int = 0) -> list[str]:
    out: list[str] = []
    for field, value in message.ListFields():
        name = prefix + field.name
        if field.is_repeated:
            items = [_value(field, v) for v in value]
            shown = [i for i in items if i is not None]
            if shown:
                out.append(f"{name}={_short(','.join(shown))}")
            continue
        text = _value(field, value)
        if text is not None:
            out.append(f"{name}={text}")
        elif field.type == FieldDescriptor.TYPE_MESSAGE and depth < 1:
            out.extend(_fields(value, f"{name}.", depth + 1))
    return out


def format_event(event: event_pb2.Event) -> str:
    """One readable line: seq, time, severity, category, rule, process, detail kind and fields."""
    fields = event_pb2.Event.DESCRIPTOR.fields_by_name
    severity = _enum_name(fields["severity"], event.severity)
    category = _enum_name(fields["category"], event.category)
    rule = event.rule.id or event.rule.name or "-"
    proc = f"{event.process.comm or '?'}[{event.process.pid}]" if event.HasField("process") else "-"
    kind = event.WhichOneof("detail")
    parts = [
        f"{event.seq:>8}",
        _time(event.time),
        f"{severity.upper():<8}",
        f"{category:<14}",
        rule,
        proc,
        kind or "-",
    ]
    if kind is not None:
        detail = getattr(event, kind)
        parts += _fields(detail)[:_MAX_FIELDS]
    if event.summary:
        parts.append(f"-- {_short(event.summary)}")
    return " ".join(parts)


def format_json(event: event_pb2.Event) -> str:
    """The protobuf JSON mapping of the event, on one line."""
    return json_format.MessageToJson(event, indent=None, sort_keys=False)


# --- running ------------------------------------------------------------------------------------


@dataclasses.dataclass
class _State:
    printed: int = 0
    subscriber: GuardianSubscriber | None = None


def _warn(message: str) -> None:
    print(f"qsc: warning: {message}", file=sys.stderr, flush=True)


def _config(args: argparse.Namespace, start_after: int, latest: bool) -> SubscriberConfig:
    channel = ChannelConfig(
        target=args.target,
        tls=TlsFiles(args.cert, args.key, args.ca),
        server_name_override=args.server_name,
    )
    # argparse gave the enums' numbers.
    categories: tuple[classification_pb2.Category.ValueType, ...] = tuple(args.filter_category)
    severity: classification_pb2.Severity.ValueType = (
        args.min_severity or classification_pb2.SEVERITY_UNSPECIFIED
    )
    return SubscriberConfig(
        channel=channel,
        expected_role=args.guardian_role,
        expected_host=args.guardian_host,
        sealed=not args.unsealed,
        filter=SubscriptionFilter(
            categories=categories,
            min_severity=severity,
        ),
        start_after_seq=start_after,
        start_at_latest=latest,
        # --from and --latest win over the cursor file (which is still saved); --from-oldest
        # only applies without a cursor, or when the cursor is too old.
        prefer_stored_cursor=not (args.from_seq or args.latest),
        reconnect=ReconnectPolicy(max_backoff=timedelta(seconds=5)),
    )


async def _follow(args: argparse.Namespace, state: _State, out: TextIO) -> None:
    store = FileCursorStore(args.cursor_file) if args.cursor_file else None
    if args.from_seq:
        start_after, latest = args.from_seq - 1, False
    elif args.from_oldest:
        start_after, latest = 0, False
    else:
        has_cursor = store is not None and await store.load() is not None
        start_after, latest = 0, not has_cursor
    config = _config(args, start_after, latest)
    write = format_json if args.json else format_event
    while True:
        sub = GuardianSubscriber(config, cursor_store=store)
        state.subscriber = sub
        try:
            async with contextlib.aclosing(sub.events()) as events:
                async for event in events:
                    out.write(write(event) + "\n")
                    out.flush()
                    if event.WhichOneof("detail") == "gap":
                        gap = event.gap
                        _warn(
                            f"the guardian reports {gap.count} lost events, seq {gap.first_seq} to "
                            f"{gap.last_seq} (reported by event {event.seq})"
                        )
                    state.printed += 1
                    if args.count is not None and state.printed >= args.count:
                        return
        except CursorOutOfRangeError as exc:
            if exc.ahead or not args.from_oldest or exc.oldest_available_seq is None:
                raise
            _warn(
                f"LOST EVENTS: {exc.lost_count} events, seq {exc.lost_first} to "
                f"{exc.lost_last}, are no longer retained by the guardian; continuing at seq "
                f"{exc.oldest_available_seq}"
            )
            config = dataclasses.replace(
                config,
                start_after_seq=exc.oldest_available_seq - 1,
                start_at_latest=False,
                prefer_stored_cursor=False,
            )


async def _run(args: argparse.Namespace, state: _State) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    follow = asyncio.create_task(_follow(args, state, sys.stdout))
    stopped = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait(
            {follow, stopped}, timeout=args.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if follow in done:
            follow.result()  # raises the subscriber's error, if any
            return 0
        follow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follow
        if stopped in done or args.count is None:
            return 0
        print(
            f"qsc: error: timed out after {args.timeout:g}s with {state.printed} of "
            f"{args.count} events",
            file=sys.stderr,
        )
        return 1
    finally:
        stopped.cancel()
        if state.subscriber is not None:
            # The cursor covers exactly what was printed: the next run starts after it.
            await state.subscriber.commit()
            await state.subscriber.close()


def _tail(args: argparse.Namespace) -> int:
    configure_logging("info" if args.verbose else "warning")
    state = _State()
    try:
        return asyncio.run(_run(args, state))
    except (MeshError, CryptoError) as exc:
        print(f"qsc: error: {exc}", file=sys.stderr)
        return 1
