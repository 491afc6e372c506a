"""The hardening campaign (issue 16): faults, partitions, crashes, stuck peers and limits, each
against real component processes. `make test` runs it bounded; `make campaign` runs it in full
and writes the figures (tests/campaign/report.py).

Tests marked `last_in_session` run after every other test of the session, whatever its order:
they read what the others left (the secrets scan)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "last_in_session: runs after every other test (it reads their artefacts)"
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/campaign/" in str(item.path):
            item.add_marker(pytest.mark.campaign)
    last = [item for item in items if item.get_closest_marker("last_in_session")]
    if last:
        items[:] = [item for item in items if item not in last] + last
