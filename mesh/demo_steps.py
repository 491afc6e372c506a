"""The component steps of `make demo` (mesh.demo): each one starts a real process in the
workspace, talks to it over mutual TLS as `cortex`, prints what came back and stops it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import grpc

from crypto import pki
from crypto.keyring import KeyManager
from mesh.channel import ChannelConfig
from mesh.config import TlsFiles
from mesh.stream.subscriber import GuardianSubscriber, SubscriberConfig
from ml.schema import FEATURES, SCHEMA_VERSION
from qsc.common.v1 import event_pb2, pipeline_details_pb2
from qsc.common.v1 import heal_details_pb2 as hpb
from qsc.common.v1 import integrity_details_pb2 as ipb
from qsc.ml.v1 import anomaly_service_pb2 as mpb
from qsc.ml.v1 import anomaly_service_pb2_grpc as mpb_grpc

HOST = "127.0.0.1"
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


def step(title: str) -> None:
    print(f"\n== {title}")


def run_tool(*args: str) -> str:
    """A QSC command line (`python -m <module> ...`); its stdout, or exit with its stderr."""
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def start_process(name: str, argv: list[str], base: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`python -m <argv> --port-file`, logging to base/<name>.log, once it listens."""
    port_file, log = base / "port", base / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *argv, "--port-file", str(port_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 90
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"{name} did not start; its log:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return proc, int(port_file.read_text())


def stop_process(name: str, proc: subprocess.Popen[bytes], base: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    print(f"  {name} stopped with exit code {code}; its log: {base / f'{name}.log'}")


def tls(workdir: Path, role: str) -> TlsFiles:
    pki_dir = workdir / "pki"
    return TlsFiles(
        cert=pki_dir / f"{role}-{HOST}.crt",
        key=pki_dir / f"{role}-{HOST}.key",
        ca=pki_dir / pki.CA_CERT_FILE,
    )


async def watch(
    workdir: Path, port: int, role: str, take: Callable[[event_pb2.Event], bool], wait: float
) -> None:
    """Subscribe to a guardian sealed, as cortex; hand each event to `take` until it says done
    (True) or `wait` seconds pass."""
    config = SubscriberConfig(
        channel=ChannelConfig(target=f"{HOST}:{port}", tls=tls(workdir, "cortex")),
        expected_role=role,
        expected_host=HOST,
        max_batch_delay=timedelta(milliseconds=10),
    )
    subscriber = GuardianSubscriber(config)

    async def collect() -> None:
        async for event in subscriber.events():
            if take(event):
                return

    try:
        await asyncio.wait_for(collect(), timeout=wait)
    except TimeoutError:
        print(f"  (stopped waiting after {wait:.0f}s)")
    finally:
        await subscriber.close()


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
    proc, port = start_process("qsc-beta", ["beta", "run", "--config", str(config)], base)
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
        stop_process("qsc-beta", proc, base)


def ml(workdir: Path) -> None:
    step("ML: Isolation Forest anomaly scores over mTLS (cortex -> ml)")
    base = workdir / "ml"
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
    print(f"  trained 50 trees on {rows} synthetic windows in {time.monotonic() - started:.1f}s")
    config = base / "ml.toml"
    config.write_text(ML_CONFIG.format(pki=workdir / "pki", base=base))
    proc, port = start_process("qsc-ml", ["ml", "serve", "--config", str(config)], base)
    try:
        files = tls(workdir, "cortex")
        creds = grpc.ssl_channel_credentials(
            files.ca.read_bytes(), files.key.read_bytes(), files.cert.read_bytes()
        )
        request = mpb.ScoreRequest(
            feature_schema_version=SCHEMA_VERSION,
            feature_names=FEATURES,
            rows=[
                mpb.FeatureRow(key="normal", values=NORMAL_ROW),
                mpb.FeatureRow(key="exfiltration", values=ANOMALOUS_ROW),
            ],
        )
        with grpc.secure_channel(f"{HOST}:{port}", creds) as channel:
            reply = mpb_grpc.AnomalyServiceStub(channel).Score(request, timeout=10)
        print(f"  Score on {HOST}:{port} as cortex, model {reply.model_version[:16]}")
        for s in reply.scores:
            verdict = "ANOMALY" if s.is_anomaly else "normal"
            print(f"  {s.key:<13} score {s.score:+.3f} confidence {s.confidence:.2f} {verdict}")
    finally:
        stop_process("qsc-ml", proc, base)
