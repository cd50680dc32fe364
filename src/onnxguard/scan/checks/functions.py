"""Model-local functions: one that shadows a standard operator (the graph reads as a known op but may run the
author's body instead), and recursion among functions (inlining never ends: a denial of service at load)."""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from onnxguard.scan.interface import BaseCheck, Finding, ScanContext, Severity, quote
from onnxguard.scan.policy import STANDARD_DOMAINS
from onnxguard.scan.walk import bodies, function_key

Key = tuple[str, str, str]


def _key(domain: str, name: str, overload: str) -> Key:
    return (domain, name, overload)


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
        functions = {_key(f.domain, f.name, f.overload): f for f in ctx.parsed.functions}
        calls: dict[Key, set[Key]] = {k: set() for k in functions}
        for body in bodies(ctx.parsed):
            if body.function is None:
                continue
            owner = _key(body.function.domain, body.function.name, body.function.overload)
            for node in body.nodes:
                callee = _key(node.domain, node.op_type, node.overload)
                if callee in functions:
                    calls[owner].add(callee)
        reported: set[Key] = set()
        for start in sorted(functions):
            cycle = _cycle_from(start, calls)
            if cycle and not reported.intersection(cycle):
                reported.update(cycle)
                chain = " -> ".join(quote(function_key(functions[k])) for k in [*cycle, cycle[0]])
                yield self.finding(ctx, f"local functions call each other in a cycle: {chain}",
                                   node=functions[cycle[0]].name)


def _cycle_from(start: Key, calls: dict[Key, set[Key]]) -> list[Key] | None:
    """The cycle through ``start``, if any (iterative DFS, so a deep call chain cannot exhaust the stack)."""
    stack = [(start, [start])]
    seen = set()
    while stack:
        node, path = stack.pop()
        for callee in sorted(calls[node]):
            if callee == start:
                return path
            if callee not in seen:
                seen.add(callee)
                stack.append((callee, [*path, callee]))
    return None


CHECKS = (Shadowing(), Recursion())
