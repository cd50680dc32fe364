"""Resource bombs: ops whose output size comes from constant arguments and would exceed the memory limit,
stored tensors whose declared dims do not match their data, and graph inputs with huge fixed dims.

Allocation sizes come from :mod:`onnxguard.scan.symbolic`, which follows shape arithmetic under the check's
budget without computing any large tensor. They are lower bounds: a dim the scanner cannot know statically
counts as 1 and an unknown element type as 1 byte, so an ordinary model is never flagged by a guess.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from onnxguard.scan import symbolic, tensors
from onnxguard.scan.interface import BaseCheck, Finding, ScanContext, Severity, quote
from onnxguard.scan.walk import stored_tensors


class Allocation(BaseCheck):
    id = "resources.allocation"
    severity = Severity.HIGH
    title = ("an op would allocate more than the policy's max_memory_bytes, by sizes that are constants or computed "
             "from constants and shapes (followed symbolically, never materialised)")

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        limit = ctx.policy.max_memory_bytes
        found = symbolic.analyse(ctx.parsed)
        for p in found.problems:
            yield self.finding(ctx, f"{p.where}: {p.op} node {quote(p.node)}: {p.message}", node=p.node)
        for g in found.growths:
            # Only where the allocation appears: later ops fed by an oversized tensor are not reported again.
            if g.nbytes > limit >= g.largest_input:
                yield self.finding(ctx, f"{g.where}: {g.op} node {quote(g.node)} would allocate at least "
                                        f"{g.nbytes:,} bytes ({g.elements:,} elements), by sizes computed from the "
                                        f"model's constants and shapes; the limit is {limit:,}", node=g.node)


class StoredDims(BaseCheck):
    id = "resources.tensor-dims"
    severity = Severity.HIGH
    title = "a stored tensor's declared dims do not match the data it holds"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        for s in stored_tensors(ctx.parsed):
            t = s.tensor
            where = f"{s.where}: tensor {quote(t.name)}" + ("" if s.node is None else f" of node {quote(s.node)}")
            if tensors.element_count(t) is None:
                yield self.finding(ctx, f"{where} declares negative dims {list(t.dims)}", node=s.node, tensor=t.name)
                continue
            stored = tensors.stored_count(t)
            if stored is not None and stored[1] not in stored[2]:
                field, found, expected = stored
                unit = "bytes" if field == "raw_data" else "values"
                yield self.finding(ctx, f"{where} declares dims {list(t.dims)}, which need {expected[0]:,} {unit}, "
                                        f"but its {field} holds {found:,}", node=s.node, tensor=t.name)


class InputDims(BaseCheck):
    id = "resources.input-dims"
    severity = Severity.MEDIUM
    title = "a graph input has a fixed dim over max_input_dim, a negative dim, or a fixed size over max_memory_bytes"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        policy = ctx.policy
        initializers = {t.name for t in ctx.parsed.graph.initializer}
        for v in ctx.parsed.graph.input:
            if v.name in initializers or not v.type.HasField("tensor_type") or not v.type.tensor_type.HasField("shape"):
                continue
            dims = v.type.tensor_type.shape.dim
            fixed = [d.dim_value for d in dims if d.HasField("dim_value")]
            label = f"graph input {quote(v.name)}"
            if any(d < 0 for d in fixed):
                yield self.finding(ctx, f"{label} declares a negative dim {fixed}", tensor=v.name)
            elif any(d > policy.max_input_dim for d in fixed):
                yield self.finding(ctx, f"{label} has a fixed dim of {max(fixed):,}, over the limit of "
                                        f"{policy.max_input_dim:,}", tensor=v.name)
            elif len(fixed) == len(dims):
                nbytes = tensors.nbytes(v.type.tensor_type.elem_type, math.prod(fixed)) or math.prod(fixed)
                if nbytes > policy.max_memory_bytes:
                    yield self.finding(ctx, f"{label} has fixed shape {fixed}: {nbytes:,} bytes per call, over the "
                                            f"limit of {policy.max_memory_bytes:,}", tensor=v.name)


CHECKS = (Allocation(), StoredDims(), InputDims())
