"""build --optimize/--quantize: candidates, the accuracy gate against the source, measured selection."""

from __future__ import annotations

import json

from onnxguard import bundle


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
    assert names[0] == "fp32" and "fp32-int8-static" in names and "fp32-int8-dynamic" in names
    assert sel["winner"] in names and sel["reason"].startswith(sel["winner"])
    winner = next(c for c in sel["candidates"] if c["name"] == sel["winner"])
    plain = sel["candidates"][0]
    assert winner["gate_passed"] and winner["p50_ms"] <= plain["p50_ms"]  # never slower than the plain export
    assert all("p50_ms" in c for c in sel["candidates"] if c.get("gate_passed"))
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
