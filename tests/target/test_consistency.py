"""onnxguard consistency: the bundle's golden set through every variant and target, against the source."""

from __future__ import annotations

import hashlib
import json

import onnx


def _int8(cli, plain, tmp_path):
    # Dynamic INT8 (the conv and dense weights): static INT8 of this 2-epoch CNN flips near-tie predictions,
    # which consistency rightly reports as drift past the INT8 thresholds.
    out = tmp_path / "dynamic-int8.onnx"
    assert cli("quantize", plain / "model.onnx", "-o", out, "--mode", "dynamic").code == 0
    return out


def test_every_target_within_its_thresholds(cli, digits_bundle, tmp_path):
    plain, _, _ = digits_bundle
    assert cli("target", "--allow-unsigned", plain, "--to", "mobile", "-o", tmp_path / "mobile").code == 0
    int8 = _int8(cli, plain, tmp_path)
    plot = tmp_path / "drift.png"
    r = cli("consistency", "--allow-unsigned", plain, tmp_path / "mobile", int8, "--json", "--plot", plot)
    assert r.code == 0, r
    report = json.loads(r.out)
    kinds = {t["name"]: t["kind"] for t in report["targets"]}
    assert len(kinds) == 4 and kinds["dynamic-int8.onnx"] == "int8"
    assert sum(k == "fp32" for k in kinds.values()) == 3  # the bundle's model and the two ORT format files
    for t in report["targets"]:
        assert t["passed"] and t["kl"] is not None and t["ms_per_item"] > 0
        assert t["top1"] == 1.0 if t["kind"] == "fp32" else t["top1"] >= 0.99
    fp32 = [t for t in report["targets"] if t["kind"] == "fp32"]
    assert max(t["max_abs"] for t in fp32) < 1e-3 < next(t["max_abs"] for t in report["targets"] if t["kind"] == "int8")
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_a_tampered_variant_is_caught(cli, digits_bundle, tmp_path):
    plain, _, _ = digits_bundle
    model = onnx.load(plain / "model.onnx")
    weight = next(i for i in model.graph.initializer if len(i.dims) == 4)  # a conv kernel
    arr = onnx.numpy_helper.to_array(weight).copy()
    arr.flat[0] += 0.5  # one weight nudged: a corrupted or tampered file
    weight.CopyFrom(onnx.numpy_helper.from_array(arr, weight.name))
    onnx.save(model, tmp_path / "tampered.onnx")
    r = cli("consistency", "--allow-unsigned", plain, tmp_path / "tampered.onnx")
    assert r.code == 1, r
    assert "FAILED" in r.out and "tampered.onnx" in r.out and "max |diff|" in r.out
    assert r.err_lines[-1] == "onnxguard: error: a target drifts from the source's outputs past its thresholds"


def test_sealed_bundle_needs_its_identity(cli, expect_err, digits_bundle):
    _, sealed, k = digits_bundle
    expect_err(cli("consistency", "--allow-unsigned", sealed), 1, "opened without its identity", "--identity")
    r = cli("consistency", "--allow-unsigned", sealed, "--identity", k.age_identity)
    assert r.code == 0 and "PASSED" in r.out, r


def test_verify_golden_runs_the_same_check_on_targets(cli, expect_err, digits_bundle, tmp_path):
    plain, _, _ = digits_bundle
    assert cli("target", "--allow-unsigned", plain, "--to", "edge", "-o", tmp_path / "edge").code == 0
    r = cli("verify", "--allow-unsigned", plain, "--golden", "--target", tmp_path / "edge", "--json")
    assert r.code == 0, r
    report = json.loads(r.out)
    assert report["golden"]["passed"] and len(report["golden"]["targets"]) == 3
    model = onnx.load(plain / "model.onnx")
    weight = next(i for i in model.graph.initializer if len(i.dims) == 4)
    arr = onnx.numpy_helper.to_array(weight).copy() * 1.5
    weight.CopyFrom(onnx.numpy_helper.from_array(arr, weight.name))
    onnx.save(model, tmp_path / "tampered.onnx")
    r = cli("verify", "--allow-unsigned", plain, "--golden", "--target", tmp_path / "tampered.onnx")
    assert r.code == 1 and "drifted" in r.err_lines[-1], r
    expect_err(cli("verify", "--allow-unsigned", plain, "--target", tmp_path / "edge"), 2, "--golden")


def test_a_broken_target_directory_is_one_clear_error(cli, expect_err, digits_bundle, tmp_path):
    plain, _, _ = digits_bundle
    t = tmp_path / "t"
    t.mkdir()
    (t / "manifest.json").write_text('{"format": "onnxguard-target/1", "kind": "web"}')
    expect_err(cli("consistency", "--allow-unsigned", plain, t), 2, "manifest.json", "no precision")
    (t / "manifest.json").write_text('{"format": "onnxguard-target/1", "kind": "web", "precision": "fp32"}')
    expect_err(cli("consistency", "--allow-unsigned", plain, t), 2, "manifest.json", "made from another bundle")
    parent = {"manifest_sha256": hashlib.sha256((plain / "manifest.json").read_bytes()).hexdigest()}
    (t / "manifest.json").write_text(json.dumps({"format": "onnxguard-target/1", "kind": "web", "precision": "fp32",
                                                 "parent": parent}))
    expect_err(cli("consistency", "--allow-unsigned", plain, t), 2, "golden.json", "missing")
    (t / "manifest.json").write_text("{not json")
    expect_err(cli("consistency", "--allow-unsigned", plain, t), 2, "manifest.json", "not valid JSON")
