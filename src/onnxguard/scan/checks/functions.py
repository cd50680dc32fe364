"""Model-local functions: one that shadows a standard operator (the graph reads as a known op but may run the
author's body instead), and recursion among functions (inlining never ends: a denial of service at load)."""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from onnxguard.scan import calls
from onnxguard.scan.interface import BaseCheck, Finding, ScanContext, Severity, quote
from onnxguard.scan.policy import STANDARD_DOMAINS
from onnxguard.scan.walk import function_key


class Shadowing(BaseCheck):
    id = "functions.shadowing"
    severity = Severity.HIGH
    title = "a model-local function has the name of a standard ONNX operator"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        for f in ctx.parsed.functions:
            if f.domain in STANDARD_DOMAINS and onnx.defs.has(f.name, f.domain):
                yield self.finding(ctx, f"local function {quote(function_key(f))} shadows the standard ONNX operator "
                                        f"{quote(f.name)}", node=f.name)


class Recursion(BaseCheck):
    id = "functions.recursion"
    severity = Severity.HIGH
    title = "model-local functions call themselves, directly or through each other"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        g = calls.analysed(ctx.parsed)
        for component in calls.components(g):  # linear: one pass finds every cycle
            cycle = calls.cycle_in(g, component)
            if cycle:
                chain = " -> ".join(quote(function_key(g.functions[k])) for k in [*cycle, cycle[0]])
                yield self.finding(ctx, f"local functions call each other in a cycle: {chain}",
                                   node=g.functions[cycle[0]].name)


CHECKS = (Shadowing(), Recursion())
