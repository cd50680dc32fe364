"""The call graph of a model's local functions, measured in linear time: which function calls which (once per
call site), its cycles (strongly connected components), the longest call chain, and how many nodes the graph
holds once every call is inlined (what ONNX shape inference and ONNX Runtime's loader expand).

Inlining multiplies: a function that calls the one below it twice, 30 levels deep, inlines to 2**30 copies of
the innermost body, though the file holds 60 nodes. Sizes here are computed per function once (memoised,
capped at ``INLINED_CAP``), never by expanding anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from onnxguard.scan import budget
from onnxguard.scan.walk import bodies

Key = tuple[str, str, str]  # (domain, name, overload)

# Inlined sizes are counted up to here and no further (anything past it is over every budget anyway).
INLINED_CAP = 10**12


def key_of(f: onnx.FunctionProto) -> Key:
    """How a node names the local function it calls."""
    return (f.domain, f.name, f.overload)


def call_key(node: onnx.NodeProto) -> Key:
    """The local function a node would call."""
    return (node.domain, node.op_type, node.overload)


@dataclass
class CallGraph:
    """Local functions, their call sites (a list: one entry per call), and nodes outside any call."""

    functions: dict[Key, onnx.FunctionProto] = field(default_factory=dict)
    calls: dict[Key, list[Key]] = field(default_factory=dict)
    own_nodes: dict[Key, int] = field(default_factory=dict)  # nodes of the body and its subgraphs
    main_calls: list[Key] = field(default_factory=list)
    main_nodes: int = 0

    def callees(self, k: Key) -> list[Key]:
        """Distinct callees of ``k``, sorted."""
        return sorted(set(self.calls.get(k, ())))


def call_graph(model: onnx.ModelProto) -> CallGraph:
    """The call graph of ``model`` (every body walked once, under the running check's budget)."""
    g = CallGraph()
    for f in model.functions:
        g.functions[key_of(f)] = f
        g.calls[key_of(f)] = []
        g.own_nodes[key_of(f)] = 0
    for body in bodies(model):
        owner = key_of(body.function) if body.function is not None else None
        sites = [call_key(n) for n in body.nodes if call_key(n) in g.functions]
        if owner is None:
            g.main_calls += sites
            g.main_nodes += len(body.nodes)
        else:
            g.calls[owner] += sites
            g.own_nodes[owner] += len(body.nodes)
    return g


def components(g: CallGraph) -> list[list[Key]]:
    """Strongly connected components (iterative Tarjan: no recursion, linear in calls)."""
    charge = budget.current()
    index: dict[Key, int] = {}
    low: dict[Key, int] = {}
    stack: list[Key] = []
    on_stack: set[Key] = set()
    found: list[list[Key]] = []
    counter = 0
    for root in sorted(g.functions):
        if root in index:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(g.callees(root)))]
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                charge.visit(1, "local-function calls")
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(g.callees(w))))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                component: list[Key] = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                found.append(sorted(component))
    return found


def cycle_in(g: CallGraph, component: list[Key]) -> list[Key] | None:
    """One call cycle through the smallest member of ``component`` (breadth first, inside it), or ``None``."""
    start = component[0]
    members = set(component)
    parent: dict[Key, Key] = {}
    queue = [start]
    for v in queue:
        for w in g.callees(v):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return list(reversed(path))
            if w in members and w not in parent and w != start:
                parent[w] = v
                queue.append(w)
    return None


def measure(g: CallGraph) -> tuple[dict[Key, int], dict[Key, int]]:
    """For every function outside a cycle: the longest call chain it starts (1: calls no local function) and
    its inlined node count (capped at INLINED_CAP). Functions in a cycle are left out (see components)."""
    charge = budget.current()
    cyclic = {k for c in components(g) for k in c if len(c) > 1 or k in g.calls.get(k, ())}
    depth: dict[Key, int] = {}
    size: dict[Key, int] = {}
    for root in sorted(g.functions):
        if root in depth or root in cyclic:
            continue
        work = [root]
        while work:
            v = work[-1]
            pending = [w for w in g.callees(v) if w not in depth and w not in cyclic]
            charge.visit(1 + len(pending), "local-function calls")
            if pending:
                work.extend(pending)
                continue
            work.pop()
            if v in depth:
                continue
            known = [w for w in g.calls[v] if w in depth]
            depth[v] = 1 + max((depth[w] for w in known), default=0)
            size[v] = min(g.own_nodes[v] + sum(size[w] for w in known), INLINED_CAP)
    return depth, size


def inlined_nodes(g: CallGraph) -> int:
    """Nodes the model holds once every local-function call is inlined (capped; a call cycle counts as the cap)."""
    depth, size = measure(g)
    total = g.main_nodes
    for k in g.main_calls:
        total += size.get(k, INLINED_CAP)
        if total >= INLINED_CAP:
            return INLINED_CAP
    return total


def analysed(model: onnx.ModelProto) -> CallGraph:
    """:func:`call_graph`, memoised within one scan."""
    memo = budget.memo()
    k = ("calls", id(model))
    if memo is not None and k in memo:
        cached = memo[k]
        assert isinstance(cached, CallGraph)
        return cached
    g = call_graph(model)
    if memo is not None:
        memo[k] = g
    return g
