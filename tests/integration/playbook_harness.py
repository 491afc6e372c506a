"""What the playbook integration tests share: secrets, playbook files, endpoint tables, the
Cortex configured to deliver, and reading runs back over the API."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cortex.config import CortexConfig, PlaybooksSection
from mesh.config import config_from_dict
from qsc.cortex.v1 import cortex_service_pb2 as pb
from qsc.cortex.v1 import playbook_run_pb2

FAST_RETRIES = ["100ms", "200ms", "300ms", "400ms"]  # the schedule, shortened for tests


def secret_file(directory: Path, name: str) -> tuple[Path, str]:
    """A Standard Webhooks secret (`whsec_` + 32 random bytes) in a 0600 file."""
    directory.mkdir(parents=True, exist_ok=True)
    value = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return path, value


def token_file(directory: Path, name: str, token: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return path


def playbook_file(directory: Path, text: str, name: str = "playbooks.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def with_playbooks(
    config: CortexConfig,
    endpoints: Sequence[dict[str, Any]],
    files: Sequence[Path],
    **settings: Any,
) -> CortexConfig:
    table: dict[str, Any] = {
        "files": [str(f) for f in files],
        "endpoints": list(endpoints),
        "retry_delays": FAST_RETRIES,
        "jitter": 0.0,
        "poll_interval": "100ms",
        **settings,
    }
    return dataclasses.replace(config, playbooks=config_from_dict(PlaybooksSection, table))


async def runs(api: Any, flt: str = "") -> list[playbook_run_pb2.PlaybookRun]:
    response = await api.ListPlaybookRuns(pb.ListPlaybookRunsRequest(filter=flt, page_size=1000))
    return list(response.playbook_runs)


async def wait_runs(
    api: Any,
    done: Callable[[list[playbook_run_pb2.PlaybookRun]], bool],
    *,
    flt: str = "",
    timeout: float = 20.0,
) -> list[playbook_run_pb2.PlaybookRun]:
    """Poll ListPlaybookRuns until `done` holds of the runs (AssertionError with them if not)."""
    found: list[playbook_run_pb2.PlaybookRun] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                found = await runs(api, flt)
                if done(found):
                    return found
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"runs never got there: {found}") from None


def settled(n: int) -> Callable[[list[playbook_run_pb2.PlaybookRun]], bool]:
    """At least `n` runs, every one finished (succeeded, failed or cancelled)."""
    ended = {
        playbook_run_pb2.RUN_STATE_SUCCEEDED,
        playbook_run_pb2.RUN_STATE_FAILED,
        playbook_run_pb2.RUN_STATE_CANCELLED,
    }
    return lambda rs: len(rs) >= n and all(r.state in ended for r in rs)
