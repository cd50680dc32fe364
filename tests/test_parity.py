"""parity: ONNX Runtime against the source framework; exit 1 out of tolerance, a stable --json report."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxguard.accuracy import parity
from onnxguard.accuracy.parity import LABELS, SCORES, VALUES, Tolerance
from onnxguard.bundle.golden import GoldenSet
from onnxguard.errors import InputError

REPORT_FIELDS = {"outputs", "tolerance", "batches", "items", "notes", "passed"}
DEFAULT = Tolerance()
OUTPUT_FIELDS = {"name", "role", "items", "max_abs", "mean_abs", "min_cosine", "label_agreement", "passed", "failures"}


def test_within_tolerance(cli, torch_nets, mlp_onnx):
    r = cli("parity", f"{torch_nets}:make_mlp", mlp_onnx, "--input-shape", "1,10", "--json")
    assert r.code == 0, str(r)
    report = json.loads(r.out)
    assert set(report) == REPORT_FIELDS and report["passed"] is True
    (out,) = report["outputs"]
    assert set(out) == OUTPUT_FIELDS
    assert out["name"] == "output" and out["role"] == VALUES and out["failures"] == []
    assert 0 <= out["mean_abs"] <= out["max_abs"] < 1e-4 and out["min_cosine"] > 0.9999
    assert out["label_agreement"] is None
    assert report["tolerance"] == {"atol": 1e-4, "rtol": 1e-3, "min_cosine": 0.9999, "min_label_agreement": 1.0}
    assert report["items"] == out["items"] >= 60 and report["batches"] >= 4


def test_tampered_model_fails_with_exit_1(cli, torch_nets, mlp_onnx, tmp_path):
    model = onnx.load(mlp_onnx)
    w = model.graph.initializer[0]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.02, w.name))  # 2 % off one weight matrix
    bad = tmp_path / "tampered.onnx"
    onnx.save(model, bad)
    r = cli("parity", f"{torch_nets}:make_mlp", bad, "--input-shape", "1,10", "--task", "classification", "--json")
    assert r.code == 1, str(r)
    assert r.err_lines == ["onnxguard: error: parity out of tolerance"], str(r)
    report = json.loads(r.out)  # the report is still printed, as JSON
    assert report["passed"] is False
    (out,) = report["outputs"]
    assert out["role"] == SCORES and out["passed"] is False and out["max_abs"] > 1e-3
    assert any("beyond atol" in f for f in out["failures"])
    assert out["label_agreement"] is not None and 0 <= out["label_agreement"] <= 1

    r = cli("parity", f"{torch_nets}:make_mlp", bad, "--input-shape", "1,10")  # the table says it too
    assert r.code == 1 and "FAILED" in r.out, str(r)


def test_flipped_classifier_loses_label_agreement(cli, sklearn_files, tmp_path):
    out = tmp_path / "digits.onnx"
    assert cli("convert", sklearn_files.classifier, "-o", out).code == 0
    model = onnx.load(out)
    lin = next(n for n in model.graph.node if n.op_type == "LinearClassifier")
    coef = next(a for a in lin.attribute if a.name == "coefficients")
    coef.floats[:] = [-c for c in coef.floats]
    onnx.save(model, out)
    r = cli("parity", sklearn_files.classifier, out, "--json")
    assert r.code == 1, str(r)
    outputs = {o["name"]: o for o in json.loads(r.out)["outputs"]}
    assert outputs["label"]["role"] == LABELS and outputs["label"]["label_agreement"] < 0.5
    assert outputs["probabilities"]["label_agreement"] < 0.5
    assert any("label agreement" in f for f in outputs["label"]["failures"])


def test_golden_npz_inputs(cli, torch_nets, mlp_onnx, tmp_path):
    npz = tmp_path / "inputs.npz"
    np.savez(npz, x=np.random.default_rng(3).standard_normal((5, 10)).astype(np.float32))
    r = cli("parity", f"{torch_nets}:make_mlp", mlp_onnx, "--input-shape", "1,10", "--golden", npz, "--json")
    assert r.code == 0, str(r)
    report = json.loads(r.out)
    assert report["items"] == 5 and report["batches"] == 1


def test_bundle_reruns_its_golden_set(cli, sklearn_bundle):
    from onnxguard import bundle

    m = bundle.read(sklearn_bundle).manifest
    r = cli("parity", sklearn_bundle, "--json", "--allow-unsigned")
    assert r.code == 0, str(r)
    report = json.loads(r.out)
    assert report["passed"] is True
    assert (report["items"], report["batches"]) == (m.golden.items, m.golden.batches)
    assert {o["name"] for o in report["outputs"]} == {"label", "probabilities"}
    # it really compares: float32 against float64 references is not bit-exact, so zero tolerance fails
    r = cli("parity", sklearn_bundle, "--atol", "0", "--rtol", "0", "--min-cosine", "1.0", "--json", "--allow-unsigned")
    assert r.code == 1, str(r)
    probs = next(o for o in json.loads(r.out)["outputs"] if o["name"] == "probabilities")
    assert probs["max_abs"] > 0 and not probs["passed"]


def test_bundle_takes_no_model_argument(cli, expect_err, sklearn_bundle, mlp_onnx):
    expect_err(cli("parity", sklearn_bundle, mlp_onnx), 2, str(sklearn_bundle), "do not give MODEL")


def test_a_bundle_is_opened_through_the_trust_door(cli, expect_err, sklearn_bundle, copy_tree, tmp_path):
    """Unsigned: refused unless waived by name; signed: checked against the key; sealed: opened with --identity."""
    from onnxguard.trust import keys, sealing, signing

    expect_err(cli("parity", sklearn_bundle), 1, "unsigned", "--public-key PEM", "--allow-unsigned")
    k = keys.generate(tmp_path / "keys")
    sealed = copy_tree(sklearn_bundle)
    sealing.seal(sealed, [k.recipient])
    signing.sign(sealed, k.private_key)
    r = cli("parity", sealed, "--public-key", k.public_key, "--json")
    assert r.code != 0 and "Traceback" not in r.err, str(r)
    assert "--identity FILE" in r.err_lines[-1], str(r)  # the golden set and model are sealed: the remedy is named
    r = cli("parity", sealed, "--public-key", k.public_key, "--identity", k.age_identity, "--json")
    assert r.code == 0, str(r)
    assert json.loads(r.out)["passed"] is True
    assert not list(sealed.rglob("*.onnx")) and not list(sealed.rglob("golden.npz"))  # decrypted in memory only
    other = keys.generate(tmp_path / "other")
    r = cli("parity", sealed, "--public-key", other.public_key, "--identity", k.age_identity)
    assert r.code == 1 and "signature" in r.err_lines[-1], str(r)


def test_golden_from_source_is_shared_by_build_and_parity(sklearn_files):
    """One function makes the golden set from the source: its inputs, and the source framework's outputs."""
    from onnxguard import convert

    src = convert.load(str(sklearn_files.classifier))
    events = []
    golden, origin = parity.golden_from_source(src, progress=events.append, stage="source")
    assert origin == "signature" and golden.references is not None and len(golden.references) == len(golden.inputs)
    assert all(e.stage == "source" for e in events) and len(events) == len(golden.inputs)
    for batch, ref in zip(golden.inputs, golden.references, strict=True):
        np.testing.assert_array_equal(ref["label"], src.run(batch)["label"])


def test_summary_is_the_manifest_record_of_a_report():
    report = parity.compare([{"y": np.ones((2, 3), np.float32)}], [{"y": np.ones((2, 3), np.float32)}], {},
                            notes=("a note",))
    s = parity.summary(report)
    assert s.passed is True and s.items == 2 and s.batches == 1 and s.notes == ["a note"]
    assert s.tolerance == Tolerance().__dict__ and s.outputs[0].name == "y"


# -- the comparison itself -----------------------------------------------------------------------------

GATE_LIKE = Tolerance(atol=1.0, rtol=0.1, min_cosine=0.99, min_label_agreement=0.99)


def _cmp(ref, out, role=VALUES, tol=DEFAULT):
    return parity.compare_output("y", role, [np.asarray(ref)], [np.asarray(out)], tol)


def test_tolerance_is_atol_plus_rtol_times_reference():
    ref = np.array([[100.0, 1.0]])
    assert _cmp(ref, ref + [[0.09, 0.0]], tol=Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0)).passed  # 0.09 <= 0.1001
    r = _cmp(ref, ref + [[0.0, 0.002]], tol=Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0))  # 0.002 > 0.0011
    assert not r.passed and r.failures == ("1 element(s) beyond atol 0.0001 + rtol 0.001 (max |diff| 0.002)",)
    assert r.max_abs == pytest.approx(0.002) and r.mean_abs == pytest.approx(0.001)


def test_cosine_is_per_example():
    ref = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    out = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1e-9]])  # both zero: 1; one zero: 0
    r = _cmp(ref, out, tol=Tolerance(atol=1, rtol=0, min_cosine=0.5))
    assert r.min_cosine == 0.0 and not r.passed and "min cosine" in r.failures[0]


def test_scores_agreement_is_argmax():
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    out = ref.copy()
    out[0] = [0.9, 0.1]
    r = _cmp(ref, out, SCORES, Tolerance(atol=1, rtol=0, min_cosine=-1, min_label_agreement=0.9))
    assert r.label_agreement == 0.75 and not r.passed and "label agreement 75.00%" in r.failures[0]


def test_scores_cosine_is_between_class_probabilities():
    """A two-class head's logits are each other's negatives: on logits one coin-toss flip reads as cosine -1; on
    probabilities it reads as close, and a confident answer turned round still fails."""
    ref = np.array([[2.0, -2.0], [0.01, -0.01], [-3.0, 3.0], [1.5, -1.5]])
    coin_toss = ref.copy()
    coin_toss[1] = [-0.01, 0.01]
    tol = Tolerance(atol=1, rtol=0.1, min_cosine=0.99, min_label_agreement=0.75)
    r = _cmp(ref, coin_toss, SCORES, tol)
    assert r.passed and r.min_cosine > 0.999 and r.label_agreement == 0.75
    assert _cmp(ref, coin_toss, VALUES, tol).min_cosine == pytest.approx(-1.0)  # values: the vectors as they are
    confident = ref.copy()
    confident[0] = [1.2, -1.2]  # within atol of [2, -2] per element, same label ...
    confident[3] = [-0.6, 0.6]  # ... but this one turned round with confidence
    r = _cmp(ref, confident, SCORES, Tolerance(atol=2.5, rtol=0, min_cosine=0.99, min_label_agreement=0.75))
    assert not r.passed and r.min_cosine < 0.9 and "min cosine" in r.failures[0]


def test_scores_over_positions_of_different_widths_per_batch():
    """Question answering's start logits run over the batch's own sequence length: each batch's probabilities are
    taken over its own width."""
    refs = [np.array([[1.0, 2.0, 0.5]]), np.array([[0.2, 3.0, 1.0, -1.0, 0.0]])]
    r = parity.compare_output("start_logits", SCORES, refs, [x + 0.01 for x in refs], GATE_LIKE)
    assert r.passed and r.min_cosine > 0.9999


def test_scores_that_are_probabilities_are_compared_as_they_are():
    ref = np.array([[0.9, 0.1], [0.2, 0.8]])
    out = np.array([[0.8, 0.2], [0.2, 0.8]])
    r = _cmp(ref, out, SCORES, Tolerance(atol=1, rtol=0, min_cosine=0.0, min_label_agreement=1.0))
    expected = (0.9 * 0.8 + 0.1 * 0.2) / (np.hypot(0.9, 0.1) * np.hypot(0.8, 0.2))
    assert r.min_cosine == pytest.approx(expected)


def test_string_labels_compare_by_equality():
    r = _cmp(np.array(["cat", "dog", "cat"]), np.array(["cat", "dog", "dog"]), LABELS,
             Tolerance(min_label_agreement=0.5))
    assert r.label_agreement == pytest.approx(2 / 3) and r.passed and r.max_abs == 0.0


def test_shape_mismatch_and_non_finite_fail():
    r = _cmp(np.zeros((2, 3)), np.zeros((2, 4)))
    assert not r.passed and r.failures[0].startswith("shape differs") and r.max_abs == float("inf")
    r = _cmp(np.ones((2, 2)), np.array([[1.0, np.nan], [1.0, 1.0]]))
    assert not r.passed and "non-finite values in the ONNX output" in r.failures


def test_report_items_and_missing_inputs():
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 18)])
    x1, x2 = np.ones((3, 2), np.float32), np.arange(8, dtype=np.float32).reshape(4, 2)
    golden = GoldenSet(({"x": x1}, {"x": x2}), ({"y": -x1}, {"y": -x2}))
    report = parity.parity(model, golden, {"y": VALUES})
    assert report.passed and report.items == 7 and report.batches == 2 and report.outputs[0].max_abs == 0
    with pytest.raises(InputError, match=r"lacks model input\(s\) \['x'\]"):
        parity.parity(model, GoldenSet(({"z": x1},), ({"y": -x1},)), {})
    with pytest.raises(InputError, match="no reference outputs"):
        parity.parity(model, GoldenSet(({"x": x1},)), {})


def test_a_text_model_without_texts_is_judged_on_the_builtin_sentences(hf_model):
    """The parity verb and build alike: real sentences (and the signature's edge cases), not random token ids."""
    from onnxguard import convert
    from onnxguard.bundle.golden import builtin_texts

    src = convert.load(str(hf_model("distilbert", "text-classification")))
    golden, origin = parity.golden_from_source(src)
    assert origin == "builtin"
    assert golden.items >= len(builtin_texts())


def test_block_wise_int8_is_judged_as_int8():
    from onnx import TensorProto, helper

    from onnxguard.accuracy.thresholds import kind_of

    node = helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], domain="com.microsoft", K=32, N=8, bits=8,
                            block_size=32, accuracy_level=4)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    assert kind_of(helper.make_model(graph)) == "int8"
