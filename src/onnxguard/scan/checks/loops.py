"""Loops whose trip count is unbounded or absurd.

A ``Loop`` runs its body until its trip count ``M`` is reached or its condition turns false. With neither
(``M`` and ``cond`` both omitted) ONNX defines it as ``for (i = 0; ; ++i)``: it never ends. Without ``M``, and
with a condition that starts true and that the body passes through unchanged (or sets to a constant true),
it never ends either. Without ``M`` and with a condition computed from the inputs, it runs for as long as a
value the caller controls says so: nothing bounds it. A constant ``M`` (or one the symbolic pass computes from
constants, such as ``Mul`` of two constants) over the policy's ``max_loop_iterations`` keeps a request, or the
session's warm-up, busy for hours. Each is a denial of service at the first call; none needs a custom op.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from onnxguard.scan import symbolic
from onnxguard.scan.interface import BaseCheck, Finding, ScanContext, Severity, quote
from onnxguard.scan.policy import STANDARD_DOMAINS
from onnxguard.scan.walk import Body, bodies, node_label


def _passes_through(body: onnx.GraphProto) -> bool:
    """Whether the loop body's condition output is its condition input unchanged (or a constant true)."""
    if len(body.input) < 2 or not body.output:
        return False
    cond_in, cond_out = body.input[1].name, body.output[0].name
    name = cond_out
    producers = {o: n for n in body.node for o in n.output if o}
    for _ in range(len(body.node) + 1):
        if name == cond_in:
            return True
        node = producers.get(name)
        if node is None or node.domain not in STANDARD_DOMAINS:
            return False
        if node.op_type == "Identity" and node.input:
            name = node.input[0]
            continue
        if node.op_type == "Constant":
            value = symbolic.constant_value(node).scalar()
            return value is not None and value != 0
        return False
    return False


def _body(node: onnx.NodeProto) -> onnx.GraphProto | None:
    for a in node.attribute:
        if a.name == "body" and a.type == onnx.AttributeProto.GRAPH:
            return a.g
    return None


class LoopTripCount(BaseCheck):
    id = "control-flow.loop-trip"
    severity = Severity.HIGH
    title = ("a Loop never ends (no trip count, a condition that stays true), runs over max_loop_iterations, or "
             "(medium) has no trip count and a condition computed from its inputs")

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        limit = ctx.policy.max_loop_iterations
        found = None
        for body in bodies(ctx.parsed):
            for i, node in enumerate(body.nodes):
                if node.op_type != "Loop" or node.domain not in STANDARD_DOMAINS:
                    continue
                found = found or symbolic.analyse(ctx.parsed)
                label = node_label(node, i)
                where = f"{body.where}: Loop node {quote(label)}"
                trip = node.input[0] if len(node.input) > 0 else ""
                cond = node.input[1] if len(node.input) > 1 else ""
                if trip:
                    m = found.value(body, trip).scalar()
                    if m is not None and m > limit:
                        yield self.finding(ctx, f"{where} runs {m:,.0f} times (a trip count from constants), over "
                                                f"the limit of {limit:,}", node=label)
                    continue
                yield from self._unbounded(ctx, found, body, node, label, where, cond)

    def _unbounded(self, ctx: ScanContext, found: symbolic.Analysis, body: Body, node: onnx.NodeProto, label: str,
                   where: str, cond: str) -> Iterable[Finding]:
        if not cond:
            yield self.finding(ctx, f"{where} has neither a trip count nor a condition: it never ends", node=label)
            return
        start = found.value(body, cond).scalar()
        if start == 0:
            return  # starts false: the body never runs
        loop_body = _body(node)
        if start is not None and loop_body is not None and _passes_through(loop_body):
            yield self.finding(ctx, f"{where} has no trip count and a condition that starts true and stays true: "
                                    "it never ends", node=label)
        else:
            yield self.finding(ctx, f"{where} has no trip count: it runs until a condition computed from its inputs "
                                    "turns false, which nothing bounds", node=label, severity=Severity.MEDIUM)


CHECKS = (LoopTripCount(),)
