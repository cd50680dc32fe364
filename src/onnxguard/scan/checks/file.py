"""The file itself: too large to read, not an ONNX model at all, an undecodable protobuf, and what ONNX's own
checker and strict shape inference say about a model that parses.

ONNX's checker and shape inference are C++ that no budget can interrupt, and shape inference is not linear:
it infers every local-function body again at each call site (a call chain that doubles at each level costs
2**depth), copies the enclosing scope into every subgraph (thousands of small If nodes cost their square), and
with data propagation expands every shape vector into one protobuf message per element (a Concat doubling
chain asks for tens of GB). So both are measured first, by bounded walks, and run only within the budgets of
:mod:`onnxguard.scan.budget`; over them, they are skipped and the skip is a ``scan.budget`` finding (critical):
a model built to stall them is never passed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import onnx
from google.protobuf.message import Message

from onnxguard.scan import budget, calls, symbolic
from onnxguard.scan.budget import BudgetExceeded
from onnxguard.scan.checks import external_data
from onnxguard.scan.interface import BaseCheck, Finding, Location, ScanContext, Severity, printable
from onnxguard.scan.walk import bodies

# Leading bytes of formats that are often passed off as a model. A pickle runs code when loaded, archives
# may hold anything (including pickles: torch.save writes a zip).
MAGIC = (
    (b"PK\x03\x04", "a zip archive (torch.save and .npz files are zips of pickles or arrays)"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"\x1f\x8b", "a gzip stream"),
    (b"BZh", "a bzip2 stream"),
    (b"\xfd7zXZ\x00", "an xz stream"),
    (b"\x28\xb5\x2f\xfd", "a zstd stream"),
    (b"\x93NUMPY", "a numpy .npy array"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras)"),
    (b"age-encryption.org/v1", "an age-encrypted (sealed) file: scan the model before sealing or after unsealing"),
)
TAR_MAGIC_OFFSET = 257
HEAD_BYTES = 512  # enough for every signature above, tar's included


def sniff(head: bytes) -> str | None:
    """What a file is, from its first bytes, when it is plainly not ONNX; ``None`` when it may be."""
    if not head:
        return "an empty file"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return f"a Python pickle (protocol {head[1]}): loading it runs code chosen by its author"
    for magic, what in MAGIC:
        if head.startswith(magic):
            return what
    if head[TAR_MAGIC_OFFSET:TAR_MAGIC_OFFSET + 5] == b"ustar":
        return "a tar archive"
    return None


class FileSize(BaseCheck):
    id = "file.size"
    severity = Severity.CRITICAL
    title = "file larger than the policy's max_file_bytes (checked before parsing)"
    scope = "file"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        if ctx.load_state == "too-large":
            yield self.finding(ctx, f"file is {ctx.file_size:,} bytes, over the limit of "
                                    f"{ctx.policy.max_file_bytes:,}; it was not parsed")


class FileFormat(BaseCheck):
    id = "file.format"
    severity = Severity.CRITICAL
    title = "not an ONNX model: empty, a pickle, an archive, or a protobuf without a graph"
    scope = "file"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        if ctx.load_state == "too-large":
            return
        what = sniff(ctx.head)
        if what is not None:
            yield self.finding(ctx, f"not an ONNX model: {what}")
        elif ctx.load_state == "not-a-model":
            yield self.finding(ctx, f"not an ONNX model: {ctx.load_detail}")


class FileDecode(BaseCheck):
    id = "file.decode"
    severity = Severity.CRITICAL
    title = "the file does not decode as an ONNX protobuf"
    scope = "file"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        if ctx.load_state == "decode-error" and sniff(ctx.head) is None:
            yield self.finding(ctx, f"not a valid ONNX protobuf: {ctx.load_detail}")


class Checker(BaseCheck):
    id = "file.checker"
    severity = Severity.MEDIUM
    title = "onnx.checker rejects the model"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        model = ctx.parsed
        nodes, _ = cost(model)
        if nodes > budget.INFERENCE_NODES:
            raise BudgetExceeded("nodes onnx.checker would check", nodes, budget.INFERENCE_NODES,
                                 "onnx.checker not run")
        if external_data.external_tensors(model):
            # In memory, onnx's checker resolves external data against the *current directory*; checking the
            # file by path resolves it against the model's directory, but only once every location is safe.
            if external_data.unsafe_locations(ctx):
                yield self.finding(ctx, "onnx.checker not run: the model's external data locations are unsafe "
                                        "(see external-data findings)", severity=Severity.INFO)
                return
            if ctx.path is None:
                yield self.finding(ctx, "onnx.checker not run: the model has external data and no file path to "
                                        "check it from", severity=Severity.INFO)
                return
            target: bytes | str = str(ctx.path)
        else:
            # The bytes the model was parsed from, not ``model`` (which check_model would serialize again).
            target = ctx.serialized
        try:
            onnx.checker.check_model(target)
        except onnx.checker.ValidationError as e:
            yield self.finding(ctx, f"onnx.checker: {_first_line(e)}")


class ShapeInference(BaseCheck):
    id = "file.shape-inference"
    severity = Severity.MEDIUM
    title = "strict ONNX shape and type inference fails"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        model = ctx.parsed
        _, scope_names = cost(model)
        inlined = calls.inlined_nodes(calls.analysed(model))
        if inlined > budget.INFERENCE_NODES:
            raise BudgetExceeded("nodes shape inference would infer, local functions inlined", inlined,
                                 budget.INFERENCE_NODES, "strict shape inference not run")
        if scope_names > budget.INFERENCE_SCOPE_NAMES:
            raise BudgetExceeded("outer-scope names shape inference would copy into subgraphs", scope_names,
                                 budget.INFERENCE_SCOPE_NAMES, "strict shape inference not run")
        # ONNX's data propagation expands shape vectors element by element: only when none is long.
        longest, where = symbolic.analyse(model).longest_shape_data
        data_prop = longest <= budget.INFERENCE_SHAPE_DATA
        light = without_weights(model)
        # When the light copy infers, so does the model (see WEIGHT_ONLY_INPUTS); otherwise the model itself.
        if light is None or not _infers(light, data_prop):
            try:
                # The bytes the model was parsed from, not ``model`` (which infer_shapes would serialize again).
                _infer(ctx.serialized, data_prop)
            except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
                yield self.finding(ctx, f"strict shape inference: {_first_line(e)}")
        if not data_prop:
            # Over a budget, though inference still ran: fails like every budget overrun (scan.budget, critical).
            yield Finding("scan.budget", Severity.CRITICAL, printable(
                f"check {self.id} ran strict shape inference without data propagation: a shape vector of "
                f"{longest:,} entries ({where}) is over the budget of {budget.INFERENCE_SHAPE_DATA:,}; the model "
                "is built to exhaust whoever propagates it, and is not passed"), Location(ctx.display))


# Strict shape inference is handed a light copy of the model first: the same model with the values of its large
# weights left out (names, types and dims kept). ONNX's C++ pass holds the model it is given three times at once
# (parsed, the inferred model serialized, and that copied into Python bytes): +774 MB on the 268 MB DistilBERT-base,
# the scan's whole peak. A weight's values are left out only where no inference can read them:
# - only at these (domain, op type) -> input positions, where ONNX's inference functions read an input's type and
#   shape, never its values (matrix products and a table lookup: MatMul, Gemm, Gather's data);
# - only a float tensor of rank 2 or more: data propagation (data_prop) reads an initializer's values only when it
#   is an int32/int64 tensor of rank 0 or 1 (onnx shape_inference/implementation.h, DataPropagationContextImpl);
# - only a tensor of the main graph, named by no subgraph, no other node input, no node output and no other
#   initializer, whose values are all in raw_data and not in external data.
# Fail closed, and every failure is the model's own: when the light copy does not pass (a value was read after
# all, or anything else), the model itself is inferred and its outcome, message included, is what is reported.
# So a verdict can only change if inference passed without values that, present, would have made it fail:
# what tests/scan/test_scan_memory.py checks over the corpus and malformed weights. The cost: a model whose
# inference fails is inferred twice (both runs within the same budget.INFERENCE_NODES).
WEIGHT_ONLY_INPUTS: dict[tuple[str, str], frozenset[int]] = {
    (domain, op): frozenset(inputs)
    for domain in ("", "ai.onnx")
    for op, inputs in (("MatMul", (0, 1)), ("Gemm", (0, 1, 2)), ("Gather", (0,)))
}
WEIGHT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                          onnx.TensorProto.DOUBLE})
# The light copy is made only when it leaves out at least this many bytes of values: below, the model itself is
# small enough to infer, and a copy (and a second inference when it fails) saves nothing worth having.
LIGHT_MIN_BYTES = 1 << 20


def without_weights(model: onnx.ModelProto) -> bytes | None:
    """The model serialized with the values of its large weights left out (see ``WEIGHT_ONLY_INPUTS``), or
    ``None`` when there is none to leave out."""
    graph = model.graph
    counts = Counter(t.name for t in graph.initializer)
    candidates = {t.name for t in graph.initializer if counts[t.name] == 1 and _weight_only_tensor(t)}
    if not candidates:
        return None
    for body in bodies(model):
        main = body.parent is None and body.function is None
        for node in body.nodes:
            candidates.difference_update(node.output)
            allowed = WEIGHT_ONLY_INPUTS.get((node.domain, node.op_type), frozenset()) if main else frozenset()
            for i, name in enumerate(node.input):
                if name in candidates and i not in allowed:
                    candidates.discard(name)
    if sum(len(t.raw_data) for t in graph.initializer if t.name in candidates) < LIGHT_MIN_BYTES:
        return None
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(graph, light.graph, skip="initializer")
    for tensor in graph.initializer:
        if tensor.name in candidates:
            _copy_fields(tensor, light.graph.initializer.add(), skip="raw_data")
        else:
            light.graph.initializer.add().CopyFrom(tensor)
    return light.SerializeToString()


def _weight_only_tensor(tensor: onnx.TensorProto) -> bool:
    """A float tensor of rank 2 or more, every dim positive, with its values in raw_data only."""
    fields = {fd.name for fd, _ in tensor.ListFields()}
    return (tensor.data_type in WEIGHT_TYPES and len(tensor.dims) >= 2 and all(d > 0 for d in tensor.dims)
            and "raw_data" in fields and not fields & _VALUE_FIELDS and not tensor.external_data
            and tensor.data_location == onnx.TensorProto.DEFAULT and len(tensor.raw_data) > 0)


_VALUE_FIELDS = frozenset({"float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data",
                           "external_data", "data_location", "segment"})


def _copy_fields(source: Message, target: Message, skip: str) -> None:
    """Every field ``source`` has but ``skip``, copied into the empty ``target`` (unknown fields are not: ONNX's
    passes ignore them)."""
    for fd, value in source.ListFields():
        if fd.name == skip:
            continue
        if fd.is_repeated:
            getattr(target, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(target, fd.name).CopyFrom(value)
        else:
            setattr(target, fd.name, value)


def _infer(data: bytes, data_prop: bool) -> None:
    onnx.shape_inference.infer_shapes(data, check_type=True, strict_mode=True, data_prop=data_prop)


def _infers(light: bytes, data_prop: bool) -> bool:
    """Whether strict inference passes on the light copy; any failure sends the caller to the model itself."""
    try:
        _infer(light, data_prop)
    except Exception:  # noqa: BLE001 -- not a verdict: whatever fails here, the model itself is inferred
        return False
    return True


def cost(model: onnx.ModelProto) -> tuple[int, int]:
    """What ONNX's passes would walk: the nodes in the file (subgraphs and function bodies once each) and the
    outer-scope names copied into subgraphs (for each subgraph, every name its enclosing bodies define or
    produce). Memoised within one scan."""
    memo = budget.memo()
    key = ("onnx-cost", id(model))
    if memo is not None and key in memo:
        cached = memo[key]
        assert isinstance(cached, tuple)
        return cached
    nodes = names = 0
    outer: dict[tuple[int | str, ...], int] = {}
    for body in bodies(model):
        nodes += len(body.nodes)
        inherited = outer.get(body.parent.key, 0) if body.parent is not None else 0
        names += inherited
        outer[body.key] = inherited + len(body.defined) + len(body.produced)
    result = (nodes, names)
    if memo is not None:
        memo[key] = result
    return result


def _first_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines[:3])[:500] or type(e).__name__


CHECKS = (FileSize(), FileFormat(), FileDecode(), Checker(), ShapeInference())
