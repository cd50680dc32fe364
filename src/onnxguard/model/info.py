"""``info.inspect(path) -> ModelInfo``: what an ONNX model is, without running it; ``describe_bundle`` for an
opened bundle."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from onnxguard.errors import InputError
from onnxguard.model import onnxfile
from onnxguard.model.onnxfile import TensorSpec

if TYPE_CHECKING:
    from onnxguard.trust.opening import OpenedBundle

STANDARD_DOMAIN = "ai.onnx"


@dataclass(frozen=True)
class ModelInfo:
    """What ``inspect`` reports of a model (and of its bundle, when it came from one)."""

    path: str
    file_size: int
    ir_version: int
    opset: dict[str, int]
    producer: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    op_histogram: dict[str, dict[str, int]]
    node_count: int | None  # None: the model is sealed and was not decrypted
    parameter_count: int | None
    metadata: dict[str, str]
    external_data: tuple[str, ...]
    bundle: dict | None = field(default=None)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["inputs"] = [t.to_dict() for t in self.inputs]
        d["outputs"] = [t.to_dict() for t in self.outputs]
        d["external_data"] = list(self.external_data)
        return d


def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph nested in its nodes' attributes (If, Loop, Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from graphs(g)


def op_histogram(model: onnx.ModelProto) -> dict[str, dict[str, int]]:
    """Node counts by domain then op type, over the main graph, subgraphs and local functions."""
    counts: dict[str, Counter[str]] = {}
    nodes = [n for g in graphs(model.graph) for n in g.node]
    nodes += [n for f in model.functions for n in f.node]
    for node in nodes:
        counts.setdefault(node.domain or STANDARD_DOMAIN, Counter())[node.op_type] += 1
    return {d: dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))) for d, c in sorted(counts.items())}


def _external_locations(model: onnx.ModelProto) -> list[str]:
    locations: set[str] = set()
    for g in graphs(model.graph):
        for t in g.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                locations.update(e.value for e in t.external_data if e.key == "location")
    return sorted(locations)


def _attribute_parameters(node: onnx.NodeProto) -> int:
    """Weights held in attributes: tensors (``Constant``) and float lists (``ai.onnx.ml`` operators such as
    ``LinearClassifier`` and ``TreeEnsemble*`` keep their coefficients and thresholds there)."""
    n = 0
    for a in node.attribute:
        if a.type == onnx.AttributeProto.TENSOR:
            n += math.prod(a.t.dims)
        elif a.type == onnx.AttributeProto.TENSORS:
            n += sum(math.prod(t.dims) for t in a.tensors)
        elif a.type == onnx.AttributeProto.FLOATS:
            n += len(a.floats)
    return n


def parameter_count(model: onnx.ModelProto) -> int:
    """Elements in all initializers and weight attributes (from declared dims, so external data is never read)."""
    return sum(math.prod(t.dims) for g in graphs(model.graph) for t in g.initializer) + sum(
        _attribute_parameters(n) for g in graphs(model.graph) for n in g.node)


def describe(model: onnx.ModelProto, path: str = "", file_size: int = 0) -> ModelInfo:
    """Describe a parsed model; ``path`` and ``file_size`` are what it was read from."""
    hist = op_histogram(model)
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    return ModelInfo(
        path=path,
        file_size=file_size,
        ir_version=model.ir_version,
        opset={(o.domain or STANDARD_DOMAIN): o.version for o in model.opset_import},
        producer=producer,
        inputs=tuple(onnxfile.inputs(model)),
        outputs=tuple(onnxfile.outputs(model)),
        op_histogram=hist,
        node_count=sum(sum(c.values()) for c in hist.values()),
        parameter_count=parameter_count(model),
        metadata={p.key: p.value for p in model.metadata_props},
        external_data=tuple(_external_locations(model)),
    )


def _from_manifest(opened: OpenedBundle) -> ModelInfo:
    """What the manifest says of a sealed model that was not decrypted: no graph statistics."""
    m = opened.manifest.model
    return ModelInfo(str(opened.path / m.file), m.size, m.ir_version, m.opset, m.producer,
                     tuple(TensorSpec(t.name, t.dtype, None if t.shape is None else tuple(t.shape)) for t in m.inputs),
                     tuple(TensorSpec(t.name, t.dtype, None if t.shape is None else tuple(t.shape)) for t in m.outputs),
                     {}, None, None, dict(opened.manifest.metadata), ())


def describe_bundle(opened: OpenedBundle) -> ModelInfo:
    """Describe a bundle opened through the bundle door: its model (from the bytes the door hashed, or from the
    manifest when it is sealed and was opened without its identity) and a summary of the manifest."""
    name = str(opened.path / opened.model_name)
    if opened.model_name in opened.contents:
        data = opened.model_bytes
        info = describe(onnxfile.parse(data, name), name, len(data))
    else:
        info = _from_manifest(opened)
    m = opened.manifest
    summary = {
        "path": str(opened.path),
        "format": m.format,
        "name": m.name,
        "version": m.version,
        "created": m.created,
        "digest": opened.digest,
        "source": m.source.model_dump(),
        "task": m.source.task,
        "labels": m.labels,
        "files": sorted(m.files),
        "steps": [s.name for s in m.steps],
        "parity": None if m.parity is None else {"passed": m.parity.passed},
        "sealed": m.sealed is not None,
        "signed": os.path.lexists(opened.path / "model.sig"),
        "signature": {"status": opened.report.steps[2].status.value, "detail": opened.report.steps[2].detail},
    }
    return ModelInfo(**{**info.__dict__, "bundle": summary})


def inspect(path: str | os.PathLike[str]) -> ModelInfo:
    """Describe an ONNX file. (A bundle is opened through ``trust.open_bundle`` and described by
    ``describe_bundle``: the command line does both for a directory.)"""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p}: a directory; describe a bundle with describe_bundle after trust.open_bundle")
    data = onnxfile.read_file(p)  # one read: never blocks on a FIFO, refuses a file over 2 GiB unread
    return describe(onnxfile.parse(data, str(p)), str(p), len(data))
