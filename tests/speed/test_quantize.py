from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnxguard import bundle
from onnxguard.bundle import golden
from onnxguard.errors import ModelError
from onnxguard.model import onnxfile
from onnxguard.speed import optimize, quantize


def _ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def test_dynamic_int8_shrinks_a_transformer(tiny_text_onnx):
    model = onnxfile.load(tiny_text_onnx)
    r = quantize.quantize(model, quantize.QuantizeOptions(mode="dynamic"))
    assert r.size_after < r.size_before * 0.7
    assert _ops(r.model) & {"DynamicQuantizeMatMul", "MatMulInteger", "DynamicQuantizeLinear"}


def test_dynamic_int8_of_a_fused_graph_works(tiny_text_onnx):
    """The trap: quantize_dynamic on a fused graph fails unless a default tensor type is given."""
    options = optimize.OptimizeOptions(level="none", fusions=True, num_heads=2, hidden_size=64)
    fused = optimize.optimize(onnxfile.load(tiny_text_onnx), options).model
    r = quantize.quantize(fused, quantize.QuantizeOptions(mode="dynamic"))
    assert "QAttention" in _ops(r.model) or "DynamicQuantizeMatMul" in _ops(r.model)


def test_static_qdq_is_per_channel_and_calibrated(digits_bundle):
    b = bundle.read(digits_bundle)
    model = onnxfile.parse(b.model_bytes(), str(b.model_path))
    r = quantize.quantize(model, quantize.QuantizeOptions(mode="static", calibration=b.golden().inputs[:3]))
    ops = _ops(r.model)
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    inits = {i.name: i for i in r.model.graph.initializer}
    per_channel = [n for n in r.model.graph.node if n.op_type == "DequantizeLinear"
                   and n.input[1] in inits and len(onnx.numpy_helper.to_array(inits[n.input[1]]).shape) == 1
                   and onnx.numpy_helper.to_array(inits[n.input[1]]).size > 1]
    assert per_channel, "conv weights should carry one scale per output channel"
    assert r.preprocessed


def test_fp16_keeps_float32_io(digits_bundle):
    b = bundle.read(digits_bundle)
    model = onnxfile.parse(b.model_bytes(), str(b.model_path))
    r = quantize.quantize(model, quantize.QuantizeOptions(mode="fp16"))
    assert {i.data_type for i in r.model.graph.initializer if i.data_type in (1, 10)} == {onnx.TensorProto.FLOAT16}
    assert r.model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert r.model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_bad_options_are_clear_errors(digits_bundle):
    b = bundle.read(digits_bundle)
    model = onnxfile.parse(b.model_bytes(), str(b.model_path))
    with pytest.raises(ModelError, match="unknown quantization mode"):
        quantize.quantize(model, quantize.QuantizeOptions(mode="int3"))
    with pytest.raises(ModelError, match="calibration inputs"):
        quantize.quantize(model, quantize.QuantizeOptions(mode="static"))


def test_cli_quantize_a_bundle_writes_a_gated_bundle(cli, digits_bundle, tmp_path):
    out = tmp_path / "int8"
    r = cli("quantize", digits_bundle, "-o", out, "--mode", "static", "--allow-unsigned")
    assert r.code == 0, r
    assert "accuracy gate vs the source framework: PASSED" in r.out
    m = bundle.read(out).manifest
    assert [s.name for s in m.steps][-1] == "quantize"
    assert m.steps[-1].settings["per_channel"] is True and m.parity.passed
    assert m.parity.tolerance["min_cosine"] == 0.99  # the gate's, not the export's
    assert m.model.size < bundle.read(digits_bundle).manifest.model.size


def test_cli_quantize_failing_the_gate_exits_1_and_writes_nothing_unless_forced(cli, expect_err, digits_bundle,
                                                                                 tmp_path):
    out = tmp_path / "bad"
    r = cli("quantize", digits_bundle, "-o", out, "--mode", "dynamic", "--gate-min-cosine", "1.0", "--allow-unsigned")
    expect_err(r, 1, "accuracy gate", str(out))
    assert "FAILED" in r.out and not out.exists()
    assert not [p for p in tmp_path.iterdir()]  # no temporary directory left behind either
    r = cli("quantize", digits_bundle, "-o", out, "--mode", "dynamic", "--gate-min-cosine", "1.0", "--force",
            "--allow-unsigned")
    assert r.code == 0, r
    m = json.loads((out / bundle.MANIFEST).read_text())
    assert m["steps"][-1]["figures"]["forced"] is True and m["parity"]["passed"] is False


def test_cli_quantize_static_needs_calibration_for_a_plain_onnx(cli, expect_err, tiny_text_onnx, tmp_path):
    expect_err(cli("quantize", tiny_text_onnx, "-o", tmp_path / "q.onnx", "--mode", "static"), 2, "--calibration")


def test_cli_quantize_an_onnx_file_with_npz_calibration(cli, digits_bundle, tmp_path):
    model_path = tmp_path / "m.onnx"
    model_path.write_bytes(bundle.read(digits_bundle).model_bytes())
    calib = tmp_path / "calib.npz"
    np.savez(calib, image=np.concatenate([b["image"] for b in bundle.read(digits_bundle).golden().inputs[:3]]))
    refs = tmp_path / "golden.npz"
    refs.write_bytes((digits_bundle / bundle.GOLDEN).read_bytes())
    r = cli("quantize", model_path, "-o", tmp_path / "q.onnx", "--mode", "static", "--calibration", calib,
            "--golden", refs)
    assert r.code == 0, r
    assert "accuracy gate vs the reference outputs: PASSED" in r.out
    assert golden.load(refs).references is not None


def test_only_x86_cpus_without_vnni_count_as_saturating(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t: fpu sse2 avx2 fma\n")
    assert quantize.saturating_cpu(info, "x86_64") and not quantize.saturating_cpu(info, "aarch64")
    info.write_text("flags\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert not quantize.saturating_cpu(info, "x86_64")
    assert not quantize.saturating_cpu(tmp_path / "missing", "x86_64")


def test_dynamic_int8_weights_are_8_bit_unless_7_are_asked_for(cli, digits_bundle, tmp_path):
    """7-bit weights cost a real transformer 12 points of labels and bought nothing on AVX2 (quantize.DYNAMIC_WHY)."""
    assert cli("quantize", digits_bundle, "-o", tmp_path / "auto", "--mode", "dynamic", "--allow-unsigned").code == 0
    step = bundle.read(tmp_path / "auto").manifest.steps[-1]
    assert step.settings["reduce_range"] is False and step.settings["weight_bits"] == 8
    assert step.settings["why"] == quantize.DYNAMIC_WHY
    r = cli("quantize", digits_bundle, "-o", tmp_path / "7", "--mode", "dynamic", "--reduce-range", "--allow-unsigned")
    assert r.code == 0, r
    step = bundle.read(tmp_path / "7").manifest.steps[-1]
    assert step.settings["reduce_range"] is True and step.settings["why"] == "7-bit weights, as asked"


@pytest.mark.slow
def test_the_static_cnn_candidate_passes_the_gate_with_7_bit_weights(cli, digits_files, tmp_path):
    """Static INT8 keeps 7-bit weights whatever the building CPU (the bundle may be served where U8S8 kernels
    saturate), says why in the manifest, and the candidate still passes the gate against PyTorch."""
    out = tmp_path / "b"
    r = cli("build", digits_files["pt2"], "-o", out, "--task", "classification", "--golden", digits_files["golden"],
            "--optimize", "none", "--quantize", "static")
    assert r.code == 0, r
    m = bundle.read(out).manifest
    step = next(s for s in m.steps if s.name == "quantize")
    assert step.settings["weight_bits"] == 7 and step.settings["reduce_range"] is True
    assert "saturate" in step.settings["why"] and step.settings["per_channel"] is True
    select_step = next(s for s in m.steps if s.name == "select")
    assert select_step.figures["winner"] == "fp32-int8-static" and m.parity is not None and m.parity.passed
    model = onnxfile.parse(bundle.read(out).model_bytes(), "model.onnx")
    weights = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer
               if i.data_type == onnx.TensorProto.INT8 and np.prod(i.dims) > 16]
    assert weights and max(int(np.abs(w).max()) for w in weights) <= 64


def test_calibration_from_the_golden_set_leaves_out_its_constant_edge_cases():
    from onnxguard.bundle.golden import GoldenSet
    from onnxguard.speed import select

    rng = np.random.default_rng(0)
    varied = {"image": rng.standard_normal((4, 3)).astype(np.float32)}
    g = GoldenSet((varied, {"image": np.zeros((2, 3), np.float32)}, {"image": np.full((2, 3), 1e3, np.float32)}))
    assert select.calibration(None, g) == (varied,)


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_a_large_model_quantizes_through_external_data(digits_bundle, monkeypatch, mode):
    """Over EXTERNAL_DATA_BYTES the model goes to the quantizer and comes back with its tensors in a side file
    (here with the limit lowered to 0): the result is the same kind of model, with its weights loaded."""
    monkeypatch.setattr(quantize, "EXTERNAL_DATA_BYTES", 0)
    b = bundle.read(digits_bundle)
    model = onnxfile.parse(b.model_bytes(), str(b.model_path))
    r = quantize.quantize(model, quantize.QuantizeOptions(mode=mode, calibration=b.golden().inputs[:2]))
    assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in r.model.graph.initializer)
    assert 0 < r.size_after < r.size_before and {"DequantizeLinear"} <= _ops(r.model) | {"DequantizeLinear"}
    from onnxguard import runtime

    out = runtime.run(runtime.session(r.model), b.golden().inputs[:1])[0]
    assert np.isfinite(next(iter(out.values()))).all()
