"""A guardian step end to end: an assessment triggers Beta to verify a backup and the result
lands in the run.

The Beta is the real `qsc-beta` process `test_beta_e2e` builds (its `world`: certificates from
`qsc pki`, signed manifests of real backup sets on tmp files); the Cortex follows it as a
`[[guardians]]` entry of role beta, and also follows an in-process Alpha-like guardian node
(`web-01`, certificate from the same CA) that reports a credential-stuffing attack. The Cortex
raises the assessment; its playbook asks Beta `verify_backup` through `cortex.guardian_client`,
and the run is read back over the Cortex API (mTLS, as a SOAR).

- a clean set: the run SUCCEEDED, the step's message is the verification with its file and
  byte counts; an unknown set name: the run FAILED at once (a dead letter, one attempt) with
  Beta's NOT_FOUND;
- a bit flipped in a backup file: the step still SUCCEEDED (Beta did verify) and its message
  says FAILED with the failure count;
- Beta down (SIGTERM) when the assessment arrives: the step is retried, and succeeds once Beta
  runs again on the same port.

Needs root (Beta changes file owners), as test_beta_e2e.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cortex.app import Cortex
from cortex.config import GuardianSection
from crypto.keyring import KeyManager
from crypto.pki import issue_leaf, load_ca, write_leaf
from mesh.channel import ChannelConfig, open_channel
from qsc.cortex.v1 import cortex_service_pb2_grpc as pb_grpc
from qsc.cortex.v1 import playbook_run_pb2 as rpb
from tests.integration import test_beta_e2e as e2e
from tests.integration.playbook_harness import playbook_file, settled, wait_runs, with_playbooks
from tests.integration.test_beta_e2e import BetaProcess, World
from tests.integration.test_cortex_assessment_api import RULE, client_leaf
from tests.integration.test_cortex_ingest import HOST, Node, cortex_config
from tests.integration.test_cortex_subscribe import attack

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (Beta chowns files)")

WEB_ROLES = {"web-01": "alpha"}  # the attacked host
BETA_ID = f"beta-{HOST}"  # the e2e Beta's own [guardian] id: <role>-<host>
# The "clean" set of the e2e world: a.dump (256 * 64 bytes) and sub/b.dump (5000 bytes).
CLEAN_FILES, CLEAN_BYTES = 2, 256 * 64 + 5000
PASSED = f"backup set clean passed: {CLEAN_FILES}/{CLEAN_FILES} files, {CLEAN_BYTES} bytes checked"

# test_beta_e2e's world, served to this module (its own instance: this module may damage it).
world = e2e.world


def verify(pid: str, backup_set: str, *, whole_set: bool = True) -> str:
    return f"""
- playbook: Check the backups of {backup_set}
  id: {pid}
  trigger:
    filter: 'rule = "{RULE}"'
  steps:
    - guardian: {BETA_ID}
      action: verify_backup
      backup_set: {backup_set}
      whole_set: {"true" if whole_set else "false"}
"""


class Web(Node):
    """The Alpha-like guardian that reports the attack, in the e2e world's trust domain."""

    trust_domain = "e2e.test"
    roles = WEB_ROLES


class Beta:
    """The qsc-beta process; after the first start its config listens on the port it got, so a
    restart comes back where the Cortex's [[guardians]] entry dials."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.proc = BetaProcess(world)
        self.port = self.proc.port
        text = world.config.read_text()
        listen = f'listen = "{HOST}:0"'
        assert listen in text
        world.config.write_text(text.replace(listen, f'listen = "{HOST}:{self.port}"'))

    def stop(self) -> None:
        code, err = self.proc.terminate()
        assert code == 0, err

    def start(self) -> None:
        self.proc = BetaProcess(self.world)
        assert self.proc.port == self.port

    def close(self) -> None:
        if self.proc.proc.poll() is None:
            self.proc.terminate()


@pytest.fixture(scope="module")
def beta(world: World) -> Iterator[Beta]:
    # The attacked host's certificate, from the world's CA (IP SAN: the Cortex dials 127.0.0.1).
    ca = load_ca(world.pki)
    write_leaf(issue_leaf(ca, "alpha", "web-01", ips=[HOST]), world.pki, ca.cert)
    b = Beta(world)
    try:
        yield b
    finally:
        b.close()


class Mesh:
    """The web node, a Cortex following it and Beta with `playbooks`, a SOAR client."""

    def __init__(self, world: World, beta: Beta, base: Path, playbooks: str, **kw: Any) -> None:
        self.world, self.beta, self.base, self.text, self.kw = world, beta, base, playbooks, kw

    async def __aenter__(self) -> Mesh:
        self.web = Web(self.world.pki, "web-01", self.base / "web-01")
        KeyManager.create(self.base / "keys", "cortex")
        await self.web.start()
        config = cortex_config(self.world.pki, self.base, [self.web])
        entry = GuardianSection(BETA_ID, f"{HOST}:{self.beta.port}", "beta", HOST)
        config = dataclasses.replace(config, guardians=(*config.guardians, entry))
        files = [playbook_file(self.base / "playbooks", self.text)]
        self.cortex = Cortex(with_playbooks(config, [], files, **self.kw))
        port = await self.cortex.start()
        soar = client_leaf(self.world.pki, "soar", "s1")
        # The e2e world's Cortex certificate names "c1" (no IP SAN).
        self._channel = open_channel(
            ChannelConfig(f"{HOST}:{port}", soar, server_name_override="c1")
        )
        self.api = pb_grpc.CortexServiceStub(await self._channel.__aenter__())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._channel.__aexit__(None, None, None)
        await self.cortex.stop()
        await self.web.stop()


def _guardian_step(run: rpb.PlaybookRun) -> rpb.PlaybookStep:
    (step,) = run.steps
    assert step.kind == "guardian"
    assert step.target == BETA_ID
    return step


def test_an_assessment_has_beta_verify_a_clean_set_and_an_unknown_set_is_a_dead_letter(
    world: World, beta: Beta, tmp_path: Path
) -> None:
    text = verify("check-clean", "clean") + verify("check-nope", "no-such-set", whole_set=False)

    async def body() -> None:
        async with Mesh(world, beta, tmp_path, text) as m:
            attack(m.web, "alice", "127.0.0.2")
            found = await wait_runs(m.api, settled(2))
            by = {r.playbook: r for r in found}
            assert set(by) == {"check-clean", "check-nope"}
            assert len({r.assessment for r in found}) == 1  # one assessment, both playbooks

            ok = by["check-clean"]
            assert ok.state == rpb.RUN_STATE_SUCCEEDED, ok
            assert not ok.dead_letter
            step = _guardian_step(ok)
            assert step.state == rpb.RUN_STATE_SUCCEEDED
            assert step.attempts == 1
            assert step.message == PASSED
            assert step.end_time.ToNanoseconds() >= step.start_time.ToNanoseconds() > 0

            # Beta refuses the name: not retried, the run is a dead letter with its answer.
            bad = by["check-nope"]
            assert bad.state == rpb.RUN_STATE_FAILED, bad
            assert bad.dead_letter
            step = _guardian_step(bad)
            assert step.state == rpb.RUN_STATE_FAILED
            assert step.attempts == 1
            assert step.message.startswith("NOT_FOUND: "), step.message
            assert "no-such-set" in step.message
            assert step.message in bad.error
            dead = await wait_runs(m.api, lambda rs: len(rs) == 1, flt="dead_letter = true")
            assert [d.name for d in dead] == [bad.name]

    asyncio.run(body())


def test_a_flipped_bit_is_verified_and_the_step_says_failed(
    world: World, beta: Beta, tmp_path: Path
) -> None:
    target = world.backups / "clean" / "a.dump"
    original = target.read_bytes()
    data = bytearray(original)
    data[4000] ^= 0x01
    target.write_bytes(bytes(data))
    try:

        async def body() -> None:
            async with Mesh(world, beta, tmp_path, verify("check-clean", "clean")) as m:
                attack(m.web, "bob", "127.0.0.3")
                (run,) = await wait_runs(m.api, settled(1))
                # Beta did what was asked (verified): the step succeeded, what it found is
                # the message.
                assert run.state == rpb.RUN_STATE_SUCCEEDED, run
                assert not run.dead_letter
                step = _guardian_step(run)
                assert step.state == rpb.RUN_STATE_SUCCEEDED
                assert step.attempts == 1
                assert step.message == PASSED.replace("passed", "FAILED (1 failure(s))")

        asyncio.run(body())
    finally:
        target.write_bytes(original)


def test_beta_down_the_step_is_retried_and_succeeds_once_beta_is_back(
    world: World, beta: Beta, tmp_path: Path
) -> None:
    async def body() -> None:
        # Each attempt may take 1 s; the schedule outlasts Beta's restart.
        kw = {"guardian_timeout": "1s", "retry_delays": ["300ms"] * 60}
        async with Mesh(world, beta, tmp_path, verify("check-clean", "clean"), **kw) as m:
            await asyncio.to_thread(beta.stop)
            try:
                attack(m.web, "carol", "127.0.0.4")
                retried = await wait_runs(
                    m.api,
                    lambda rs: len(rs) == 1 and rs[0].steps[0].attempts >= 2,
                    timeout=20,
                )
                (waiting,) = retried
                assert waiting.state == rpb.RUN_STATE_RUNNING, waiting
                # ActionRetryError: the guardian unavailable, not a refusal.
                assert waiting.steps[0].message.startswith("attempt "), waiting.steps[0].message
                assert "UNAVAILABLE" in waiting.steps[0].message
            finally:
                await asyncio.to_thread(beta.start)
            (run,) = await wait_runs(m.api, settled(1), timeout=20)
            assert run.state == rpb.RUN_STATE_SUCCEEDED, run
            step = _guardian_step(run)
            assert step.attempts > 1
            assert step.message == PASSED

    asyncio.run(body())
