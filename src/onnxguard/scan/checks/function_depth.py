"""Local-function call chains nested deeper than a sane limit, or that inline into a huge graph.

ONNX Runtime inlines every call of a model-local function when it loads the model, and ONNX shape inference
infers each function body again at every call site. A chain of functions each calling the next is expanded
level by level: deep chains exhaust recursion, and a chain in which each level calls the next twice expands
to 2**depth bodies (30 levels: a billion nodes, from a file of sixty). The call graph is measured in linear
time (:mod:`onnxguard.scan.calls`), never expanded: the longest chain against the policy's
``max_function_depth``, the inlined node count against ``budget.INFERENCE_NODES``. Cycles are
``functions.recursion``'s.
"""

from __future__ import annotations

from collections.abc import Iterable

from onnxguard.scan import budget, calls
from onnxguard.scan.interface import BaseCheck, Finding, ScanContext, Severity, quote
from onnxguard.scan.walk import function_key


class FunctionDepth(BaseCheck):
    id = "functions.depth"
    severity = Severity.HIGH
    title = ("model-local functions call each other in a chain deeper than max_function_depth, or inline into "
             "more nodes than the scanner's inference budget")

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        g = calls.analysed(ctx.parsed)
        if not g.functions:
            return
        depth, size = calls.measure(g)
        limit = ctx.policy.max_function_depth
        if depth:
            deepest = max(sorted(depth), key=lambda k: depth[k])
            if depth[deepest] > limit:
                yield self.finding(ctx, f"local function {quote(function_key(g.functions[deepest]))} starts a chain of "
                                        f"{depth[deepest]} nested function calls, over the limit of {limit}",
                                   node=g.functions[deepest].name)
        inlined = calls.inlined_nodes(g)
        cyclic = len(size) < len(g.functions)  # functions in a call cycle are functions.recursion's
        if inlined > budget.INFERENCE_NODES and not cyclic:
            shown = "at least 10**12" if inlined >= calls.INLINED_CAP else f"{inlined:,}"
            yield self.finding(ctx, f"inlining the model's local-function calls expands the graph to {shown} nodes "
                                    f"(the file holds {g.main_nodes + sum(g.own_nodes.values()):,}); a loader that "
                                    f"inlines them (ONNX Runtime does) is exhausted; the budget is "
                                    f"{budget.INFERENCE_NODES:,}")


CHECKS = (FunctionDepth(),)
