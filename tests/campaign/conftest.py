"""The hardening campaign (issue 16): faults, partitions, crashes, stuck peers and limits, each
against real component processes. `make test` runs it bounded; `make campaign` runs it in full
and writes the figures (tests/campaign/report.py)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/campaign/" in str(item.fspath):
            item.add_marker(pytest.mark.campaign)
