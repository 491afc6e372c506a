"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture
def umask0() -> Iterator[None]:
    """A permissive umask: secret files must still come out 0600 because they are created so."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)
