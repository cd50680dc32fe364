"""``build --quantize auto`` of a transformer adds the accuracy-aware mixed INT8 candidate (speed.mixed) after the
plain dynamic one, and records how it was judged."""

from __future__ import annotations

import pytest

from onnxguard import build
from onnxguard.accuracy.parity import Tolerance
from onnxguard.build import BuildOptions
from onnxguard.convert import ConvertOptions


def test_build_auto_adds_a_mixed_candidate_for_a_transformer_whose_int8_fails(tiny_text_dir, tmp_path):
    # An absolute tolerance no INT8 variant meets (its logits move by ~1e-3): the plain INT8 candidate fails the
    # gate, so the mixed one is made and judged.
    gate = Tolerance(atol=1e-6, rtol=0.0, min_cosine=0.99, min_label_agreement=0.99)
    options = BuildOptions(convert=ConvertOptions(max_length=32), optimize="none", quantize="auto", gate=gate,
                           bench_batch=2, bench_threads=1)
    result = build.build(str(tiny_text_dir), tmp_path / "b", options)
    assert result.selection is not None
    by_name = {c.name: c for c in result.selection.candidates}
    assert by_name["fp32-int8-dynamic"].gate is not None and not by_name["fp32-int8-dynamic"].gate.passed
    mixed = by_name["fp32-int8-mixed"]
    assert mixed.gate is not None and not mixed.gate.passed  # judged, and within 1e-6 no INT8 passes
    assert result.selection.winner.name == "fp32"


@pytest.mark.slow
def test_build_auto_quantizes_only_a_transformers_exports_as_they_are(tiny_text_dir, tmp_path):
    """Dynamic INT8 of the fused and offline-optimized graphs never won (build/__init__.py): not made; the FP32
    graphs themselves stay candidates."""
    options = BuildOptions(convert=ConvertOptions(max_length=32), optimize="auto", quantize="auto", bench_batch=2,
                           bench_threads=1)
    result = build.build(str(tiny_text_dir), tmp_path / "b", options)
    assert result.selection is not None
    names = {c.name for c in result.selection.candidates}
    assert {"fp32", "fp32-torchscript", "fp32-fused", "fp32-extended", "fp32-int8-dynamic",
            "fp32-torchscript-int8-dynamic"} <= names
    assert not {"fp32-fused-int8-dynamic", "fp32-extended-int8-dynamic"} & names
