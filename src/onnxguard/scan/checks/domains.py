"""Operator domains. A node in a domain ONNX Runtime does not ship asks the runtime for a custom-op library:
native code chosen by the model's author. Model-local functions define their own domains; a node calling one
of them is not a custom op (its body is checked like any other nodes)."""

from __future__ import annotations

from collections.abc import Iterable

from onnxguard.scan.interface import BaseCheck, Finding, ScanContext, Severity, quote
from onnxguard.scan.policy import ALLOWED_DOMAINS, RUNTIME_DOMAINS
from onnxguard.scan.walk import bodies, node_label


def local_functions(ctx: ScanContext) -> set[tuple[str, str]]:
    """The (domain, name) of every function the model defines itself."""
    return {(f.domain, f.name) for f in ctx.parsed.functions}


class NodeDomain(BaseCheck):
    id = "domain.node"
    severity = Severity.HIGH
    title = "a node uses an operator domain the policy does not allow (a custom op asks for native code)"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        allowed, local = set(ctx.policy.allowed_domains), local_functions(ctx)
        for body in bodies(ctx.parsed):
            for i, node in enumerate(body.nodes):
                if node.domain not in allowed and (node.domain, node.op_type) not in local:
                    native = node.domain not in ALLOWED_DOMAINS + RUNTIME_DOMAINS
                    needs = "; it needs a custom-op library (native code)" if native else ""
                    yield self.finding(ctx, f"{body.where}: node {quote(node_label(node, i))} is op "
                                            f"{quote(node.op_type)} of domain {quote(node.domain)}, not allowed by the "
                                            f"policy{needs}", node=node_label(node, i))


class OpsetDomain(BaseCheck):
    id = "domain.opset"
    severity = Severity.HIGH
    title = ("opset_import names a domain the policy does not allow (high when a node uses it, medium when none "
             "does, low for an unused domain ONNX Runtime registers itself)")

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        allowed = set(ctx.policy.allowed_domains) | {d for d, _ in local_functions(ctx)}
        used = {n.domain for b in bodies(ctx.parsed) for n in b.nodes}
        imports = [("model", o) for o in ctx.parsed.opset_import]
        imports += [(f"function {quote(f.name)}", o) for f in ctx.parsed.functions for o in f.opset_import]
        for where, opset in imports:
            if opset.domain in allowed:
                continue
            what = (f"{where} imports opset domain {quote(opset.domain)} version {opset.version}, not allowed by the "
                    "policy")
            if opset.domain in used:
                yield self.finding(ctx, f"{what}; nodes use it")
            elif opset.domain in RUNTIME_DOMAINS:
                yield self.finding(ctx, f"{what}; no node uses it and ONNX Runtime registers it itself",
                                   severity=Severity.LOW)
            else:
                yield self.finding(ctx, f"{what}; no node uses it, but loading the model may ask for a custom-op "
                                        "library", severity=Severity.MEDIUM)


CHECKS = (NodeDomain(), OpsetDomain())
