"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import mesh  # noqa: F401 (before any test imports grpc: mesh.grpc_env)


@pytest.fixture
def umask0() -> Iterator[None]:
    """A permissive umask: secret files must still come out 0600 because they are created so."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)
