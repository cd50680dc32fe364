"""scikit-learn sources: .skops classifier and regressor, pickles only with --trust-pickle and a clean scan."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxguard import bundle

FLOAT64 = "float64"


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x[1200:].astype(np.float32), y[1200:]


def test_classifier_exports_without_zipmap(sklearn_bundle, sklearn_files):
    b = bundle.read(sklearn_bundle)
    model = onnx.load_model_from_string(b.model_bytes())
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    probs = model.graph.output[1].type
    # a plain float tensor [batch, classes], not ZipMap's sequence of maps
    assert probs.HasField("tensor_type"), probs
    assert probs.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = probs.tensor_type.shape.dim
    assert len(dims) == 2 and not dims[0].HasField("dim_value") and dims[1].dim_value == 10
    assert all(n.op_type != "ZipMap" for n in model.graph.node)
    outputs = {o.name: o for o in b.manifest.model.outputs}
    assert outputs["probabilities"].dtype == "float32" and outputs["probabilities"].role == "scores"
    assert outputs["label"].role == "labels"


def test_classifier_labels_and_source_in_manifest(sklearn_bundle, sklearn_files):
    m = bundle.read(sklearn_bundle).manifest
    assert m.labels == sklearn_files.classes == [str(i) for i in range(10)]
    assert m.source.framework == "sklearn"
    assert m.source.exporter.startswith("skl2onnx") and "zipmap=False" in m.source.exporter
    (path, sha), = m.source.files.items()
    assert path.endswith("digits.skops")
    assert sha == hashlib.sha256(sklearn_files.classifier.read_bytes()).hexdigest()


def test_classifier_float64_difference_is_reported_by_build(sklearn_bundle):
    printed = (sklearn_bundle.parent / "build-stdout.txt").read_text()
    notes = [line for line in printed.splitlines() if line.startswith("note:")]
    assert any(FLOAT64 in note and "float32" in note for note in notes), printed


def test_classifier_float64_difference_is_kept_in_the_manifest(sklearn_bundle):
    m = bundle.read(sklearn_bundle).manifest
    assert any(FLOAT64 in note and "float32" in note for note in m.parity.notes), m.parity.notes


def test_classifier_parity_in_manifest(sklearn_bundle):
    m = bundle.read(sklearn_bundle).manifest
    assert m.parity.passed
    by_name = {o.name: o for o in m.parity.outputs}
    assert by_name["label"].label_agreement == 1.0
    assert by_name["probabilities"].max_abs < 1e-4


def test_classifier_predicts_like_sklearn_on_real_digits(sklearn_bundle, sklearn_files):
    import skops.io as sio

    clf = sio.load(sklearn_files.classifier, trusted=sio.get_untrusted_types(file=sklearn_files.classifier))
    x, y = _digits()
    label, probs = _session(sklearn_bundle / "model.onnx").run(None, {"input": x})
    np.testing.assert_array_equal(label, clf.predict(x))
    np.testing.assert_allclose(probs, clf.predict_proba(x), atol=1e-4)
    assert probs.dtype == np.float32
    assert (label == y).mean() > 0.9


def test_regressor_skops_convert_and_parity(cli, sklearn_files, tmp_path):
    """A tree ensemble (its .skops holds sklearn's Tree type, which skops does not trust by default)."""
    import skops.io as sio
    from sklearn.datasets import load_diabetes

    out = tmp_path / "diabetes.onnx"
    r = cli("convert", sklearn_files.regressor, "-o", out, "--opset", "15", "--meta", "dataset=diabetes")
    assert r.code == 0, str(r)
    assert any(FLOAT64 in line for line in r.out.splitlines() if line.startswith("note:")), str(r)
    model = onnx.load(out)
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == 15
    assert {p.key: p.value for p in model.metadata_props}["dataset"] == "diabetes"
    reg = sio.load(sklearn_files.regressor, trusted=sio.get_untrusted_types(file=sklearn_files.regressor))
    x, _ = load_diabetes(return_X_y=True)
    (pred,) = _session(out).run(None, {"input": x.astype(np.float32)})
    np.testing.assert_allclose(pred.ravel(), reg.predict(x), rtol=1e-4, atol=1e-3)

    r = cli("parity", sklearn_files.regressor, out, "--json")
    assert r.code == 0, str(r)
    report = json.loads(r.out)
    assert report["passed"] is True
    assert any(FLOAT64 in note for note in report["notes"]), report["notes"]
    assert [o["name"] for o in report["outputs"]] == ["variable"]
    assert report["outputs"][0]["role"] == "values" and report["outputs"][0]["label_agreement"] is None


def test_pickle_refused_without_trust_pickle(cli, expect_err, sklearn_files, tmp_path):
    out = tmp_path / "x.onnx"
    line = expect_err(cli("convert", sklearn_files.pickle, "-o", out), 2, "digits.pkl", "--trust-pickle")
    assert "skops" in line
    expect_err(cli("build", sklearn_files.pickle, "-o", tmp_path / "b"), 2, "digits.pkl", "--trust-pickle")
    assert sorted(tmp_path.iterdir()) == []


def test_malicious_pickle_refused_even_with_trust_pickle(cli, expect_err, sklearn_files, tmp_path):
    line = expect_err(cli("convert", sklearn_files.evil, "-o", tmp_path / "x.onnx", "--trust-pickle"), 2, "evil.pkl",
                      "refused")
    assert "system" in line, line
    assert not sklearn_files.evil_marker.exists(), "the pickle was loaded: its os.system call ran"
    assert not (tmp_path / "x.onnx").exists()


def test_benign_pickle_accepted_with_trust_pickle(cli, sklearn_files, tmp_path):
    out = tmp_path / "from-pickle.onnx"
    r = cli("convert", sklearn_files.pickle, "-o", out, "--trust-pickle")
    assert r.code == 0, str(r)
    x, _ = _digits()
    label, probs = _session(out).run(None, {"input": x[:16]})
    assert probs.shape == (16, 10) and label.shape == (16,)


def test_joblib_file_cannot_be_scanned_so_it_is_refused(cli, expect_err, sklearn_files, tmp_path):
    expect_err(cli("convert", sklearn_files.joblib, "-o", tmp_path / "x.onnx"), 2, "digits.joblib", "--trust-pickle")
    line = expect_err(cli("convert", sklearn_files.joblib, "-o", tmp_path / "x.onnx", "--trust-pickle"), 2,
                      "digits.joblib")
    assert "skops" in line


def test_skops_with_a_type_outside_sklearn_is_refused(cli, expect_err, sklearn_files, tmp_path):
    expect_err(cli("convert", sklearn_files.foreign_skops, "-o", tmp_path / "x.onnx"), 2, "foreign.skops",
               "builtins.eval")


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_library_golden_inputs_cover_edges(sklearn_files, kind):
    """The generated golden set has a batch of one, zeros and large values, and the source runs on all of it."""
    from onnxguard import convert

    src = convert.load(str(getattr(sklearn_files, kind)))
    batches = src.golden_inputs()
    rows = [b["input"] for b in batches]
    assert rows[0].shape[0] == 1
    assert any((r == 0).all() for r in rows) and any((np.abs(r) >= 1e3).all() for r in rows)
    assert all(r.dtype == np.float32 and r.shape[1] == src.n_features for r in rows)
    refs = src.run(batches[1])
    assert set(refs) == set(src.output_roles)
