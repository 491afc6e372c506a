"""`exit.*`: a process_exit event."""

from __future__ import annotations

from operator import attrgetter

from alpha.rules.fields.extractors import int_at, seconds_at
from alpha.rules.fields.table import BOOL, INT, add_field

add_field(
    "exit.code", INT, "Exit status.", per_kind={"process_exit": int_at("process_exit.exit_code")}
)
add_field(
    "exit.signal",
    INT,
    "Signal that terminated the process, 0 for a normal exit.",
    per_kind={"process_exit": int_at("process_exit.signal")},
)
add_field(
    "exit.core_dumped",
    BOOL,
    "True when the process dumped core.",
    per_kind={"process_exit": attrgetter("process_exit.core_dumped")},
)
add_field(
    "exit.duration",
    INT,
    "How long the execution ran, in seconds.",
    per_kind={"process_exit": seconds_at("process_exit.duration")},
)
