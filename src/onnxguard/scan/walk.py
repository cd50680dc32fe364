"""Walking a parsed model for the checks: every graph body (main graph, subgraphs, function bodies) with
where it sits, and every tensor stored in the model.

A ``Body`` is a list of nodes with the names it defines itself (graph inputs and initializers, or function
inputs) and, for subgraphs, the body that encloses it (outer-scope names are visible inside).

Every walk is charged to the running check's budget (:mod:`onnxguard.scan.budget`): :func:`bodies` charges each
body's nodes as it yields them and refuses nesting past ``MAX_WALK_DEPTH``, so no check can loop over a model
for longer than its budget allows. Outer-scope lookups walk the chain of enclosing bodies (each body's produced
names computed once), never copying a scope into every subgraph: thousands of small subgraphs cost linear time.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import onnx

from onnxguard.scan import budget

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
    key: tuple[int | str, ...] = ()  # unique path: node indexes and attribute names from the graph or function

    @functools.cached_property
    def produced(self) -> frozenset[str]:
        """Names the body's own nodes produce (computed once per body)."""
        return frozenset(o for n in self.nodes for o in n.output if o)

    def outer_defines(self, name: str) -> bool:
        """Whether an enclosing body defines or produces ``name`` (what a subgraph may read from outside)."""
        outer = self.parent
        while outer is not None:
            if name in outer.defined or name in outer.produced:
                return True
            outer = outer.parent
        return False

    def sees(self, name: str) -> bool:
        """Whether a node of this body may read ``name``: defined or produced here, or in an enclosing body."""
        return name in self.defined or name in self.produced or self.outer_defines(name)


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
                  function: onnx.FunctionProto | None = None,
                  key: tuple[int | str, ...] = ("graph",)) -> Iterator[Body]:
    defined = frozenset([v.name for v in graph.input] + [t.name for t in graph.initializer]
                        + [t.values.name for t in graph.sparse_initializer])
    body = Body(where, tuple(graph.node), defined, tuple(v.name for v in graph.output), depth, parent, graph, function,
                key)
    charge = budget.current()
    charge.enter(depth, where)
    charge.visit(len(body.nodes) + 1, where)
    yield body
    for i, node in enumerate(graph.node):
        for attr_name, g in subgraphs(node):
            yield from _graph_bodies(g, f"{where}/{node_label(node, i)}.{attr_name}", depth + 1, body, function,
                                     (*key, i, attr_name))


def bodies(model: onnx.ModelProto) -> Iterator[Body]:
    """The main graph, every subgraph, every model-local function body and the subgraphs inside them.

    Within a scan the walk is made once and shared by the checks (each still charged for what it visits)."""
    memo = budget.memo()
    if memo is None:
        yield from _bodies(model)
        return
    key = ("bodies", id(model))
    cached = memo.get(key)
    if cached is None:
        walked = list(_bodies(model))  # charged to the check that walks first; an overrun is not kept
        memo[key] = walked
        yield from walked
        return
    assert isinstance(cached, list)
    charge = budget.current()
    if cached:  # the deepest body first: the nesting is what it was for the first walk, checked once
        deepest = max(cached, key=lambda b: b.depth)
        charge.enter(deepest.depth, deepest.where)
    visit = charge.visit
    for body in cached:
        visit(len(body.nodes) + 1, body.where)
        yield body


def _bodies(model: onnx.ModelProto) -> Iterator[Body]:
    yield from _graph_bodies(model.graph, "graph", 0, None)
    for fi, f in enumerate(model.functions):
        body = Body(f"function {function_key(f)}", tuple(f.node), frozenset(f.input), tuple(f.output), 0, None, None, f,
                    ("function", fi))
        budget.current().visit(len(body.nodes) + 1, body.where)
        yield body
        for i, node in enumerate(f.node):
            for attr_name, g in subgraphs(node):
                yield from _graph_bodies(g, f"{body.where}/{node_label(node, i)}.{attr_name}", 1, body, f,
                                         ("function", fi, i, attr_name))


def function_key(f: onnx.FunctionProto) -> str:
    """``domain:name[@overload]``: how a model-local function is named."""
    return f"{f.domain or 'ai.onnx'}:{f.name}" + (f"@{f.overload}" if f.overload else "")


def visible(body: Body) -> set[str]:
    """Names a node of ``body`` may read without producing them: its own defined names and every enclosing
    scope's defined and produced names. Builds a set as large as every enclosing scope: checks ask
    :meth:`Body.sees` / :meth:`Body.outer_defines` instead (a subgraph per node would make this quadratic)."""
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
    """Every TensorProto the file stores: initializers, sparse initializers' parts, and tensor attributes.

    Within a scan they are found once and shared by the checks, each charged what the walk that found them cost
    (five checks read them: on 20,000 small If nodes, 3.5 s of a 14 s profile walking them again each time)."""
    memo = budget.memo()
    if memo is None:
        yield from _stored_tensors(model)
        return
    key = ("stored", id(model))
    cached = memo.get(key)
    if cached is None:
        charge = budget.current()
        before = charge.visited
        found = list(_stored_tensors(model))  # charged to the check that walks first; an overrun is not kept
        memo[key] = (found, charge.visited - before)
        yield from found
        return
    assert isinstance(cached, tuple)
    found, charged = cached
    budget.current().visit(charged, "the model's stored tensors")
    yield from found


def _stored_tensors(model: onnx.ModelProto) -> Iterator[StoredTensor]:
    charge = budget.current()
    for body in bodies(model):
        if body.graph is not None:
            charge.visit(len(body.graph.initializer) + len(body.graph.sparse_initializer), body.where)
            for t in body.graph.initializer:
                yield StoredTensor(t, body.where, None)
            for s in body.graph.sparse_initializer:
                yield StoredTensor(s.values, body.where, None)
                yield StoredTensor(s.indices, body.where, None)
        for i, node in enumerate(body.nodes):
            for attr in node.attribute:
                kind = attr.type
                if kind == onnx.AttributeProto.TENSOR:
                    yield StoredTensor(attr.t, body.where, node_label(node, i))
                elif kind == onnx.AttributeProto.TENSORS:
                    label = node_label(node, i)
                    for t in attr.tensors:
                        yield StoredTensor(t, body.where, label)
                elif kind == onnx.AttributeProto.SPARSE_TENSOR:
                    label = node_label(node, i)
                    yield StoredTensor(attr.sparse_tensor.values, body.where, label)
                    yield StoredTensor(attr.sparse_tensor.indices, body.where, label)
