"""Walking a parsed model for the checks: every graph body (main graph, subgraphs, function bodies) with
where it sits, and every tensor stored in the model.

A ``Body`` is a list of nodes with the names it defines itself (graph inputs and initializers, or function
inputs) and, for subgraphs, the body that encloses it (outer-scope names are visible inside).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx

SUBGRAPH_TYPES = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


@dataclass(frozen=True)
class Body:
    """A graph or function body as the walk meets it: its nodes, the names it defines and its nesting."""

    where: str                     # "graph", "graph/If_0.then_branch", "function local:f", ...
    nodes: tuple[onnx.NodeProto, ...]
    defined: frozenset[str]        # graph inputs + initializers, or function inputs
    outputs: tuple[str, ...]
    depth: int                     # 0 for the main graph and function bodies; +1 per enclosing node
    parent: Body | None
    graph: onnx.GraphProto | None  # None for function bodies
    function: onnx.FunctionProto | None = None  # the local function this body belongs to, if any


def node_label(node: onnx.NodeProto, index: int) -> str:
    """A node's name, or ``OpType#index`` for an unnamed node."""
    return node.name or f"{node.op_type}#{index}"


def subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """The graphs ``node`` carries as attributes (If branches, Loop and Scan bodies), named by attribute."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for i, g in enumerate(attr.graphs):
                yield f"{attr.name}[{i}]", g


def _graph_bodies(graph: onnx.GraphProto, where: str, depth: int, parent: Body | None,
                  function: onnx.FunctionProto | None = None) -> Iterator[Body]:
    defined = frozenset([v.name for v in graph.input] + [t.name for t in graph.initializer]
                        + [t.values.name for t in graph.sparse_initializer])
    body = Body(where, tuple(graph.node), defined, tuple(v.name for v in graph.output), depth, parent, graph, function)
    yield body
    for i, node in enumerate(graph.node):
        for attr_name, g in subgraphs(node):
            yield from _graph_bodies(g, f"{where}/{node_label(node, i)}.{attr_name}", depth + 1, body, function)


def bodies(model: onnx.ModelProto) -> Iterator[Body]:
    """The main graph, every subgraph, every model-local function body and the subgraphs inside them."""
    yield from _graph_bodies(model.graph, "graph", 0, None)
    for f in model.functions:
        body = Body(f"function {function_key(f)}", tuple(f.node), frozenset(f.input), tuple(f.output), 0, None, None, f)
        yield body
        for i, node in enumerate(f.node):
            for attr_name, g in subgraphs(node):
                yield from _graph_bodies(g, f"{body.where}/{node_label(node, i)}.{attr_name}", 1, body, f)


def function_key(f: onnx.FunctionProto) -> str:
    """``domain:name[@overload]``: how a model-local function is named."""
    return f"{f.domain or 'ai.onnx'}:{f.name}" + (f"@{f.overload}" if f.overload else "")


def visible(body: Body) -> set[str]:
    """Names a node of ``body`` may read without producing them: its own defined names and every enclosing
    scope's defined and produced names."""
    names = set(body.defined)
    outer = body.parent
    while outer is not None:
        names |= outer.defined
        names.update(o for n in outer.nodes for o in n.output if o)
        outer = outer.parent
    return names


@dataclass(frozen=True)
class StoredTensor:
    """A tensor stored in the model (an initializer or a node attribute) and where it is."""

    tensor: onnx.TensorProto
    where: str            # the body it belongs to
    node: str | None      # the Constant (or other) node carrying it as an attribute, if any


def stored_tensors(model: onnx.ModelProto) -> Iterator[StoredTensor]:
    """Every TensorProto the file stores: initializers, sparse initializers' parts, and tensor attributes."""
    for body in bodies(model):
        if body.graph is not None:
            for t in body.graph.initializer:
                yield StoredTensor(t, body.where, None)
            for s in body.graph.sparse_initializer:
                yield StoredTensor(s.values, body.where, None)
                yield StoredTensor(s.indices, body.where, None)
        for i, node in enumerate(body.nodes):
            for attr in node.attribute:
                label = node_label(node, i)
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield StoredTensor(attr.t, body.where, label)
                elif attr.type == onnx.AttributeProto.TENSORS:
                    for t in attr.tensors:
                        yield StoredTensor(t, body.where, label)
                elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                    yield StoredTensor(attr.sparse_tensor.values, body.where, label)
                    yield StoredTensor(attr.sparse_tensor.indices, body.where, label)
