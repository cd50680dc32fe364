"""Symbolic sizes: what the scanner can know, without running anything, about the shape of every tensor a
graph computes and the value of the small ones.

An allocation bomb rarely names its size as a constant: it computes it (``Range`` whose limit is a ``Mul`` of
constants, a ``Concat`` chain that doubles a shape vector, a ``Shape``-derived value scaled up). This pass
follows the arithmetic ONNX models use for shapes, in graph order, through ``Shape``, ``Size``, ``Gather``,
``Concat``, ``Add``/``Sub``/``Mul``/``Div``, ``Cast``, ``Reshape``, ``Unsqueeze``, ``Squeeze``, ``Slice``,
``Identity`` and ``Constant``, and sizes what the value-sized ops (``Range``, ``ConstantOfShape``, ``Expand``,
``Tile``, ``Resize``, ``Upsample``, ``Pad``, ``OneHot``, ``RandomNormal``, ``RandomUniform``) would allocate.

It never materialises a tensor the model only describes. Each value is a :class:`Value`: its dims (a dim may
be unknown), and its data only when it has at most ``budget.MAX_FOLD_ELEMENTS`` elements; a 1-D integer
vector may also be known in part (``partial``: a ``Shape`` of an input with a dynamic batch dim). A
``Range`` of 10**12 elements is the dims ``(10**12,)`` and nothing else. Every node and every element folded
is charged to the running check's budget.

Sizes are lower bounds: an unknown dim counts as 1 and an unknown element type as one byte, so an ordinary
model is never flagged by a guess. Arithmetic follows the runtime's: int64 wraps around as it does there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from onnxguard.scan import budget, tensors
from onnxguard.scan.budget import MAX_FOLD_ELEMENTS, Budget
from onnxguard.scan.walk import Body, bodies, node_label

Dim = int | None

# Element types the pass computes values of (others keep their dims only).
FOLDABLE: dict[int, type[np.generic]] = {
    TensorProto.INT64: np.int64, TensorProto.INT32: np.int32, TensorProto.INT16: np.int16,
    TensorProto.INT8: np.int8, TensorProto.UINT64: np.uint64, TensorProto.UINT32: np.uint32,
    TensorProto.UINT16: np.uint16, TensorProto.UINT8: np.uint8, TensorProto.BOOL: np.bool_,
    TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64, TensorProto.FLOAT16: np.float16}
INTEGER: set[int] = {TensorProto.INT64, TensorProto.INT32, TensorProto.INT16, TensorProto.INT8, TensorProto.UINT64,
                     TensorProto.UINT32, TensorProto.UINT16, TensorProto.UINT8}
_ELEM_OF_NP = {np.dtype(v): k for k, v in FOLDABLE.items()}

# Ops whose output size is chosen by values, plus the ones that can grow a tensor by broadcasting or
# concatenation: where an allocation larger than its inputs can appear.
GROWING_OPS = ("ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad", "OneHot", "RandomNormal",
               "RandomUniform", "Concat", "Add", "Sub", "Mul", "Div", "Gather")


@dataclass(frozen=True)
class Value:
    """What is known about one tensor: dims (``None``: rank unknown; a ``None`` dim: unknown), its data when
    small, the known entries of a 1-D integer vector, its element type (0: unknown), and whether it follows
    from shapes and constants alone (what ONNX's own data propagation expands: ``propagable``)."""

    dims: tuple[Dim, ...] | None = None
    data: np.ndarray | None = None
    partial: tuple[int | None, ...] | None = None
    elem_type: int = 0
    propagable: bool = False
    lower: tuple[int, ...] | None = None  # per-dim lower bounds where a value-sized op knows more than its dims

    @property
    def entries(self) -> tuple[int | None, ...] | None:
        """The entries of a 0-D or 1-D integer value, each ``None`` when unknown."""
        return self.partial

    def ints(self) -> list[int] | None:
        """All entries, when every one is known."""
        p = self.partial
        return None if p is None or any(v is None for v in p) else [int(v) for v in p if v is not None]

    def scalar(self) -> float | None:
        """The value of a one-element tensor, when known."""
        if self.data is None or self.data.size != 1:
            return None
        return float(self.data.reshape(-1)[0])

    def length(self) -> int | None:
        """The length of a 1-D value (``None`` when unknown or not 1-D)."""
        if self.dims is None or len(self.dims) != 1:
            return None
        return self.dims[0]


UNKNOWN = Value()


def lower_bound(dims: tuple[Dim, ...] | None) -> int | None:
    """Elements a tensor of ``dims`` holds at least (unknown dims count as 1); ``None`` when the rank is unknown."""
    if dims is None:
        return None
    return math.prod(max(d, 0) if d is not None else 1 for d in dims)


def elements_at_least(v: Value) -> int | None:
    """Elements ``v`` holds at least: its per-dim lower bounds when the op knew them, else its dims."""
    return math.prod(v.lower) if v.lower is not None else lower_bound(v.dims)


def bits_of(elem_type: int) -> int:
    """Bits per element; one byte when the type is unknown or has no fixed size."""
    return (tensors.element_bits(elem_type) or 8) if elem_type else 8


def bytes_at_least(v: Value) -> int:
    """Bytes ``v`` takes at least (0 when its rank is unknown)."""
    return math.ceil((elements_at_least(v) or 0) * bits_of(v.elem_type) / 8)


@dataclass(frozen=True)
class Growth:
    """A node whose output is larger than all of its inputs: where an allocation appears."""

    where: str
    node: str
    op: str
    elements: int
    bits: int
    largest_input: int  # bytes of its largest input (lower bound)

    @property
    def nbytes(self) -> int:
        return math.ceil(self.elements * self.bits / 8)


@dataclass(frozen=True)
class Problem:
    """A node whose constant arguments make it never end or make no sense (a Range with delta 0)."""

    where: str
    node: str
    op: str
    message: str


@dataclass
class Analysis:
    """The pass's results: every body's values (by :attr:`Body.key`), where tensors grow, what makes no sense,
    and the longest shape vector ONNX's data propagation would expand."""

    envs: dict[tuple[int | str, ...], Env] = field(default_factory=dict)
    growths: list[Growth] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    longest_shape_data: tuple[int, str] = (0, "")

    def value(self, body: Body, name: str) -> Value:
        env = self.envs.get(body.key)
        return env.get(name) if env is not None else UNKNOWN


class Env:
    """Values known in one body; names not found here are looked up in the enclosing body."""

    def __init__(self, parent: Env | None) -> None:
        self.parent = parent
        self.values: dict[str, Value] = {}
        self.declared: dict[str, Value] = {}

    def get(self, name: str) -> Value:
        env: Env | None = self
        while env is not None:
            v = env.values.get(name)
            if v is not None:
                return v
            v = env.declared.get(name)
            if v is not None:
                return v
            env = env.parent
        return UNKNOWN


def analyse(model: onnx.ModelProto) -> Analysis:
    """Run the pass over every body of ``model`` (memoised within one scan; a budget overrun is re-raised for
    every check that asks)."""
    memo = budget.memo()
    key = ("symbolic", id(model))
    if memo is not None and key in memo:
        cached = memo[key]
        if isinstance(cached, BaseException):
            raise cached
        assert isinstance(cached, Analysis)
        return cached
    try:
        result = _analyse(model, budget.current())
    except budget.BudgetExceeded as e:
        if memo is not None:
            memo[key] = e
        raise
    if memo is not None:
        memo[key] = result
    return result


def _analyse(model: onnx.ModelProto, charge: Budget) -> Analysis:
    a = Analysis()
    for body in bodies(model):
        env = Env(a.envs.get(body.parent.key) if body.parent is not None else None)
        a.envs[body.key] = env
        _seed(body, env, charge)
        for i, node in enumerate(body.nodes):
            charge.visit(1, body.where)
            _node(a, body, env, i, node, charge)
    return a


# --- values from the file -----------------------------------------------------------------------------------

def from_type(tp: onnx.TypeProto) -> Value:
    """A value of a declared type: its dims (unknown where symbolic) and element type."""
    if not tp.HasField("tensor_type"):
        return UNKNOWN
    tt = tp.tensor_type
    if not tt.HasField("shape") or len(tt.shape.dim) > MAX_FOLD_ELEMENTS:
        return Value(elem_type=tt.elem_type)
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    return Value(dims, elem_type=tt.elem_type)


def from_tensor(t: onnx.TensorProto, charge: Budget) -> Value:
    """A stored tensor: its dims, and its data when small, of a foldable type, stored inline and consistent."""
    if len(t.dims) > MAX_FOLD_ELEMENTS:
        return Value(elem_type=t.data_type)
    dims = tuple(int(d) for d in t.dims)
    n = tensors.element_count(t)
    if (n is None or n > MAX_FOLD_ELEMENTS or t.data_type not in FOLDABLE
            or t.data_location == TensorProto.EXTERNAL):
        return Value(dims, elem_type=t.data_type, propagable=t.data_type in INTEGER)
    stored = tensors.stored_count(t)
    if stored is None or stored[1] not in stored[2]:
        return Value(dims, elem_type=t.data_type)
    charge.fold(n)
    return make(numpy_helper.to_array(t).reshape(dims), t.data_type, propagable=True)


def make(data: np.ndarray, elem_type: int | None = None, propagable: bool = False) -> Value:
    """A fully known value (the caller keeps it within MAX_FOLD_ELEMENTS)."""
    et = elem_type if elem_type is not None else _ELEM_OF_NP.get(data.dtype, 0)
    partial = None
    if et in INTEGER and data.ndim <= 1:
        partial = tuple(int(v) for v in data.reshape(-1))
    return Value(tuple(int(d) for d in data.shape), data, partial, et, propagable and et in INTEGER)


def _seed(body: Body, env: Env, charge: Budget) -> None:
    g = body.graph
    if g is None:
        return
    for v in g.input:
        env.values[v.name] = from_type(v.type)
    for v in (*g.value_info, *g.output):
        env.declared[v.name] = from_type(v.type)
    for t in g.initializer:
        env.values[t.name] = from_tensor(t, charge)
    for s in g.sparse_initializer:
        env.values[s.values.name] = Value(tuple(int(d) for d in s.dims[:MAX_FOLD_ELEMENTS]),
                                          elem_type=s.values.data_type)


# --- one node -----------------------------------------------------------------------------------------------

def _attr(node: onnx.NodeProto, name: str) -> object:
    for a in node.attribute:
        if a.name == name:
            if a.ref_attr_name:
                return None  # a function's attribute reference: unknown here
            return onnx.helper.get_attribute_value(a)
    return None


def _int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    v = _attr(node, name)
    return int(v) if isinstance(v, int) else default


def _ints_attr(node: onnx.NodeProto, name: str) -> list[int] | None:
    v = _attr(node, name)
    return [int(x) for x in v] if isinstance(v, list) and all(isinstance(x, int) for x in v) else None


def _node(a: Analysis, body: Body, env: Env, i: int, node: onnx.NodeProto, charge: Budget) -> None:
    def arg(k: int) -> Value:
        return env.get(node.input[k]) if len(node.input) > k and node.input[k] else UNKNOWN

    outputs: list[Value] = []
    if node.domain in ("", "ai.onnx"):
        handler = HANDLERS.get(node.op_type)
        if handler is not None:
            with np.errstate(all="ignore"):
                result = handler(node, arg, charge)
            if isinstance(result, str):
                a.problems.append(Problem(body.where, node_label(node, i), node.op_type, result))
                result = [UNKNOWN]
            outputs = list(result)
    for k, name in enumerate(node.output):
        if not name:
            continue
        v = outputs[k] if k < len(outputs) else UNKNOWN
        if v is UNKNOWN:
            v = env.declared.get(name, UNKNOWN)  # what the file declares, for the ops the pass does not follow
        env.values[name] = v
        if v.propagable and v.dims is not None and len(v.dims) == 1 and v.dims[0] is not None:
            if v.dims[0] > a.longest_shape_data[0]:
                a.longest_shape_data = (v.dims[0], f"{body.where}: node {node_label(node, i)}")
    if node.op_type in GROWING_OPS and outputs and node.domain in ("", "ai.onnx"):
        out = outputs[0]
        elements = elements_at_least(out)
        if elements is not None:
            largest = max((bytes_at_least(arg(k)) for k in range(len(node.input))), default=0)
            if bytes_at_least(out) > largest:
                a.growths.append(Growth(body.where, node_label(node, i), node.op_type, elements,
                                        bits_of(out.elem_type), largest))


Arg = Callable[[int], Value]
Result = Sequence[Value] | str


def _small(dims: tuple[Dim, ...] | None) -> bool:
    if dims is None or any(d is None or d < 0 for d in dims):
        return False
    return math.prod(d for d in dims if d is not None) <= MAX_FOLD_ELEMENTS


def _shape_of(entries: tuple[int | None, ...] | None, length: int | None) -> tuple[Dim, ...] | None:
    """Dims named by a shape argument: its entries, or as many unknown dims as its length."""
    if entries is not None:
        return entries
    if length is not None and 0 <= length <= MAX_FOLD_ELEMENTS:
        return (None,) * length
    return None


def _shape_arg(v: Value) -> tuple[Dim, ...] | None:
    return _shape_of(v.entries, v.length() if v.dims is not None and len(v.dims) == 1 else None)


def _too_long(v: Value) -> str | None:
    """Why a shape argument is absurd: longer than the pass follows (a rank no model uses, built by a doubling
    chain to exhaust whoever expands it)."""
    n = v.length()
    if n is not None and n > MAX_FOLD_ELEMENTS:
        return (f"its shape argument has {n:,} entries: a tensor of rank {n:,}, more than the scanner follows "
                f"({MAX_FOLD_ELEMENTS:,}), is built to exhaust whoever computes its shape")
    return None


def _norm_axis(axis: int, rank: int) -> int | None:
    ax = axis + rank if axis < 0 else axis
    return ax if 0 <= ax < rank else None


def _wrap(v: int, elem_type: int) -> int:
    if elem_type == TensorProto.INT64 or elem_type == 0:
        return (v + 2**63) % 2**64 - 2**63
    return v


# --- handlers: each returns the node's output values, or a string saying why the node makes no sense -------

def _constant(node: onnx.NodeProto, arg: Arg, charge: Budget) -> Result:
    for a in node.attribute:
        if a.ref_attr_name:
            return [UNKNOWN]
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
            return [from_tensor(a.t, charge)]
        if a.name == "sparse_value":
            return [Value(tuple(int(d) for d in a.sparse_tensor.dims[:MAX_FOLD_ELEMENTS]),
                          elem_type=a.sparse_tensor.values.data_type)]
        if a.name == "value_int":
            return [make(np.array(a.i, np.int64), propagable=True)]
        if a.name == "value_ints" and len(a.ints) <= MAX_FOLD_ELEMENTS:
            charge.fold(len(a.ints))
            return [make(np.array(list(a.ints), np.int64), propagable=True)]
        if a.name == "value_float":
            return [make(np.array(a.f, np.float32))]
        if a.name == "value_floats" and len(a.floats) <= MAX_FOLD_ELEMENTS:
            charge.fold(len(a.floats))
            return [make(np.array(list(a.floats), np.float32))]
    return [UNKNOWN]


def constant_value(node: onnx.NodeProto) -> Value:
    """What a ``Constant`` node holds (its data only when small)."""
    result = _constant(node, lambda k: UNKNOWN, budget.current())
    return result[0] if not isinstance(result, str) and result else UNKNOWN


def _identity(node: onnx.NodeProto, arg: Arg, charge: Budget) -> Result:
    return [arg(0)]


def _shape(node: onnx.NodeProto, arg: Arg, charge: Budget) -> Result:
    dims = arg(0).dims
    if dims is None:
        return [Value((None,), elem_type=TensorProto.INT64, propagable=True)]
    start, end = _int_attr(node, "start", 0), _attr(node, "end")
    picked = dims[start:int(end)] if isinstance(end, int) else dims[start:]
    charge.fold(len(picked))
    if all(d is not None for d in picked):
        return [make(np.array(picked, np.int64), TensorProto.INT64, propagable=True)]
    return [Value((len(picked),), None, picked, TensorProto.INT64, True)]


def _size(node: onnx.NodeProto, arg: Arg, charge: Budget) -> Result:
    dims = arg(0).dims
    if dims is None or any(d is None for d in dims):
        return [Value((), elem_type=TensorProto.INT64, propagable=True)]
    return [make(np.array(lower_bound(dims), np.int64), TensorProto.INT64, propagable=True)]


def _cast(node: onnx.NodeProto, arg: Arg, charge: Budget) -> Result:
    x, to = arg(0), _int_attr(node, "to", 0)
    if x.data is not None and to in FOLDABLE:
        charge.fold(x.data.size)
        return [make(x.data.astype(FOLDABLE[to]), to, x.propagable)]
    partial = x.partial if to in INTEGER else None
    return [Value(x.dims, None, partial, to, x.propagable and to in INTEGER)]


def _concat(node: onnx.NodeProto, arg: Arg, charge: Budget) -> Result:
    parts = [arg(k) for k in range(len(node.input))]
    propagable = all(p.propagable for p in parts)
    elem = next((p.elem_type for p in parts if p.elem_type), 0)
    ranks = {len(p.dims) for p in parts if p.dims is not None}
    if len(ranks) != 1 or not parts:
        return [Value(elem_type=elem, propagable=propagable)]
    rank = ranks.pop()
    ax = _norm_axis(_int_attr(node, "axis", 0), rank)
    if ax is None:
        return "axis out of range"
    dims: list[Dim] = []
    for d in range(rank):
        column = [p.dims[d] if p.dims is not None else None for p in parts]
        if d == ax:
            dims.append(None if any(c is None for c in column) else sum(c for c in column if c is not None))
        else:
            dims.append(next((c for c in column if c is not None), None))
    out = tuple(dims)
    if all(p.data is not None for p in parts) and _small(out):
        arrays = [p.data for p in parts if p.data is not None]
        try:
            joined = np.concatenate(arrays, axis=ax)
        except ValueError:
            return [Value(out, elem_type=elem, propagable=propagable)]
        charge.fold(joined.size)
        return [make(joined, elem, propagable)]
    if rank == 1 and out[0] is not None and out[0] <= MAX_FOLD_ELEMENTS:
        entries: list[int | None] = []
        for p in parts:
            e = p.entries if p.entries is not None else _shape_of(None, p.length())
            if e is None:
                return [Value(out, elem_type=elem, propagable=propagable)]
            entries.extend(e)
        charge.fold(len(entries))
        return [Value(out, None, tuple(entries), elem, propagable)]
    return [Value(out, elem_type=elem, propagable=propagable)]


def _gather(node: onnx.NodeProto, arg: Arg, charge: Budget) -> Result:
    data, idx = arg(0), arg(1)
    propagable = data.propagable and idx.propagable
    if data.dims is None or idx.dims is None:
        return [Value(elem_type=data.elem_type, propagable=propagable)]
    ax = _norm_axis(_int_attr(node, "axis", 0), len(data.dims))
    if ax is None:
        return "axis out of range"
    out = data.dims[:ax] + idx.dims + data.dims[ax + 1:]
    if len(out) > MAX_FOLD_ELEMENTS:
        return [Value(elem_type=data.elem_type, propagable=propagable)]
    n = data.dims[ax]
    if idx.data is not None and n is not None:
        positions = idx.data.astype(np.int64).reshape(-1)
        if np.any((positions < -n) | (positions >= n)):
            return [Value(out, elem_type=data.elem_type, propagable=propagable)]
        positions = np.where(positions < 0, positions + n, positions)
        if data.data is not None and _small(out):
            charge.fold(lower_bound(out) or 0)
            return [make(np.take(data.data, positions.reshape(idx.data.shape), axis=ax), data.elem_type, propagable)]
        if data.partial is not None and len(data.dims) == 1 and len(out) <= 1:
            charge.fold(len(positions))
            return [Value(out, None, tuple(data.partial[int(p)] for p in positions), data.elem_type, propagable)]
    return [Value(out, elem_type=data.elem_type, propagable=propagable)]


def _axes(node: onnx.NodeProto, arg: Arg) -> list[int] | None:
    if len(node.input) > 1 and node.input[1]:
        return arg(1).ints()
    return _ints_attr(node, "axes")


def _unsqueeze(node: onnx.NodeProto, arg: Arg, charge: Budget) -> Result:
    x, axes = arg(0), _axes(node, arg)
    if x.dims is None or axes is None:
        return [Value(elem_type=x.elem_type, propagable=x.propagable)]
    rank = len(x.dims) + len(axes)
    normed = {_norm_axis(a, rank) for a in axes}
    if None in normed or len(normed) != len(axes) or rank > MAX_FOLD_ELEMENTS:
        return "axes out of range or repeated"
    rest = iter(x.dims)
    out = tuple(1 if d in normed else next(rest) for d in range(rank))
    return [_reshaped(x, out)]


def _squeeze(node: onnx.NodeProto, arg: Arg, charge: Budget) -> Result:
    x, axes = arg(0), _axes(node, arg)
    if x.dims is None:
        return [Value(elem_type=x.elem_type, propagable=x.propagable)]
    if axes is None:
        if any(d is None for d in x.dims):
            return [Value(elem_type=x.elem_type, propagable=x.propagable)]
        drop = {k for k, d in enumerate(x.dims) if d == 1}
    else:
        normed = {_norm_axis(a, len(x.dims)) for a in axes}
        if None in normed:
            return "axes out of range"
        drop = {a for a in normed if a is not None}
    out = tuple(d for k, d in enumerate(x.dims) if k not in drop)
    return [_reshaped(x, out)]


def _reshaped(x: Value, out: tuple[Dim, ...]) -> Value:
    """``x`` with new dims and the same elements (Reshape, Squeeze, Unsqueeze)."""
    if x.data is not None and all(d is not None for d in out) and lower_bound(out) == x.data.size:
        return make(x.data.reshape(tuple(d for d in out if d is not None)), x.elem_type, x.propagable)
    partial = x.partial if len(out) <= 1 and x.partial is not None and (not out or out[0] == len(x.partial)) else None
    return Value(out, None, partial, x.elem_type, x.propagable)


def _reshape(node: onnx.NodeProto, arg: Arg, charge: Budget) -> Result:
    x, shape = arg(0), _shape_arg(arg(1))
    absurd = _too_long(arg(1))
    if absurd is not None:
        return absurd
    if shape is None:
        return [Value(elem_type=x.elem_type, propagable=x.propagable)]
    allowzero = _int_attr(node, "allowzero", 0)
    dims: list[Dim] = []
    for k, d in enumerate(shape):
        if d == 0 and not allowzero:
            dims.append(x.dims[k] if x.dims is not None and k < len(x.dims) else None)
        else:
            dims.append(d)
    if dims.count(-1) == 1:
        total = lower_bound(x.dims) if x.dims is not None and all(d is not None for d in x.dims) else None
        others = [d for d in dims if d != -1]
        if total is not None and all(d is not None for d in others):
            rest = math.prod(d for d in others if d is not None)
            dims[dims.index(-1)] = total // rest if rest > 0 and total % rest == 0 else None
        else:
            dims[dims.index(-1)] = None
    if any(d is not None and d < 0 for d in dims):
        return [Value(elem_type=x.elem_type, propagable=x.propagable)]
    return [_reshaped(x, tuple(dims))]


def _slice_args(node: onnx.NodeProto, arg: Arg) -> tuple[list[int], list[int], list[int] | None,
                                                          list[int] | None] | None:
    if len(node.input) >= 3:
        starts, ends = arg(1).ints(), arg(2).ints()
        axes = arg(3).ints() if len(node.input) > 3 and node.input[3] else None
        steps = arg(4).ints() if len(node.input) > 4 and node.input[4] else None
        if (len(node.input) > 3 and node.input[3] and axes is None) or (len(node.input) > 4 and node.input[4]
                                                                        and steps is None):
            return None
    else:
        starts, ends, axes, steps = _ints_attr(node, "starts"), _ints_attr(node, "ends"), _ints_attr(node, "axes"), None
    if starts is None or ends is None:
        return None
    return starts, ends, axes, steps


def _slice(node: onnx.NodeProto, arg: Arg, charge: Budget) -> Result:
    x = arg(0)
    parsed = _slice_args(node, arg)
    if x.dims is None or parsed is None:
        return [Value(elem_type=x.elem_type, propagable=x.propagable)]
    starts, ends, axes, steps = parsed
    rank = len(x.dims)
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    if not (len(starts) == len(ends) == len(axes) == len(steps)) or 0 in steps:
        return [Value(elem_type=x.elem_type, propagable=x.propagable)]
    dims = list(x.dims)
    slices: list[slice] = [slice(None)] * rank
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        ax = _norm_axis(a, rank)
        if ax is None:
            return "axes out of range"
        n = x.dims[ax]
        slices[ax] = slice(s, e, st)
        dims[ax] = None if n is None else len(range(*slice(s, e, st).indices(n)))
    out = tuple(dims)
    if x.data is not None:
        charge.fold(x.data.size)
        return [make(x.data[tuple(slices)], x.elem_type, x.propagable)]
    if x.partial is not None and rank == 1:
        picked = x.partial[slices[0]]
        charge.fold(len(picked))
        return [Value(out, None, tuple(picked), x.elem_type, x.propagable)]
    return [Value(out, elem_type=x.elem_type, propagable=x.propagable)]


def broadcast(a: tuple[Dim, ...] | None, b: tuple[Dim, ...] | None) -> tuple[Dim, ...] | None:
    """Numpy-style broadcast of two dims tuples (an unknown dim broadcast with a known one > 1 gives that)."""
    if a is None or b is None:
        return None
    rank = max(len(a), len(b))
    a2: tuple[Dim, ...] = (1,) * (rank - len(a)) + a
    b2: tuple[Dim, ...] = (1,) * (rank - len(b)) + b
    out: list[Dim] = []
    for x, y in zip(a2, b2, strict=True):
        if x is not None and y is not None:
            out.append(x if x == y or y == 1 else y if x == 1 else None)  # a mismatch fails at run time
        elif x is None and y is None:
            out.append(None)
        else:
            known = x if x is not None else y
            out.append(known if known != 1 else None)
    return tuple(out)


def _binary(op: str) -> Callable[[onnx.NodeProto, Arg, Budget], Result]:
    def run(node: onnx.NodeProto, arg: Arg, charge: Budget) -> Result:
        a, b = arg(0), arg(1)
        elem = a.elem_type or b.elem_type
        propagable = a.propagable and b.propagable
        out = broadcast(a.dims, b.dims)
        if a.data is not None and b.data is not None and _small(out):
            result = _apply(op, a.data, b.data, elem)
            if result is not None:
                charge.fold(result.size)
                return [make(result, elem, propagable)]
        pa, pb = a.partial, b.partial
        if pa is not None and pb is not None and out is not None and len(out) <= 1 and (
                len(pa) == len(pb) or 1 in (len(pa), len(pb))):
            n = max(len(pa), len(pb))
            la, lb = (pa * n if len(pa) == 1 else pa), (pb * n if len(pb) == 1 else pb)
            entries = tuple(_scalar_op(op, x, y, elem) for x, y in zip(la, lb, strict=True))
            charge.fold(n)
            return [Value(out, None, entries, elem, propagable)]
        return [Value(out, elem_type=elem, propagable=propagable)]
    return run


def _scalar_op(op: str, x: int | None, y: int | None, elem: int) -> int | None:
    if x is None or y is None:
        return None
    if op == "Add":
        return _wrap(x + y, elem)
    if op == "Sub":
        return _wrap(x - y, elem)
    if op == "Mul":
        return _wrap(x * y, elem)
    if y == 0:
        return None
    q = abs(x) // abs(y)
    return _wrap(q if (x >= 0) == (y >= 0) else -q, elem)


def _apply(op: str, x: np.ndarray, y: np.ndarray, elem: int) -> np.ndarray | None:
    try:
        if op == "Add":
            return np.add(x, y)
        if op == "Sub":
            return np.subtract(x, y)
        if op == "Mul":
            return np.multiply(x, y)
        if np.issubdtype(x.dtype, np.integer) and np.issubdtype(y.dtype, np.integer):
            if np.any(y == 0):
                return None
            q = np.abs(x) // np.abs(y)
            return np.where((x >= 0) == (y >= 0), q, -q).astype(np.result_type(x, y))
        return np.divide(x, y)
    except (ValueError, TypeError):
        return None


def _range(node: onnx.NodeProto, arg: Arg, charge: Budget) -> Result:
    start, limit, delta = arg(0), arg(1), arg(2)
    elem = start.elem_type or limit.elem_type
    s, e, d = start.scalar(), limit.scalar(), delta.scalar()
    if s is None or e is None or d is None:
        return [Value((None,), elem_type=elem)]
    if not all(map(math.isfinite, (s, e, d))):
        return "start, limit or delta is not finite: the range has no end"
    if d == 0:
        return "delta is 0: the range never ends"
    n = max(math.ceil((e - s) / d), 0)
    if n <= MAX_FOLD_ELEMENTS and elem in FOLDABLE:
        charge.fold(n)
        return [make((s + np.arange(n, dtype=np.float64) * d).astype(FOLDABLE[elem]), elem,
                     start.propagable and limit.propagable and delta.propagable)]
    return [Value((n,), elem_type=elem)]


def _constant_of_shape(node: onnx.NodeProto, arg: Arg, charge: Budget) -> Result:
    value = _attr(node, "value")
    elem = value.data_type if isinstance(value, TensorProto) else TensorProto.FLOAT
    absurd = _too_long(arg(0))
    if absurd is not None:
        return absurd
    shape = _shape_arg(arg(0))
    if shape is None:
        return [Value(elem_type=elem)]
    if any(d is not None and d < 0 for d in shape):
        return f"shape {_show(shape)} has a negative dim"
    if _small(shape) and isinstance(value, TensorProto) and elem in FOLDABLE and value.data_location != \
            TensorProto.EXTERNAL and tensors.element_count(value) == 1:
        stored = tensors.stored_count(value)
        if stored is not None and stored[1] in stored[2]:
            fill = numpy_helper.to_array(value).reshape(-1)[0]
            n = lower_bound(shape) or 0
            charge.fold(n)
            full: np.ndarray = np.full([d for d in shape if d is not None], fill, FOLDABLE[elem])
            return [make(full, elem)]
    return [Value(shape, elem_type=elem)]


def _expand(node: onnx.NodeProto, arg: Arg, charge: Budget) -> Result:
    x, shape = arg(0), _shape_arg(arg(1))
    absurd = _too_long(arg(1))
    if absurd is not None:
        return absurd
    out = broadcast(x.dims, shape) if shape is not None else None
    if out is not None and x.data is not None and _small(out):
        try:
            data = np.broadcast_to(x.data, tuple(d for d in out if d is not None)).copy()
        except ValueError:
            return [Value(out, elem_type=x.elem_type)]
        charge.fold(data.size)
        return [make(data, x.elem_type, x.propagable)]
    return [Value(out, elem_type=x.elem_type)]


def _tile(node: onnx.NodeProto, arg: Arg, charge: Budget) -> Result:
    x, repeats = arg(0), arg(1).entries
    absurd = _too_long(arg(1))
    if absurd is not None:
        return absurd
    if repeats is None:
        return [Value(x.dims and tuple(None for _ in x.dims), elem_type=x.elem_type)]
    given = x.dims if x.dims is not None and len(x.dims) == len(repeats) else (None,) * len(repeats)
    out = tuple(None if d is None or r is None else d * r for d, r in zip(given, repeats, strict=True))
    lower = tuple(max(d if d is not None else 1, 0) * max(r if r is not None else 1, 0)
                  for d, r in zip(given, repeats, strict=True))
    if x.data is not None and _small(out) and all(r is not None and r >= 0 for r in repeats):
        data = np.tile(x.data, [r for r in repeats if r is not None])
        charge.fold(data.size)
        return [make(data, x.elem_type, x.propagable)]
    return [Value(out, elem_type=x.elem_type, lower=lower)]


def _resize(node: onnx.NodeProto, arg: Arg, charge: Budget) -> Result:
    x = arg(0)
    if node.op_type == "Resize":
        sizes = arg(3).entries if len(node.input) > 3 and node.input[3] else None
        scales_v = arg(2) if len(node.input) > 2 and node.input[2] else UNKNOWN
    else:
        sizes = None
        scales_v = arg(1) if len(node.input) > 1 else UNKNOWN
    scales: list[float] | None = None
    attr_scales = _attr(node, "scales")
    if scales_v.data is not None and scales_v.data.size:
        scales = [float(s) for s in scales_v.data.reshape(-1)]
    elif node.op_type == "Upsample" and isinstance(attr_scales, list):
        scales = [float(s) for s in attr_scales]
    axes = _ints_attr(node, "axes")
    rank = len(x.dims) if x.dims is not None else None
    picked = sizes if sizes else scales
    if not picked:
        return [Value(elem_type=x.elem_type)]
    if scales is not None and not sizes and not all(math.isfinite(s) for s in scales):
        return "non-finite scales"
    n = rank if rank is not None else (len(picked) if axes is None else None)
    if n is None:
        return [Value(elem_type=x.elem_type)]
    given = x.dims if x.dims is not None else (None,) * n
    targets = axes if axes is not None else list(range(n))
    if len(targets) != len(picked):
        return [Value(elem_type=x.elem_type)]
    out: list[Dim] = list(given)
    lower = [d if d is not None else 1 for d in given]
    for ax, p in zip(targets, picked, strict=True):
        k = _norm_axis(ax, n)
        if k is None:
            return "axes out of range"
        d = given[k]
        if p is None:
            out[k], lower[k] = None, 1
        elif sizes:
            out[k] = lower[k] = int(p)
        else:
            lower[k] = math.floor((d if d is not None else 1) * float(p))
            out[k] = None if d is None else math.floor(d * float(p))
    if any(d < 0 for d in lower):
        return "negative output size"
    return [Value(tuple(out), elem_type=x.elem_type, lower=tuple(lower))]


def _pad(node: onnx.NodeProto, arg: Arg, charge: Budget) -> Result:
    x = arg(0)
    pads = arg(1).ints() if len(node.input) > 1 and node.input[1] else _ints_attr(node, "pads")
    if not pads or len(pads) % 2:
        return [Value(elem_type=x.elem_type)]
    half = len(pads) // 2
    axes_v = arg(3) if len(node.input) > 3 and node.input[3] else None
    axes = axes_v.ints() if axes_v is not None else list(range(half))
    rank = len(x.dims) if x.dims is not None else (half if axes_v is None else None)
    if axes is None or rank is None or len(axes) != half:
        return [Value(elem_type=x.elem_type)]
    given: tuple[Dim, ...] = x.dims if x.dims is not None and len(x.dims) == rank else (None,) * rank
    out: list[Dim] = list(given)
    lower = [d if d is not None else 1 for d in given]
    for j, ax in enumerate(axes):
        k = _norm_axis(ax, rank)
        if k is None:
            return "axes out of range"
        d = given[k]
        lower[k] = max((d if d is not None else 1) + pads[j] + pads[j + half], 0)
        out[k] = None if d is None else max(d + pads[j] + pads[j + half], 0)
    return [Value(tuple(out), elem_type=x.elem_type, lower=tuple(lower))]


def _one_hot(node: onnx.NodeProto, arg: Arg, charge: Budget) -> Result:
    indices, depth, values = arg(0), arg(1).scalar(), arg(2)
    if depth is None or indices.dims is None or not math.isfinite(depth):
        return [Value(elem_type=values.elem_type)]
    rank = len(indices.dims) + 1
    ax = _norm_axis(_int_attr(node, "axis", -1), rank)
    if ax is None:
        return "axis out of range"
    out = list(indices.dims)
    out.insert(ax, max(int(depth), 0))
    return [Value(tuple(out), elem_type=values.elem_type)]


def _random(node: onnx.NodeProto, arg: Arg, charge: Budget) -> Result:
    shape = _ints_attr(node, "shape")
    elem = _int_attr(node, "dtype", TensorProto.FLOAT)
    if shape is None or len(shape) > MAX_FOLD_ELEMENTS:
        return [Value(elem_type=elem)]
    return [Value(tuple(max(d, 0) for d in shape), elem_type=elem)]


def _show(dims: Sequence[Dim]) -> str:
    shown = ", ".join("?" if d is None else f"{d:,}" for d in dims[:8])
    return f"[{shown}{', ...' if len(dims) > 8 else ''}]"


HANDLERS: dict[str, Callable[[onnx.NodeProto, Arg, Budget], Result]] = {
    "Constant": _constant, "Identity": _identity, "Shape": _shape, "Size": _size, "Cast": _cast, "Concat": _concat,
    "Gather": _gather, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Reshape": _reshape, "Slice": _slice,
    "Add": _binary("Add"), "Sub": _binary("Sub"), "Mul": _binary("Mul"), "Div": _binary("Div"), "Range": _range,
    "ConstantOfShape": _constant_of_shape, "Expand": _expand, "Tile": _tile, "Resize": _resize,
    "Upsample": _resize, "Pad": _pad, "OneHot": _one_hot, "RandomNormal": _random, "RandomUniform": _random,
}
