"""``sensitivity.measure(model, batches) -> Sensitivity``: how much dynamic INT8 hurts each MatMul, ranked.

Dynamic INT8 (ONNX Runtime's ``quantize_dynamic``) replaces each MatMul whose B is a weight (and each Gemm, which
it first turns into a MatMul, and each fused ``Attention``'s input projection) by ``DynamicQuantizeLinear`` on the
activation (uint8, asymmetric, one scale for the whole tensor of the batch, its range always holding 0) and an int8
symmetric weight (one scale per tensor, or per output column). The integer product is exact, so a node's whole
error is that of its dequantized operands.

The FP32 model runs once over the sample batches with every such node's activation input exposed as an output;
for each node numpy then quantizes the activation as ``DynamicQuantizeLinear`` does (range from the whole tensor,
padding included, as at run time) and the weight both ways, multiplies a sample of rows, and accumulates the
output's relative error (RMS of the error over RMS of the output). Embedding Gathers are quantized as a uint8 table
(weight only): their error is the gathered rows'. That costs one FP32 pass and a few small matrix products per node
(17 s for the 41 nodes of the MiniLM classifier of ``examples.minilm`` on 16 golden batches, 2 shared cores),
where quantizing each node alone and running the golden set costs a quantization and a golden run per node (about
5 minutes there). On that model (head fitted with c=10) the rankings agree with Spearman 0.80 (the mean |error| of
the logits when only that MatMul is INT8, over the 36 MatMuls), 6 of the top 8 in common.

The ranking finds what breaks INT8 in transformers: activations with a few huge channels (the FFN's input, 33-44x
their RMS in MiniLM) stretch the one activation scale until ordinary values fall into a handful of steps; weights
with a few huge entries (the FFN down projections) do the same to a per-tensor weight scale, which per-channel
scales fix.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnxguard import runtime
from onnxguard.bundle.golden import Batch
from onnxguard.errors import ModelError
from onnxguard.progress import Event, Progress, silent

# Rows (tokens) of each activation multiplied per batch: the error estimate, not the range, is sampled.
ROWS_PER_BATCH = 32
SEED = 0


@dataclass(frozen=True)
class Target:
    """A node dynamic INT8 quantizes: its name, op, the tensor measured (a MatMul's activation input, a Gather's
    output rows), its weight initializer, and the name ONNX Runtime's ``nodes_to_exclude`` knows it by."""

    node: str
    op: str
    activation: str
    weight: str
    transpose: bool = False  # Gemm with transB: the weight is stored (N, K)
    exclude: str = ""  # "" : the node's name

    @property
    def excluded_as(self) -> str:
        return self.exclude or self.node


@dataclass(frozen=True)
class NodeSensitivity:
    """One node's dynamic-INT8 error on the sample batches, relative to its FP32 output (RMS over RMS).

    ``per_tensor``/``per_channel``: the whole error with one weight scale / one per output column;
    ``activation``: the error from quantizing only the activation; ``weight``: the per-tensor weight's error on
    the quantized activation;
    ``outlier``: the activation's largest magnitude over its RMS (a few huge channels make it large)."""

    node: str  # the name to give ``nodes_to_exclude``
    op: str
    shape: tuple[int, ...]
    per_tensor: float
    per_channel: float
    activation: float
    weight: float
    outlier: float

    def error(self, per_channel: bool) -> float:
        return self.per_channel if per_channel else self.per_tensor

    def why(self) -> str:
        """The larger source of the node's error, in words."""
        if self.op == "Gather":
            return f"embedding table in uint8 (max |w| = {self.outlier:.0f}x its RMS)"
        if self.activation >= self.weight:
            return f"activation range (max |x| = {self.outlier:.0f}x its RMS)"
        return "weight range"

    def to_dict(self) -> dict:
        return {"node": self.node, "op": self.op, "shape": list(self.shape), "per_tensor": round(self.per_tensor, 5),
                "per_channel": round(self.per_channel, 5), "activation": round(self.activation, 5),
                "weight": round(self.weight, 5), "outlier": round(self.outlier, 1), "why": self.why()}


@dataclass(frozen=True)
class Sensitivity:
    """Every quantizable node's error (MatMul, Gemm, Attention, Gather), most sensitive first (by the per-tensor
    error), and what measuring it cost."""

    nodes: tuple[NodeSensitivity, ...]
    batches: int
    rows: int
    reduce_range: bool
    seconds: float
    unnamed: int = 0  # quantizable nodes without a name (ONNX Runtime cannot be told to leave them out)
    maxima: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # max |x| per channel of each input
    # What the pass saw (each MatMul's target and weight, each activation's sample), for :meth:`simulate`.
    seen: dict[str, _Seen] = field(default_factory=dict, repr=False, compare=False)
    matmuls: tuple[tuple[Target, np.ndarray], ...] = field(default=(), repr=False, compare=False)

    def ranked(self, per_channel: bool) -> list[NodeSensitivity]:
        """The nodes, most sensitive first, for weights quantized per tensor or per channel."""
        return sorted(self.nodes, key=lambda n: -n.error(per_channel))

    def total(self, per_channel: bool) -> float:
        """The sum of the nodes' squared relative errors (a proxy of the whole model's INT8 noise)."""
        return float(sum(n.error(per_channel) ** 2 for n in self.nodes))

    def simulate(self, scales: dict[str, np.ndarray]) -> Sensitivity:
        """The same measure for the model smoothed by ``scales`` (graph node name -> the per-channel ``s`` its input
        is divided by and its weight rows multiplied by, :func:`onnxguard.speed.smooth.scales`), from what the
        FP32 pass saw: smoothing leaves every FP32 tensor as it was, so no second pass is needed."""
        start = time.perf_counter()
        again = {t.excluded_as: _simulate(t, w, self.seen[t.activation], self.reduce_range, scales[t.node])
                 for t, w in self.matmuls if t.node in scales}
        nodes = sorted((again.get(n.node, n) for n in self.nodes), key=lambda n: -n.per_tensor)
        return dataclasses.replace(self, nodes=tuple(nodes), seconds=self.seconds + time.perf_counter() - start)


def targets(model: onnx.ModelProto) -> list[Target]:
    """The nodes ``quantize_dynamic`` quantizes: MatMul with a 2-D float weight initializer as B; Gemm likewise
    (alpha = beta = 1, no transA: ONNX Runtime turns it into a MatMul named ``<name>_MatMul`` first); fused
    Attention (its input projection); and Gather from a float table (embeddings, quantized as uint8 per tensor)."""
    weights = {i.name: i for i in model.graph.initializer
               if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}
    found = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Attention") and len(node.input) > 1 and node.input[1] in weights:
            found.append(Target(node.name, node.op_type, node.input[0], node.input[1]))
        elif node.op_type == "Gemm" and len(node.input) > 1 and node.input[1] in weights:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0):
                found.append(Target(node.name, "Gemm", node.input[0], node.input[1], bool(attrs.get("transB", 0)),
                                    f"{node.name}_MatMul" if node.name else ""))
        elif node.op_type == "Gather" and node.input[0] in weights:
            found.append(Target(node.name, "Gather", node.output[0], node.input[0]))
    return found


def _dynamic_uint8(x: np.ndarray) -> tuple[float, float]:
    """``DynamicQuantizeLinear``'s scale and zero point for ``x``: the range [min(0, x), max(0, x)] over 255 steps."""
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = (hi - lo) / 255 or 1.0
    return scale, float(np.clip(np.round(-lo / scale), 0, 255))


def _weight_int8(w: np.ndarray, per_channel: bool, reduce_range: bool) -> np.ndarray:
    """``w`` through int8 symmetric quantization (scale max |w| / 127, or / 64 for 7-bit weights), dequantized;
    per channel: one scale per output column."""
    qmax = 64.0 if reduce_range else 127.0
    amax = np.abs(w).max(axis=0, keepdims=True) if per_channel else np.abs(w).max()
    scale = np.where(amax > 0, amax / qmax, 1.0)
    return (np.clip(np.round(w / scale), -qmax, qmax) * scale).astype(np.float32)


@dataclass(frozen=True)
class _Seen:
    """What the FP32 pass kept of one activation tensor, per batch: a sample of its rows, and its minimum, maximum
    and sum of squares per channel (enough to give the whole tensor's range and RMS after any per-channel scaling,
    so smoothing can be simulated without another pass)."""

    rows: list[np.ndarray]
    lo: list[np.ndarray]
    hi: list[np.ndarray]
    squares: list[np.ndarray]
    counts: list[int]


def _simulate(target: Target, w: np.ndarray, seen: _Seen, reduce_range: bool,
              s: np.ndarray | None = None) -> NodeSensitivity:
    """One MatMul's dynamic-INT8 error from what the pass saw of its input; ``s``: the input divided per channel by
    ``s`` and the weight's rows multiplied by it (smoothing)."""
    if s is not None:
        w = w * s[:, None]
    # The weight's error, per tensor and per channel, side by side: one product gives both.
    dw = np.concatenate([_weight_int8(w, False, reduce_range) - w, _weight_int8(w, True, reduce_range) - w], axis=1)
    sums = np.zeros(5)  # |y|^2, |e_tensor|^2, |e_channel|^2, |e_activation|^2, |e_weight|^2
    outlier = 0.0
    inv = None if s is None else (1.0 / s).astype(np.float32)
    for sample, lo, hi, sq, count in zip(seen.rows, seen.lo, seen.hi, seen.squares, seen.counts, strict=True):
        if inv is not None:  # s > 0: the scaled tensor's extremes per channel are the scaled extremes
            sample, lo, hi, sq = sample * inv, lo * inv, hi * inv, sq * inv.astype(np.float64) ** 2
        lo_all, hi_all = min(0.0, float(lo.min())), max(0.0, float(hi.max()))
        scale = (hi_all - lo_all) / 255 or 1.0
        zero = float(np.clip(np.round(-lo_all / scale), 0, 255))
        rms = float(np.sqrt(sq.sum() / max(count * len(sq), 1))) or 1.0
        outlier = max(outlier, max(abs(lo_all), hi_all) / rms)
        xq = ((np.clip(np.round(sample / scale) + zero, 0, 255) - zero) * scale).astype(np.float32)
        n, cols = len(sample), w.shape[1]
        # xq @ wq - x @ w = (xq - x) @ w + xq @ (wq - w): the activation's error and the weight's.
        y, e_act = np.split(np.concatenate([sample, xq - sample]) @ w, [n])
        e_wt, e_wc = np.split(xq @ dw, [cols], axis=1)
        for i, err in enumerate((e_act + e_wt, e_act + e_wc, e_act, e_wt), start=1):
            sums[i] += float(np.square(err, dtype=np.float64).sum())
        sums[0] += float(np.square(y, dtype=np.float64).sum())
    tensor, channel, activation, weight = (float(v) for v in np.sqrt(sums[1:] / (sums[0] or 1.0)))
    return NodeSensitivity(target.excluded_as, target.op, tuple(w.shape), tensor, channel, activation, weight,
                           outlier)


class _Table:
    """An embedding Gather's error: its gathered rows through the table's uint8 quantization (weight only)."""

    def __init__(self, target: Target, w: np.ndarray) -> None:
        self.target, self.w = target, w
        self.scale, self.zero = _dynamic_uint8(w)
        self.sums = np.zeros(2)

    def add(self, x: np.ndarray) -> None:
        flat = x.reshape(-1, x.shape[-1])
        err = (np.clip(np.round(flat / self.scale) + self.zero, 0, 255) - self.zero) * self.scale - flat
        self.sums += [float(np.square(flat, dtype=np.float64).sum()), float(np.square(err, dtype=np.float64).sum())]

    def result(self) -> NodeSensitivity:
        e = float(np.sqrt(self.sums[1] / (self.sums[0] or 1.0)))
        outlier = float(np.abs(self.w).max() / (np.sqrt(np.mean(np.square(self.w, dtype=np.float64))) or 1))
        return NodeSensitivity(self.target.excluded_as, "Gather", tuple(self.w.shape), e, e, 0.0, e, outlier)


def _exposed(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs also give the tensors ``names``."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    have = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                             for n in dict.fromkeys(names) if n not in have)
    return copy


def measure(model: onnx.ModelProto, batches: Sequence[Batch], reduce_range: bool = False, threads: int = 0,
            progress: Progress = silent) -> Sensitivity:
    """Each quantizable node's dynamic-INT8 error on ``batches`` (see the module's docstring), most sensitive
    first. A model without such nodes is a ``ModelError``."""
    start = time.perf_counter()
    found = targets(model)
    if not found:
        raise ModelError("no MatMul, Gemm or Gather with a weight to quantize: dynamic INT8 leaves this model as it is")
    inits = {i.name: i for i in model.graph.initializer}
    weights = {t.weight: numpy_helper.to_array(inits[t.weight]).astype(np.float32) for t in found}
    tables = [_Table(t, weights[t.weight]) for t in found if t.op == "Gather"]
    matmuls = tuple((t, weights[t.weight].T.copy() if t.transpose else weights[t.weight]) for t in found
                    if t.op != "Gather")
    sess = runtime.session(_exposed(model, [t.activation for t in found]), threads=threads, name="the FP32 model")
    wanted = [i.name for i in sess.get_inputs()]
    names = list(dict.fromkeys(t.activation for t in found))
    inputs = {t.activation for t, _ in matmuls}
    seen = {name: _Seen([], [], [], [], []) for name in inputs}
    rows = np.random.default_rng(SEED)
    maxima: dict[str, np.ndarray] = {}
    for i, batch in enumerate(batches):
        progress(Event("quantize", f"sensitivity: batch {i + 1}/{len(batches)}", i, len(batches)))
        try:
            values = dict(zip(names, sess.run(names, {k: batch[k] for k in wanted}), strict=True))
        except runtime.RUN_ERRORS as e:
            raise ModelError(f"sensitivity: batch {i} does not run: {runtime.first_line(e)}") from e
        for table in tables:
            table.add(values[table.target.activation])
        for name, v in values.items():
            flat = v.reshape(-1, v.shape[-1])
            top = np.abs(flat).max(axis=0) if v.size else np.zeros(v.shape[-1], v.dtype)
            maxima[name] = np.maximum(maxima[name], top) if name in maxima else top
            if name in seen and len(flat):
                keep = seen[name]
                keep.rows.append(flat[rows.choice(len(flat), min(len(flat), ROWS_PER_BATCH), replace=False)]
                                 .astype(np.float32))
                keep.lo.append(flat.min(axis=0))
                keep.hi.append(flat.max(axis=0))
                keep.squares.append(np.square(flat, dtype=np.float64).sum(axis=0))
                keep.counts.append(len(flat))
    del sess
    nodes = [*(_simulate(t, w, seen[t.activation], reduce_range) for t, w in matmuls), *(t.result() for t in tables)]
    nodes.sort(key=lambda n: -n.per_tensor)
    sampled = sum(len(r) for r in seen[matmuls[0][0].activation].rows) if matmuls else 0
    return Sensitivity(tuple(nodes), len(batches), sampled, reduce_range, time.perf_counter() - start,
                       sum(1 for t in found if not t.node), maxima, seen, matmuls)
