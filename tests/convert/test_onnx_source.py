"""An existing model.onnx as the build source: scanned before it runs, its own ONNX Runtime outputs as references,
then optimize, quantize, scan, seal and sign as for any other source."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxguard import bundle, runtime
from onnxguard.bundle import golden

FEATURES, HIDDEN, CLASSES = 16, 64, 4


def _mlp(path, extra_nodes=(), opset_imports=()) -> None:
    """A two-layer MLP with softmax probabilities, random weights, saved at ``path``."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((FEATURES, HIDDEN)).astype(np.float32) / 4
    w2 = rng.standard_normal((HIDDEN, CLASSES)).astype(np.float32) / 4
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1), *extra_nodes]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])]
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", CLASSES])]
    weights = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    graph = helper.make_graph(nodes, "mlp", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), *opset_imports])
    model.ir_version = 8
    onnx.save(model, path)


def _reference(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["probabilities"], {"x": x})[0]


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx-source") / "model.onnx"
    _mlp(path)
    return path


def test_build_from_an_onnx_file_quantized_sealed_and_signed(cli, mlp, tmp_path):
    from onnxguard.trust import PublicKeys, TrustPolicy, keys, open_bundle

    keyset = keys.generate(tmp_path / "keys")
    out = tmp_path / "bundle"
    r = cli("build", mlp, "-o", out, "--quantize", "dynamic", "--recipient", keyset.recipient,
            "--sign-key", keyset.private_key)
    assert r.code == 0, str(r)
    m = bundle.read(out).manifest
    assert (m.source.framework, m.source.identifier, m.golden.origin) == ("onnx", str(mlp), "signature")
    assert m.source.exporter.startswith("onnx file (as given")
    assert m.parity.passed and m.sealed is not None and (out / "model.sig").exists()
    assert [o.role for o in m.model.outputs] == ["scores"]
    names = [s.name for s in m.steps]
    assert "quantize" in names and "select" in names, names
    assert m.scan["counts"] is not None

    verified = cli("verify", out, "--public-key", keyset.public_key, "--golden", "--identity", keyset.age_identity)
    assert verified.code == 0, str(verified)
    opened = open_bundle(out, TrustPolicy(PublicKeys((keyset.public_key,))), identity=keyset.age_identity)
    x = np.random.default_rng(5).standard_normal((64, FEATURES)).astype(np.float32)
    (got,) = runtime.run(runtime.session(opened.contents["model.onnx"]), [{"x": x}])
    want = _reference(mlp, x)
    assert any(n.op_type.startswith(("MatMulInteger", "DynamicQuantize")) for n in
               onnx.load_model_from_string(opened.contents["model.onnx"]).graph.node)
    assert (np.argmax(got["probabilities"], 1) == np.argmax(want, 1)).mean() >= 0.9
    np.testing.assert_allclose(got["probabilities"], want, atol=0.05)


def test_golden_inputs_from_an_npz_give_the_references(cli, mlp, tmp_path):
    x = np.random.default_rng(9).standard_normal((10, FEATURES)).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", x=x)
    out = tmp_path / "bundle"
    r = cli("build", mlp, "-o", out, "--golden", tmp_path / "inputs.npz", "--optimize", "none")
    assert r.code == 0, str(r)
    b = bundle.read(out)
    assert (b.manifest.golden.origin, b.manifest.golden.items) == ("npz", 10)
    gs = golden.from_bytes((out / "golden.npz").read_bytes())
    np.testing.assert_array_equal(gs.inputs[0]["x"], x)
    np.testing.assert_allclose(gs.references[0]["probabilities"], _reference(mlp, x), rtol=1e-6, atol=1e-7)


def test_an_onnx_source_is_scanned_before_it_runs(cli, expect_err, tmp_path):
    """A node of a custom domain (a custom-op library ONNX Runtime would load) is refused before any session."""
    path = tmp_path / "custom.onnx"
    _mlp(path, [helper.make_node("Evil", ["probabilities"], ["unused"], domain="com.evil")],
         [helper.make_opsetid("com.evil", 1)])
    line = expect_err(cli("build", path, "-o", tmp_path / "b"), 2, "custom.onnx", "refused before running it")
    assert "com.evil" in line
    assert not (tmp_path / "b").exists()


def test_an_onnx_source_with_external_data_is_refused_in_one_line(cli, expect_err, tmp_path):
    path = tmp_path / "ext.onnx"
    _mlp(path)
    model = onnx.load(path)
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    expect_err(cli("build", path, "-o", tmp_path / "b"), 2, "ext.onnx", "external")
    assert not (tmp_path / "b").exists()
