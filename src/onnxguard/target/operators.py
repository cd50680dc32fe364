"""``operators.check(model, target, runtime)``: refuse, before any work, a model whose ops a target cannot run.

Every target runs ONNX Runtime's CPU engine: ORT format files on a (reduced) native build, the web target on
the same engine compiled to WebAssembly (onnxruntime-web's WASM backend). An op can run there only if it is
in a standard domain and the engine has a CPU kernel for the model's opset of that domain, which is what
this module checks against the kernel table of the installed ONNX Runtime. Custom domains (a custom-op
library the host would have to load) and platform-specific fused ops (``com.microsoft.nchwc``, made for
x86 AVX by the highest optimization level) never run on a target.
"""

from __future__ import annotations

import functools

import onnx

from onnxguard.errors import InputError

# Domains a stock ONNX Runtime build (native or WASM) has kernels for; "" is ai.onnx.
STANDARD_DOMAINS = ("", "ai.onnx.ml", "com.microsoft")


@functools.cache
def _kernels() -> dict[tuple[str, str], tuple[tuple[int, int], ...]]:
    from onnxruntime.capi import _pybind_state as C

    table: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for k in C.get_all_opkernel_def():
        if k.provider == "CPUExecutionProvider":
            table.setdefault((k.domain, k.op_name), []).append(tuple(k.version_range))
    return {key: tuple(v) for key, v in table.items()}


def nodes(graph: onnx.GraphProto):
    """Every node of ``graph``, those of its subgraphs included, depth first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from nodes(g)


def _expanded(domain: str, op: str, version: int) -> bool:
    """Ops the runtime needs no kernel for: Constant (folded when the graph loads) and ONNX function ops,
    which it replaces by their function body."""
    if op == "Constant" and domain == "":
        return True
    try:
        schema = onnx.defs.get_schema(op, version, domain)
    except onnx.defs.SchemaError:
        return False
    # onnx's stub (onnx_cpp2py_export/defs.pyi) leaves these two OpSchema properties out; they exist at runtime.
    return bool(schema.has_function or schema.has_context_dependent_function)  # type: ignore[attr-defined]


def unsupported(model: onnx.ModelProto) -> list[str]:
    """``domain::Op (opset N)`` for each op kind the target runtimes have no kernel for, in graph order."""
    opsets = {("" if i.domain == "ai.onnx" else i.domain): i.version for i in model.opset_import}
    found: dict[str, None] = {}
    for node in nodes(model.graph):
        domain = "" if node.domain == "ai.onnx" else node.domain
        version = opsets.get(domain, 1)
        if domain not in STANDARD_DOMAINS:
            found[f"{domain}::{node.op_type} (opset {version})"] = None
            continue
        ranges = _kernels().get((domain, node.op_type), ())
        if not any(lo <= version <= hi for lo, hi in ranges) and not _expanded(domain, node.op_type, version):
            found[f"{domain or 'ai.onnx'}::{node.op_type} (opset {version})"] = None
    return list(found)


def check(model: onnx.ModelProto, target: str, runtime: str) -> None:
    """Refuse (``InputError``) a model with an op the ``target``'s runtime has no kernel for."""
    missing = unsupported(model)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise InputError(f"op {missing[0]}{more} cannot run on the {target} target ({runtime}): "
                         "it has no kernel for it; rebuild the bundle without custom or platform-specific ops")
