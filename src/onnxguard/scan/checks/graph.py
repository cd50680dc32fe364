"""Graph structure: a tensor produced twice (SSA violation), cycles between nodes, and inputs read but never
produced. Scoping follows ONNX: a subgraph sees the names of every enclosing graph, an empty input name ""
means an omitted optional input, and an initializer may also be listed as a graph input."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import onnx

from onnxguard.scan import budget
from onnxguard.scan.interface import BaseCheck, Finding, ScanContext, Severity, quote
from onnxguard.scan.walk import Body, bodies, node_label, subgraphs


def free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph (and the subgraphs inside it) reads from enclosing scopes."""
    budget.current().visit(len(graph.node) + 1, "a subgraph's outer reads")
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    defined |= {o for n in graph.node for o in n.output}
    used = {i for n in graph.node for i in n.input if i} | {v.name for v in graph.output}
    for n in graph.node:
        for _, g in subgraphs(n):
            used |= free_names(g)
    return used - defined


def _reads(node: onnx.NodeProto) -> set[str]:
    names = {i for i in node.input if i}
    for _, g in subgraphs(node):
        names |= free_names(g)
    return names


class SingleAssignment(BaseCheck):
    id = "graph.ssa"
    severity = Severity.HIGH
    title = "a tensor name is produced more than once (the graph is not in SSA form)"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        for body in bodies(ctx.parsed):
            declared: Counter[str] = Counter()
            if body.graph is not None:
                initializers = [t.name for t in body.graph.initializer]
                inputs = {v.name for v in body.graph.input}
                declared.update(v.name for v in body.graph.input)
                declared.update(n for n in initializers if n not in inputs)
                dup_init = [n for n, c in Counter(initializers).items() if c > 1]
                for name in dup_init:
                    yield self.finding(ctx, f"{body.where}: initializer {quote(name)} is defined more than once",
                                       tensor=name)
            for name, c in declared.items():
                if c > 1:
                    yield self.finding(ctx, f"{body.where}: graph input {quote(name)} is declared more than once",
                                       tensor=name)
            produced = set(body.defined)
            for i, node in enumerate(body.nodes):
                for out in node.output:
                    if not out:
                        continue
                    outer = out not in body.defined and body.outer_defines(out)
                    if out in produced or outer:
                        label = node_label(node, i)
                        origin = "an enclosing graph" if outer and out not in produced else body.where
                        yield self.finding(ctx, f"{body.where}: node {quote(label)} produces {quote(out)}, already "
                                                f"defined in {origin}", node=label, tensor=out)
                    produced.add(out)


class Cycles(BaseCheck):
    id = "graph.cycle"
    severity = Severity.HIGH
    title = "nodes depend on each other in a cycle"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        for body in bodies(ctx.parsed):
            cycle = find_cycle(body)
            if cycle:
                labels = [node_label(body.nodes[i], i) for i in cycle]
                chain = " -> ".join(quote(n) for n in [*labels, labels[0]])
                yield self.finding(ctx, f"{body.where}: nodes form a cycle: {chain}", node=labels[0])


def _in_order(body: Body) -> bool:
    """Whether every node reads only names produced by nodes before it (or not produced in this body at all):
    then no cycle is possible. Linear, with no per-node graph built. Not decided here (``False``) when a name is
    produced twice: every producer then counts as a dependency."""
    if sum(1 for n in body.nodes for o in n.output if o) != len(body.produced):
        return False
    later = set(body.produced)
    for node in body.nodes:
        if later & _reads(node):
            return False
        later.difference_update(node.output)
    return True


def find_cycle(body: Body) -> list[int] | None:
    """One cycle among the body's nodes, as node indexes in dependency order, or ``None`` (Kahn's algorithm)."""
    if _in_order(body):  # the common case: the node order is itself a topological order
        return None
    producers: dict[str, list[int]] = {}
    for i, node in enumerate(body.nodes):
        for out in node.output:
            if out:
                producers.setdefault(out, []).append(i)
    preds = [{p for name in _reads(node) for p in producers.get(name, ())} for node in body.nodes]
    succs: list[set[int]] = [set() for _ in body.nodes]
    for i, ps in enumerate(preds):
        for p in ps:
            succs[p].add(i)
    indegree = [len(ps) for ps in preds]
    ready = [i for i, d in enumerate(indegree) if d == 0]
    while ready:
        i = ready.pop()
        for s in succs[i]:
            indegree[s] -= 1
            if indegree[s] == 0:
                ready.append(s)
    remaining = {i for i, d in enumerate(indegree) if d > 0}
    if not remaining:
        return None
    # Every remaining node has a remaining predecessor: walking back must revisit a node, closing a cycle.
    path: list[int] = []
    seen: dict[int, int] = {}
    i = min(remaining)
    while i not in seen:
        seen[i] = len(path)
        path.append(i)
        i = min(p for p in preds[i] if p in remaining)
    return list(reversed(path[seen[i]:]))


class Undefined(BaseCheck):
    id = "graph.undefined-input"
    severity = Severity.MEDIUM
    title = "a node input or graph output names a tensor nothing produces"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        for body in bodies(ctx.parsed):
            for i, node in enumerate(body.nodes):
                for name in node.input:
                    if name and not body.sees(name):
                        label = node_label(node, i)
                        yield self.finding(ctx, f"{body.where}: node {quote(label)} reads {quote(name)}, which no "
                                                "node, input or initializer produces", node=label, tensor=name)
            for name in body.outputs:
                if not body.sees(name):
                    yield self.finding(ctx, f"{body.where}: output {quote(name)} is never produced", tensor=name)


CHECKS = (SingleAssignment(), Cycles(), Undefined())
