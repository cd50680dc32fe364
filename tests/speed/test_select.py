"""build --optimize/--quantize: candidates, the accuracy gate against the source, measured selection."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxguard import bundle
from onnxguard.accuracy.parity import VALUES
from onnxguard.bundle.golden import GoldenSet
from onnxguard.bundle.manifest import Step
from onnxguard.errors import CheckFailed, ModelError
from onnxguard.speed import select


def _select(manifest: dict) -> dict:
    return next(s for s in manifest["steps"] if s["name"] == "select")["figures"]


def test_build_auto_keeps_the_fastest_variant_that_passes_and_records_all(cli, digits_files, tmp_path):
    out = tmp_path / "b"
    r = cli("build", digits_files["pt2"], "-o", out, "--task", "classification", "--golden", digits_files["golden"],
            "--quantize", "auto", "--calibration", digits_files["calib"], "--batch-size", "32", "--threads", "1")
    assert r.code == 0, r
    assert "variants (timed at batch 32, 1 threads" in r.out and "(chosen)" in r.out
    m = json.loads((out / bundle.MANIFEST).read_text())
    sel = _select(m)
    names = [c["name"] for c in sel["candidates"]]
    assert names[0] == "fp32" and "fp32-int8-static" in names
    assert not any("dynamic" in n for n in names), "dynamic INT8 of a CNN is ConvInteger, slower than FP32"
    assert "no dynamic INT8 of a convolutional model" in re.sub(r"[│\s]+", " ", r.out)  # the summary table wraps
    assert "fp32-int8-static-percentile" in names  # auto: a second static candidate, percentile-calibrated
    assert sel["winner"] in names and sel["reason"].startswith(sel["winner"])
    winner = next(c for c in sel["candidates"] if c["name"] == sel["winner"])
    plain = sel["candidates"][0]
    assert winner["gate_passed"] and "p50_ms" in plain
    # only variants that passed the gate are timed: a variant that fails is never a candidate for speed
    assert all(("p50_ms" in c) == bool(c.get("gate_passed")) for c in sel["candidates"])
    assert abs(m["model"]["size"] - winner["size"]) < 64  # the bundle holds the winner (metadata may differ slightly)
    assert m["parity"]["passed"]


def test_explicit_quantize_mode_that_fails_the_gate_exits_1_unless_forced(cli, digits_files, tmp_path):
    args = ["build", digits_files["pt2"], "-o", tmp_path / "b", "--task", "classification", "--golden",
            digits_files["golden"], "--optimize", "none", "--quantize", "dynamic", "--gate-min-cosine", "1.0"]
    r = cli(*args)
    assert r.code == 1 and "Traceback" not in r.err, r
    assert r.err_lines[-1].startswith("onnxguard: error: no variant passed the accuracy gate"), r  # after the stages
    assert not (tmp_path / "b").exists()
    r = cli(*args, "--force")
    assert r.code == 0, r
    sel = _select(json.loads((tmp_path / "b" / bundle.MANIFEST).read_text()))
    assert sel["forced"] is True and sel["winner"] == "fp32-int8-dynamic" and "FORCED" in sel["reason"]


def test_fused_graph_wrong_on_left_padding_is_rejected(cli, tiny_text_dir, tmp_path):
    """MEASURED.md's trap: the fused Attention graph is exact on right padding and off on left padding.
    FP32 variants keep the export's strict parity, and the golden set holds left-padded batches."""
    out = tmp_path / "b"
    r = cli("build", tiny_text_dir, "-o", out, "--exporter", "torchscript", "--optimize", "fusions",
            "--max-length", "64", "--batch-size", "8")
    assert r.code == 0, r
    sel = _select(json.loads((out / bundle.MANIFEST).read_text()))
    fused = next(c for c in sel["candidates"] if c["name"] == "fp32-fused")
    assert fused["gate_passed"] is False and sel["winner"] == "fp32"


def test_bad_choices_are_usage_errors(cli, expect_err, digits_files, tmp_path):
    expect_err(cli("build", digits_files["pt2"], "-o", tmp_path / "b", "--quantize", "int4"), 2, "--quantize")


def test_static_quantization_of_a_transformer_leaves_the_working_directory_clean(cli, tiny_text_dir, tmp_path):
    """onnxruntime dumps sym_shape_infer_temp.onnx and .data files into the cwd when symbolic shape
    inference gives up on a dynamo graph; a build must not leave them in the user's directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    r = cli("build", tiny_text_dir, "-o", tmp_path / "b", "--optimize", "none", "--quantize", "static",
            "--max-length", "32", "--force", cwd=cwd)
    assert r.code == 0, r
    assert list(cwd.iterdir()) == []


def _model(kind: str) -> onnx.ModelProto:
    """y = x computed three ways: ``slow`` (40 MatMuls by the identity), ``fast`` (Identity); ``wrong`` gives -x."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 128])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 128])
    inits, nodes = [], []
    if kind == "slow":
        inits.append(numpy_helper.from_array(np.eye(128, dtype=np.float32), "eye"))
        names = ["x"] + [f"h{i}" for i in range(39)] + ["y"]
        nodes = [helper.make_node("MatMul", [a, "eye"], [b]) for a, b in zip(names, names[1:], strict=False)]
    else:
        nodes = [helper.make_node("Identity" if kind == "fast" else "Neg", ["x"], ["y"])]
    graph = helper.make_graph(nodes, kind, [x], [y], inits)
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def identity_golden() -> GoldenSet:
    rng = np.random.default_rng(0)
    inputs = tuple({"x": rng.standard_normal((n, 128)).astype(np.float32)} for n in (1, 8, 3))
    return GoldenSet(inputs, tuple({"y": b["x"].copy()} for b in inputs))


def test_select_keeps_the_fastest_passing_eligible_variant(identity_golden):
    plain, fast = select.Candidate("plain", _model("slow")), select.Candidate("fast", _model("fast"))
    wrong = select.Candidate("wrong", _model("wrong"))
    baseline_only = select.Candidate("baseline-only", _model("fast"), eligible=False)
    sel = select.select([plain, wrong, baseline_only, fast], identity_golden, {"y": VALUES}, batch_size=8, threads=1)
    assert sel.winner is fast and not sel.forced
    assert sel.reason.startswith("fast: ") and "vs plain" in sel.reason
    assert fast.p50_ms < plain.p50_ms * (1 - select.MIN_GAIN)  # what the choice rests on, measured
    assert wrong.gate is not None and not wrong.gate.passed and wrong.p50_ms is None  # failed the gate: never timed
    assert baseline_only.p50_ms is not None  # timed as a reference, never chosen


def test_select_keeps_the_baseline_when_nothing_is_faster(identity_golden):
    base, slow = select.Candidate("plain", _model("fast")), select.Candidate("heavy", _model("slow"))
    sel = select.select([base, slow], identity_golden, {"y": VALUES}, batch_size=8, threads=1)
    assert sel.winner is base and slow.p50_ms > base.p50_ms


def test_a_gate_given_at_the_same_tolerance_is_not_run_again(identity_golden):
    # The parity stage gated the export already; select trusts that report only at the tolerance it holds it to.
    failed = select.gate(_model("wrong"), identity_golden, {"y": VALUES}, select.GATE)
    given = select.Candidate("plain", _model("fast"), gate=failed)
    with pytest.raises(CheckFailed, match="no variant passed"):  # the given (failing) report stood
        select.select([given], identity_golden, {"y": VALUES}, batch_size=8, threads=1)
    strict = dataclasses.replace(select.GATE, min_cosine=0.999999)
    regated = select.Candidate("plain", _model("fast"), gate=failed, tolerance=strict)
    sel = select.select([regated], identity_golden, {"y": VALUES}, batch_size=8, threads=1)
    assert sel.winner is regated and regated.gate is not None and regated.gate.passed


def test_a_candidate_made_from_a_base_that_failed_its_gate_is_not_made(identity_golden):
    # A re-export that fails the export's strict parity must not reach the bundle through a looser INT8 gate.
    made = []
    base = select.Candidate("reexport", _model("wrong"))
    child = select.Candidate("reexport-int8", make=lambda: made.append(1) or (_model("fast"), Step(name="quantize")),
                             parent=base)
    plain = select.Candidate("plain", _model("slow"))
    sel = select.select([plain, base, child], identity_golden, {"y": VALUES}, batch_size=8, threads=1)
    assert sel.winner is plain and not made and child.error == "its base reexport failed the gate"


def test_a_candidate_whose_base_could_not_be_made_is_dropped_with_that_reason(identity_golden):
    def broken() -> tuple[onnx.ModelProto, Step]:
        raise ModelError("forced: the optimizer fell over")

    base = select.Candidate("optimized", make=broken)
    child = select.Candidate("optimized-int8", make=lambda: (_model("fast"), Step(name="quantize")), parent=base)
    plain = select.Candidate("plain", _model("slow"))
    sel = select.select([plain, base, child], identity_golden, {"y": VALUES}, batch_size=8, threads=1)
    assert sel.winner is plain
    assert base.error is not None and "fell over" in base.error
    assert child.error == "its base optimized could not be made" and child.p50_ms is None


def test_select_fails_or_is_forced_when_no_eligible_variant_passes(identity_golden):
    def candidates():
        return [select.Candidate("plain", _model("fast"), eligible=False), select.Candidate("wrong", _model("wrong"))]
    with pytest.raises(CheckFailed, match="no variant passed the accuracy gate"):
        select.select(candidates(), identity_golden, {"y": VALUES}, batch_size=8, threads=1)
    sel = select.select(candidates(), identity_golden, {"y": VALUES}, batch_size=8, threads=1, force=True)
    assert sel.forced and sel.winner.name == "wrong" and "FORCED" in sel.reason


@pytest.mark.slow
def test_a_candidate_that_raises_is_dropped_and_the_build_goes_on(cli, digits_files, tmp_path, monkeypatch):
    """Issue 14 point 2: an optimize candidate raising ONNX Runtime's own error in this process, and a quantize
    candidate raising while it is made, are dropped with their reasons; the build keeps the others."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    from onnxguard.speed import optimize, quantize

    def broken_optimize(model, options, progress=None):
        raise ort_state.Fail("forced: the optimizer fell over")

    real_quantize = quantize.quantize

    def broken_minmax(model, options, progress=None):
        if options.method == "minmax":
            raise ModelError("forced: minmax calibration failed")
        return real_quantize(model, options)

    monkeypatch.setattr(optimize, "optimize", broken_optimize)
    monkeypatch.setattr(quantize, "quantize", broken_minmax)
    out = tmp_path / "b"
    r = cli("build", digits_files["pt2"], "-o", out, "--task", "classification", "--golden", digits_files["golden"],
            "--optimize", "extended", "--quantize", "auto", "--calibration", digits_files["calib"])
    assert r.code == 0, r
    sel = _select(bundle.read(out).manifest.model_dump())
    by_name = {c["name"]: c for c in sel["candidates"]}
    assert "the optimizer fell over" in by_name["fp32-extended"]["error"]
    assert "minmax calibration failed" in by_name["fp32-int8-static"]["error"]
    assert "error" not in by_name["fp32"] and "error" not in by_name["fp32-int8-static-percentile"]
    assert sel["winner"] in ("fp32", "fp32-int8-static-percentile")
