"""The mesh end to end, as root: real `qsc-alpha` (eBPF), `qsc-beta` and `qsc-cortex run`
processes on 127.0.0.1 over mTLS, the guardians streaming sealed into the Cortex's store, and a
`soar` client reading it back through CortexService/ListEvents.

An intruder's actions on this host and a tampered file show up through ListEvents with their
rule and MITRE ids; a guardian killed with SIGKILL becomes the Cortex's own
`cortex.guardian_lost` event within the silence deadline, and after its restart the Cortex
resumes it where it stopped. The processes are started as `make demo` starts them
(`demo.harness`), from the demo's guardian configurations.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from crypto import pki
from crypto.keyring import KeyManager
from demo.components import ALPHA_CONFIG, BETA_CONFIG, _attack
from demo.harness import HOST, Proc, run_tool
from demo.site import ALPHA_ID, BETA_ID, CORTEX_CONFIG, CortexView
from demo.site import eventually as _eventually
from qsc.common.v1 import event_pb2
from qsc.cortex.v1 import guardian_pb2

pytestmark = [pytest.mark.root, pytest.mark.slow]

T = TypeVar("T")
SILENCE = 3.0  # the Cortex's silence deadline in this test, seconds
WAIT = 45.0


@dataclass
class Mesh:
    workdir: Path
    alpha: Proc
    beta: Proc
    cortex: Proc
    beta_etc: Path


def start_cortex(work: Path, alpha_port: int, beta_port: int) -> Proc:
    """A `qsc-cortex run` process in `work/cortex` following the two guardians, started."""
    c_base = work / "cortex"
    c_base.mkdir(mode=0o700)
    KeyManager.create(c_base / "keys", "cortex")
    text = CORTEX_CONFIG.format(
        pki=work / "pki",
        base=c_base,
        silence=SILENCE,
        alpha_id=ALPHA_ID,
        beta_id=BETA_ID,
        alpha_port=alpha_port,
        beta_port=beta_port,
    )
    (c_base / "cortex.toml").write_text(text)
    cortex = Proc("qsc-cortex", ["cortex", "run", "--config", str(c_base / "cortex.toml")], c_base)
    cortex.start()
    return cortex


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    work = tmp_path_factory.mktemp("mesh")
    ca = pki.init_ca(work / "pki", "mesh-e2e.test")
    for role in ("alpha", "beta", "cortex", "soar"):
        pki.write_leaf(pki.issue_leaf(ca, role, HOST), work / "pki", ca.cert)
    procs: list[Proc] = []
    try:
        a_base = work / "alpha"
        a_base.mkdir(mode=0o700)
        (a_base / "alpha.toml").write_text(ALPHA_CONFIG.format(pki=work / "pki", base=a_base))
        alpha = Proc("qsc-alpha", ["alpha", "--config", str(a_base / "alpha.toml")], a_base)
        alpha.start()
        procs.append(alpha)

        b_base = work / "beta"
        etc = b_base / "etc"
        etc.mkdir(parents=True, mode=0o700)
        (etc / "app.conf").write_text("listen = 443\nadmin = false\n")
        (etc / "sshd_like.conf").write_text("PermitRootLogin no\n")
        (b_base / "beta.toml").write_text(BETA_CONFIG.format(pki=work / "pki", base=b_base))
        KeyManager.create(b_base / "keys", "beta")
        run_tool("beta", "baseline", "init", "--config", str(b_base / "beta.toml"))
        beta = Proc("qsc-beta", ["beta", "run", "--config", str(b_base / "beta.toml")], b_base)
        beta.start()
        procs.append(beta)

        cortex = start_cortex(work, alpha.port, beta.port)
        procs.append(cortex)
        yield Mesh(work, alpha, beta, cortex, etc)
    finally:
        for p in reversed(procs):
            p.stop()


# --- reading the Cortex as a SOAR integration -----------------------------------------------


def cortex_call(mesh: Mesh, method: str, request: Any) -> Any:
    return CortexView(mesh.workdir, mesh.cortex.port).call(method, request)


def events(mesh: Mesh, filter_text: str) -> list[event_pb2.Event]:
    return CortexView(mesh.workdir, mesh.cortex.port).events(filter_text)


def eventually(what: str, probe: Callable[[], T | None], wait: float = WAIT) -> T:
    return _eventually(what, probe, wait)


def guardian(mesh: Mesh, guardian_id: str) -> guardian_pb2.Guardian:
    return CortexView(mesh.workdir, mesh.cortex.port).guardian(guardian_id)


def connected(mesh: Mesh, guardian_id: str) -> guardian_pb2.Guardian | None:
    return CortexView(mesh.workdir, mesh.cortex.port).connected(guardian_id)


# --- tests -------------------------------------------------------------------------------


def test_an_intrusion_and_a_tampered_file_reach_list_events(mesh: Mesh) -> None:
    for gid in (ALPHA_ID, BETA_ID):
        eventually(f"{gid} connected", lambda gid=gid: connected(mesh, gid))  # type: ignore[misc]
    _attack(mesh.workdir)
    me = os.getpid()

    def ours(rule: str) -> list[event_pb2.Event]:
        found = events(mesh, f'guardian = "{ALPHA_ID}" AND rule.id = "{rule}"')
        return [
            e for e in found if e.process.pid == me or any(p.pid == me for p in e.process.ancestry)
        ]

    shadow = eventually("the shadow read", lambda: ours("alpha.sensitive_file_read"))
    assert "T1003.008" in {t.id for t in shadow[0].rule.techniques}
    assert shadow[0].guardian.id == ALPHA_ID
    setuid = eventually("the setuid bit", lambda: ours("alpha.setuid_bit_set"))
    assert "T1548.001" in {t.id for t in setuid[0].rule.techniques}
    # The same events by MITRE technique, the way an analyst pivots.
    by_technique = events(mesh, f'mitre = "T1003*" AND guardian = "{ALPHA_ID}"')
    assert shadow[0].id in {e.id for e in by_technique}

    # Beta: a tampered file (mode opened up) through the same API, by the blind-indexed path.
    tampered = mesh.beta_etc / "sshd_like.conf"
    eventually(
        "Beta's FIM ready",
        lambda: events(mesh, f'guardian = "{BETA_ID}" AND kind = "sensor_health"'),
    )
    time.sleep(1.0)  # the watch is up once FIM reports healthy; give inotify a moment
    os.chmod(tampered, 0o666)
    found = eventually(
        "the tampered file",
        lambda: events(mesh, f'guardian = "{BETA_ID}" AND file.path = "{tampered}"'),
    )
    assert any(e.HasField("file_integrity") for e in found)


def test_a_killed_guardian_is_lost_then_resumed(mesh: Mesh) -> None:
    eventually("alpha connected", lambda: connected(mesh, ALPHA_ID))
    before = guardian(mesh, ALPHA_ID).committed_seq
    port = mesh.alpha.port
    killed_at = time.time_ns()
    mesh.alpha.kill()
    lost = eventually(
        "cortex.guardian_lost",
        lambda: [
            e
            for e in events(mesh, 'rule.id = "cortex.guardian_lost"')
            if e.time.ToNanoseconds() > killed_at
        ],
        wait=SILENCE + 20,
    )
    assert "T1562.001" in {t.id for t in lost[0].rule.techniques}
    assert ALPHA_ID in lost[0].summary
    # Back on the same address, with the same outbox: the Cortex resumes after what it stored.
    config = mesh.alpha.base / "alpha.toml"
    config.write_text(
        config.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
    )
    mesh.alpha.start()
    assert mesh.alpha.port == port
    back = eventually("alpha reconnected", lambda: connected(mesh, ALPHA_ID))
    assert back.committed_seq >= before
    stored = events(mesh, f'guardian = "{ALPHA_ID}"')
    seqs = [e.seq for e in stored]
    assert len(seqs) == len(set(seqs))  # stored exactly once by (guardian, seq)


def test_the_store_verifies_and_exports_beside_the_running_cortex(mesh: Mesh) -> None:
    config = str(mesh.cortex.base / "cortex.toml")
    out = mesh.cortex.base / "checkpoint.json"

    def store_cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "cortex", "store", *args, "--config", config]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)

    eventually(
        "a checkpoint signed by the running Cortex",
        lambda: not store_cli("checkpoint", "--out", str(out)).returncode,
    )
    verified = store_cli("verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "OK" in verified.stdout
    out.unlink()
    exported = store_cli("checkpoint", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    assert "the latest the running Cortex signed" in exported.stdout
    against = store_cli("verify", "--checkpoint", str(out))
    assert against.returncode == 0, against.stdout + against.stderr
