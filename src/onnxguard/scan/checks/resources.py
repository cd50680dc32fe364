"""Resource bombs: ops whose output size comes from constant arguments and would exceed the memory limit,
stored tensors whose declared dims do not match their data, and graph inputs with huge fixed dims.

Allocation sizes are lower bounds: a dim the scanner cannot know statically counts as 1 and an unknown element
type as 1 byte, so an ordinary model is never flagged by a guess.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from onnxguard.scan import tensors
from onnxguard.scan.interface import BaseCheck, Finding, ScanContext, Severity, quote
from onnxguard.scan.walk import Body, bodies, node_label, stored_tensors

# Constants larger than this are never shape arguments; they are not converted to arrays.
SHAPE_ARGUMENT_MAX_ELEMENTS = 4096


class Scope:
    """Constant values and static shapes visible in one body (its own and its enclosing bodies')."""

    def __init__(self, body: Body):
        self.tensors: dict[str, onnx.TensorProto] = {}
        self.types: dict[str, onnx.TypeProto] = {}
        chain = []
        b: Body | None = body
        while b is not None:
            chain.append(b)
            b = b.parent
        for b in reversed(chain):  # inner scopes win
            if b.graph is not None:
                self.tensors.update({t.name: t for t in b.graph.initializer})
                for v in (*b.graph.input, *b.graph.value_info, *b.graph.output):
                    self.types[v.name] = v.type
            for node in b.nodes:
                if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
                    t = _constant_tensor(node)
                    if t is not None:
                        self.tensors[node.output[0]] = t

    def value(self, name: str) -> np.ndarray | None:
        t = self.tensors.get(name)
        if t is None or t.data_location == onnx.TensorProto.EXTERNAL:  # never read external data here
            return None
        n = tensors.element_count(t)
        stored = tensors.stored_count(t)
        if n is None or n > SHAPE_ARGUMENT_MAX_ELEMENTS or stored is None or stored[1] not in stored[2]:
            return None
        return numpy_helper.to_array(t).reshape(-1)

    def shape(self, name: str) -> list[int] | None:
        if name in self.tensors:
            return list(self.tensors[name].dims)
        tt = self.types.get(name)
        if tt is None or not tt.HasField("tensor_type") or not tt.tensor_type.HasField("shape"):
            return None
        dims = tt.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else 1 for d in dims]

    def element_bits(self, name: str) -> int:
        if name in self.tensors:
            return tensors.element_bits(self.tensors[name].data_type) or 8
        tt = self.types.get(name)
        if tt is not None and tt.HasField("tensor_type"):
            return tensors.element_bits(tt.tensor_type.elem_type) or 8
        return 8


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            return attr.t
        if attr.name == "value_int":
            return numpy_helper.from_array(np.array(attr.i, np.int64))
        if attr.name == "value_ints":
            return numpy_helper.from_array(np.array(list(attr.ints), np.int64))
        if attr.name == "value_float":
            return numpy_helper.from_array(np.array(attr.f, np.float32))
        if attr.name == "value_floats":
            return numpy_helper.from_array(np.array(list(attr.floats), np.float32))
    return None


def _attr(node: onnx.NodeProto, name: str):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return None


def _arg(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _ints(values) -> list[int] | None:
    if values is None:
        return None
    return [int(v) for v in np.asarray(values).reshape(-1)]


def _prod(dims: Iterable[int]) -> int:
    return math.prod(max(int(d), 0) for d in dims)


def _output_size(node: onnx.NodeProto, scope: Scope) -> tuple[int, int] | str | None:
    """``(elements, bits per element)`` of the node's output when its size follows from constants; a string
    when the constants make the op invalid in a way that matters (Range with delta 0); else ``None``."""
    op = node.op_type
    if op == "ConstantOfShape":
        shape = _ints(scope.value(_arg(node, 0)))
        value = _attr(node, "value")
        bits = tensors.element_bits(value.data_type) if value is not None else 32
        return None if shape is None else (_prod(shape), bits or 8)
    if op == "Expand":
        shape = _ints(scope.value(_arg(node, 1)))
        if shape is None:
            return None
        given = scope.shape(_arg(node, 0)) or []
        rank = max(len(shape), len(given))
        a, b = [1] * (rank - len(given)) + given, [1] * (rank - len(shape)) + shape
        return _prod(max(x, y) for x, y in zip(a, b, strict=True)), scope.element_bits(_arg(node, 0))
    if op == "Tile":
        repeats = _ints(scope.value(_arg(node, 1)))
        if repeats is None:
            return None
        known = scope.shape(_arg(node, 0))
        given = known if known is not None and len(known) == len(repeats) else [1] * len(repeats)
        return _prod(d * r for d, r in zip(given, repeats, strict=True)), scope.element_bits(_arg(node, 0))
    if op == "Range":
        start, limit, delta = (scope.value(_arg(node, i)) for i in range(3))
        if start is None or limit is None or delta is None or not (start.size == limit.size == delta.size == 1):
            return None
        s, e, d = float(start[0]), float(limit[0]), float(delta[0])
        if not all(map(math.isfinite, (s, e, d))):
            return "start, limit or delta is not finite: the range has no end"
        if d == 0:
            return "delta is 0: the range never ends"
        return max(math.ceil((e - s) / d), 0), scope.element_bits(_arg(node, 0))
    if op in ("Resize", "Upsample"):
        x = _arg(node, 0)
        sizes = _ints(scope.value(_arg(node, 3))) if op == "Resize" else None
        if sizes:
            return _prod(sizes), scope.element_bits(x)
        scales_name = _arg(node, 2) if op == "Resize" and len(node.input) > 2 else _arg(node, 1)
        scales = scope.value(scales_name) if scales_name else _attr(node, "scales")
        if scales is None or len(scales) == 0:
            return None
        scales = [float(s) for s in np.asarray(scales).reshape(-1)]
        known = scope.shape(x)
        given = known if known is not None and len(known) == len(scales) else [1] * len(scales)
        if not all(math.isfinite(s) for s in scales):
            return "non-finite scales"
        return _prod(math.floor(d * s) for d, s in zip(given, scales, strict=True)), scope.element_bits(x)
    if op == "Pad":
        pads = _ints(scope.value(_arg(node, 1))) if len(node.input) > 1 else _ints(_attr(node, "pads"))
        if not pads or len(pads) % 2:
            return None
        half = len(pads) // 2
        known = scope.shape(_arg(node, 0))
        given = known if known is not None and len(known) == half and len(node.input) < 4 else [1] * half
        return _prod(d + pads[i] + pads[i + half] for i, d in enumerate(given)), scope.element_bits(_arg(node, 0))
    if op == "OneHot":
        depth = scope.value(_arg(node, 1))
        if depth is None or depth.size != 1:
            return None
        indices = scope.shape(_arg(node, 0)) or []
        return _prod(indices) * max(int(depth[0]), 0), scope.element_bits(_arg(node, 2))
    if op in ("RandomNormal", "RandomUniform"):
        shape = _attr(node, "shape")
        dtype = _attr(node, "dtype")
        return None if shape is None else (_prod(shape), tensors.element_bits(dtype or 1) or 32)
    return None


class Allocation(BaseCheck):
    id = "resources.allocation"
    severity = Severity.HIGH
    title = "an op with constant size arguments would allocate more than the policy's max_memory_bytes"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        limit = ctx.policy.max_memory_bytes
        for body in bodies(ctx.parsed):
            scope = None
            for i, node in enumerate(body.nodes):
                if node.domain not in ("", "ai.onnx"):
                    continue
                if node.op_type not in ("ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad",
                                        "OneHot", "RandomNormal", "RandomUniform"):
                    continue
                scope = scope or Scope(body)
                size = _output_size(node, scope)
                label = node_label(node, i)
                if isinstance(size, str):
                    yield self.finding(ctx, f"{body.where}: {node.op_type} node {quote(label)}: {size}", node=label)
                elif size is not None:
                    nbytes = math.ceil(size[0] * size[1] / 8)
                    if nbytes > limit:
                        yield self.finding(ctx, f"{body.where}: {node.op_type} node {quote(label)} would allocate at "
                                                f"least {nbytes:,} bytes ({size[0]:,} elements) from constant "
                                                f"arguments; the limit is {limit:,}", node=label)


class StoredDims(BaseCheck):
    id = "resources.tensor-dims"
    severity = Severity.HIGH
    title = "a stored tensor's declared dims do not match the data it holds"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        for s in stored_tensors(ctx.parsed):
            t = s.tensor
            where = f"{s.where}: tensor {quote(t.name)}" + ("" if s.node is None else f" of node {quote(s.node)}")
            if tensors.element_count(t) is None:
                yield self.finding(ctx, f"{where} declares negative dims {list(t.dims)}", node=s.node, tensor=t.name)
                continue
            stored = tensors.stored_count(t)
            if stored is not None and stored[1] not in stored[2]:
                field, found, expected = stored
                unit = "bytes" if field == "raw_data" else "values"
                yield self.finding(ctx, f"{where} declares dims {list(t.dims)}, which need {expected[0]:,} {unit}, "
                                        f"but its {field} holds {found:,}", node=s.node, tensor=t.name)


class InputDims(BaseCheck):
    id = "resources.input-dims"
    severity = Severity.MEDIUM
    title = "a graph input has a fixed dim over max_input_dim, a negative dim, or a fixed size over max_memory_bytes"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        policy = ctx.policy
        initializers = {t.name for t in ctx.parsed.graph.initializer}
        for v in ctx.parsed.graph.input:
            if v.name in initializers or not v.type.HasField("tensor_type") or not v.type.tensor_type.HasField("shape"):
                continue
            dims = v.type.tensor_type.shape.dim
            fixed = [d.dim_value for d in dims if d.HasField("dim_value")]
            label = f"graph input {quote(v.name)}"
            if any(d < 0 for d in fixed):
                yield self.finding(ctx, f"{label} declares a negative dim {fixed}", tensor=v.name)
            elif any(d > policy.max_input_dim for d in fixed):
                yield self.finding(ctx, f"{label} has a fixed dim of {max(fixed):,}, over the limit of "
                                        f"{policy.max_input_dim:,}", tensor=v.name)
            elif len(fixed) == len(dims):
                nbytes = tensors.nbytes(v.type.tensor_type.elem_type, math.prod(fixed)) or math.prod(fixed)
                if nbytes > policy.max_memory_bytes:
                    yield self.finding(ctx, f"{label} has fixed shape {fixed}: {nbytes:,} bytes per call, over the "
                                            f"limit of {policy.max_memory_bytes:,}", tensor=v.name)


CHECKS = (Allocation(), StoredDims(), InputDims())
