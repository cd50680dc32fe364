"""Operator domains. A node in a domain ONNX Runtime does not ship asks the runtime for a custom-op library:
native code chosen by the model's author. Model-local functions define their own domains; a node calling one
of them is not a custom op (its body is checked like any other nodes).

ONNX Runtime's own domains (``policy.RUNTIME_DOMAINS``: com.microsoft, the com.microsoft.nchwc its level-99
optimizer writes, ...) hold its own kernels: the default profile allows them and ``domain.runtime`` notes their
use at info, naming the installed onnxruntime that registers them. The strict profile allows standard domains
only, so there they are still ``domain.node`` findings (high); deployment targets refuse what their runtime
lacks (``onnxguard.target.operators``: nchwc never runs on web or mobile)."""

from __future__ import annotations

import functools
from collections.abc import Iterable

from onnxguard.scan.interface import BaseCheck, Finding, ScanContext, Severity, quote
from onnxguard.scan.policy import RUNTIME_DOMAINS, STANDARD_DOMAINS
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
                    native = node.domain not in STANDARD_DOMAINS and node.domain not in RUNTIME_DOMAINS
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


@functools.cache
def runtime_registry() -> tuple[str, dict[str, dict[str, int]]] | None:
    """The installed onnxruntime's version and, per domain, each op it registers with the opset that defines it
    (the oldest ``since_version``); ``None`` when onnxruntime is not installed. Read once, only when a model
    uses one of ONNX Runtime's own domains."""
    try:
        import onnxruntime
        from onnxruntime.capi import _pybind_state
    except ImportError:
        return None
    ops: dict[str, dict[str, int]] = {}
    for schema in _pybind_state.get_all_operator_schema():
        known = ops.setdefault(schema.domain, {})
        known[schema.name] = min(known.get(schema.name, schema.since_version), schema.since_version)
    for kernel in _pybind_state.get_all_opkernel_def():
        ops.setdefault(kernel.domain, {}).setdefault(kernel.op_name, kernel.version_range[0])
    return str(onnxruntime.__version__), ops


class RuntimeDomain(BaseCheck):
    id = "domain.runtime"
    severity = Severity.INFO
    title = "nodes use one of ONNX Runtime's own domains (its kernels, not a custom-op library); noted, allowed"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        allowed = set(ctx.policy.allowed_domains)
        used: dict[str, dict[str, int]] = {}
        for body in bodies(ctx.parsed):
            for node in body.nodes:
                if node.domain in RUNTIME_DOMAINS and node.domain in allowed:
                    ops = used.setdefault(node.domain, {})
                    ops[node.op_type] = ops.get(node.op_type, 0) + 1
        if not used:
            return
        registry = runtime_registry()
        opsets = {o.domain: o.version for o in ctx.parsed.opset_import}
        for domain, ops in sorted(used.items()):
            names = sorted(ops)
            shown = ", ".join(quote(n) for n in names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            text = (f"{sum(ops.values())} node(s) use ONNX Runtime's own domain {quote(domain)} "
                    f"(opset {opsets.get(domain, '?')}): {shown}; {RUNTIME_DOMAINS[domain]}")
            if registry is not None:
                version, registered = registry
                known = registered.get(domain, {})
                missing = [n for n in names if n not in known]
                since = sorted({known[n] for n in names if n in known})
                text += f"; onnxruntime {version} registers the domain" if domain in registered else (
                    f"; onnxruntime {version} registers no op in it")
                if since:
                    text += f" (these ops since opset {', '.join(map(str, since))})"
                if missing and domain in registered:
                    text += f", but not {', '.join(quote(n) for n in missing[:4])}: loading will fail"
            yield self.finding(ctx, text + "; such a model runs only on ONNX Runtime, and deployment targets refuse "
                                           "the ops their runtime lacks")


CHECKS = (NodeDomain(), OpsetDomain(), RuntimeDomain())
