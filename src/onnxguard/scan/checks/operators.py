"""Operators against the policy's allow and deny lists. An entry is ``Op`` (any domain) or ``domain:Op``."""

from __future__ import annotations

from collections.abc import Iterable

from onnxguard.scan.interface import BaseCheck, Finding, ScanContext, Severity, quote
from onnxguard.scan.walk import bodies, node_label


def matches(entries: tuple[str, ...], domain: str, op_type: str) -> bool:
    """Whether ``entries`` name the op (as ``Op``, ``domain:Op``, or ``ai.onnx:Op`` for the default domain)."""
    return op_type in entries or f"{domain}:{op_type}" in entries or f"{domain or 'ai.onnx'}:{op_type}" in entries


class Operators(BaseCheck):
    id = "operators.denied"
    severity = Severity.HIGH
    title = "a node uses an operator the policy denies, or one outside its allow list"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        policy = ctx.policy
        for body in bodies(ctx.parsed):
            for i, node in enumerate(body.nodes):
                label = node_label(node, i)
                op = f"{quote(node.op_type)}" + (f" of domain {quote(node.domain)}" if node.domain else "")
                if matches(policy.denied_ops, node.domain, node.op_type):
                    yield self.finding(ctx, f"{body.where}: node {quote(label)} uses op {op}, denied by the "
                                            f"{policy.profile!r} policy", node=label)
                elif policy.allowed_ops is not None and not matches(policy.allowed_ops, node.domain, node.op_type):
                    yield self.finding(ctx, f"{body.where}: node {quote(label)} uses op {op}, not in the "
                                            f"{policy.profile!r} policy's allow list", node=label)


CHECKS = (Operators(),)
