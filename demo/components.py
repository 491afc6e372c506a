"""The component steps of `make demo`: each one starts a real process in the workspace, talks to
it over mutual TLS as `cortex` (a sealed event stream from the guardians, Score calls through
ml.client to the ML service), prints what came back and stops it."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from crypto.keyring import KeyManager
from demo.harness import HOST, Proc, channel_to, run_tool, step, watch
from ml.api import BatchScores, ScoreBatch, Verdict
from ml.client import AnomalyClient, AnomalyClientConfig
from ml.schema import FEATURES, SCHEMA_VERSION
from qsc.common.v1 import classification_pb2, event_pb2, pipeline_details_pb2
from qsc.common.v1 import heal_details_pb2 as hpb
from qsc.common.v1 import integrity_details_pb2 as ipb

ALPHA_CONFIG = """
[guardian]
role = "alpha"

[server]
listen = "127.0.0.1:0"
shutdown_grace = "2s"

[server.tls]
cert = "{pki}/alpha-127.0.0.1.crt"
key = "{pki}/alpha-127.0.0.1.key"
ca = "{pki}/ca.crt"

[outbox]
directory = "{base}/outbox"

[log]
format = "text"

[memscan]
# Scans triggered by exec and W+X requests only: a periodic round would report the whole host.
interval = "1h"
initial_delay = "1h"

[network]
enabled = false

[auth]
enabled = false
"""
# What the demo's intruder actions must raise (other activity on the host may add more).
EXPECTED_ALERTS = frozenset(
    {"alpha.sensitive_file_read", "alpha.setuid_bit_set", "alpha.memfd_exec"}
)


BETA_CONFIG = """
[server]
listen = "127.0.0.1:0"
shutdown_grace = "2s"

[server.tls]
cert = "{pki}/beta-127.0.0.1.crt"
key = "{pki}/beta-127.0.0.1.key"
ca = "{pki}/ca.crt"

[outbox]
directory = "{base}/outbox"

[log]
format = "text"

[keys]
directory = "{base}/keys"

[state]
directory = "{base}/state"

[fim]
baseline = "{base}/state/fim-baseline.qsc"

[[fim.paths]]
path = "{base}/etc"

[[fim.paths]]
path = "{base}/etc/app.conf"
heal = "auto"

[heal]
vault_directory = "{base}/vault"
"""
ML_CONFIG = """
[server]
listen = "127.0.0.1:0"
shutdown_grace = "2s"

[server.tls]
cert = "{pki}/ml-127.0.0.1.crt"
key = "{pki}/ml-127.0.0.1.key"
ca = "{pki}/ca.crt"

[model]
directory = "{base}/models"
keyring = "{base}/keys"

[log]
format = "text"
"""
# One window of a quiet host, and one exfiltrating 9 GB with a burst of failed logins and execs.
NORMAL_ROW = (20.0, 45.0, 2e7, 6e7, 1.0, 250.0, 1.5, 20.0, 10.0, 1.0, 0.0, 2.0)
ANOMALOUS_ROW = (99.0, 95.0, 9e9, 6e7, 400.0, 5000.0, 300.0, 400.0, 900.0, 30.0, 5.0, 60.0)


def _stop(proc: Proc) -> None:
    print(f"  {proc.name} stopped with exit code {proc.stop()}; its log: {proc.log}")


def _attack(workdir: Path) -> None:
    """Real actions an intruder takes, each one a default rule."""
    scratch = workdir / "intruder"
    scratch.mkdir()
    # A copy of cat is not a trusted reader of /etc/shadow.
    cat = scratch / "cat"
    shutil.copy("/bin/cat", cat)
    subprocess.run([str(cat), "/etc/shadow"], stdout=subprocess.DEVNULL, check=False)
    # A setuid bit on a fresh file.
    dropper = scratch / "dropper"
    dropper.write_bytes(b"#!/bin/sh\n")
    os.chmod(dropper, 0o755 | stat.S_ISUID)  # noqa: S103 - the point of the demo
    # Fileless execution: a program run from a memfd (alive a moment, so /proc shows its parent).
    code = (
        "import os; fd = os.memfd_create('x'); "
        "os.write(fd, open('/bin/sleep', 'rb').read()); "
        "os.execv(f'/proc/self/fd/{fd}', ['x', '1'])"
    )
    subprocess.run([sys.executable, "-c", code], check=False)


def alpha(workdir: Path) -> None:
    step("Alpha: eBPF intrusion detection, alerts over a sealed stream (cortex -> alpha)")
    if os.geteuid() != 0:
        print("  (not root: Alpha runs its degraded fallback sensor and says so)")
    base = workdir / "alpha"
    base.mkdir(mode=0o700)
    config = base / "alpha.toml"
    config.write_text(ALPHA_CONFIG.format(pki=workdir / "pki", base=base))
    proc = Proc("qsc-alpha", ["alpha", "--config", str(config)], base)
    proc.start()
    port = proc.port
    seen: list[event_pb2.Event] = []
    me = os.getpid()

    def take(event: event_pb2.Event) -> bool:
        # Only what the demo's own children did: the host may be busy with other work.
        if event.rule.id and (
            event.process.pid == me or any(p.pid == me for p in event.process.ancestry)
        ):
            seen.append(event)
        return {e.rule.id for e in seen} >= EXPECTED_ALERTS

    try:
        print(f"  qsc-alpha listening on {HOST}:{port}; performing three intruder actions")
        _attack(workdir)
        asyncio.run(watch(workdir, port, "alpha", take, wait=30))
        for event in seen:
            techniques = ",".join(t.id for t in event.rule.techniques)
            severity = classification_pb2.Severity.Name(event.severity).removeprefix("SEVERITY_")
            print(f"  seq {event.seq:<4} {severity:<8} {event.rule.id:<28} {techniques}")
            print(f"           {event.summary[:100]}")
    finally:
        _stop(proc)


def _names(names: list[str]) -> str:
    """FILE_CHANGE_CONTENT_CHANGED -> content_changed, METADATA_FIELD_MODE -> mode."""
    return ",".join(n.split("_", 2)[-1].lower() for n in names) or "-"


def beta(workdir: Path) -> None:
    step("Beta: file integrity and self-healing, events over a sealed stream (cortex -> beta)")
    base = workdir / "beta"
    etc = base / "etc"
    etc.mkdir(parents=True, mode=0o700)
    healable, other = etc / "app.conf", etc / "sshd_like.conf"
    healable.write_text("listen = 443\nadmin = false\n")
    other.write_text("PermitRootLogin no\n")
    os.chmod(other, 0o600)
    original = healable.read_bytes()
    config = base / "beta.toml"
    config.write_text(BETA_CONFIG.format(pki=workdir / "pki", base=base))
    KeyManager.create(base / "keys", "beta")
    run_tool("beta", "baseline", "init", "--config", str(config))
    print(f"  baseline of {etc.relative_to(workdir)}/ sealed; {healable.name} heals automatically")
    proc = Proc("qsc-beta", ["beta", "run", "--config", str(config)], base)
    proc.start()
    port = proc.port
    ready: set[str] = set()
    seen_other, healed = False, False

    def take(event: event_pb2.Event) -> bool:
        nonlocal seen_other, healed
        health = event.sensor_health
        if health.state == pipeline_details_pb2.SENSOR_STATE_HEALTHY and health.sensor in (
            "fim.inotify",
            "heal",
        ):
            ready.add(health.sensor)
            if ready == {"fim.inotify", "heal"}:
                print(f"  qsc-beta on {HOST}:{port}: FIM and vault ready; tampering both files")
                healable.write_text("listen = 443\nadmin = true\n")
                os.chmod(other, 0o666)  # noqa: S103 - the point of the demo
        elif event.HasField("file_integrity"):
            fi = event.file_integrity
            path = Path(fi.path).relative_to(workdir)
            fields = _names([ipb.MetadataField.Name(v) for v in fi.changed_metadata])
            change = _names([ipb.FileChange.Name(fi.change)])
            print(f"  seq {event.seq:<4} integrity {path}: {change}, fields {fields}")
            seen_other = seen_other or fi.path == str(other)
        elif event.HasField("heal_action"):
            ha = event.heal_action
            state = hpb.HealState.Name(ha.state).removeprefix("HEAL_STATE_")
            before, after = ha.before_blake3.hex()[:12], ha.after_blake3.hex()[:12]
            path = Path(ha.path).relative_to(workdir)
            print(f"  seq {event.seq:<4} heal      {path}: {state}, blake3 {before} -> {after}")
            healed = healed or ha.state in (hpb.HEAL_STATE_VERIFIED, hpb.HEAL_STATE_FAILED)
        return seen_other and healed

    try:
        asyncio.run(watch(workdir, port, "beta", take, wait=30))
        restored = healable.read_bytes() == original
        print(f"  on disk: {healable.name} has its original content again: {restored}")
    finally:
        _stop(proc)


async def _score(workdir: Path, port: int, batch: ScoreBatch) -> BatchScores:
    """One Score call through ml.client, as the Cortex makes it."""
    config = AnomalyClientConfig(channel_to(workdir, port), score_timeout=timedelta(seconds=10))
    async with AnomalyClient(config) as client:
        return await client.score(batch)


def train_ml(workdir: Path, base: Path) -> Path:
    """Synthetic history, a keyring and a signed 50-tree model in `base`; the service's config."""
    base.mkdir(mode=0o700)
    data = base / "train.csv"
    run_tool("ml", "generate", "--out", str(data), "--hosts", "3", "--days", "2", "--seed", "1")
    run_tool("mesh.cli", "keys", "init", "--dir", str(base / "keys"), "--component", "ml")
    started = time.monotonic()
    run_tool(
        "ml", "train", "--input", str(data), "--out", str(base / "models"),
        "--keyring", str(base / "keys"), "--n-estimators", "50", "--quiet",
    )  # fmt: skip
    rows = sum(1 for _ in data.open()) - 1
    took = time.monotonic() - started
    print(f"  ML: Isolation Forest of 50 trees trained on {rows} synthetic windows in {took:.1f}s")
    config = base / "ml.toml"
    config.write_text(ML_CONFIG.format(pki=workdir / "pki", base=base))
    return config


def ml(workdir: Path) -> None:
    step("ML: Isolation Forest anomaly scores over mTLS (cortex -> ml)")
    base = workdir / "ml"
    config = train_ml(workdir, base)
    proc = Proc("qsc-ml", ["ml", "serve", "--config", str(config)], base)
    proc.start()
    port = proc.port
    try:
        batch = ScoreBatch(
            SCHEMA_VERSION, FEATURES, ["normal", "exfiltration"], [NORMAL_ROW, ANOMALOUS_ROW]
        )
        scores = asyncio.run(_score(workdir, port, batch))
        print(f"  Score on {HOST}:{port} as cortex, model {scores.model_version[:16]}")
        for key, score, confidence, verdict in zip(
            scores.keys, scores.score, scores.confidence, scores.verdicts, strict=True
        ):
            shown = "normal" if verdict is Verdict.NORMAL else "ANOMALY"
            print(f"  {key:<13} score {score:+.3f} confidence {confidence:.2f} {shown}")
    finally:
        _stop(proc)
