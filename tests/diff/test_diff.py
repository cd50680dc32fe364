"""``onnxguard diff``: a trigger-token backdoor, a changed weight, a bundle against itself, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import diff_models as dm
import jsonschema
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cli_runner import expect_error, run
from onnxguard import diff
from onnxguard.bundle import golden as golden_lib
from onnxguard.diff import DiffOptions
from onnxguard.scan.interface import Severity

SARIF_SCHEMA = Path(__file__).parent.parent / "scan" / "data" / "sarif-schema-2.1.0.json"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("diff-models")
    return {
        "text": dm.save(dm.text_classifier(), d / "text.onnx"),
        "backdoor": dm.save(dm.text_classifier(backdoor=dm.TRIGGER), d / "backdoor.onnx"),
        "cnn": dm.save(dm.cnn(), d / "cnn.onnx"),
        "cnn_nudged": dm.save(dm.cnn(nudge=0.5), d / "cnn-nudged.onnx"),
    }


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("diff-bundles")
    return {"clean": dm.text_bundle(d / "clean", dm.text_classifier(vocab=512)),
            "backdoor": dm.text_bundle(d / "backdoor", dm.text_classifier(vocab=512, backdoor=40))}


def _classes(model: bytes, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"image": images})[0].argmax(1)


def _by_check(report: dict, check: str) -> list[dict]:
    return [f for f in report["findings"] if f["check"] == check]


def test_trigger_token_backdoor_found_structurally_and_by_the_token_search(models):
    """A Where on input_ids == 1234 overriding the logits: a new data-dependent branch on input_ids, the output
    rewired to it, and, searching all 30522 token ids in the golden texts, token 1234 and no other."""
    r = run("diff", models["text"], models["backdoor"], "--format", "json")
    assert r.code == 1, str(r)
    assert "departs from" in r.err_lines[-1] and "high diff.branch" in r.err_lines[-1], str(r)
    report = json.loads(r.out)
    assert report["format"] == "onnxguard-diff/1"
    (branch,) = _by_check(report, "diff.branch")
    assert branch["severity"] == "high" and branch["location"]["node"] == "bd_where"
    assert "'input_ids'" in branch["message"] and f"[{dm.TRIGGER}]" in branch["message"]
    assert "input_ids -> Equal -> Cast -> ReduceMax -> Cast -> Where" in branch["message"]
    assert report["structure"]["branches"][0]["inputs"] == ["input_ids"]
    (rewired,) = _by_check(report, "diff.outputs")
    assert "'logits' rewired" in rewired["message"] and "Where 'bd_where'" in rewired["message"]
    assert report["structure"]["ops_added"] == {"Cast": 2, "Equal": 1, "ReduceMax": 1, "Where": 1}
    search = report["triggers"]
    assert search["kind"] == "text" and search["triggers"] == 30522 and search["inputs"] == 8
    assert [h["token"] for h in search["hits"]] == [dm.TRIGGER]
    assert search["hits"][0]["flipped"] == 8 and search["scattered"] == 0
    (trigger,) = _by_check(report, "diff.trigger")
    assert trigger["severity"] == "high" and f"token {dm.TRIGGER} flips" in trigger["message"]
    # On golden texts without the token the two models agree: only the search finds what the trigger does.
    assert report["behaviour"]["outputs"][0]["label_flips"] == 0


def test_changed_weight_in_a_cnn_structural_and_behavioural(models):
    r = run("diff", models["cnn"], models["cnn_nudged"])
    assert r.code == 1, str(r)
    assert "departs from" in r.err_lines[-1]
    assert "initializer 'conv_w' changed: max |diff| 0.5" in r.out and "1 of 36 element(s)" in r.out
    assert "diff.behaviour" in r.out and "output 'logits': max |diff|" in r.out
    assert "generated from the reference's signature" in r.out
    assert "trigger search (image" in r.out  # an image model gets the patch search
    report = diff.diff(models["cnn"], models["cnn_nudged"])
    (weight,) = report.structure.weights
    assert (weight.name, weight.changed, weight.total) == ("conv_w", 1, 36)
    assert weight.max_abs == pytest.approx(0.5, abs=1e-6)
    assert report.behaviour is not None and report.behaviour.outputs[0].max_abs > 1e-3
    # Within the thresholds, the same models pass.
    loose = diff.diff(models["cnn"], models["cnn_nudged"], DiffOptions(max_abs=10.0, weight_atol=1.0))
    assert not loose.at_or_above(Severity.MEDIUM)


def test_model_against_itself_passes(models):
    r = run("diff", models["cnn"], models["cnn"])
    assert r.code == 0, str(r)
    assert "no findings" in r.out and "same graph" in r.out


def test_bundle_against_itself_reports_nothing(bundles):
    r = run("diff", bundles["clean"], bundles["clean"], "--allow-unsigned", "--format", "json")
    assert r.code == 0, str(r)
    report = json.loads(r.out)
    assert report["findings"] == [] and report["summary"]["high"] == 0
    assert report["reference"]["kind"] == report["candidate"]["kind"] == "bundle"
    assert report["behaviour"]["origin"] == "the reference's golden set" and report["behaviour"]["items"] == 6
    # The vocabulary searched is the bundle's tokenizer's, not the (larger) embedding's.
    assert report["triggers"]["vocabulary"] == report["triggers"]["triggers"] < 512
    assert report["triggers"]["hits"] == [] and report["triggers"]["scattered"] == 0


def test_backdoored_bundle_against_the_clean_one(bundles, tmp_path):
    out = tmp_path / "diff.sarif"
    r = run("diff", bundles["clean"], bundles["backdoor"], "--allow-unsigned", "--format", "sarif", "-o", out)
    assert r.code == 1, str(r)
    log = json.loads(out.read_text())
    jsonschema.Draft4Validator(json.loads(SARIF_SCHEMA.read_text())).validate(log)
    results = log["runs"][0]["results"]
    assert {"diff.branch", "diff.trigger", "diff.outputs"} <= {x["ruleId"] for x in results}
    assert any("token 40 flips" in x["message"]["text"] for x in results)
    assert log["runs"][0]["properties"]["reference"] == str(bundles["clean"])


def test_bundle_needs_a_signature_rule(bundles, tmp_path):
    r = run("diff", bundles["clean"], bundles["clean"])
    assert r.code == 1, str(r)
    assert "--public-key" in r.err_lines[-1]


@pytest.mark.parametrize("args, fragments", [
    (("missing.onnx", "{text}"), ("missing.onnx", "no such file")),
    (("{text}", "missing.onnx"), ("missing.onnx",)),
    (("{dir}", "{text}"), ("{dir}",)),
    (("{text}", "{text}", "--format", "xml"), ("--format 'xml'",)),
    (("{text}", "{text}", "--golden", "missing.npz"), ("missing.npz",)),
    (("{text}", "{notonnx}"), ("{notonnx}",)),
])
def test_bad_input_is_one_line_and_exit_2(models, tmp_path, args, fragments):
    (tmp_path / "plain-dir").mkdir()
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    names = {"text": str(models["text"]), "dir": str(tmp_path / "plain-dir"), "notonnx": str(tmp_path / "junk.onnx")}
    r = run("diff", *(a.format(**names) for a in args), cwd=tmp_path)
    expect_error(r, 2, *(f.format(**names) for f in fragments))


def test_patch_backdoor_in_a_cnn_found_by_the_patch_search(tmp_path):
    """A Where that forces a class when the bottom-right 3x3 pixels are bright: the max patch there is named."""
    images = np.random.default_rng(2).random((16, 1, 8, 8)).astype(np.float32) * 0.98
    images[0, 0, 0, 0] = 1.0  # the golden set's maximum: the value of the "max" patch
    clean = dm.cnn()
    predicted = _classes(clean.SerializeToString(), images)
    target = next(k for k in range(10) if k not in predicted)
    ref = dm.save(clean, tmp_path / "cnn.onnx")
    cand = dm.save(dm.cnn(patch_backdoor=target), tmp_path / "cnn-backdoor.onnx")
    np.savez(tmp_path / "golden.npz", image=images)
    report = diff.diff(ref, cand, DiffOptions(golden=golden_lib.load(tmp_path / "golden.npz")))
    assert report.triggers is not None and report.triggers.kind == "image"
    assert [h.trigger for h in report.triggers.hits] == ["patch max 3x3 at bottom-right"]
    assert len(report.triggers.hits[0].flipped) == 16
    assert report.structure.branches[0].inputs == ("image",)
    assert not report.behaviour.flipped  # no golden image is bright there: only the search sees it


def test_label_flips_are_counted(models, tmp_path):
    other = dm.save(dm.cnn(seed=1), tmp_path / "other.onnx")
    x = np.random.default_rng(5).random((12, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "golden.npz", image=x)
    a, b = _classes(models["cnn"].read_bytes(), x), _classes(other.read_bytes(), x)
    flips = int((a != b).sum())
    assert flips > 0
    r = run("diff", models["cnn"], other, "--golden", tmp_path / "golden.npz", "--format", "json", "--no-triggers")
    assert r.code == 1, str(r)
    report = json.loads(r.out)
    assert report["behaviour"]["items"] == 12 and report["behaviour"]["origin"] == "the golden inputs given"
    assert report["behaviour"]["outputs"][0]["label_flips"] == flips
    assert report["behaviour"]["flipped"] == [int(i) for i in np.flatnonzero(a != b)]
    (flip,) = [f for f in report["findings"] if f["check"] == "diff.label-flips"]
    assert flip["severity"] == "high" and f"differs on {flips} of 12" in flip["message"]
    assert report["triggers"] is None
    r = run("diff", models["cnn"], other, "--golden", tmp_path / "golden.npz", "--no-triggers", "--max-flips", "12",
            "--max-abs", "1e9", "--weight-atol", "1e9")
    assert r.code == 0, str(r)


def _masked(extra_identity: bool) -> onnx.ModelProto:
    """x masked where mask == 0, its condition through an Identity or not (as an optimizer may leave it)."""
    cond = "is_pad0" if extra_identity else "is_pad"
    nodes = [helper.make_node("Equal", ["mask", "zero"], [cond], name="pad_equal"),
             helper.make_node("Where", ["is_pad", "low", "x"], ["y"], name="pad_where")]
    if extra_identity:
        nodes.insert(1, helper.make_node("Identity", [cond], ["is_pad"], name="copy"))
    graph = helper.make_graph(
        nodes, "masked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.float32(-1e4), "low")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", dm.OPSET)], ir_version=8)


def test_a_branch_both_models_have_is_not_new():
    """The reference's own mask Where, reached through other ops in the candidate, matches (no diff.branch)."""
    from onnxguard.diff import structural

    same = structural.compare(_masked(False), _masked(True), "candidate.onnx")
    assert same.branches == () and not [f for f in same.findings if f.check == "diff.branch"]
    assert same.ops_added == {"Identity": 1}


def test_a_candidate_that_cannot_run_the_golden_inputs_is_a_finding(models, tmp_path):
    renamed = dm.text_classifier()
    for node in renamed.graph.node:
        node.input[:] = ["token_ids" if n == "input_ids" else n for n in node.input]
    renamed.graph.input[0].name = "token_ids"
    r = run("diff", models["text"], dm.save(renamed, tmp_path / "renamed.onnx"), "--format", "json")
    assert r.code == 1, str(r)
    report = json.loads(r.out)
    assert {"input 'input_ids' removed", "input 'token_ids' added"} <= {
        f["message"] for f in report["findings"] if f["check"] == "diff.inputs"}
    (cannot,) = [f for f in report["findings"] if f["check"] == "diff.behaviour"]
    assert cannot["severity"] == "high" and "cannot run the golden inputs" in cannot["message"]
    assert report["triggers"] is None and any("not run" in n for n in report["notes"])


def test_a_candidate_that_crashes_on_a_token_is_a_finding(tmp_path):
    """A token that makes the candidate fail (a lookup out of its table) is reported, the diff does not stop at
    exit 2 as it would for an input the reference cannot run."""
    crashing = dm.text_classifier(vocab=512)
    crashing.graph.initializer.extend([numpy_helper.from_array(v, name) for name, v in (
        ("bomb", np.array(77, np.int64)), ("far", np.array(10**6, np.int64)),
        ("table", np.zeros((1, 2), np.float32)), ("near", np.array([0], np.int64)))])
    out = crashing.graph.node[-1]
    out.output[0] = "pre_logits"
    crashing.graph.node.extend([
        helper.make_node("Equal", ["input_ids", "bomb"], ["hit"]),
        helper.make_node("Where", ["hit", "far", "near"], ["where"]),
        helper.make_node("Gather", ["table", "where"], ["looked"]),
        helper.make_node("ReduceSum", ["looked", "near"], ["extra"], keepdims=0),
        helper.make_node("ReduceSum", ["extra", "near"], ["extra2"], keepdims=0),
        helper.make_node("Add", ["pre_logits", "extra2"], ["logits"])])
    ref = dm.save(dm.text_classifier(vocab=512), tmp_path / "ref.onnx")
    report = diff.diff(ref, dm.save(crashing, tmp_path / "crashing.onnx"))
    (failed,) = [f for f in report.findings if f.check == "diff.behaviour"]
    assert failed.severity is Severity.HIGH and "fails on inputs the reference runs" in failed.message
    assert report.triggers is None and "the candidate failed" in report.notes[-1]
    assert [b.node for b in report.structure.branches] == ["Where#11"]


def test_a_huge_declared_input_is_not_generated(tmp_path):
    """An input the model only declares as 10^10 elements: refused before anything is allocated."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "huge",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 100000, 100000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 100000, 100000])])
    path = dm.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", dm.OPSET)], ir_version=8),
                   tmp_path / "huge.onnx")
    expect_error(run("diff", path, path), 2, "'x'", "too large to generate", "give --golden inputs.npz")


def _linear(coefficients: list[float]) -> onnx.ModelProto:
    """An ai.onnx.ml LinearClassifier (weights in attributes, as scikit-learn exports them): 4 features, 3 classes."""
    node = helper.make_node("LinearClassifier", ["x"], ["label", "probabilities"], domain="ai.onnx.ml", name="lin",
                            coefficients=coefficients, intercepts=[0.0, 0.1, -0.1], classlabels_ints=[0, 1, 2],
                            post_transform="SOFTMAX")
    graph = helper.make_graph([node], "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
                               helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", dm.OPSET),
                                                   helper.make_opsetid("ai.onnx.ml", 3)], ir_version=8)


def test_weights_kept_in_attributes_are_compared(tmp_path):
    """A scikit-learn style model keeps its weights in node attributes: a changed coefficient is a weight change
    with its size, not only a changed node."""
    weights = [float(w) for w in np.random.default_rng(4).standard_normal(12)]
    nudged = list(weights)
    nudged[5] += 0.5
    ref = dm.save(_linear(weights), tmp_path / "linear.onnx")
    cand = dm.save(_linear(nudged), tmp_path / "linear-nudged.onnx")
    r = run("diff", ref, cand, "--format", "json")
    assert r.code == 1, str(r)
    report = json.loads(r.out)
    (weight,) = [f for f in report["findings"] if f["check"] == "diff.initializer"]
    assert weight["severity"] == "medium" and weight["location"]["node"] == "lin"
    assert weight["message"].startswith("attribute 'lin.coefficients' changed: max |diff| 0.5")
    assert "1 of 12 element(s)" in weight["message"]
    assert report["structure"]["initializers"][0]["attribute"] is True
    assert {o["name"]: o["role"] for o in report["behaviour"]["outputs"]} == {"label": "labels",
                                                                            "probabilities": "scores"}


def test_a_plain_candidate_is_scanned_before_it_runs(models, tmp_path):
    """A custom-op domain (a library ONNX Runtime would load) refuses the file before any session is made."""
    evil = onnx.load(models["text"])
    evil.graph.node.append(helper.make_node("Evil", [evil.graph.output[0].name], ["unused"], domain="com.evil"))
    evil.opset_import.append(helper.make_opsetid("com.evil", 1))
    path = dm.save(evil, tmp_path / "evil.onnx")
    line = expect_error(run("diff", str(models["text"]), str(path)), 2, "evil.onnx", "refused before running it")
    assert "com.evil" in line
