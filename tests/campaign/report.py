"""The campaign's two knobs and its figures.

    n = scale(bounded=5, full=50)     # 5 under `make test`, 50 under `make campaign`
    figure("partition.reconnect_s", 0.42, "s", median=True)

`make campaign` sets QSC_CAMPAIGN=full and QSC_CAMPAIGN_REPORT=<file>; every figure is printed
(pytest -s shows it) and appended to that file as one JSON line, so the closing note and
`tools/campaign-report.py` read the same numbers the tests measured.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path


def is_full() -> bool:
    """True under `make campaign` (QSC_CAMPAIGN=full), False in `make test`'s bounded pass."""
    return os.environ.get("QSC_CAMPAIGN", "") == "full"


def scale(*, bounded: int, full: int) -> int:
    """How many rounds (kills, cuts, ...) this run does."""
    return full if is_full() else bounded


def figure(name: str, value: float | int | str, unit: str = "", **extra: object) -> None:
    """Print one measured figure and append it to the campaign's report file, if one is set."""
    record = {"name": name, "value": value, "unit": unit, **extra}
    print(f"[campaign] {name} = {value}{(' ' + unit) if unit else ''}", file=sys.stderr)
    out = os.environ.get("QSC_CAMPAIGN_REPORT")
    if out:
        with Path(out).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")


def spread(name: str, values: Sequence[float], unit: str = "s") -> None:
    """Median, p90 and max of repeated measurements as one figure."""
    if not values:
        figure(name, "none", unit)
        return
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    figure(
        name,
        round(statistics.median(ordered), 4),
        unit,
        p90=round(p90, 4),
        max=round(ordered[-1], 4),
        n=len(ordered),
    )
