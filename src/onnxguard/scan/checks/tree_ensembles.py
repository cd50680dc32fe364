"""ai.onnx.ml tree ensembles whose ids point outside their arrays.

``TreeEnsembleClassifier``, ``TreeEnsembleRegressor`` (opsets 1-3) and ``TreeEnsemble`` (opset 5) describe
their trees as parallel arrays: node ids, the ids of each branch's true and false children, the class or target
each leaf adds to, the feature each branch reads. ONNX Runtime turns these ids into indexes and pointers when the
session is built; ids that point outside their arrays (a child that is not a node of its tree, a class id past
the labels, a target id past ``n_targets``, a leaf index past the leaves, a negative feature) are reads and
writes out of bounds in native code, and a child pointing back up its tree is an endless walk on every row.
Arrays of different lengths are the same fault one step earlier. Each id is checked; every element read is
charged to the check's budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import onnx

from onnxguard.scan import budget
from onnxguard.scan.interface import BaseCheck, Finding, ScanContext, Severity, quote
from onnxguard.scan.walk import bodies, node_label

ML_DOMAIN = "ai.onnx.ml"
LEGACY = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")


def _attrs(node: onnx.NodeProto) -> dict[str, onnx.AttributeProto]:
    return {a.name: a for a in node.attribute}


def _ints(attrs: dict[str, onnx.AttributeProto], name: str) -> list[int] | None:
    a = attrs.get(name)
    if a is None:
        return None
    values = list(a.ints) if a.type == onnx.AttributeProto.INTS else (
        [int(v) for v in onnx.numpy_helper.to_array(a.t).reshape(-1)] if a.type == onnx.AttributeProto.TENSOR else [])
    budget.current().visit(len(values), "tree ensemble arrays")
    return values


def _length(attrs: dict[str, onnx.AttributeProto], name: str) -> int | None:
    a = attrs.get(name)
    if a is None:
        return None
    if a.type == onnx.AttributeProto.TENSOR:
        n = 1
        for d in a.t.dims:
            n *= d
        return n
    return max(len(a.ints), len(a.floats), len(a.strings))


def _first_bad(values: Sequence[int], ok: Iterable[bool]) -> tuple[int, int] | None:
    for k, good in enumerate(ok):
        if not good:
            return k, values[k]
    return None


def _reached_twice(children: dict[int, list[int]], roots: Iterable[int]) -> int | None:
    """A node reached twice walking down from ``roots`` (a loop, or a node with two parents), or a branch no
    root reaches (it can only sit on a loop of its own); ``None`` when every tree is a tree."""
    seen: set[int] = set()
    charge = budget.current()
    for root in roots:
        if root in seen:
            return root
        stack = [root]
        seen.add(root)
        while stack:
            v = stack.pop()
            for w in children.get(v, ()):
                charge.visit(1, "tree ensemble nodes")
                if w in seen:
                    return w
                seen.add(w)
                stack.append(w)
    return None


def _walked(children: dict[int, list[int]], roots: Iterable[int]) -> set[int]:
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        v = stack.pop()
        if v not in seen:
            seen.add(v)
            stack.extend(children.get(v, ()))
    return seen


def _parentless(children: dict[int, list[int]], n: int) -> list[int]:
    has_parent = {w for ws in children.values() for w in ws}
    return [k for k in range(n) if k not in has_parent]


class TreeEnsembleIds(BaseCheck):
    id = "ml.tree-ensemble"
    severity = Severity.HIGH
    title = ("an ai.onnx.ml tree ensemble's node, tree, class, target or leaf ids point outside their arrays, its "
             "arrays differ in length, or a tree loops back on itself")

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        for body in bodies(ctx.parsed):
            for i, node in enumerate(body.nodes):
                if node.domain != ML_DOMAIN:
                    continue
                label = node_label(node, i)
                problems: Iterator[str]
                if node.op_type in LEGACY:
                    problems = _legacy(node)
                elif node.op_type == "TreeEnsemble":
                    problems = _tree_ensemble(node)
                else:
                    continue
                for problem in problems:
                    yield self.finding(ctx, f"{body.where}: {node.op_type} node {quote(label)}: {problem}", node=label)
                    break  # one fault per node: the first makes the node unusable


def _legacy(node: onnx.NodeProto) -> Iterator[str]:
    a = _attrs(node)
    trees, ids = _ints(a, "nodes_treeids") or [], _ints(a, "nodes_nodeids") or []
    true_ids, false_ids = _ints(a, "nodes_truenodeids") or [], _ints(a, "nodes_falsenodeids") or []
    features = _ints(a, "nodes_featureids") or []
    modes = [m.decode("utf-8", "replace") for m in a["nodes_modes"].strings] if "nodes_modes" in a else []
    n = len(modes) if modes else len(ids)
    for name in ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_truenodeids", "nodes_falsenodeids",
                 "nodes_values", "nodes_values_as_tensor", "nodes_hitrates", "nodes_hitrates_as_tensor",
                 "nodes_missing_value_tracks_true", "nodes_modes"):
        length = _length(a, name)
        if length is not None and length != n and not (name == "nodes_missing_value_tracks_true" and length == 0):
            yield f"{name} has {length:,} entries, nodes_modes {n:,}: the arrays must be parallel"
            return
    exists = set(zip(trees, ids, strict=False))
    if len(exists) != n:
        yield "a (tree id, node id) pair appears twice"
        return
    bad = _first_bad(features, (f >= 0 for f in features))
    if bad:
        yield f"nodes_featureids[{bad[0]}] = {bad[1]:,} is negative"
        return
    children: dict[int, list[int]] = {}
    index = {pair: k for k, pair in enumerate(zip(trees, ids, strict=False))}
    if not len(trees) == len(ids) == len(true_ids) == len(false_ids) == n:
        yield "nodes_treeids, nodes_nodeids, nodes_truenodeids or nodes_falsenodeids is missing"
        return
    for k in range(n):
        if modes and modes[k] == "LEAF":
            continue
        for side, target in (("true", true_ids), ("false", false_ids)):
            child = (trees[k], target[k])
            if child not in exists:
                yield (f"node {ids[k]:,} of tree {trees[k]:,} sends its {side} branch to node {target[k]:,}, which "
                       "is not a node of that tree")
                return
            children.setdefault(k, []).append(index[child])
    roots = _parentless(children, n)
    looped = _reached_twice(children, roots)
    walked = _walked(children, roots) if looped is None else set()
    unreached = [k for k in children if looped is None and k not in walked]
    if looped is not None or unreached:
        k = looped if looped is not None else unreached[0]
        yield (f"node {ids[k]:,} of tree {trees[k]:,} is reached twice from its root, or from no root: the tree "
               "loops or shares a node (an endless or repeated walk)")
        return
    prefix = "class" if node.op_type == "TreeEnsembleClassifier" else "target"
    leaf_trees, leaf_nodes = _ints(a, f"{prefix}_treeids") or [], _ints(a, f"{prefix}_nodeids") or []
    leaf_ids = _ints(a, f"{prefix}_ids") or []
    weights = _length(a, f"{prefix}_weights") or _length(a, f"{prefix}_weights_as_tensor") or 0
    if not len(leaf_trees) == len(leaf_nodes) == len(leaf_ids) == weights:
        yield (f"{prefix}_treeids, {prefix}_nodeids, {prefix}_ids and {prefix}_weights have {len(leaf_trees):,}, "
               f"{len(leaf_nodes):,}, {len(leaf_ids):,} and {weights:,} entries: they must be parallel")
        return
    for k, pair in enumerate(zip(leaf_trees, leaf_nodes, strict=True)):
        if pair not in exists:
            yield f"{prefix}_treeids/{prefix}_nodeids[{k}] = ({pair[0]:,}, {pair[1]:,}) is not a node of the ensemble"
            return
    if prefix == "class":
        labels = max(_length(a, "classlabels_int64s") or 0, _length(a, "classlabels_strings") or 0)
        limit, what = labels, "class labels"
    else:
        n_targets = a["n_targets"].i if "n_targets" in a else 0
        limit, what = n_targets, "n_targets"
    bad = _first_bad(leaf_ids, (0 <= c < limit for c in leaf_ids))
    if bad:
        yield f"{prefix}_ids[{bad[0]}] = {bad[1]:,} is outside the {limit:,} {what}"


def _tree_ensemble(node: onnx.NodeProto) -> Iterator[str]:
    a = _attrs(node)
    features = _ints(a, "nodes_featureids") or []
    n = len(features)
    for name in ("nodes_splits", "nodes_modes", "nodes_truenodeids", "nodes_trueleafs", "nodes_falsenodeids",
                 "nodes_falseleafs"):
        length = _length(a, name)
        if length is not None and length != n:
            yield f"{name} has {length:,} entries, nodes_featureids {n:,}: the arrays must be parallel"
            return
    targets, leaf_count = _ints(a, "leaf_targetids") or [], _length(a, "leaf_weights") or 0
    if len(targets) != leaf_count:
        yield f"leaf_targetids has {len(targets):,} entries, leaf_weights {leaf_count:,}: they must be parallel"
        return
    n_targets = a["n_targets"].i if "n_targets" in a else 0
    bad = _first_bad(targets, (0 <= t < n_targets for t in targets))
    if bad:
        yield f"leaf_targetids[{bad[0]}] = {bad[1]:,} is outside the {n_targets:,} targets"
        return
    bad = _first_bad(features, (f >= 0 for f in features))
    if bad:
        yield f"nodes_featureids[{bad[0]}] = {bad[1]:,} is negative"
        return
    roots = _ints(a, "tree_roots") or []
    bad = _first_bad(roots, (0 <= r < n for r in roots))
    if bad:
        yield f"tree_roots[{bad[0]}] = {bad[1]:,} is outside the {n:,} nodes"
        return
    children: dict[int, list[int]] = {}
    for side in ("true", "false"):
        ids, leafs = _ints(a, f"nodes_{side}nodeids") or [], _ints(a, f"nodes_{side}leafs") or []
        for k, (child, is_leaf) in enumerate(zip(ids, leafs, strict=False)):
            limit, what = (leaf_count, "leaves") if is_leaf else (n, "nodes")
            if not 0 <= child < limit:
                yield f"nodes_{side}nodeids[{k}] = {child:,} is outside the {limit:,} {what}"
                return
            if not is_leaf:
                children.setdefault(k, []).append(child)
    looped = _reached_twice(children, roots)
    if looped is not None:
        yield f"node {looped:,} is reached twice from the roots: a tree loops or shares a node"


CHECKS = (TreeEnsembleIds(),)
