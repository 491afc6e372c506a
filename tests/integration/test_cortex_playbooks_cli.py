"""`qsc-cortex playbooks ...` against a real store: check, runs, dead letters, replay, endpoints.

A real Cortex (configured from a TOML file, as an operator runs it) delivers to a real HTTPS
receiver that refuses (422) and then is gone (410): two dead letters. The CLI lists them beside
the running Cortex, refuses to replay while the Cortex holds the store (pointing at the API),
replays them once it is stopped, and the next start delivers them with their webhook ids.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from cortex.app import Cortex
from cortex.config import load_cortex_config
from crypto.keyring import KeyManager
from demo.webhook_receiver import Reply, WebhookReceiver, receiver_leaf
from mesh.channel import ChannelConfig, open_channel
from qsc.cortex.v1 import cortex_service_pb2_grpc as pb_grpc
from qsc.cortex.v1 import playbook_run_pb2 as rpb
from tests.integration.playbook_harness import playbook_file, secret_file, settled, wait_runs
from tests.integration.test_cortex_assessment_api import RULE, client_leaf
from tests.integration.test_cortex_crash import CONFIG, GUARDIAN
from tests.integration.test_cortex_ingest import HOST, Node, pki
from tests.integration.test_cortex_subscribe import attack

__all__ = ["pki"]

PLAYBOOKS = """
- playbook: Tell the SOAR
  id: notify
  trigger:
    filter: 'rule = "{rule}"'
    on: [created, updated]
  steps:
    - webhook: soar
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortex", "playbooks", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dead_letters_are_listed_beside_the_cortex_and_replayed_when_it_is_stopped(
    pki: Path, tmp_path: Path
) -> None:
    cert, key, ca = receiver_leaf(tmp_path / "rx-pki")
    secret, value = secret_file(tmp_path / "secrets", "soar.whsec")
    files = playbook_file(tmp_path / "pb", PLAYBOOKS.format(rule=RULE))
    rx = WebhookReceiver(cert, key, secrets=[value], script=[Reply(422)])
    web = Node(pki, "web-01", tmp_path / "web-01")
    KeyManager.create(tmp_path / "keys", "cortex")
    config = tmp_path / "cortex.toml"

    def write_config() -> None:
        config.write_text(
            CONFIG.format(pki=pki, base=tmp_path)
            + GUARDIAN.format(id=web.id, port=web.port, role=web.role, host=web.host)
            + f"""
[playbooks]
files = ["{files}"]
retry_delays = ["100ms", "100ms"]
poll_interval = "100ms"
[[playbooks.endpoints]]
name = "soar"
url = "{rx.url()}"
secret_files = ["{secret}"]
ca_file = "{ca}"
"""
        )

    async def body() -> None:
        await web.start()
        write_config()
        check = cli("check", "--config", str(config))
        assert check.returncode == 0, check.stderr
        assert "1 playbook(s) with 1 step(s)" in check.stdout
        cortex = Cortex(load_cortex_config(config))
        port = await cortex.start()
        soar = client_leaf(pki, "soar", "s1")
        try:
            async with open_channel(ChannelConfig(f"{HOST}:{port}", soar)) as channel:
                api = pb_grpc.CortexServiceStub(channel)
                attack(web, "alice", "127.0.0.2")
                (refused,) = await wait_runs(api, settled(1))
                assert refused.state == rpb.RUN_STATE_FAILED
                rx.set_script([Reply(410)] * 10)
                attack(web, "alice", "127.0.0.2")  # more evidence: later revisions, 410
                runs = await wait_runs(api, settled(2))
                await asyncio.sleep(0.5)  # every revision's run made and settled
                runs = await wait_runs(api, settled(2))
                assert all(r.state == rpb.RUN_STATE_FAILED for r in runs)

            # Beside the running Cortex: read-only listing works, replay is refused.
            dead = cli("dead-letters", "--config", str(config), "--json")
            assert dead.returncode == 0, dead.stderr
            docs = [json.loads(line) for line in dead.stdout.splitlines()]
            assert {d["name"] for d in docs} == {r.name for r in runs}
            assert any("422" in d["error"] for d in docs)
            assert any("410" in d["error"] for d in docs)
            endpoints = cli("endpoints", "--config", str(config))
            assert "DISABLED" in endpoints.stdout
            assert "410" in endpoints.stdout
            held = cli("replay", "--config", str(config), "--all")
            assert held.returncode == 1
            assert "ReplayPlaybookRun" in held.stderr
            assert "Traceback" not in held.stderr
        finally:
            await cortex.stop()

        # Stopped: replay both (this re-enables the endpoint), then a start delivers them.
        bad = cli("replay", "--config", str(config), "playbookRuns/not-a-run")
        assert bad.returncode == 2, bad.stderr
        replayed = cli("replay", "--config", str(config), "--all")
        assert replayed.returncode == 0, replayed.stderr
        assert replayed.stdout.count("replayed") == len(runs)
        again = cli("replay", "--config", str(config), runs[0].name)
        assert again.returncode == 1
        assert "only a failed run is replayed" in again.stderr
        assert "DISABLED" not in cli("endpoints", "--config", str(config)).stdout
        rx.set_script([])
        cortex = Cortex(load_cortex_config(config))
        port = await cortex.start()
        try:
            async with open_channel(ChannelConfig(f"{HOST}:{port}", soar)) as channel:
                api = pb_grpc.CortexServiceStub(channel)
                done = await wait_runs(
                    api, lambda rs: all(r.state == rpb.RUN_STATE_SUCCEEDED for r in rs)
                )
                assert {s.webhook_id for r in done for s in r.steps} == set(rx.processed)
        finally:
            await cortex.stop()
            await web.stop()
        listed = cli("runs", "--config", str(config), "--filter", "state = SUCCEEDED")
        assert listed.returncode == 0
        assert listed.stdout.count("succeeded") == len(runs)
        wrong = cli("runs", "--config", str(config), "--filter", "state = SOMETIMES")
        assert wrong.returncode == 2
        assert "SOMETIMES" in wrong.stderr

    with rx:
        asyncio.run(body())


def test_check_names_the_file_and_line_of_a_bad_playbook(pki: Path, tmp_path: Path) -> None:
    bad = playbook_file(tmp_path / "pb", PLAYBOOKS.format(rule=RULE).replace("soar", "nowhere"))
    config = tmp_path / "cortex.toml"
    KeyManager.create(tmp_path / "keys", "cortex")
    config.write_text(CONFIG.format(pki=pki, base=tmp_path) + f'[playbooks]\nfiles = ["{bad}"]\n')
    out = cli("check", "--config", str(config))
    assert out.returncode == 2
    assert f"{bad}:8: endpoint 'nowhere' is not in the configuration" in out.stderr
    run = subprocess.run(
        [sys.executable, "-m", "cortex", "run", "--config", str(config), "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    assert f"{bad}:8:" in run.stderr


def test_sighup_reloads_the_playbook_files_and_a_bad_one_keeps_the_current(
    pki: Path, tmp_path: Path
) -> None:
    cert, key, ca = receiver_leaf(tmp_path / "rx-pki")
    secret, value = secret_file(tmp_path / "secrets", "soar.whsec")
    files = playbook_file(tmp_path / "pb", PLAYBOOKS.format(rule=RULE))
    web = Node(pki, "web-01", tmp_path / "web-01")
    KeyManager.create(tmp_path / "keys", "cortex")
    config = tmp_path / "cortex.toml"

    async def body(rx: WebhookReceiver) -> None:
        await web.start()
        config.write_text(
            CONFIG.format(pki=pki, base=tmp_path)
            + GUARDIAN.format(id=web.id, port=web.port, role=web.role, host=web.host)
            + f"""
[playbooks]
files = ["{files}"]
poll_interval = "100ms"
[[playbooks.endpoints]]
name = "soar"
url = "{rx.url()}"
secret_files = ["{secret}"]
ca_file = "{ca}"
"""
        )
        cortex = Cortex(load_cortex_config(config), config_path=config)
        port = await cortex.start()
        assert cortex.playbooks is not None
        try:
            files.write_text("- playbook: broken\n  id: Not An Id\n")
            cortex.reload()
            await asyncio.sleep(0.5)
            assert [p.id for p in cortex.playbooks.playbooks.playbooks] == ["notify"]
            files.write_text(PLAYBOOKS.format(rule=RULE).replace("id: notify", "id: renamed"))
            cortex.reload()
            await asyncio.sleep(0.5)
            assert [p.id for p in cortex.playbooks.playbooks.playbooks] == ["renamed"]
            soar = client_leaf(pki, "soar", "s1")
            async with open_channel(ChannelConfig(f"{HOST}:{port}", soar)) as channel:
                api = pb_grpc.CortexServiceStub(channel)
                attack(web, "bob", "127.0.0.3")
                (run,) = await wait_runs(api, settled(1))
                assert run.playbook == "renamed"
                assert run.state == rpb.RUN_STATE_SUCCEEDED
        finally:
            await cortex.stop()
            await web.stop()

    with WebhookReceiver(cert, key, secrets=[value]) as rx:
        asyncio.run(body(rx))
