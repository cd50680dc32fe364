"""inspect: what an ONNX file or bundle is, without running it (and without reading external data)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxguard.model import info as inspect

FIELDS = {"path", "file_size", "ir_version", "opset", "producer", "inputs", "outputs", "op_histogram", "node_count",
          "parameter_count", "metadata", "external_data", "bundle"}


def test_json_on_an_onnx_file(cli, mlp_onnx):
    r = cli("inspect", mlp_onnx, "--json")
    assert r.code == 0, str(r)
    info = json.loads(r.out)
    assert set(info) == FIELDS
    assert info["path"] == str(mlp_onnx) and info["file_size"] == mlp_onnx.stat().st_size
    assert info["ir_version"] == onnx.load(mlp_onnx).ir_version > 0
    assert info["opset"] == {"ai.onnx": 18}
    assert info["producer"].startswith("pytorch ")
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 10]}]
    assert info["outputs"] == [{"name": "output", "dtype": "float32", "shape": ["batch", 3]}]
    assert info["op_histogram"] == {"ai.onnx": {"Gemm": 2, "Relu": 1}}
    assert info["node_count"] == 3
    assert info["parameter_count"] == 10 * 32 + 32 + 32 * 3 + 3
    assert info["metadata"] == {"team": "vision", "ticket": "ML-7", "name": "mlp", "version": "2.0.1"}
    assert info["external_data"] == [] and info["bundle"] is None


def test_table_on_an_onnx_file(cli, mlp_onnx):
    r = cli("inspect", mlp_onnx)
    assert r.code == 0, str(r)
    for text in ("IR version", "opset", "ai.onnx 18", "producer", "parameters", "451", "x: float32 [batch, 10]",
                 "output: float32 [batch, 3]", "Gemm 2, Relu 1", "meta team", "vision"):
        assert text in r.out, text


def test_json_on_a_bundle(cli, sklearn_bundle, sklearn_files):
    r = cli("inspect", sklearn_bundle, "--json")
    assert r.code == 0, str(r)
    info = json.loads(r.out)
    assert set(info) == FIELDS
    assert info["path"] == str(sklearn_bundle / "model.onnx")
    assert info["file_size"] == (sklearn_bundle / "model.onnx").stat().st_size
    assert info["opset"]["ai.onnx.ml"] >= 1 and info["opset"]["ai.onnx"] == 18
    assert "ai.onnx.ml" in info["op_histogram"] and "LinearClassifier" in info["op_histogram"]["ai.onnx.ml"]
    assert info["producer"].startswith("skl2onnx")
    assert [o["name"] for o in info["outputs"]] == ["label", "probabilities"]
    # skl2onnx leaves the batch axis unnamed; onnxguard names it "batch"
    assert info["outputs"][1]["dtype"] == "float32" and info["outputs"][1]["shape"] == ["batch", 10]
    assert info["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 64]}]
    assert info["parameter_count"] == 64 * 10 + 10  # coefficients and intercepts
    assert info["metadata"]["owner"] == "ml-team"
    b = info["bundle"]
    assert b["format"] == "onnxguard-bundle/1" and b["name"] == "digits" and b["version"] == "1.2.3"
    assert b["labels"] == sklearn_files.classes and b["files"] == ["golden.npz", "model.onnx"]
    assert b["source"]["framework"] == "sklearn" and b["parity"] == {"passed": True}
    assert "convert" in b["steps"]


def test_table_on_a_bundle(cli, sklearn_bundle):
    r = cli("inspect", sklearn_bundle)
    assert r.code == 0, str(r)
    for text in ("bundle digits 1.2.3", "sklearn", "labels", "passed", "golden.npz, model.onnx", "LinearClassifier"):
        assert text in r.out, text


def _big_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((64, 32), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "ext",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_external_data_is_listed_and_never_read(cli, tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save_model(_big_model(), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").stat().st_size == 64 * 32 * 4
    (tmp_path / "weights.bin").unlink()  # if inspect read the weights, it would fail now
    r = cli("inspect", path, "--json")
    assert r.code == 0, str(r)
    info = json.loads(r.out)
    assert info["external_data"] == ["weights.bin"]
    assert info["parameter_count"] == 64 * 32  # from the declared dims
    assert info["file_size"] == path.stat().st_size < 64 * 32 * 4
    r = cli("inspect", path)
    assert r.code == 0 and "external data" in r.out and "weights.bin" in r.out, str(r)


def test_hostile_external_location_is_listed_not_followed(tmp_path):
    model = _big_model()
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="../../../../etc/shadow")
    path = tmp_path / "hostile.onnx"
    path.write_bytes(model.SerializeToString())
    info = inspect.inspect(path)
    assert info.external_data == ("../../../../etc/shadow",)
    assert info.parameter_count == 64 * 32


def test_histogram_by_domain_counts_subgraphs_and_functions(tmp_path):
    k = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "k")
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"]),
                                helper.make_node("Constant", [], ["k"], value=k),
                                helper.make_node("Mul", ["t", "k"], ["r"])], "then", [],
                               [helper.make_tensor_value_info("r", TensorProto.FLOAT, [2])])
    else_c = numpy_helper.from_array(np.zeros(2, np.float32), "zero")
    else_g = helper.make_graph([helper.make_node("Identity", ["zero"], ["r2"])], "else", [],
                               [helper.make_tensor_value_info("r2", TensorProto.FLOAT, [2])], [else_c])
    fn = helper.make_function("custom.domain", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                              [helper.make_opsetid("", 18)])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zs"], ["c"]),
             helper.make_node("If", ["c"], ["y0"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Twice", ["y0"], ["y"], domain="custom.domain")]
    graph = helper.make_graph(nodes, "main", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                              [numpy_helper.from_array(np.float32(0), "zs")])
    model = helper.make_model(graph, functions=[fn], ir_version=10,
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("custom.domain", 1)])
    onnx.checker.check_model(model)
    path = tmp_path / "nested.onnx"
    onnx.save(model, path)
    info = inspect.inspect(path)
    assert info.op_histogram == {
        "ai.onnx": {"Add": 1, "Constant": 1, "Greater": 1, "Identity": 1, "If": 1, "Mul": 1, "ReduceSum": 1, "Relu": 1},
        "custom.domain": {"Twice": 1},
    }
    assert info.node_count == 9
    # the main graph's scalar initializer, the else branch's initializer, the then branch's Constant
    assert info.parameter_count == 1 + 2 + 2
    assert info.opset == {"ai.onnx": 18, "custom.domain": 1}
    assert info.inputs[0].shape == (2,)


@pytest.mark.parametrize("dim", [None, "batch", 7])
def test_dims_keep_their_kind(tmp_path, dim):
    vi = helper.make_tensor_value_info("x", TensorProto.INT64, [dim, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [vi],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    info = inspect.describe(helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 18)]))
    assert info.inputs[0].dtype == "int64" and info.inputs[0].shape == (dim, 3)
    assert info.outputs[0].shape is None  # unknown rank stays unknown
