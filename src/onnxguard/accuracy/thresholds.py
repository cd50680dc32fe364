"""How far a variant or target may drift from the SOURCE framework's outputs on the golden set.

One vocabulary for the golden-set contract: the kind of a model (``kind_of``: fp32, fp16, int8), the drift
allowed per kind for consistency and targets (``THRESHOLDS``), and the accuracy gate that a quantized variant
must pass before it is kept (``GATE``). The thresholds are absolute, in the outputs' own units.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from onnxguard.accuracy.parity import Tolerance

__all__ = ["GATE", "INT8_OPS", "THRESHOLDS", "Thresholds", "kind_of"]

# MatMulNBits: quantized weights (block-wise), its activations quantized per block at run time (accuracy_level 4).
INT8_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
            "QLinearConv", "QLinearMatMul", "QAttention", "MatMulIntegerToFloat", "MatMulNBits"}


@dataclass(frozen=True)
class Thresholds:
    """Drift allowed against the source's reference outputs, per kind of model."""

    max_abs: float
    max_kl: float
    min_top1: float


# FP32 must reproduce the source up to float rounding; reduced precision may move numbers, not answers.
THRESHOLDS = {
    "fp32": Thresholds(max_abs=1e-3, max_kl=1e-6, min_top1=1.0),
    "fp16": Thresholds(max_abs=5e-2, max_kl=1e-3, min_top1=0.99),
    "int8": Thresholds(max_abs=1.0, max_kl=1e-2, min_top1=0.99),
}

# Defaults for the gate on quantized variants: they may move numbers, not answers. FP32 variants (fused,
# optimized, re-exported) must keep the strict parity of the export: a fused graph that is exact on
# right-padded batches and off on left-padded ones (MEASURED.md) is a wrong graph, not a rounding.
GATE = Tolerance(atol=1.0, rtol=0.1, min_cosine=0.99, min_label_agreement=0.99)


def kind_of(model: onnx.ModelProto) -> str:
    """``int8`` when the graph quantizes, ``fp16`` when its weights are half precision, else ``fp32``."""
    ops = {n.op_type for n in model.graph.node}
    if ops & INT8_OPS:
        return "int8"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        return "fp16"
    return "fp32"
