"""The Cortex's `n8n` step against a real n8n: header auth, the signature checked in a Code node.

The n8n `make test` installs (tools/n8n) runs with the workflow tests/n8n/verify_webhook.json
(tests/n8n_helpers.py). A real guardian's attack raises an assessment; the Cortex POSTs it to
the workflow's production URL with its header token and a Standard Webhooks signature. The
workflow accepts it and records the webhook-id, which the test reads back from n8n's own
database. An endpoint signing with another secret is rejected by the workflow (401), which the
Cortex records as a failed run, not retried.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from qsc.cortex.v1 import playbook_run_pb2 as rpb
from tests.integration.playbook_harness import secret_file, settled, token_file, wait_runs
from tests.integration.test_cortex_ingest import pki
from tests.integration.test_cortex_playbooks import Mesh
from tests.integration.test_cortex_subscribe import attack
from tests.n8n_helpers import N8n

__all__ = ["pki"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.n8n,
]

HEADER = ("X-QSC-Token", secrets.token_urlsafe(24))
PLAYBOOKS = """
- playbook: Into n8n
  id: to-n8n
  trigger:
    filter: 'rule = "{rule}"'
  steps:
    - n8n: n8n
- playbook: Into n8n, signed with a secret it does not know
  id: to-n8n-wrong
  trigger:
    filter: 'rule = "{rule}"'
  steps:
    - n8n: n8n-wrong
"""


@pytest.fixture(scope="module")
def n8n_secret(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return secret_file(tmp_path_factory.mktemp("secrets"), "n8n.whsec")


@pytest.fixture(scope="module")
def n8n(tmp_path_factory: pytest.TempPathFactory, n8n_secret: tuple[Path, str]) -> Iterator[N8n]:
    with N8n(tmp_path_factory.mktemp("n8n"), secret=n8n_secret[1], header_token=HEADER) as server:
        yield server


def test_n8n_verifies_the_cortex_signature_and_records_the_run(
    pki: Path, tmp_path: Path, n8n: N8n, n8n_secret: tuple[Path, str]
) -> None:
    token = token_file(tmp_path / "secrets", "n8n.token", HEADER[1])
    wrong, wrong_value = secret_file(tmp_path / "secrets", "wrong.whsec")
    assert wrong_value != n8n_secret[1]
    common = {"url": n8n.webhook_url, "header": HEADER[0], "token_file": str(token)}
    endpoints = [
        {"name": "n8n", "secret_files": [str(n8n_secret[0])], **common},
        {"name": "n8n-wrong", "secret_files": [str(wrong)], **common},
    ]

    async def body() -> None:
        async with Mesh(pki, tmp_path, endpoints, PLAYBOOKS) as m:
            attack(m.web, "alice", "127.0.0.2")
            found = await wait_runs(m.api, settled(2), timeout=60)
            by = {r.playbook: r for r in found}
            good, bad = by["to-n8n"], by["to-n8n-wrong"]
            assert good.state == rpb.RUN_STATE_SUCCEEDED, good
            assert good.steps[0].kind == "n8n"
            assert bad.state == rpb.RUN_STATE_FAILED, bad
            assert "401" in bad.error
            assert bad.steps[0].attempts == 1  # a refusal is not retried
            executions = await asyncio.to_thread(n8n.wait_executions, 2, 60.0)
            decided = {e.webhook_id: e.verdict for e in executions}
            assert decided.get(good.steps[0].webhook_id) == "accepted", executions
            assert decided.get(bad.steps[0].webhook_id) == "rejected", executions

    asyncio.run(body())
