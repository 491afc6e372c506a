"""Training and tuning pipelines: windows in, an authenticated model version out.

train: fit the forest, export the fused graph, check it against scikit-learn, score the training
rows with the graph (the numbers the service will compute), calibrate on them, write the model
with its card. tune: score labelled feedback with a model, choose a threshold (`ml.tune`), and
write it as a new version (the threshold is recorded in the ONNX file, so the hash changes) whose
card names its parent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
from sklearn.ensemble import IsolationForest

from ml.calibration import Calibration
from ml.card import format_time
from ml.data import FloatArray, Windows
from ml.errors import TrainingError
from ml.export import FusedGraphInfo, fused_onnx, run_onnx
from ml.forest import Progress, TrainParams, fit_forest
from ml.schema import DOMAINS, SCHEMA_VERSION
from ml.scorer import LoadedModel, onnx_metadata
from ml.store import KeySource, StoredModel, save_model
from ml.tune import Metrics, Objective, choose_threshold, evaluate

# Fused vs scikit-learn, per row: the bound; measured differences are ~2e-7.
EXPORT_TOLERANCE: Final = 1e-5
CHECK_ROWS: Final = 2000
SUMMARY_QUANTILES: Final = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class ExportCheck:
    """max |fused - sklearn| over `rows` rows (training samples and jittered copies)."""

    rows: int
    max_abs_diff_score_samples: float
    max_abs_diff_decision_function: float

    def to_json(self) -> dict[str, float | int]:
        return {
            "rows": self.rows,
            "max_abs_diff_score_samples": self.max_abs_diff_score_samples,
            "max_abs_diff_decision_function": self.max_abs_diff_decision_function,
        }


def set_metadata(proto: onnx.ModelProto, metadata: Mapping[str, str]) -> bytes:
    """The model's bytes with its `qsc.*` metadata replaced by `metadata`."""
    keep = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith("qsc.")]
    del proto.metadata_props[:]
    for key, value in sorted([*keep, *metadata.items()]):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString(deterministic=True)


def check_rows(x: FloatArray, seed: int) -> FloatArray:
    """Rows to compare fused and sklearn on: a sample of `x` and as many random rows spread
    over 1.5x its range (points the forest did not see, including outliers)."""
    rng = np.random.default_rng(seed)
    take = x[rng.choice(len(x), size=min(CHECK_ROWS, len(x)), replace=False)]
    lo, hi = x.min(axis=0), x.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    jitter = rng.uniform(lo - span / 4, hi + span / 4, size=(CHECK_ROWS, x.shape[1]))
    return np.concatenate([take, jitter])


def check_export(forest: IsolationForest, model_bytes: bytes, x: FloatArray) -> ExportCheck:
    score, decision = run_onnx(model_bytes, x)
    return ExportCheck(
        rows=len(x),
        max_abs_diff_score_samples=float(np.max(np.abs(score - forest.score_samples(x)))),
        max_abs_diff_decision_function=float(
            np.max(np.abs(decision - forest.decision_function(x)))
        ),
    )


def score_summary(scores: FloatArray) -> dict[str, Any]:
    return {
        "min": float(scores.min()),
        "max": float(scores.max()),
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "quantiles": {
            f"{q:g}": float(v)
            for q, v in zip(SUMMARY_QUANTILES, np.quantile(scores, SUMMARY_QUANTILES), strict=True)
        },
    }


def _training_doc(windows: Windows) -> dict[str, Any]:
    span = windows.time_range()
    return {
        "rows": windows.rows,
        "time_start": None if span is None else format_time(span[0]),
        "time_end": None if span is None else format_time(span[1]),
        "data_blake3": windows.data_blake3().hex(),
        "files": [
            {"path": s.path, "rows": s.rows, "blake3": s.blake3.hex()} for s in windows.sources
        ],
        "labelled_anomalies": None if windows.labels is None else int(windows.labels.sum()),
        # What the forest has seen: the service flags a Score row beyond it (ml.scorer).
        "feature_ranges": {
            name: [float(x.min()), float(x.max())]
            for name, x in zip(windows.features, windows.values.T, strict=True)
        },
    }


def check_domains(windows: Windows, *, what: str = "training") -> None:
    """TrainingError naming the first row (and its file) with a value outside its feature's
    domain (ml.schema.DOMAINS): a model trained on impossible values would take them for
    normal and record them in its training ranges; feedback with them would tune the threshold
    on rows the service refuses."""
    domains = [DOMAINS[name] for name in windows.features]
    low = np.array([d.minimum for d in domains], dtype=np.float64)
    high = np.array([d.maximum for d in domains], dtype=np.float64)
    bad = ~((windows.values >= low) & (windows.values <= high))  # NaN is bad too
    if not bad.any():
        return
    i, j = (int(v) for v in np.argwhere(bad)[0])
    name, value = windows.features[j], windows.values[i, j]
    where, row = f"{what} row {i + 1}", i
    for source in windows.sources:
        if row < source.rows:
            where = f"{source.path}: {what} row {row + 1} of {source.rows}"
            break
        row -= source.rows
    raise TrainingError(f"{where}: {name} is {value:g}; {name} must be {domains[j].describe()}")


def train_model(
    windows: Windows,
    params: TrainParams,
    directory: Path,
    keys: KeySource,
    *,
    say: Say = _quiet,
    tree_progress: Progress | None = None,
    now: dt.datetime | None = None,
) -> tuple[StoredModel, FusedGraphInfo, ExportCheck]:
    """Fit, export, check, calibrate and write one model version."""
    check_domains(windows)
    x = windows.values
    say(f"fitting {params.n_estimators} trees on {windows.rows} rows x {x.shape[1]} features")
    forest = fit_forest(x, params, tree_progress)
    proto, info = fused_onnx(forest)
    say(
        f"exported one fused tree ensemble: {info.graph_nodes} graph nodes, "
        f"{info.tree_nodes} tree nodes in {info.trees} trees"
    )
    offset = float(forest.offset_)
    # Calibrate on the graph's own scores: the numbers the service will compute.
    train_scores, _ = run_onnx(proto.SerializeToString(), x)
    calibration = Calibration.from_scores(train_scores)
    created = format_time(now or dt.datetime.now(dt.UTC))
    doc: dict[str, Any] = {
        "created": created,
        "trained": created,
        "parent_version": None,
        "features": {"schema_version": SCHEMA_VERSION, "names": list(windows.features)},
        "training": _training_doc(windows),
        "parameters": {**params.to_json(), "max_samples_effective": int(forest.max_samples_)},
        "offset": offset,
        "threshold": {"value": offset, "source": "offset", "metrics": None},
        "score_distribution": score_summary(train_scores),
        "calibration": calibration.to_json(),
    }
    meta = onnx_metadata(
        {
            "schema_version": SCHEMA_VERSION,
            "features": list(windows.features),
            "offset": offset,
            "threshold": offset,
            "threshold_source": "offset",
            "calibration": calibration.knots(),
        }
    )
    model_bytes = set_metadata(proto, meta)
    check = check_export(forest, model_bytes, check_rows(x, params.seed))
    say(
        f"fused vs scikit-learn on {check.rows} rows: max |diff| score_samples "
        f"{check.max_abs_diff_score_samples:.1e}, decision_function "
        f"{check.max_abs_diff_decision_function:.1e}"
    )
    worst = max(check.max_abs_diff_score_samples, check.max_abs_diff_decision_function)
    if worst > EXPORT_TOLERANCE:
        raise TrainingError(
            f"the fused export differs from scikit-learn by {worst:.1e} (> {EXPORT_TOLERANCE})"
        )
    doc["model"] = {
        "graph": {
            "kind": "fused-tree-ensemble",
            "nodes": info.graph_nodes,
            "trees": info.trees,
            "tree_nodes": info.tree_nodes,
            "leaves": info.leaves,
        },
        "export_check": check.to_json(),
    }
    stored = save_model(directory, model_bytes, doc, keys)
    LoadedModel(stored)  # the written files load as the service will load them
    return stored, info, check


@dataclass(frozen=True)
class TuneResult:
    """The model tuned (or the same one, when the threshold did not move) and its metrics."""

    stored: StoredModel
    changed: bool
    before: Metrics
    after: Metrics


def tune_model(
    stored: StoredModel,
    feedback: Windows,
    directory: Path,
    keys: KeySource,
    *,
    objective: Objective = "f1",
    target_fpr: float | None = None,
    now: dt.datetime | None = None,
) -> TuneResult:
    """Choose a threshold on labelled `feedback` (columns in the model's feature order) and write
    the model with it as a new version whose parent is `stored`."""
    card = stored.card
    if feedback.labels is None:
        raise TrainingError("feedback needs a label column")
    if feedback.features != card.features:
        raise TrainingError("feedback columns must be read in the model's feature order")
    check_domains(feedback, what="feedback")
    model = LoadedModel(stored)
    scores, _ = model.raw(feedback.values)
    before = evaluate(scores, feedback.labels, card.threshold)
    after = choose_threshold(scores, feedback.labels, objective=objective, target_fpr=target_fpr)
    if after.threshold == card.threshold and objective == card.threshold_source:
        return TuneResult(stored, False, before, after)
    meta = onnx_metadata(
        {
            "schema_version": card.schema_version,
            "features": list(card.features),
            "offset": card.offset,
            "threshold": after.threshold,
            "threshold_source": objective,
            "calibration": card.calibration.knots(),
        }
    )
    model_bytes = set_metadata(onnx.load_from_string(stored.model_bytes), meta)
    # A tuned model is new, not a rollback: it does not inherit its parent's `promoted`.
    doc = {k: v for k, v in card.doc.items() if k not in ("auth", "version", "promoted")}
    doc["created"] = format_time(now or dt.datetime.now(dt.UTC))
    doc["parent_version"] = card.version
    doc["threshold"] = {
        "value": after.threshold,
        "source": objective,
        "metrics": after.to_json(),
        "feedback": {
            "rows": feedback.rows,
            "anomalies": int(feedback.labels.sum()),
            "data_blake3": feedback.data_blake3().hex(),
            "target_fpr": target_fpr,
            "metrics_before": before.to_json(),
        },
    }
    new = save_model(directory, model_bytes, doc, keys)
    return TuneResult(new, True, before, after)
