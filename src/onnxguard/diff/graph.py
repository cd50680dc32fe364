"""What ``diff`` reads from a graph: who produces each tensor, which graph inputs each tensor derives from, small
constants, and the size of a token embedding. Everything is bounded by the graph's own size (one pass over the
nodes, memoised), never by values the model computes."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnxguard.scan.walk import node_label, subgraphs

# A constant this small is shown in messages and compared between models (a trigger id, a threshold).
SMALL_CONSTANT = 8
# How far back from a branch's condition its "recipe" (the ops and constants that decide it) is read.
RECIPE_DEPTH = 6
# The most nodes one backward walk visits.
MAX_WALK = 10_000


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names the nodes of ``graph`` (and of its own subgraphs) read, whether or not defined inside it."""
    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for _, g in subgraphs(node):
            names |= _outer_names(g)
    return names


@dataclass(frozen=True)
class Graph:
    """The main graph of a model, indexed: producers, labels, initializers and input ancestry."""

    model: onnx.ModelProto
    inputs: tuple[str, ...]
    producer: dict[str, int] = field(repr=False)
    labels: tuple[str, ...] = field(repr=False)
    initializers: dict[str, onnx.TensorProto] = field(repr=False)
    ancestry: dict[str, frozenset[str]] = field(repr=False)  # tensor -> the graph inputs it derives from

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return list(self.model.graph.node)

    def node(self, index: int) -> onnx.NodeProto:
        return self.model.graph.node[index]

    def reads(self, node: onnx.NodeProto) -> list[str]:
        """The tensors ``node`` reads: its inputs and what its subgraphs read from the outer scope."""
        names = [n for n in node.input if n]
        for _, g in subgraphs(node):
            names += sorted(_outer_names(g) & self.ancestry.keys())
        return names

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` when it is a small initializer or the output of a ``Constant`` node."""
        tensor = self.initializers.get(name)
        if tensor is None and name in self.producer:
            node = self.node(self.producer[name])
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                tensor = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
        if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
            return None
        if int(np.prod(tensor.dims, dtype=np.int64)) > SMALL_CONSTANT:
            return None
        try:
            return numpy_helper.to_array(tensor)
        except (ValueError, TypeError):
            return None

    def path_from_input(self, name: str) -> list[str]:
        """The shortest chain of producers from a graph input to ``name``: ``[input, op, op, ...]``."""
        came: dict[str, str | None] = {name: None}
        queue, seen = deque([name]), 0
        while queue and seen < MAX_WALK:
            t = queue.popleft()
            seen += 1
            if t in self.inputs:
                chain: list[str] = [t]
                cur = came[t]
                while cur is not None:
                    chain.append(self.node(self.producer[cur]).op_type)
                    cur = came[cur]
                return chain
            if t not in self.producer:
                continue
            for src in self.reads(self.node(self.producer[t])):
                if src not in came and self.ancestry.get(src):
                    came[src] = t
                    queue.append(src)
        return []

    def recipe(self, name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """What decides ``name`` near it: the op types of its input-derived producers within ``RECIPE_DEPTH``
        steps, and the small constants they read (as text), both sorted."""
        ops: list[str] = []
        constants: list[str] = []
        frontier, seen = [name], {name}
        for _ in range(RECIPE_DEPTH):
            following = []
            for t in frontier:
                if t not in self.producer:
                    continue
                node = self.node(self.producer[t])
                ops.append(node.op_type)
                for src in self.reads(node):
                    if src in seen:
                        continue
                    seen.add(src)
                    if self.ancestry.get(src):
                        following.append(src)
                    else:
                        value = self.constant(src)
                        if value is not None and value.dtype.kind in "biuf":
                            constants.append(np.array2string(value.reshape(-1), separator=","))
            frontier = following
        return tuple(sorted(ops)), tuple(sorted(constants))

    def embedding_rows(self, input_name: str) -> int | None:
        """The rows of the largest table a ``Gather`` looks ``input_name`` up in (a token embedding): the
        vocabulary size the model takes, or None when no such lookup reads it."""
        rows = None
        for node in self.model.graph.node:
            if node.op_type != "Gather" or len(node.input) < 2:
                continue
            if input_name not in self.ancestry.get(node.input[1], ()):
                continue
            table = self.initializers.get(node.input[0])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if table is not None and axis == 0 and len(table.dims) >= 1:
                rows = max(rows or 0, int(table.dims[0]))
        return rows


def index(model: onnx.ModelProto) -> Graph:
    """Index the main graph of ``model`` in one pass over its nodes (in their order, which ONNX requires to be
    topological; a producer that comes later is read in a second pass)."""
    g = model.graph
    initializers = {t.name: t for t in g.initializer}
    inputs = tuple(v.name for v in g.input if v.name not in initializers)
    producer: dict[str, int] = {}
    for i, node in enumerate(g.node):
        for out in node.output:
            if out:
                producer[out] = i
    labels = tuple(node_label(n, i) for i, n in enumerate(g.node))
    shared: dict[frozenset[str], frozenset[str]] = {}
    ancestry: dict[str, frozenset[str]] = {n: frozenset((n,)) for n in inputs}
    empty: frozenset[str] = frozenset()
    for _ in range(2):
        late = False  # a node read a tensor produced further on: one more pass settles it
        for node in g.node:
            reads = [n for n in node.input if n]
            if node.attribute:
                for _, sub in subgraphs(node):
                    reads += [n for n in _outer_names(sub) if n in ancestry]
            late = late or any(n in producer and n not in ancestry for n in reads)
            union = frozenset().union(*(ancestry.get(n, empty) for n in reads))
            union = shared.setdefault(union, union)
            for out in node.output:
                if out:
                    ancestry[out] = union
        if not late:
            break
    return Graph(model, inputs, producer, labels, initializers, ancestry)
