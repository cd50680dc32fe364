"""Exact rewrites that make a model's static INT8 graph faster, applied before quantization.

``rewrite.pool_before_norm(model) -> (model, moved)`` lets static INT8 pool in uint8.

Conv -> ReLU -> BatchNormalization -> MaxPool is a common ordering (the source documents' CIFAR CNN uses it). Under
ONNX Runtime's static QDQ quantization BatchNormalization has no quantized kernel, so the activations are
dequantized before it and the MaxPool after it runs on float NCHW data at full resolution: on benchmark B's CNN at
batch 1 on one thread (AVX2-only AMD EPYC, onnxruntime 1.32) the three float MaxPools were 25 % of the run and the
normalizations another 3 %.

Where every channel's scale ``gamma / sqrt(var + eps)`` is positive, ``max(a*x + b) = a*max(x) + b`` per channel, and
bit for bit (rounding is monotone, so the largest input gives the largest output). The MaxPool can then go first:
it takes the quantized ReLU output (a uint8 MaxPool) and the normalization runs on a quarter of the values. That
CNN's static INT8 model went from 0.627 to 0.441 ms at batch 1 (1.42x) with the same outputs in FP32 (max |diff| 0).

A normalization with a zero or negative scale in any channel, more than one consumer, extra (training) outputs or
parameters that are not initializers is left where it is.

``rewrite.channels_to_four(model) -> (model, padded)`` gives each convolution whose input channels are not a
multiple of 4 zero weights for the missing channels, and a ``Pad`` that adds those channels (of zeros) to its input.
Every output is the same sum (the added terms are zero times whatever the padding holds), and ONNX Runtime then runs
the quantized convolution with its faster kernels: on benchmark B's CNN, whose first convolution reads the image's
3 channels, that QLinearConv went from 0.95 to 0.55 ms at batch 32 on two threads and the whole static INT8 model
from 7.18 to 6.85 ms (0.444 to 0.431 ms at batch 1 on one thread), outputs identical (AVX2-only AMD EPYC,
onnxruntime 1.32). Padding to 8 or 16 channels was slower again (1.04x and 1.11x the time at 4).

``rewrite.scale_into_conv(model) -> (model, folded)`` moves each such normalization's scale into the convolution
before its ReLU, and leaves a per-channel ``Add`` of its shift. With ``a`` positive in every channel,
``a*relu(conv(x)) = relu((a*W) conv x + a*bias)``, and a MaxPool between them commutes with it as above: the same
function, float rounding apart (FP32 logits of that CNN on its 450 test images: max |diff| 5.7e-6 against a largest
logit of 22.6). A BatchNormalization has no quantized
kernel, so ONNX Runtime ran each in float NCHW between two layout transposes and a dequantize/quantize pair; the
``Add`` runs as a uint8 ``QLinearAdd`` in the convolutions' NHWC layout and the transposes cancel. That CNN's static
INT8 model: 21 nodes after ONNX Runtime's optimizations instead of 37, with the channel Pad below left in float 1.7 %
faster at batch 32 on two threads and 1.9 % at batch 1 on one, in paired runs, top-1 unchanged (AVX2-only AMD EPYC,
onnxruntime 1.32).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper


def pool_before_norm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` with each eligible BatchNormalization -> MaxPool pair swapped, and how many were; ``model`` itself
    when there is none (it is never modified)."""
    pairs = _pairs(model.graph)
    if not pairs:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    names = {t for n in graph.node for t in (*n.input, *n.output)} | {i.name for i in graph.input}
    order = list(graph.node)
    for bn_index, pool_index in pairs:
        bn, pool = order[bn_index], order[pool_index]
        pooled = bn.output[0] + "/pooled"
        while pooled in names:
            pooled += "_"
        names.add(pooled)
        gone = bn.output[0]
        pool.input[0], pool.output[0], bn.input[0], bn.output[0] = bn.input[0], pooled, pooled, pool.output[0]
        order[bn_index], order[pool_index] = pool, bn  # each still after what it reads
        stale = [v for v in graph.value_info if v.name == gone]  # the full-resolution normalized tensor is no more
        for v in stale:
            graph.value_info.remove(v)
    del graph.node[:]
    graph.node.extend(order)
    return out, len(pairs)


def _pairs(graph: onnx.GraphProto) -> list[tuple[int, int]]:
    """(BatchNormalization index, MaxPool index) of each pair that may be swapped."""
    inits = {i.name: i for i in graph.initializer}
    readers: dict[str, list[int]] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            readers.setdefault(name, []).append(index)
    reads = _readers(graph)  # graph outputs and subgraphs included
    pairs = []
    for index, bn in enumerate(graph.node):
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx") or len(bn.output) != 1:
            continue
        after = readers.get(bn.output[0], [])
        if len(after) != 1 or reads[bn.output[0]] != 1:
            continue
        pool = graph.node[after[0]]
        if pool.op_type != "MaxPool" or pool.domain not in ("", "ai.onnx") or len(pool.output) != 1:
            continue
        if len(bn.input) != 5 or not all(name in inits for name in bn.input[1:]) or _training(bn):
            continue
        if np.all(_affine(bn, inits)[0] > 0):
            pairs.append((index, after[0]))
    return pairs


def _copy(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto], Callable[[str], str]]:
    """A copy of ``model`` to rewrite, its initializers by name, and a maker of names no tensor or node has yet."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    names = {t for n in graph.node for t in (*n.input, *n.output, n.name)} | {i.name for i in graph.input} | set(inits)

    def fresh(base: str) -> str:
        name = base
        while name in names:
            name += "_"
        names.add(name)
        return name

    return out, inits, fresh


def _training(bn: onnx.NodeProto) -> bool:
    return any(a.name == "training_mode" and a.i for a in bn.attribute)


# Input channels of a convolution are padded up to a multiple of this (see the module's docstring).
CHANNEL_MULTIPLE = 4


def channels_to_four(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` with each eligible convolution's input channels padded to a multiple of ``CHANNEL_MULTIPLE``, and
    how many were; ``model`` itself when there is none (it is never modified). Eligible: a plain ``Conv`` of one
    group whose weight is an initializer that nothing else reads, in a model of opset 11 or later (``Pad`` takes its
    pads as an input from there)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    targets = _narrow_convs(model.graph) if opset >= 11 else set()
    if not targets:
        return model, 0
    out, inits, fresh = _copy(model)
    graph = out.graph
    order: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        if index in targets:
            w = numpy_helper.to_array(inits[node.input[1]])
            extra = -w.shape[1] % CHANNEL_MULTIPLE
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(
                np.concatenate([w, np.zeros((w.shape[0], extra, *w.shape[2:]), w.dtype)], axis=1), node.input[1]))
            pads = fresh(f"{node.input[1]}/channel_pads")
            graph.initializer.append(numpy_helper.from_array(
                np.array([0] * w.ndim + [0, extra] + [0] * (w.ndim - 2), np.int64), pads))
            padded = fresh(f"{node.input[0]}/channels_to_{w.shape[1] + extra}")
            order.append(onnx.helper.make_node("Pad", [node.input[0], pads], [padded], name=fresh(f"{node.name}/pad"),
                                               mode="constant"))
            node.input[0] = padded
        order.append(node)
    del graph.node[:]
    graph.node.extend(order)
    return out, len(targets)


def _narrow_convs(graph: onnx.GraphProto) -> set[int]:
    """Indexes of the convolutions ``channels_to_four`` pads."""
    inits = {i.name: i for i in graph.initializer}
    readers = _readers(graph)
    found = set()
    for index, node in enumerate(graph.node):
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        weight = inits.get(node.input[1])
        if weight is None or readers[node.input[1]] != 1 or len(weight.dims) < 3 or not node.input[0]:
            continue
        if any(a.name == "group" and a.i != 1 for a in node.attribute):
            continue
        if weight.dims[1] % CHANNEL_MULTIPLE:
            found.add(index)
    return found


def scale_into_conv(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` with each eligible normalization's scale moved into its convolution and its shift left as an
    ``Add``, and how many were; ``model`` itself when there is none (it is never modified). Eligible: Conv -> Relu
    [-> MaxPool] -> BatchNormalization, each tensor between them read only by the next node, the convolution's
    weight (and bias) initializers read by nothing else, and the normalization as ``pool_before_norm`` requires
    (positive scale in every channel, initializer parameters, inference mode)."""
    chains = _norm_chains(model.graph)
    if not chains:
        return model, 0
    out, inits, fresh = _copy(model)
    graph = out.graph
    nodes = list(graph.node)
    for bn_index, conv_index in chains:
        bn, conv = nodes[bn_index], nodes[conv_index]
        scale, shift = _affine(bn, inits)
        weight = numpy_helper.to_array(inits[conv.input[1]])
        per_channel = scale.reshape(-1, *[1] * (weight.ndim - 1))
        inits[conv.input[1]].CopyFrom(numpy_helper.from_array((weight * per_channel).astype(weight.dtype),
                                                              conv.input[1]))
        if len(conv.input) > 2 and conv.input[2]:
            bias = numpy_helper.to_array(inits[conv.input[2]])
            inits[conv.input[2]].CopyFrom(numpy_helper.from_array((bias * scale).astype(bias.dtype), conv.input[2]))
        shift_name = fresh(bn.input[2] + "/shift")
        graph.initializer.append(numpy_helper.from_array(
            shift.astype(weight.dtype).reshape(-1, *[1] * (weight.ndim - 2)), shift_name))
        nodes[bn_index] = onnx.helper.make_node("Add", [bn.input[0], shift_name], [bn.output[0]],
                                                name=fresh(f"{bn.name or bn.output[0]}/shift"))
    del graph.node[:]
    graph.node.extend(nodes)
    unread = set(inits) - set(_readers(graph))  # the normalizations' own parameters, unless read elsewhere
    for init in [i for i in graph.initializer if i.name in unread]:
        graph.initializer.remove(init)
    return out, len(chains)


def _readers(graph: onnx.GraphProto) -> dict[str, int]:
    """How many times each tensor is read: by the nodes, by the nodes of their subgraphs (If, Loop, Scan bodies
    read the outer graph's tensors by name), and as a graph output."""
    readers: dict[str, int] = {}
    todo = [graph]
    while todo:
        g = todo.pop()
        for name in [*(i for n in g.node for i in n.input), *(o.name for o in g.output)]:
            readers[name] = readers.get(name, 0) + 1
        todo += [sub for n in g.node for a in n.attribute for sub in (a.g, *a.graphs) if a.type in (
            onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) and sub.ByteSize()]
    return readers


def _affine(bn: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple[np.ndarray, np.ndarray]:
    """A BatchNormalization's per-channel ``(scale, shift)``: it computes ``scale * x + shift``."""
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    gamma, beta, mean, var = (numpy_helper.to_array(inits[name]).astype(np.float64) for name in bn.input[1:5])
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def _norm_chains(graph: onnx.GraphProto) -> list[tuple[int, int]]:
    """(BatchNormalization index, Conv index) of each chain ``scale_into_conv`` folds."""
    inits = {i.name: i for i in graph.initializer}
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output}
    readers = _readers(graph)

    def only_reader(name: str, op_type: str) -> int | None:
        """The node making ``name``, if it is a plain ``op_type`` with one output that only the next node reads."""
        index = producer.get(name)
        if index is None or readers.get(name) != 1:
            return None
        node = graph.node[index]
        ok = node.op_type == op_type and node.domain in ("", "ai.onnx") and len(node.output) == 1
        return index if ok else None

    chains = []
    for index, bn in enumerate(graph.node):
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx") or len(bn.output) != 1:
            continue
        if len(bn.input) != 5 or not all(name in inits for name in bn.input[1:]) or _training(bn):
            continue
        if not np.all(_affine(bn, inits)[0] > 0):
            continue
        before = only_reader(bn.input[0], "MaxPool")
        relu = only_reader(graph.node[before].input[0] if before is not None else bn.input[0], "Relu")
        conv = only_reader(graph.node[relu].input[0], "Conv") if relu is not None else None
        if conv is None:
            continue
        params = [name for name in graph.node[conv].input[1:3] if name]
        if all(name in inits and readers[name] == 1 for name in params):
            chains.append((index, conv))
    return chains
