"""The vault is verified before a heal needs it: a real `qsc-beta run` process, real vault files.

Tried as an attacker with write access to the vault would: a flipped byte in one copy, a
truncated copy, a corrupted index, each done while Beta is stopped; and a heal that fails.
Beta must say so at start (an event per bad copy, the heal sensor DEGRADED or FAILED),
repair what it can from live files that still match the baseline, and `--check-config` must
refuse a vault that does not verify.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from beta.vault.store import INDEX_FILE, OBJECTS_DIR, slot_of
from qsc.common.v1 import event_pb2, pipeline_details_pb2
from qsc.common.v1 import heal_details_pb2 as hpb
from qsc.common.v1 import integrity_details_pb2 as ipb
from qsc.guardian.v1 import guardian_service_pb2 as gpb
from qsc.guardian.v1 import guardian_service_pb2_grpc as gpb_grpc

if str(Path(__file__).resolve().parents[2]) not in sys.path:  # plain `pytest` from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.integration.test_beta_e2e import (  # the Beta deployment and its clients
    HOST,
    ROOT,
    TIMEOUT,
    BetaProcess,
    Collector,
    World,
    _integrity,
    _Responder,
)

HEALTHY = pipeline_details_pb2.SENSOR_STATE_HEALTHY
DEGRADED = pipeline_details_pb2.SENSOR_STATE_DEGRADED
FAILED = pipeline_details_pb2.SENSOR_STATE_FAILED
TAMPERED_COPY = ipb.FILE_CHANGE_VAULT_COPY_TAMPERED


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server = http.server.ThreadingHTTPServer((HOST, 0), _Responder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        w = World(tmp_path_factory.mktemp("vault"), f"http://{HOST}:{server.server_port}/")
        _Responder.world = w.cert_world
        text = w.config.read_text()
        # Verify every 2 s here (6 h by default), so a repaired vault is seen clean again.
        w.config.write_text(text.replace("[heal]\n", '[heal]\nvault_verify_interval = "2s"\n', 1))
        init = _beta("baseline", "init", "--config", str(w.config))
        assert init.returncode == 0, init.stderr
        yield w
    finally:
        server.shutdown()
        server.server_close()


def _beta(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "beta", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        check=False,
    )


def _check_config(world: World) -> subprocess.CompletedProcess[str]:
    return _beta("run", "--config", str(world.config), "--check-config")


def _heal_state(state: int) -> Callable[[event_pb2.Event], bool]:
    def match(e: event_pb2.Event) -> bool:
        return e.sensor_health.sensor == "heal" and e.sensor_health.state == state

    return match


def _heal_sensor(proc: BetaProcess) -> gpb.SensorStatus:
    reply = gpb_grpc.GuardianServiceStub(proc.channel).GetStatus(
        gpb.GetStatusRequest(), timeout=TIMEOUT
    )
    (heal,) = [s for s in reply.sensors if s.name == "heal"]
    return heal


def _object_of(world: World, path: Path) -> Path:
    objects = world.base / "vault" / OBJECTS_DIR
    found = sorted(objects.glob(f"{slot_of(str(path))}.*"), key=lambda p: int(p.suffix[1:]))
    assert found, f"no vault copy of {path}"
    return found[-1]


def _log_lines(stderr: str, msg: str) -> list[dict[str, object]]:
    out = []
    for line in stderr.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("message") == msg:
            out.append(doc)
    return out


def _run_until(
    world: World, after: int, *waits: tuple[str, Callable[[event_pb2.Event], bool]]
) -> tuple[BetaProcess, Collector, list[event_pb2.Event]]:
    proc = BetaProcess(world)
    events = Collector(world, proc.port, start_after=after)
    found = [events.wait_for(what, match) for what, match in waits]
    return proc, events, found


def test_a_corrupted_copy_is_reported_at_start_quarantined_and_recaptured(world: World) -> None:
    # A first run fills the vault from the live files (they match the baseline).
    proc = BetaProcess(world)
    events = Collector(world, proc.port)
    events.wait_for("vault synced", _heal_state(HEALTHY))
    last = events.last_seq
    events.close()
    assert proc.terminate()[0] == 0
    assert "copies verified" in _check_config(world).stdout

    # Flip one byte of the sudoers copy while Beta is down (its live file is untouched).
    sudoers = world.healed / "sudoers"
    obj = _object_of(world, sudoers)
    blob = bytearray(obj.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    obj.write_bytes(bytes(blob))
    check = _check_config(world)
    assert check.returncode == 1, check.stdout
    assert f"{sudoers} v" in check.stderr
    assert "does not open" in check.stderr

    proc, events, (bad, degraded) = _run_until(
        world,
        last,
        ("bad copy event", _integrity(sudoers, TAMPERED_COPY)),
        ("heal sensor degraded", _heal_state(DEGRADED)),
    )
    try:
        assert bad.file_integrity.detection == ipb.INTEGRITY_DETECTION_VAULT_VERIFY
        assert bad.rule.id == "beta.vault.copy_tampered"
        assert [t.id for t in bad.rule.techniques] == ["T1565.001"]
        assert "does not open" in bad.summary
        assert any("failed verification" in r for r in degraded.sensor_health.reasons)
        assert (obj.parent / (obj.name + ".tampered")).exists()  # kept aside, out of the index
        # The live file still matches the baseline: captured again, and the next verification
        # (every 2 s here) finds the vault clean.
        events.wait_for(
            "healthy again",
            lambda e: _heal_state(HEALTHY)(e) and e.seq > degraded.seq,
        )
        assert _heal_sensor(proc).state == HEALTHY
    finally:
        events.close()
        code, stderr = proc.terminate()
    assert code == 0
    (first, *_) = _log_lines(stderr, "vault verified")
    assert first["bad"] == 1
    assert first["level"] == "error"
    assert "copies verified" in _check_config(world).stdout


def test_a_failed_heal_degrades_the_heal_sensor(world: World) -> None:
    issue = world.healed / "issue"  # auto policy, its validator refuses every candidate
    proc = BetaProcess(world)
    events = Collector(world, proc.port)
    try:
        events.wait_for("vault synced", _heal_state(HEALTHY))
        after = events.last_seq
        issue.write_text("tampered banner\n")
        failed = events.wait_for(
            "failed heal",
            lambda e: (
                e.HasField("heal_action")
                and e.heal_action.path == str(issue)
                and e.heal_action.state == hpb.HEAL_STATE_FAILED
            ),
        )
        assert failed.seq > after
        degraded = events.wait_for(
            "degraded", lambda e: _heal_state(DEGRADED)(e) and e.seq > failed.seq - 5
        )
        assert any(f"heal of {issue} failed" in r for r in degraded.sensor_health.reasons)
        heal = _heal_sensor(proc)
        assert heal.state == DEGRADED
        assert any(f"heal of {issue} failed" in r for r in heal.reasons)
    finally:
        events.close()
        proc.terminate()
        issue.write_text("Debian GNU/Linux 12\n")  # as the baseline has it


def test_a_corrupted_index_fails_the_heal_sensor_and_check_config(world: World) -> None:
    index = world.base / "vault" / INDEX_FILE
    good = index.read_bytes()
    try:
        index.write_bytes(good[:-3] + bytes([good[-3] ^ 0x40]) + good[-2:])
        check = _check_config(world)
        assert check.returncode == 1
        assert "vault index failed verification (does not open)" in check.stderr
        proc, events, (bad, failed) = _run_until(
            world,
            0,
            ("index event", _integrity(index, TAMPERED_COPY)),
            ("heal sensor failed", _heal_state(FAILED)),
        )
        try:
            assert "vault index" in bad.summary
            assert "vault unusable" in " ".join(failed.sensor_health.reasons)
        finally:
            events.close()
            proc.terminate()
    finally:
        index.write_bytes(good)
    assert _check_config(world).returncode == 0
