"""The structural diff of two models: operators added, removed and changed; initializers changed and by how much;
new branches whose condition derives from a graph input; graph inputs and outputs changed or rewired.

Nodes are matched by name (a name used once in its graph), unnamed ones by their op type and outputs.
Initializers are matched by name and compared element by element (max |diff|, relative change of the norm,
count of changed elements); external data is never read, only its reference compared. A branch (``Where``,
``If``, ``Loop``) whose condition derives from a graph input is matched by what decides it (the op, the inputs
it derives from, the ops and small constants near it): one the reference has too (an attention mask's ``Where``)
cancels out; a new one is a finding naming the chain from the input and the constants it compares with.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxguard.diff import rules
from onnxguard.diff.graph import Graph, index
from onnxguard.diff.options import DiffOptions
from onnxguard.model import onnxfile
from onnxguard.scan.interface import Finding, Severity, quote

# Ops that choose between values or paths at run time, and which of their inputs decide.
BRANCH_OPS = {"Where": (0,), "If": (0,), "Loop": (0, 1)}
# Names listed in one finding's message; the JSON report lists them all.
SHOWN = 10
# Initializer findings beyond this many are counted in one more finding.
MAX_WEIGHT_FINDINGS = 50


@dataclass(frozen=True)
class WeightChange:
    """One initializer (or numeric attribute) that differs: ``status`` is changed, added, removed, reshaped or
    external (not read)."""

    name: str
    status: str
    shape: tuple[int, ...]
    max_abs: float | None = None
    relative: float | None = None
    changed: int | None = None
    total: int | None = None
    attribute: bool = False  # a node's attribute (``node.attr``), not an initializer

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "shape": list(self.shape), "max_abs": self.max_abs,
                "relative": self.relative, "changed": self.changed, "total": self.total, "attribute": self.attribute}


@dataclass(frozen=True)
class Branch:
    """A branch of the candidate that the reference lacks, whose condition derives from graph inputs."""

    node: str
    op: str
    inputs: tuple[str, ...]
    path: tuple[str, ...]
    constants: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"node": self.node, "op": self.op, "inputs": list(self.inputs), "path": list(self.path),
                "constants": list(self.constants)}


@dataclass(frozen=True)
class StructuralDiff:
    """Everything that differs in the two graphs, and the findings it makes."""

    ops_added: dict[str, int]
    ops_removed: dict[str, int]
    nodes_added: tuple[str, ...]
    nodes_removed: tuple[str, ...]
    nodes_changed: tuple[str, ...]
    weights: tuple[WeightChange, ...]
    weights_compared: int
    branches: tuple[Branch, ...]
    outputs: tuple[str, ...]
    inputs: tuple[str, ...]
    findings: tuple[Finding, ...]

    @property
    def same(self) -> bool:
        return not (self.ops_added or self.ops_removed or self.nodes_added or self.nodes_removed
                    or self.nodes_changed or self.weights or self.branches or self.outputs or self.inputs)

    def to_dict(self) -> dict:
        return {"ops_added": self.ops_added, "ops_removed": self.ops_removed, "nodes_added": list(self.nodes_added),
                "nodes_removed": list(self.nodes_removed), "nodes_changed": list(self.nodes_changed),
                "initializers_compared": self.weights_compared,
                "initializers": [w.to_dict() for w in self.weights], "branches": [b.to_dict() for b in self.branches],
                "outputs": list(self.outputs), "inputs": list(self.inputs)}


def _listed(names: list[str] | tuple[str, ...]) -> str:
    shown = ", ".join(quote(n) for n in names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _op(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"


def _keys(g: Graph) -> dict[str, int]:
    """Each node by its name when the name is used once, else by its op type and outputs."""
    names = Counter(n.name for n in g.model.graph.node)
    return {(n.name if n.name and names[n.name] == 1 else f"{_op(n)}->{','.join(n.output)}"): i
            for i, n in enumerate(g.model.graph.node)}


def _node_change(a: onnx.NodeProto, b: onnx.NodeProto) -> list[str]:
    what = []
    if _op(a) != _op(b):
        what.append(f"op {_op(a)} -> {_op(b)}")
    if list(a.input) != list(b.input):
        what.append("inputs")
    if list(a.output) != list(b.output):
        what.append("outputs")
    attrs_a = sorted((x.name, x.SerializeToString()) for x in a.attribute)
    attrs_b = sorted((x.name, x.SerializeToString()) for x in b.attribute)
    if attrs_a != attrs_b:
        what.append("attributes")
    return what


def _ops(ref: Graph, cand: Graph, file: str, pairs: list[tuple[int, int]]
         ) -> tuple[dict[str, int], dict[str, int], list[str], list[str], list[str], list[Finding]]:
    """The op histogram's changes and the nodes added, removed and changed; ``pairs`` gets the (reference,
    candidate) indices of matched nodes whose attributes changed."""
    hist_a = Counter(_op(n) for n in ref.model.graph.node)
    hist_b = Counter(_op(n) for n in cand.model.graph.node)
    added = dict(sorted((hist_b - hist_a).items()))
    removed = dict(sorted((hist_a - hist_b).items()))
    keys_a, keys_b = _keys(ref), _keys(cand)
    nodes_added = [cand.labels[i] for k, i in keys_b.items() if k not in keys_a]
    nodes_removed = [ref.labels[i] for k, i in keys_a.items() if k not in keys_b]
    changed: list[tuple[str, str]] = []
    for k, i in keys_b.items():
        if k in keys_a:
            a, b = ref.node(keys_a[k]), cand.node(i)
            what = [] if a.SerializeToString() == b.SerializeToString() else _node_change(a, b)
            if what:
                changed.append((cand.labels[i], ", ".join(what)))
                if "attributes" in what:
                    pairs.append((keys_a[k], i))
    findings = []
    if added or removed:
        counts = ", ".join([f"{op} +{n}" for op, n in added.items()] + [f"{op} -{n}" for op, n in removed.items()])
        findings.append(rules.OPS.finding(f"operators: {counts}", file))
    if nodes_added:
        findings.append(rules.OPS.finding(f"{len(nodes_added)} node(s) added: {_listed(nodes_added)}", file))
    if nodes_removed:
        findings.append(rules.OPS.finding(f"{len(nodes_removed)} node(s) removed: {_listed(nodes_removed)}", file))
    if changed:
        shown = "; ".join(f"{quote(name)} ({what})" for name, what in changed[:SHOWN])
        more = f"; and {len(changed) - SHOWN} more" if len(changed) > SHOWN else ""
        findings.append(rules.OPS.finding(f"{len(changed)} node(s) changed: {shown}{more}", file))
    return added, removed, nodes_added, nodes_removed, [f"{name} ({what})" for name, what in changed], findings


def _shape(t: onnx.TensorProto) -> tuple[int, ...]:
    return tuple(int(d) for d in t.dims)


def _array_change(name: str, x: np.ndarray, y: np.ndarray, shape: tuple[int, ...]) -> WeightChange | None:
    """How two arrays of the same shape differ; None when they are equal (NaN equal to NaN)."""
    if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
        changed = int(np.count_nonzero(x != y))
        return WeightChange(name, "changed", shape, None, None, changed, int(y.size)) if changed else None
    x64, y64 = x.astype(np.float64).reshape(-1), y.astype(np.float64).reshape(-1)
    both_nan = np.isnan(x64) & np.isnan(y64)
    differ = (x64 != y64) & ~both_nan
    changed = int(np.count_nonzero(differ))
    if not changed:
        return None
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: nan, counted as a change below
        delta = np.where(both_nan | ~differ, 0.0, np.nan_to_num(np.abs(y64 - x64), nan=np.inf))
    max_abs = float(np.max(delta))
    norm = float(np.linalg.norm(np.nan_to_num(x64)))
    step = float(np.linalg.norm(np.nan_to_num(delta)))
    relative = step / norm if norm > 0 else float("inf")
    return WeightChange(name, "changed", shape, max_abs, relative, changed, int(y64.size))


def _compare_values(name: str, a: onnx.TensorProto, b: onnx.TensorProto) -> WeightChange | None:
    if a.data_location == onnx.TensorProto.EXTERNAL or b.data_location == onnx.TensorProto.EXTERNAL:
        same = (a.data_location == b.data_location
                and [(e.key, e.value) for e in a.external_data] == [(e.key, e.value) for e in b.external_data])
        return None if same else WeightChange(name, "external", _shape(b))
    return _array_change(name, numpy_helper.to_array(a), numpy_helper.to_array(b), _shape(b))


# Attributes that hold weights (tree thresholds, linear coefficients, a Constant's value) and how to read them.
_NUMERIC = {onnx.AttributeProto.FLOAT: "f", onnx.AttributeProto.INT: "i", onnx.AttributeProto.FLOATS: "floats",
            onnx.AttributeProto.INTS: "ints"}


def _attribute_weights(ref: Graph, cand: Graph, pairs: list[tuple[int, int]]) -> list[WeightChange]:
    """Numeric attributes (and tensor attributes) of matched nodes whose values changed, named ``node.attr``."""
    out = []
    for i, j in pairs:
        attrs_a = {x.name: x for x in ref.node(i).attribute}
        for b in cand.node(j).attribute:
            a = attrs_a.get(b.name)
            if a is None or a.type != b.type or a.SerializeToString() == b.SerializeToString():
                continue
            name = f"{cand.labels[j]}.{b.name}"
            if b.type == onnx.AttributeProto.TENSOR:
                if a.t.data_type != b.t.data_type or _shape(a.t) != _shape(b.t):
                    out.append(WeightChange(name, "reshaped", _shape(b.t)))
                elif (change := _compare_values(name, a.t, b.t)) is not None:
                    out.append(change)
            elif b.type in _NUMERIC:
                field = _NUMERIC[b.type]
                x, y = np.atleast_1d(np.array(getattr(a, field))), np.atleast_1d(np.array(getattr(b, field)))
                if x.shape != y.shape:
                    out.append(WeightChange(name, "reshaped", y.shape))
                elif (change := _array_change(name, x, y, y.shape)) is not None:
                    out.append(change)
    return [dataclasses.replace(w, attribute=True) for w in out]


def _weights(ref: Graph, cand: Graph, file: str, options: DiffOptions, attributes: list[WeightChange]
             ) -> tuple[list[WeightChange], int, list[Finding]]:
    out: list[WeightChange] = []
    compared = 0
    for name, b in cand.initializers.items():
        a = ref.initializers.get(name)
        if a is None:
            out.append(WeightChange(name, "added", _shape(b)))
            continue
        compared += 1
        if a.SerializeToString() == b.SerializeToString():
            continue
        if a.data_type != b.data_type or _shape(a) != _shape(b):
            out.append(WeightChange(name, "reshaped", _shape(b)))
            continue
        change = _compare_values(name, a, b)
        if change is not None:
            out.append(change)
    out += [WeightChange(name, "removed", _shape(a)) for name, a in ref.initializers.items()
            if name not in cand.initializers]
    out += attributes
    findings: list[Finding] = []
    for w in out:
        if w.status == "changed" and w.max_abs is not None and w.max_abs <= options.weight_atol:
            continue
        what = f"{'attribute' if w.attribute else 'initializer'} {quote(w.name)}"
        if w.status == "changed":
            size = (f"max |diff| {w.max_abs:.4g}, relative change {w.relative:.3g}, " if w.max_abs is not None
                    else "")
            message = f"{what} changed: {size}{w.changed} of {w.total} element(s)"
        elif w.status == "reshaped":
            message = f"{what} changed its type or shape (now {list(w.shape)})"
        elif w.status == "external":
            message = f"{what} keeps its data in another external file or place (not read)"
        else:
            message = f"{what} {w.status} (shape {list(w.shape)})"
        severity = Severity.LOW if w.status in ("added", "removed") else None
        node = w.name.rpartition(".")[0] if w.attribute else None
        findings.append(rules.INITIALIZER.finding(message, file, node=node, tensor=None if w.attribute else w.name,
                                                  severity=severity))
    if len(findings) > MAX_WEIGHT_FINDINGS:
        rest = len(findings) - MAX_WEIGHT_FINDINGS
        worst = max(f.severity for f in findings[MAX_WEIGHT_FINDINGS:])
        findings = findings[:MAX_WEIGHT_FINDINGS] + [
            rules.INITIALIZER.finding(f"{rest} more initializer change(s) (see the JSON report)", file,
                                      severity=worst)]
    return out, compared, findings


def _branches(g: Graph) -> list[tuple[tuple, int, tuple[str, ...], tuple[str, ...]]]:
    """Every input-dependent branch of ``g``: (its matching key, node index, inputs it derives from, constants)."""
    found = []
    for i, node in enumerate(g.model.graph.node):
        positions = BRANCH_OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if positions is None:
            continue
        conditions = [node.input[p] for p in positions if p < len(node.input) and node.input[p]]
        derived = sorted(frozenset().union(*(g.ancestry.get(c, frozenset()) for c in conditions)))
        if not derived:
            continue
        recipes = [g.recipe(c) for c in conditions]
        ops = tuple(sorted(op for r in recipes for op in r[0]))
        constants = tuple(sorted(c for r in recipes for c in r[1]))
        found.append(((node.op_type, tuple(derived), ops, constants), i, tuple(derived), constants))
    return found


def _new_branches(ref: Graph, cand: Graph, file: str) -> tuple[list[Branch], list[Finding]]:
    """The candidate's input-dependent branches the reference lacks: matched first by their whole key, then the
    rest by op, inputs and constants alone (an optimizer may change the ops around a condition, not what it
    compares with)."""
    known = Counter(key for key, *_ in _branches(ref))
    unmatched = []
    for key, i, derived, constants in _branches(cand):
        if known[key] > 0:
            known[key] -= 1
        else:
            unmatched.append((key, i, derived, constants))
    loose = Counter((op, inputs, consts) for (op, inputs, _, consts), n in known.items() for _ in range(n))
    new: list[Branch] = []
    for (op, inputs, _, consts), i, derived, constants in unmatched:
        if loose[op, inputs, consts] > 0:
            loose[op, inputs, consts] -= 1
            continue
        node = cand.node(i)
        condition = node.input[BRANCH_OPS[node.op_type][0]] if node.input else ""
        path = tuple(cand.path_from_input(condition)) + (node.op_type,) if condition else (node.op_type,)
        new.append(Branch(cand.labels[i], node.op_type, derived, path, constants))
    findings = []
    for b in new:
        via = " -> ".join(b.path)
        consts = f", reading small constant(s) {', '.join(b.constants)}" if b.constants else ""
        inputs = ", ".join(quote(n) for n in b.inputs)
        findings.append(rules.BRANCH.finding(
            f"new data-dependent {b.op} {quote(b.node)}: its condition derives from graph input(s) {inputs} "
            f"({via}){consts}; the reference has no such branch", file, node=b.node))
    return new, findings


def _producer(g: Graph, name: str) -> str:
    if name in g.producer:
        i = g.producer[name]
        return f"{_op(g.node(i))} {quote(g.labels[i])}"
    if name in g.inputs:
        return f"graph input {quote(name)}"
    if name in g.initializers:
        return f"initializer {quote(name)}"
    return "nothing"


def _io(ref: Graph, cand: Graph, file: str) -> tuple[list[str], list[str], list[Finding]]:
    outputs: list[str] = []
    inputs: list[str] = []
    specs_a = {s.name: s for s in onnxfile.outputs(ref.model)}
    specs_b = {s.name: s for s in onnxfile.outputs(cand.model)}
    for name in specs_a.keys() - specs_b.keys():
        outputs.append(f"output {quote(name)} removed")
    for name in specs_b.keys() - specs_a.keys():
        outputs.append(f"output {quote(name)} added")
    for name in specs_a.keys() & specs_b.keys():
        a, b = specs_a[name], specs_b[name]
        if (a.dtype, a.shape) != (b.dtype, b.shape):
            outputs.append(f"output {quote(name)} changed type: {a.dtype}{list(a.shape or [])} -> "
                           f"{b.dtype}{list(b.shape or [])}")
        was, now = _producer(ref, name), _producer(cand, name)
        if was != now:
            outputs.append(f"output {quote(name)} rewired: produced by {was} in the reference, by {now} in the "
                           "candidate")
    ins_a = {s.name: s for s in onnxfile.inputs(ref.model)}
    ins_b = {s.name: s for s in onnxfile.inputs(cand.model)}
    for name in sorted(ins_a.keys() ^ ins_b.keys()):
        inputs.append(f"input {quote(name)} {'removed' if name in ins_a else 'added'}")
    for name in sorted(ins_a.keys() & ins_b.keys()):
        a, b = ins_a[name], ins_b[name]
        if (a.dtype, a.shape) != (b.dtype, b.shape):
            inputs.append(f"input {quote(name)} changed type: {a.dtype}{list(a.shape or [])} -> "
                          f"{b.dtype}{list(b.shape or [])}")
    outputs.sort()
    findings = [rules.OUTPUTS.finding(m, file) for m in outputs] + [rules.INPUTS.finding(m, file) for m in inputs]
    return outputs, inputs, findings


def compare(reference: onnx.ModelProto | Graph, candidate: onnx.ModelProto | Graph, file: str,
            options: DiffOptions | None = None) -> StructuralDiff:
    """The structural diff of ``candidate`` against ``reference`` (models, or their graphs already indexed);
    findings are located in ``file``."""
    options = options or DiffOptions()
    ref = reference if isinstance(reference, Graph) else index(reference)
    cand = candidate if isinstance(candidate, Graph) else index(candidate)
    pairs: list[tuple[int, int]] = []
    added, removed, nodes_added, nodes_removed, changed, op_findings = _ops(ref, cand, file, pairs)
    weights, compared, weight_findings = _weights(ref, cand, file, options, _attribute_weights(ref, cand, pairs))
    branches, branch_findings = _new_branches(ref, cand, file)
    outputs, inputs, io_findings = _io(ref, cand, file)
    return StructuralDiff(added, removed, tuple(nodes_added), tuple(nodes_removed), tuple(changed), tuple(weights),
                          compared, tuple(branches), tuple(outputs), tuple(inputs),
                          tuple(branch_findings + weight_findings + io_findings + op_findings))
