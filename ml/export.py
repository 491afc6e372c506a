"""ONNX export of a fitted scikit-learn IsolationForest: the fused graph, and skl2onnx's.

The fused graph is four nodes::

    X float[N, F] -> TreeEnsembleRegressor (SUM) -> Pow(2, .) -> Neg -> score_samples [N, 1]
                                          score_samples - offset_ (Sub) -> decision_function [N, 1]

sklearn scores a row as ``-2 ** (-mean_t(depth_t + c(n_t) ) / c(max_samples_))`` where, for tree
t, ``depth_t`` is the depth (root 0) of the leaf the row reaches, ``n_t`` the training samples in
that leaf and ``c(n)`` the average path length of an unsuccessful BST search on n points. So each
leaf's value in the one ensemble is ``-(depth + c(n)) / (n_trees * c(max_samples_))`` and the SUM
over trees is the exponent. skl2onnx instead emits per-tree subgraphs (about 27 nodes per tree).

Exactness against sklearn, which casts X to float32 and tests ``x <= threshold`` with a float64
threshold: ONNX thresholds are float32, so each is rounded *down* to the largest float32 not above
it; for every float32 x the test then gives the same branch. Trees fitted on a feature subset
(``max_features < 1.0``) have their local feature indices mapped back through
``estimators_features_`` (sklearn uses the subset only when it is smaller than all features).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

if TYPE_CHECKING:  # the service imports this module for its names; only training needs sklearn
    from sklearn.ensemble import IsolationForest

INPUT_NAME: Final = "X"
SCORE_OUTPUT: Final = "score_samples"
DECISION_OUTPUT: Final = "decision_function"
ML_OPSET: Final = 3  # TreeEnsembleRegressor with float attributes; every onnxruntime runs it
ONNX_OPSET: Final = 17
PRODUCER: Final = "qsc-ml"

FloatArray = npt.NDArray[np.float64]


def average_path_length(n: npt.ArrayLike) -> FloatArray:
    """c(n): average path length of an unsuccessful search in a BST of n points (0 for n <= 1,
    1 for n == 2, else 2 (ln(n - 1) + gamma) - 2 (n - 1) / n), as in sklearn."""
    arr = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(arr)
    out[arr == 2] = 1.0
    big = arr > 2
    out[big] = 2.0 * (np.log(arr[big] - 1.0) + np.euler_gamma) - 2.0 * (arr[big] - 1.0) / arr[big]
    return out


def float32_below(values: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """The largest float32 <= each value (so `x <= t` and `x <= result` agree for float32 x)."""
    v = np.asarray(values, dtype=np.float64)
    f = v.astype(np.float32)
    over = f.astype(np.float64) > v
    f[over] = np.nextafter(f[over], np.float32(-np.inf))
    return f


def node_depths(children_left: npt.NDArray[Any], children_right: npt.NDArray[Any]) -> FloatArray:
    """Depth of each node, root 0 (nodes are numbered parent before child in sklearn trees)."""
    depth = np.zeros(len(children_left), dtype=np.float64)
    for node in range(len(children_left)):
        left, right = children_left[node], children_right[node]
        if left != -1:
            depth[left] = depth[node] + 1
            depth[right] = depth[node] + 1
    return depth


@dataclass(frozen=True)
class FusedGraphInfo:
    """What the export produced: node counts of the graph and of the one ensemble."""

    graph_nodes: int
    trees: int
    tree_nodes: int
    leaves: int


def _tree_feature_maps(model: IsolationForest) -> list[npt.NDArray[np.int64]]:
    n_features = int(model.n_features_in_)
    maps = []
    for features in model.estimators_features_:
        if len(features) == n_features:
            # sklearn fits and scores such trees on X as is, ignoring the (permuted) index list.
            maps.append(np.arange(n_features, dtype=np.int64))
        else:
            maps.append(np.asarray(features, dtype=np.int64))
    return maps


def fused_onnx(
    model: IsolationForest, *, metadata: Mapping[str, str] | None = None
) -> tuple[onnx.ModelProto, FusedGraphInfo]:
    """One TreeEnsembleRegressor plus the score transform; see the module docstring."""
    max_samples = int(model.max_samples_)
    if max_samples < 2:
        raise ValueError("max_samples_ must be at least 2 (c(1) = 0 makes every score -0.5)")
    n_trees = len(model.estimators_)
    scale = -1.0 / (n_trees * float(average_path_length(max_samples)))
    tree_ids: list[npt.NDArray[np.int64]] = []
    node_ids: list[npt.NDArray[np.int64]] = []
    feature_ids: list[npt.NDArray[np.int64]] = []
    values: list[npt.NDArray[np.float32]] = []
    modes: list[str] = []
    true_ids: list[npt.NDArray[np.int64]] = []
    false_ids: list[npt.NDArray[np.int64]] = []
    leaf_tree: list[npt.NDArray[np.int64]] = []
    leaf_node: list[npt.NDArray[np.int64]] = []
    leaf_weight: list[FloatArray] = []
    for t, (estimator, fmap) in enumerate(
        zip(model.estimators_, _tree_feature_maps(model), strict=True)
    ):
        tree = estimator.tree_
        left = np.asarray(tree.children_left, dtype=np.int64)
        right = np.asarray(tree.children_right, dtype=np.int64)
        n = len(left)
        is_leaf = left == -1
        ids = np.arange(n, dtype=np.int64)
        tree_ids.append(np.full(n, t, dtype=np.int64))
        node_ids.append(ids)
        local = np.asarray(tree.feature, dtype=np.int64)
        feature_ids.append(np.where(is_leaf, 0, fmap[np.where(is_leaf, 0, local)]))
        values.append(np.where(is_leaf, np.float32(0), float32_below(tree.threshold)))
        modes.extend("LEAF" if leaf else "BRANCH_LEQ" for leaf in is_leaf)
        # sklearn goes left when x <= threshold.
        true_ids.append(np.where(is_leaf, 0, left))
        false_ids.append(np.where(is_leaf, 0, right))
        depth = node_depths(left, right)
        samples = np.asarray(tree.n_node_samples, dtype=np.float64)
        leaf_tree.append(np.full(int(is_leaf.sum()), t, dtype=np.int64))
        leaf_node.append(ids[is_leaf])
        leaf_weight.append((depth[is_leaf] + average_path_length(samples[is_leaf])) * scale)
    n_nodes = sum(len(a) for a in node_ids)
    leaves = sum(len(a) for a in leaf_node)
    ensemble = helper.make_node(
        "TreeEnsembleRegressor",
        [INPUT_NAME],
        ["neg_mean_path"],
        domain="ai.onnx.ml",
        name="isolation_forest",
        n_targets=1,
        aggregate_function="SUM",
        post_transform="NONE",
        nodes_treeids=np.concatenate(tree_ids).tolist(),
        nodes_nodeids=np.concatenate(node_ids).tolist(),
        nodes_featureids=np.concatenate(feature_ids).tolist(),
        nodes_values=np.concatenate(values).tolist(),
        nodes_modes=modes,
        nodes_truenodeids=np.concatenate(true_ids).tolist(),
        nodes_falsenodeids=np.concatenate(false_ids).tolist(),
        nodes_missing_value_tracks_true=[0] * n_nodes,
        target_treeids=np.concatenate(leaf_tree).tolist(),
        target_nodeids=np.concatenate(leaf_node).tolist(),
        target_ids=[0] * leaves,
        target_weights=np.concatenate(leaf_weight).astype(np.float32).tolist(),
    )
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    offset = helper.make_tensor("offset", TensorProto.FLOAT, [], [float(model.offset_)])
    nodes = [
        ensemble,
        helper.make_node("Pow", ["two", "neg_mean_path"], ["pow"], name="two_pow"),
        helper.make_node("Neg", ["pow"], [SCORE_OUTPUT], name="score"),
        helper.make_node("Sub", [SCORE_OUTPUT, "offset"], [DECISION_OUTPUT], name="decision"),
    ]
    n_features = int(model.n_features_in_)
    graph = helper.make_graph(
        nodes,
        "qsc_isolation_forest",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, n_features])],
        [
            helper.make_tensor_value_info(SCORE_OUTPUT, TensorProto.FLOAT, [None, 1]),
            helper.make_tensor_value_info(DECISION_OUTPUT, TensorProto.FLOAT, [None, 1]),
        ],
        initializer=[two, offset],
    )
    proto = helper.make_model(
        graph,
        producer_name=PRODUCER,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid("ai.onnx.ml", 3)],
    )
    # Pinned so files do not depend on the installed onnx's default IR version.
    proto.ir_version = 8
    for key, value in sorted((metadata or {}).items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto, FusedGraphInfo(len(nodes), n_trees, n_nodes, leaves)


def skl2onnx_onnx(model: IsolationForest) -> onnx.ModelProto:
    """skl2onnx's conversion (kept for the benchmark's comparison; slow for many trees)."""
    from skl2onnx import to_onnx  # imported here: slow to import and only the benchmark needs it

    sample = np.zeros((1, int(model.n_features_in_)), dtype=np.float32)
    proto = to_onnx(
        model,
        sample,
        target_opset={"": ONNX_OPSET, "ai.onnx.ml": ML_OPSET},
        options={id(model): {"score_samples": True}},
    )
    assert isinstance(proto, onnx.ModelProto)
    return proto


def run_onnx(model_bytes: bytes, x: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """(score_samples, decision_function) of an exported model for rows `x`, as float64 vectors
    (a throwaway session: for training and checks, not for serving)."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    score, decision = session.run(
        [SCORE_OUTPUT, DECISION_OUTPUT], {INPUT_NAME: np.asarray(x, dtype=np.float32)}
    )
    return (
        np.asarray(score, dtype=np.float64).reshape(-1),
        np.asarray(decision, dtype=np.float64).reshape(-1),
    )
