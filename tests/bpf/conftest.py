"""tests/bpf: real eBPF on the running kernel. These tests need root and a host prepared by
tools/setup-bpf.sh. They fail, never skip, when that is not the case: CI runs them as root, and a
silently skipped sensor test hides a broken sensor.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "tests/bpf need root and eBPF (run them as root after tools/setup-bpf.sh; CI does)",
            pytrace=False,
        )
