"""EPContext nodes: a path to a compiled execution-provider binary, outside the model's folder.

ONNX Runtime's ``com.microsoft::EPContext`` node stands for a part of the graph an execution provider (QNN,
OpenVINO, TensorRT, VitisAI, ...) has compiled ahead of time. With ``embed_mode=1`` the compiled blob is
inside the node; with ``embed_mode=0`` its ``ep_cache_context`` attribute is a *file path*, which ONNX Runtime
resolves against the model's folder and hands to the execution provider to load and run. A path that leaves
that folder (``../``, an absolute path, a symlink out) makes the runtime read, and an accelerator execute, a
file the model's author chose from anywhere on the host: the same traversal as external data
(CVE-2024-27318 and later), through another attribute. Judged with :func:`external_data.resolve` (nothing is
opened; only ``stat`` on a path proven inside the folder).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

import onnx

from onnxguard.scan.checks import external_data
from onnxguard.scan.interface import BaseCheck, Finding, ScanContext, Severity, quote
from onnxguard.scan.walk import bodies, node_label

EP_CONTEXT_DOMAINS = ("com.microsoft",)


def _attrs(node: onnx.NodeProto) -> dict[str, onnx.AttributeProto]:
    return {a.name: a for a in node.attribute}


class EpContextPath(BaseCheck):
    id = "ep-context.path"
    severity = Severity.CRITICAL
    title = ("an EPContext node's ep_cache_context (embed_mode 0: a file path) is absolute or leaves the model's "
             "folder (high when the file inside it is missing or not a regular file)")

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        model_dir = str(ctx.model_dir)
        for body in bodies(ctx.parsed):
            for i, node in enumerate(body.nodes):
                if node.op_type != "EPContext" or node.domain not in EP_CONTEXT_DOMAINS:
                    continue
                attrs, label = _attrs(node), node_label(node, i)
                mode = attrs.get("embed_mode")
                if mode is None or mode.i != 0 or "ep_cache_context" not in attrs:
                    continue  # embed_mode 1 (the default): the blob is in the node, nothing is read from disk
                raw = attrs["ep_cache_context"].s
                location = raw.decode("utf-8", "replace")
                where = f"{body.where}: EPContext node {quote(label)}"
                if b"\x00" in raw:
                    yield self.finding(ctx, f"{where}: ep_cache_context {quote(location)} contains a NUL byte",
                                       node=label)
                    continue
                path, why = external_data.resolve(model_dir, location)
                if why is not None:
                    yield self.finding(ctx, f"{where} (embed_mode 0) names its compiled context file: {why}; ONNX "
                                            "Runtime would hand that file to an execution provider to load and run",
                                       node=label)
                    continue
                assert path is not None
                try:
                    st = os.stat(path)
                except OSError:
                    st = None
                if st is None or not stat.S_ISREG(st.st_mode):
                    what = "does not exist" if st is None else "is not a regular file"
                    yield self.finding(ctx, f"{where}: its context file {quote(location)} {what}", node=label,
                                       severity=Severity.HIGH)


CHECKS = (EpContextPath(),)
