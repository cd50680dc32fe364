from __future__ import annotations

import onnx

from onnxguard.model import onnxfile
from onnxguard.model.info import op_histogram
from onnxguard.speed import optimize


def test_fusions_on_a_transformer_declare_their_domain_and_leave_the_input_alone(tiny_text_onnx):
    model = onnxfile.load(tiny_text_onnx)
    before = model.SerializeToString()
    result = optimize.optimize(model, optimize.OptimizeOptions(level="none", fusions=True, model_type="distilbert",
                                                                              num_heads=2, hidden_size=64))
    assert model.SerializeToString() == before  # optimize_model rewrites in place: we must hand it a copy
    assert result.fused.get("Attention", 0) == 2 and result.fused.get("SkipLayerNormalization", 0) >= 2
    assert "com.microsoft" in {o.domain for o in result.model.opset_import}
    assert result.nodes_after < result.nodes_before
    assert "Attention" in result.ops_after["com.microsoft"]
    onnx.checker.check_model(result.model)


def test_offline_levels_save_a_loadable_graph(tiny_text_onnx):
    model = onnxfile.load(tiny_text_onnx)
    basic = optimize.optimize(model, optimize.OptimizeOptions(level="basic"))
    extended = optimize.optimize(model, optimize.OptimizeOptions(level="extended"))
    assert extended.nodes_after <= basic.nodes_after < basic.nodes_before
    assert op_histogram(extended.model) == extended.ops_after


def test_cli_optimize_onnx_reports_before_and_after(cli, tiny_text_onnx, tmp_path):
    out = tmp_path / "opt.onnx"
    r = cli("optimize", tiny_text_onnx, "-o", out, "--num-heads", "2", "--hidden-size", "64")
    assert r.code == 0, r
    assert "optimize:" in r.out and "->" in r.out and "fused: " in r.out and "not gated" in r.out
    assert "Attention" in {n.op_type for n in onnxfile.load(out).graph.node}


def test_cli_optimize_refuses_an_existing_output_and_a_bad_level(cli, expect_err, tiny_text_onnx, tmp_path):
    out = tmp_path / "exists.onnx"
    out.write_bytes(b"x")
    expect_err(cli("optimize", tiny_text_onnx, "-o", out, "--no-fusions"), 2, str(out), "--overwrite")
    r = cli("optimize", tiny_text_onnx, "-o", tmp_path / "y.onnx", "--level", "turbo", "--no-fusions")
    expect_err(r, 2, "turbo")
