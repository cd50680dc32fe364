"""``onnxguard scan`` as a real process: exit codes 0 / 1 / 2, formats, --output, --fail-on, --policy.

The command runs as a real process through the installed console script (scan_support.run_scan).
"""

from __future__ import annotations

import json

import jsonschema
from scan_corpus import custom_opset_import, huge_input_dims, pickle_file, relu_model, save

from cli_runner import run


def test_clean_model_exits_0(tmp_path):
    r = run("scan", save(relu_model(), tmp_path / "m.onnx"))
    assert r.code == 0, r
    assert "no findings" in r.out and r.err == ""


def test_findings_at_fail_level_exit_1_with_one_error_line(tmp_path):
    r = run("scan", pickle_file(tmp_path))
    assert r.code == 1, r
    assert "file.format" in r.out and "pickle" in r.out
    assert "Traceback" not in r.err
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("onnxguard: error: ") and "critical file.format" in lines[0]


def test_fail_on_sets_the_threshold(tmp_path):
    path = huge_input_dims(tmp_path)  # one medium finding
    assert run("scan", path).code == 1
    assert run("scan", path, "--fail-on", "high").code == 0
    low = custom_opset_import(tmp_path / "low")  # medium: unused custom opset import
    assert run("scan", low, "--fail-on", "critical").code == 0


def test_usage_errors_exit_2(tmp_path):
    model = save(relu_model(), tmp_path / "m.onnx")
    bad_policy = tmp_path / "policy.toml"
    bad_policy.write_text("max_nodes = 3\n")
    for args, fragment in [
        ((tmp_path / "absent.onnx",), "no such file"),
        ((tmp_path,), "manifest.json: missing"),
        ((model, "--policy", bad_policy), "unknown key 'max_nodes'"),
        ((model, "--policy", tmp_path / "none.toml"), "no such policy file"),
        ((model, "--format", "xml"), "--format 'xml'"),
        ((model, "--fail-on", "urgent"), "--fail-on 'urgent'"),
        ((model, "--profile", "lenient"), "unknown scan profile"),
    ]:
        r = run("scan", *args)
        assert r.code == 2, r
        assert "Traceback" not in r.err and fragment in r.err, r


def test_json_and_sarif_output_to_file(tmp_path, sarif_schema):
    path = pickle_file(tmp_path)
    r = run("scan", path, "--format", "json")
    data = json.loads(r.out)
    assert data["format"] == "onnxguard-scan/1" and data["findings"][0]["check"] == "file.format"
    out = tmp_path / "scan.sarif"
    r = run("scan", path, "--format", "sarif", "--output", out)
    assert r.code == 1 and r.out == ""
    jsonschema.Draft4Validator(sarif_schema).validate(json.loads(out.read_text()))


def test_strict_profile_and_policy_file(tmp_path):
    path = save(relu_model(), tmp_path / "m.onnx")
    policy = tmp_path / "policy.toml"
    policy.write_text('denied_ops = ["Relu"]\n')
    r = run("scan", path, "--policy", policy)
    assert r.code == 1 and "operators.denied" in r.out, r
    assert run("scan", path, "--profile", "strict").code == 0
