"""ML service benchmark: Isolation Forest scoring, in process and over mTLS gRPC, and its quality.

Run: ``.venv/bin/python tests/bench/bench_ml.py`` (``make bench``). Not a test: it prints figures
and asserts nothing. About a minute on 2 vCPUs, most of it skl2onnx converting 200 trees.

* Data: the seeded synthetic generator (``ml.synthetic``): 8 hosts x 14 days of 5-minute windows
  to train on (2% anomalous, as real history would be), 8 hosts x 7 days with another seed to test.
* Model: 200 trees, max_samples 256, contamination auto, exported two ways: the fused graph
  (``ml.export.fused_onnx``: one TreeEnsembleRegressor and the score transform) and skl2onnx's.
  Every onnxruntime session uses one intra-op thread, as the service does by default.
* Single-row latency in process: sklearn ``score_samples`` vs skl2onnx + onnxruntime vs the fused
  graph (bare ``session.run``), and the service core (``LoadedModel.score``: validation,
  scoring, calibration, verdicts). Goal: fused under 0.05 ms.
* Over mTLS gRPC (TLS 1.3, X25519MLKEM768, cortex certificate): a ``qsc-ml serve`` process on
  127.0.0.1 (its own process, as deployed: a client in the same process would share its GIL),
  sequential single-row ``Score`` calls from a blocking client, p50/p99, beside the mesh's own
  ``Health/Check`` on the same channel as the floor. Goal: p99 under 2 ms.
* Batch throughput, rows/s: in process (fused, core) and over gRPC (4096-row batches).
* Detection quality on the test set: ROC-AUC and PR-AUC (average precision) of each path, per
  anomaly kind, and precision/recall at the model's threshold.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.path.insert(1, str(Path(__file__).resolve().parents[2] / "proto"))

import grpc
import numpy as np
import onnxruntime as ort
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sklearn.metrics import average_precision_score, roc_auc_score

from crypto.keyring import KeyManager
from crypto.pki import init_ca, issue_leaf, write_leaf
from ml.api import ScoreBatch
from ml.export import INPUT_NAME, fused_onnx, skl2onnx_onnx
from ml.forest import TrainParams, fit_forest
from ml.schema import FEATURES, SCHEMA_VERSION
from ml.scorer import LoadedModel
from ml.store import load_model
from ml.synthetic import ANOMALY_KINDS, SyntheticConfig, generate
from ml.training import train_model
from ml.tune import Objective, choose_threshold, evaluate
from qsc.ml.v1 import anomaly_service_pb2 as pb
from qsc.ml.v1 import anomaly_service_pb2_grpc as pb_grpc

TREES = 200
GRPC_CALLS = 3000
BATCH = 4096
ROOT = Path(__file__).resolve().parents[2]


def _session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
    )


def _per_call_ms(fn: Callable[[], object], calls: int, warmup: int = 20) -> tuple[float, float]:
    """(median, p99) of one call, in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return statistics.median(times) * 1e3, times[int(0.99 * (len(times) - 1))] * 1e3


def _rows_per_s(fn: Callable[[], object], rows: int, seconds: float = 1.0) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n * rows / (time.perf_counter() - t0)


def main() -> None:
    started = time.perf_counter()
    train = generate(SyntheticConfig(hosts=8, days=14, seed=1, anomaly_rate=0.02))
    test = generate(SyntheticConfig(hosts=8, days=7, seed=2, anomaly_rate=0.02))
    assert test.labels is not None
    assert test.kinds is not None
    print(
        f"data: train {train.rows} rows, test {test.rows} rows "
        f"({int(test.labels.sum())} anomalous), {len(FEATURES)} features"
    )
    params = TrainParams(n_estimators=TREES, seed=0)

    t0 = time.perf_counter()
    forest = fit_forest(train.values, params)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fused_proto, info = fused_onnx(forest)
    fused_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    skl_proto = skl2onnx_onnx(forest)
    skl_s = time.perf_counter() - t0
    fused = _session(fused_proto.SerializeToString())
    skl = _session(skl_proto.SerializeToString())
    print(f"fit {TREES} trees: {fit_s:.2f} s")
    print(
        f"export: fused {len(fused_proto.graph.node)} nodes ({info.tree_nodes} tree nodes) in "
        f"{fused_s:.2f} s; skl2onnx {len(skl_proto.graph.node)} nodes in {skl_s:.1f} s"
    )

    x32 = test.values.astype(np.float32)
    fused_scores = fused.run(["score_samples"], {INPUT_NAME: x32})[0].ravel()
    skl_scores = skl.run(["score_samples"], {"X": x32})[0].ravel()
    sk_scores = forest.score_samples(test.values)
    print(
        f"max |score - sklearn| on the test set: fused {np.abs(fused_scores - sk_scores).max():.1e}"
        f", skl2onnx {np.abs(skl_scores - sk_scores).max():.1e}"
    )

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        keys = KeyManager.create(tmp / "keys", "ml")
        stored, _, _ = train_model(train, params, tmp / "models", keys)
        core = LoadedModel(load_model(tmp / "models", stored.card.version, keys))

        print("\nsingle-row latency in process (median / p99, ms):")
        row = test.values[:1]
        row32 = x32[:1]
        results = {
            "sklearn score_samples": _per_call_ms(lambda: forest.score_samples(row), 200),
            "skl2onnx + onnxruntime": _per_call_ms(
                lambda: skl.run(["score_samples"], {"X": row32}), 500
            ),
            "fused + onnxruntime": _per_call_ms(
                lambda: fused.run(["score_samples"], {INPUT_NAME: row32}), 20000
            ),
        }
        batch1 = ScoreBatch(SCHEMA_VERSION, FEATURES, ["k"], [list(test.values[0])])
        results["service core (validate+score+calibrate)"] = _per_call_ms(
            lambda: core.score(batch1, max_rows=BATCH), 20000
        )
        for name, (p50, p99) in results.items():
            print(f"  {name:42s} {p50:8.4f} / {p99:8.4f}")
        fused_p50 = results["fused + onnxruntime"][0]
        print(
            f"  fused vs skl2onnx: {results['skl2onnx + onnxruntime'][0] / fused_p50:.0f}x faster;"
            f" goal < 0.05 ms: {'met' if fused_p50 < 0.05 else 'MISSED'}"
        )

        print("\nbatch throughput in process (rows/s):")
        xb = x32[:BATCH]
        rows = [list(r) for r in test.values[:BATCH]]
        big = ScoreBatch(SCHEMA_VERSION, FEATURES, ["k"] * BATCH, rows)
        for name, fn in (
            ("fused + onnxruntime", lambda: fused.run(["score_samples"], {INPUT_NAME: xb})),
            ("skl2onnx + onnxruntime", lambda: skl.run(["score_samples"], {"X": xb})),
            ("sklearn score_samples", lambda: forest.score_samples(test.values[:BATCH])),
            ("service core", lambda: core.score(big, max_rows=BATCH)),
        ):
            print(f"  {name:24s} {BATCH}-row batches {_rows_per_s(fn, BATCH):12,.0f}")

        _grpc(tmp, stored.card.version, test.values)

        print("\ndetection quality on the test set (higher is better):")
        y = test.labels
        for name, scores in (
            ("sklearn", sk_scores),
            ("skl2onnx", skl_scores),
            ("fused", fused_scores),
        ):
            print(
                f"  {name:9s} ROC-AUC {roc_auc_score(y, -scores):.4f}  "
                f"PR-AUC {average_precision_score(y, -scores):.4f}"
            )
        kinds = np.array(test.kinds)
        parts = []
        for kind in ANOMALY_KINDS:
            mask = (kinds == kind) | ~y
            parts.append(f"{kind} {roc_auc_score(y[mask], -fused_scores[mask]):.3f}")
        print("  fused ROC-AUC per kind: " + ", ".join(parts))
        flagged = fused_scores < core.threshold
        tp = int((flagged & y).sum())
        print(
            f"  at the threshold {core.threshold:.3f} ({core.card.threshold_source}): "
            f"precision {tp / max(1, flagged.sum()):.3f}, recall {tp / y.sum():.3f}, "
            f"FPR {(flagged & ~y).sum() / (~y).sum():.4f}"
        )
        # What `qsc-ml tune` picks from labelled feedback (another seed), judged on the test set.
        feedback = generate(SyntheticConfig(hosts=8, days=3, seed=3, anomaly_rate=0.02))
        assert feedback.labels is not None
        feedback_scores, _ = core.raw(feedback.values)
        goals: tuple[tuple[Objective, float | None], ...] = (("f1", None), ("target_fpr", 0.005))
        for objective, target in goals:
            chosen = choose_threshold(
                feedback_scores, feedback.labels, objective=objective, target_fpr=target
            )
            m = evaluate(fused_scores, y, chosen.threshold)
            label = objective if target is None else f"{objective} {target}"
            print(
                f"  tuned ({label}) threshold {chosen.threshold:.3f}: precision "
                f"{m.precision:.3f}, recall {m.recall:.3f}, FPR {m.fpr:.4f}, F1 {m.f1:.3f}"
            )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def _grpc(tmp: Path, version: str, values: np.ndarray[Any, Any]) -> None:
    """A `qsc-ml serve` process (as deployed: the client never shares its GIL) and this client."""
    pki = tmp / "pki"
    ca = init_ca(pki, "bench.test")
    for role, host in (("ml", "127.0.0.1"), ("cortex", "c1")):
        write_leaf(issue_leaf(ca, role, host), pki, ca.cert)
    config = tmp / "ml.toml"
    config.write_text(
        "[server]\n"
        'listen = "127.0.0.1:0"\n'
        f"max_message_bytes = {16 * 1024 * 1024}\n"
        "[server.tls]\n"
        f'cert = "{pki / "ml-127.0.0.1.crt"}"\n'
        f'key = "{pki / "ml-127.0.0.1.key"}"\n'
        f'ca = "{pki / "ca.crt"}"\n'
        "[model]\n"
        f'directory = "{tmp / "models"}"\n'
        f'keyring = "{tmp / "keys"}"\n'
        f"max_batch_rows = {BATCH}\n"
        "[log]\n"
        'level = "warning"\n'
    )
    port_file = tmp / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ml",
            "serve",
            "--config",
            str(config),
            "--port-file",
            str(port_file),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'proto'}"},
    )
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=(pki / "cortex-c1.key").read_bytes(),
        certificate_chain=(pki / "cortex-c1.crt").read_bytes(),
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("qsc-ml serve did not start")
            time.sleep(0.05)
        port = int(port_file.read_text())
        with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            stub = pb_grpc.AnomalyServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)

            def request(rows: np.ndarray[Any, Any]) -> pb.ScoreRequest:
                return pb.ScoreRequest(
                    feature_schema_version=SCHEMA_VERSION,
                    feature_names=list(FEATURES),
                    rows=[
                        pb.FeatureRow(key=f"r{i}", values=r) for i, r in enumerate(rows.tolist())
                    ],
                )

            one = request(values[:1])
            assert stub.Score(one).model_version == version
            print(f"\nover mTLS gRPC to a qsc-ml serve process, {GRPC_CALLS} sequential calls:")
            p50, p99 = _per_call_ms(
                lambda: health.Check(health_pb2.HealthCheckRequest()), GRPC_CALLS, warmup=200
            )
            print(f"  Health/Check (the mesh alone)  p50 {p50:.3f} ms  p99 {p99:.3f} ms")
            p50, p99 = _per_call_ms(lambda: stub.Score(one), GRPC_CALLS, warmup=200)
            print(
                f"  Score, one row                 p50 {p50:.3f} ms  p99 {p99:.3f} ms  "
                f"(goal p99 < 2 ms: {'met' if p99 < 2 else 'MISSED'})"
            )
            big = request(values[:BATCH])
            rate = _rows_per_s(lambda: stub.Score(big), BATCH, seconds=2.0)
            print(f"  Score, {BATCH}-row batches: {rate:,.0f} rows/s")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
