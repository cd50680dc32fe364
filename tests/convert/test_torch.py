"""PyTorch sources: a file.py:factory spec with --input-shape, and a torch.export ExportedProgram (.pt2)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from onnxguard import bundle
from onnxguard.model import info as inspect


def _nets(path):
    spec = importlib.util.spec_from_file_location("test_nets_module", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_factory_spec_with_dynamic_batch(mlp_onnx, torch_nets):
    model = onnx.load(mlp_onnx)
    assert [i.name for i in model.graph.input] == ["x"]
    assert _dims(model.graph.input[0]) == ["batch", 10]
    assert _dims(model.graph.output[0]) == ["batch", 3]
    net = _nets(torch_nets).make_mlp().eval()
    rng = np.random.default_rng(0)
    for n in (1, 13):  # the export example had 2 rows; other batch sizes must work and agree
        x = rng.standard_normal((n, 10)).astype(np.float32)
        (y,) = _run(mlp_onnx, {"x": x})
        with torch.inference_mode():
            np.testing.assert_allclose(y, net(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_meta_name_and_version_go_into_metadata_props(mlp_onnx):
    props = {p.key: p.value for p in onnx.load(mlp_onnx).metadata_props}
    assert props == {"team": "vision", "ticket": "ML-7", "name": "mlp", "version": "2.0.1"}
    assert inspect.inspect(mlp_onnx).metadata == props


def test_class_spec_with_named_input_and_opset(cli, torch_nets, tmp_path):
    out = tmp_path / "cnn.onnx"
    r = cli("convert", f"{torch_nets}:CNN", "--input-shape", "image=1,1,8,8", "--opset", "17", "-o", out)
    assert r.code == 0, str(r)
    assert "dynamo" in r.out  # the exporter used is reported
    model = onnx.load(out)
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    assert model.graph.input[0].name == "image" and _dims(model.graph.input[0]) == ["batch", 1, 8, 8]
    x = np.random.default_rng(1).random((5, 1, 8, 8), dtype=np.float32)
    (y,) = _run(out, {"image": x})
    with torch.inference_mode():
        np.testing.assert_allclose(y, _nets(torch_nets).CNN().eval()(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_two_inputs_with_symbolic_dims_and_dict_outputs(cli, torch_nets, tmp_path):
    out = tmp_path / "two.onnx"
    r = cli("convert", f"{torch_nets}:make_two_inputs", "--input-shape", "tokens=batch,seq,6",
            "--input-shape", "mask=batch,seq", "-o", out)
    assert r.code == 0, str(r)
    model = onnx.load(out)
    assert [(i.name, _dims(i)) for i in model.graph.input] == [("tokens", ["batch", "seq", 6]),
                                                               ("mask", ["batch", "seq"])]
    assert [o.name for o in model.graph.output] == ["pooled", "hidden"]
    net = _nets(torch_nets).make_two_inputs().eval()
    rng = np.random.default_rng(2)
    for batch, seq in ((1, 3), (4, 11)):
        tokens = rng.standard_normal((batch, seq, 6)).astype(np.float32)
        mask = (rng.random((batch, seq)) > 0.3).astype(np.float32)
        pooled, hidden = _run(out, {"tokens": tokens, "mask": mask})
        with torch.inference_mode():
            ref = net(torch.from_numpy(tokens), torch.from_numpy(mask))
        np.testing.assert_allclose(pooled, ref["pooled"].numpy(), atol=1e-5)
        np.testing.assert_allclose(hidden, ref["hidden"].numpy(), atol=1e-5)


def test_torchscript_exporter_on_request(cli, torch_nets, tmp_path):
    out = tmp_path / "mlp-ts.onnx"
    r = cli("convert", f"{torch_nets}:make_mlp", "--input-shape", "1,10", "--exporter", "torchscript", "-o", out)
    assert r.code == 0, str(r)
    assert "torchscript" in r.out and "dynamo" not in r.out.split("wrote", 1)[1].split("\n")[0]
    x = np.ones((6, 10), np.float32)
    (y,) = _run(out, {"x": x})
    assert y.shape == (6, 3)


def test_exported_program_with_dynamic_batch(cli, pt2_file, tmp_path):
    out = tmp_path / "cnn.onnx"
    r = cli("convert", pt2_file, "-o", out)
    assert r.code == 0, str(r)
    assert "ExportedProgram" in r.out
    model = onnx.load(out)
    batch = _dims(model.graph.input[0])[0]
    assert isinstance(batch, str) and batch, _dims(model.graph.input[0])  # symbolic, not a fixed size
    assert _dims(model.graph.input[0])[1:] == [1, 8, 8]
    module = torch.export.load(str(pt2_file)).module()
    for n in (1, 9):
        x = np.random.default_rng(n).random((n, 1, 8, 8), dtype=np.float32)
        (y,) = _run(out, {model.graph.input[0].name: x})
        with torch.inference_mode():
            np.testing.assert_allclose(y, module(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_exported_program_refuses_torchscript(cli, expect_err, pt2_file, tmp_path):
    expect_err(cli("convert", pt2_file, "--exporter", "torchscript", "-o", tmp_path / "x.onnx"), 2, "cnn.pt2", "dynamo")


def test_build_from_exported_program(cli, pt2_file, tmp_path):
    out = tmp_path / "cnn-bundle"
    r = cli("build", pt2_file, "-o", out, "--task", "classification", "--labels", "a,b,c,d,e", "--json")
    assert r.code == 0, str(r)
    report = json.loads(r.out)
    assert report["bundle"] == str(out)
    m = bundle.read(out).manifest
    assert m.source.framework == "pytorch" and "ExportedProgram" in m.source.exporter
    assert m.labels == ["a", "b", "c", "d", "e"]
    assert m.name == "cnn"
    assert [o.role for o in m.model.outputs] == ["scores"]
    assert m.parity.passed and m.parity.outputs[0].label_agreement == 1.0
    assert m.golden.origin == "signature" and m.golden.batches >= 3


def test_build_from_factory_spec(cli, torch_nets, tmp_path):
    out = tmp_path / "mlp-bundle"
    r = cli("build", f"{torch_nets}:make_mlp", "--input-shape", "1,10", "-o", out, "--name", "my-mlp",
            "--version", "3.1.4", "--meta", "k=v=w")
    assert r.code == 0, str(r)
    m = bundle.read(out).manifest
    assert (m.name, m.version, m.metadata) == ("my-mlp", "3.1.4", {"k": "v=w"})
    assert list(m.source.files) == [str(torch_nets)]
    assert m.source.identifier == f"{torch_nets}:make_mlp"
    assert m.model.inputs[0].shape == ["batch", 10]
    props = {p.key: p.value for p in onnx.load(out / "model.onnx").metadata_props}
    assert props["k"] == "v=w"


@pytest.mark.parametrize(("text", "name", "dims", "dtype"), [
    ("1,3,32,32", "x", ("batch", 3, 32, 32), "float32"),
    ("ids=batch,seq:int64", "ids", ("batch", "seq"), "int64"),
    ("4,7:float16", "x", ("batch", 7), "float16"),
])
def test_parse_input_shape(text, name, dims, dtype):
    from onnxguard.convert.pytorch import parse_input_shape

    spec = parse_input_shape(text, "x")
    assert (spec.name, spec.dims, spec.dtype) == (name, dims, dtype)
