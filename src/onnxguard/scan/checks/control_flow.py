"""Control flow: how deep subgraphs nest, and how many If / Loop / Scan nodes the model holds."""

from __future__ import annotations

from collections.abc import Iterable

from onnxguard.scan.interface import BaseCheck, Finding, ScanContext, Severity
from onnxguard.scan.policy import CONTROL_FLOW_OPS, STANDARD_DOMAINS
from onnxguard.scan.walk import bodies


class Nesting(BaseCheck):
    id = "control-flow.depth"
    severity = Severity.HIGH
    title = "subgraphs nest deeper than the policy's max_nesting_depth"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        deepest = max(bodies(ctx.parsed), key=lambda b: b.depth)
        if deepest.depth > ctx.policy.max_nesting_depth:
            yield self.finding(ctx, f"subgraphs nest {deepest.depth} levels deep (limit "
                                    f"{ctx.policy.max_nesting_depth}), deepest at {deepest.where}")


class Count(BaseCheck):
    id = "control-flow.count"
    severity = Severity.MEDIUM
    title = "more If / Loop / Scan nodes than the policy's max_control_flow_nodes"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        counts = {op: 0 for op in CONTROL_FLOW_OPS}
        for body in bodies(ctx.parsed):
            for node in body.nodes:
                if node.op_type in counts and node.domain in STANDARD_DOMAINS:
                    counts[node.op_type] += 1
        total = sum(counts.values())
        if total > ctx.policy.max_control_flow_nodes:
            detail = ", ".join(f"{n} {op}" for op, n in counts.items() if n)
            yield self.finding(ctx, f"{total} control-flow nodes ({detail}), over the limit of "
                                    f"{ctx.policy.max_control_flow_nodes}")


CHECKS = (Nesting(), Count())
