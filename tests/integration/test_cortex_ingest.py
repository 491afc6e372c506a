"""The Cortex's ingest against real guardians: `mesh.guardian.Guardian` servers on 127.0.0.1:0
over mTLS with PKI certificates, sealed streams into a real `cortex.app.Cortex` (its SQLite
event store, keyring and mesh server on port 0).

Guardians run on the test's event loop beside the Cortex (grpc.aio serves and dials in one
loop). A guardian "killed" is stopped with no shutdown grace, so its streams are cut, and comes
back on the same port with the same outbox. Each wait observes what it waits for (the store's
rows and cursors, the tracker's view), with a deadline. The database is read beside the running
Cortex with a read-only SQLite connection: clear columns only, which is what these checks need.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cortex.app import SERVICE_NAME, Cortex
from cortex.config import CortexConfig
from cortex.guardian_view import ConnectionState
from cortex.ingest import GUARDIAN_GAP, GUARDIAN_LOST, SENSOR_DEGRADED
from crypto.keyring import KeyManager
from mesh.config import config_from_dict
from qsc.common.v1 import event_pb2, pipeline_details_pb2
from tests.integration.guardian_node import GuardianNode, issue_guardian_pki

TD = "cortex.test"
HOST = "127.0.0.1"
GUARDIANS = {"web-01": "alpha", "db-01": "beta"}
OWN = "cortex-c1"
DEADLINE = 30.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return issue_guardian_pki(tmp_path_factory.mktemp("pki"), TD, GUARDIANS, cortex_ips=[HOST])


class Node(GuardianNode):
    """One guardian of GUARDIANS with its outbox; start() may run it again on the same port."""

    trust_domain = TD
    roles = GUARDIANS


def cortex_config(pki: Path, base: Path, nodes: list[Node]) -> CortexConfig:
    table: dict[str, Any] = {
        "server": {
            "listen": f"{HOST}:0",
            "tls": {
                "cert": str(pki / "cortex-c1.crt"),
                "key": str(pki / "cortex-c1.key"),
                "ca": str(pki / "ca.crt"),
            },
            "shutdown_grace": "0s",
        },
        "store": {"directory": str(base / "store"), "synchronous": "NORMAL"},
        "keyring": {"directory": str(base / "keys")},
        "guardians": [
            {"id": n.id, "address": f"{HOST}:{n.port}", "role": n.role, "host": n.host}
            for n in nodes
        ],
        "ingest": {
            "silence_deadline": "1500ms",
            "max_batch_events": 50,
            "heartbeat_interval": "200ms",
            "idle_timeout": "1s",
            "reconnect_initial": "50ms",
            "reconnect_max": "300ms",
            "watch_interval": "100ms",
        },
    }
    return config_from_dict(CortexConfig, table)


def rows(base: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{base / 'store' / 'events.db'}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def stored_seqs(base: Path, guardian_id: str) -> list[int]:
    return [
        r[0]
        for r in rows(
            base, "SELECT seq FROM events WHERE guardian_id = ? ORDER BY seq", guardian_id
        )
    ]


def own_rules(base: Path) -> list[tuple[int, str]]:
    return [
        (r[0], r[1])
        for r in rows(
            base, "SELECT seq, rule_id FROM events WHERE guardian_id = ? ORDER BY seq", OWN
        )
    ]


async def until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def caught_up(base: Path, *nodes: Node) -> Callable[[], bool]:
    def check() -> bool:
        return all(stored_seqs(base, n.id)[-1:] == [n.last_seq] for n in nodes)

    return check


def assert_exactly_once(base: Path, node: Node) -> None:
    assert stored_seqs(base, node.id) == list(range(1, node.last_seq + 1))
    (count,) = rows(
        base,
        "SELECT count(*) FROM (SELECT guardian_id, seq FROM events GROUP BY guardian_id, seq "
        "HAVING count(*) > 1)",
    )
    assert count == (0,)
    (cursor,) = rows(base, "SELECT spiffe_id, seq FROM cursors WHERE guardian_id = ?", node.id)
    assert cursor == (node.spiffe_id, node.last_seq)


def test_guardians_stream_into_the_store_exactly_once_and_resume(pki: Path, tmp_path: Path) -> None:
    async def body() -> None:
        nodes = [Node(pki, h, tmp_path / h) for h in GUARDIANS]
        KeyManager.create(tmp_path / "keys", "cortex")
        cortex: Cortex | None = None
        try:
            for node in nodes:
                await node.start()
            nodes[0].emit(300)
            nodes[1].emit(120)
            config = cortex_config(pki, tmp_path, nodes)
            cortex = Cortex(config)
            assert await cortex.start() > 0
            # The read API beside health and reflection.
            assert [b.name for b in cortex.server.services] == [SERVICE_NAME]
            await until(caught_up(tmp_path, *nodes), "every event stored")
            for node in nodes:
                assert_exactly_once(tmp_path, node)
            directory = cortex.directory
            await until(
                lambda: all(v.state is ConnectionState.CONNECTED for v in directory.guardians()),
                "both connected",
            )
            views = {v.guardian_id: v for v in directory.guardians()}
            assert views[nodes[0].id].spiffe_id == f"spiffe://{TD}/alpha/web-01"

            # A gap event and a failed sensor become the Cortex's own findings, in the store.
            lost = event_pb2.Event(summary="lost")
            lost.gap.first_seq, lost.gap.last_seq, lost.gap.count = 5, 9, 5
            nodes[1].emit_one(lost)
            failed = event_pb2.Event(summary="sensor failed")
            failed.sensor_health.sensor = "inotify"
            failed.sensor_health.state = pipeline_details_pb2.SENSOR_STATE_FAILED
            nodes[1].emit_one(failed)
            await until(lambda: len(own_rules(tmp_path)) >= 2, "the gap and sensor findings")
            assert own_rules(tmp_path) == [(1, GUARDIAN_GAP), (2, SENSOR_DEGRADED)]
            db = {v.guardian_id: v for v in cortex.directory.guardians()}[nodes[1].id]
            assert (db.events_lost, db.degraded_sensors) == (5, ("inotify",))
            (mitre,) = rows(
                tmp_path,
                "SELECT count(*) FROM event_terms t JOIN events e ON e.rowid = t.event_rowid "
                "WHERE e.guardian_id = ? AND e.rule_id = ? AND t.term = ?",
                OWN,
                SENSOR_DEGRADED,
                b"T1562.001",
            )
            assert mitre == (1,)

            # Stop the Cortex, the guardians go on; a new Cortex resumes from the cursors.
            await cortex.stop()
            cortex = None
            nodes[0].emit(150)
            nodes[1].emit(40)
            cortex = Cortex(config)
            await cortex.start()
            await until(caught_up(tmp_path, *nodes), "the events after the restart")
            for node in nodes:
                assert_exactly_once(tmp_path, node)
        finally:
            if cortex is not None:
                await cortex.stop()
            for node in nodes:
                await node.stop()

    asyncio.run(body())


def test_a_killed_guardian_is_recorded_lost_and_resumes(pki: Path, tmp_path: Path) -> None:
    async def body() -> None:
        web = Node(pki, "web-01", tmp_path / "web-01")
        KeyManager.create(tmp_path / "keys", "cortex")
        cortex: Cortex | None = None
        try:
            await web.start()
            web.emit(100)
            config = cortex_config(pki, tmp_path, [web])
            cortex = Cortex(config)
            await cortex.start()
            await until(caught_up(tmp_path, web), "the first events")

            await web.stop()  # killed: streams cut, no more heartbeats
            await until(lambda: own_rules(tmp_path) == [(1, GUARDIAN_LOST)], "guardian_lost")
            (labels_host,) = rows(
                tmp_path, "SELECT host FROM events WHERE guardian_id = ? AND seq = 1", OWN
            )
            assert labels_host == ("c1",)
            view = cortex.directory.guardians()[0]
            assert view.state is ConnectionState.DISCONNECTED
            assert view.committed_seq == 100

            # Back on the same port with its outbox: ingest resumes after seq 100.
            await web.start()
            web.emit(50)
            await until(caught_up(tmp_path, web), "the events after the guardian's restart")
            assert_exactly_once(tmp_path, web)
            assert own_rules(tmp_path) == [(1, GUARDIAN_LOST)]

            # The Cortex's own numbering resumes from the store after a restart of the Cortex.
            await cortex.stop()
            cortex = None
            await web.stop()
            cortex = Cortex(config)
            await cortex.start()
            assert cortex.ingest.own_seq == 1
            await until(lambda: len(own_rules(tmp_path)) == 2, "the second guardian_lost")
            assert own_rules(tmp_path) == [(1, GUARDIAN_LOST), (2, GUARDIAN_LOST)]
            (cursor,) = rows(
                tmp_path, "SELECT spiffe_id, seq FROM cursors WHERE guardian_id = ?", OWN
            )
            assert cursor == (f"spiffe://{TD}/cortex/c1", 2)
        finally:
            if cortex is not None:
                await cortex.stop()
            await web.stop()

    asyncio.run(body())


def test_a_guardian_sending_another_id_is_refused_and_the_others_go_on(
    pki: Path, tmp_path: Path
) -> None:
    async def body() -> None:
        web, db = (Node(pki, h, tmp_path / h) for h in GUARDIANS)
        KeyManager.create(tmp_path / "keys", "cortex")
        cortex: Cortex | None = None
        try:
            await web.start()
            await db.start()
            web.emit(40)
            db.emit(25)
            config = cortex_config(pki, tmp_path, [web, db])
            wrong = dataclasses.replace(config.guardians[0], id="alpha-other")
            config = dataclasses.replace(config, guardians=(wrong, config.guardians[1]))
            cortex = Cortex(config)
            await cortex.start()
            directory = cortex.directory
            await until(caught_up(tmp_path, db), "db-01's events")
            await until(
                lambda: directory.guardians()[0].state is ConnectionState.REFUSED,
                "the guardian with the wrong id refused",
            )
            refused = directory.guardians()[0]
            assert "'alpha-web-01'" in refused.last_error
            assert stored_seqs(tmp_path, "alpha-other") == []
            assert stored_seqs(tmp_path, web.id) == []
            db.emit(5)  # the others go on after the fan-in was rebuilt without it
            await until(caught_up(tmp_path, db), "db-01's later events")
            assert_exactly_once(tmp_path, db)
        finally:
            if cortex is not None:
                await cortex.stop()
            await web.stop()
            await db.stop()

    asyncio.run(body())


def config_toml(pki: Path, base: Path, nodes: list[Node]) -> str:
    """The file `qsc-cortex run` reads, as an operator would write it."""
    text = f"""
[server]
listen = "{HOST}:0"
shutdown_grace = "1s"

[server.tls]
cert = "{pki / "cortex-c1.crt"}"
key = "{pki / "cortex-c1.key"}"
ca = "{pki / "ca.crt"}"

[store]
directory = "{base / "store"}"

[keyring]
directory = "{base / "keys"}"

[ingest]
heartbeat_interval = "200ms"
idle_timeout = "1s"
reconnect_initial = "50ms"
reconnect_max = "300ms"
"""
    for n in nodes:
        text += f"""
[[guardians]]
id = "{n.id}"
address = "{HOST}:{n.port}"
role = "{n.role}"
host = "{n.host}"
"""
    return text


def run_cortex(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QSC_")}
    return subprocess.Popen(
        [sys.executable, "-m", "cortex", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_cortex_process_ingests_reloads_on_sighup_and_drains_on_sigterm(
    pki: Path, tmp_path: Path
) -> None:
    async def body() -> None:
        web, db = (Node(pki, h, tmp_path / h) for h in GUARDIANS)
        KeyManager.create(tmp_path / "keys", "cortex")
        config = tmp_path / "cortex.toml"
        port_file = tmp_path / "port"
        proc: subprocess.Popen[str] | None = None
        try:
            await web.start()
            await db.start()
            web.emit(80)
            db.emit(30)
            config.write_text(config_toml(pki, tmp_path, [web]))
            check = run_cortex("run", "--config", str(config), "--check-config")
            out, err = await asyncio.to_thread(check.communicate, timeout=DEADLINE)
            assert check.returncode == 0, err
            assert out.startswith("qsc-cortex: configuration OK: identity spiffe://")
            assert "1 guardian(s)" in out

            proc = run_cortex("run", "--config", str(config), "--port-file", str(port_file))
            await until(lambda: port_file.exists() or proc.poll() is not None, "the port file")
            assert proc.poll() is None, proc.communicate()[1]
            assert int(port_file.read_text()) > 0
            await until(caught_up(tmp_path, web), "web-01's events stored")
            assert stored_seqs(tmp_path, db.id) == []

            # SIGHUP: the new guardian list is followed, the old guardian goes on.
            config.write_text(config_toml(pki, tmp_path, [web, db]))
            proc.send_signal(signal.SIGHUP)
            await until(caught_up(tmp_path, db), "db-01's events after the reload")
            web.emit(20)
            await until(caught_up(tmp_path, web), "web-01's later events")
            # A broken file on SIGHUP: refused, both guardians still followed.
            config.write_text(config_toml(pki, tmp_path, [web, db]) + "[[guardians]]\nid = 1\n")
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            web.emit(10)
            db.emit(10)
            await until(caught_up(tmp_path, web, db), "both guardians after a refused reload")
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.to_thread(proc.communicate, timeout=DEADLINE)
            assert proc.returncode == 0, err
            assert "Traceback" not in err
            assert "guardian list reloaded" in err
            assert "reload refused; the guardian list is unchanged" in err
            for node in (web, db):
                assert_exactly_once(tmp_path, node)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
            await web.stop()
            await db.stop()

    asyncio.run(body())


def test_the_cortex_process_refuses_a_bad_configuration(pki: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(config_toml(pki, tmp_path, []) + '\n[[guardians]]\nid = "x"\n')
    proc = run_cortex("run", "--config", str(bad))
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 2
    assert err.startswith("qsc-cortex: error: ")
    assert "guardians" in err
    assert "Traceback" not in err


def test_a_bad_correlation_rule_file_is_a_configuration_error(pki: Path, tmp_path: Path) -> None:
    KeyManager.create(tmp_path / "keys", "cortex")
    rules = tmp_path / "site.yaml"
    rules.write_text("- correlation: Broken\n  id: site.broken\n  type: sequence\n")
    config = tmp_path / "cortex.toml"
    config.write_text(config_toml(pki, tmp_path, []) + f'\n[correlation]\nrules = ["{rules}"]\n')
    proc = run_cortex("run", "--config", str(config), "--check-config")
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 2, err
    assert f"{rules}:1: " in err
    assert "lacks" in err
    assert "Traceback" not in err
    rules.write_text("")  # an empty file adds nothing: the defaults are not loaded either
    proc = run_cortex("run", "--config", str(config), "--check-config")
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert "0 correlation rule(s) enabled of 0" in out
