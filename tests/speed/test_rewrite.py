from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxguard.speed import quantize, rewrite


def _cnn(gamma: np.ndarray | None = None, second_reader: bool = False) -> onnx.ModelProto:
    """image -> Conv 3->4 -> Relu -> BatchNormalization -> MaxPool 2x2 -> Flatten -> Gemm 64->3."""
    rng = np.random.default_rng(0)
    gamma = rng.uniform(0.5, 2.0, 4) if gamma is None else gamma
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in [
        ("w", rng.standard_normal((4, 3, 3, 3))), ("b", rng.standard_normal(4)), ("gamma", gamma),
        ("beta", rng.standard_normal(4)), ("mean", rng.standard_normal(4)), ("var", rng.uniform(0.5, 2.0, 4)),
        ("fc", rng.standard_normal((64, 3))), ("fcb", rng.standard_normal(3))]]
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("BatchNormalization", ["relu", "gamma", "beta", "mean", "var"], ["norm"], epsilon=1e-5),
             helper.make_node("MaxPool", ["norm"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["pool"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])]
    if second_reader:
        outputs.append(helper.make_tensor_value_info("norm", TensorProto.FLOAT, ["batch", 4, 8, 8]))
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                          ["batch", 3, 8, 8])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)  # value_info for every tensor, the stale one included


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        ["logits"], {"image": x})[0]


def _images(n: int = 16) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 3, 8, 8)).astype(np.float32) * 3


def test_moving_the_pool_ahead_of_a_positive_normalization_changes_no_output_bit():
    model = _cnn()
    before = model.SerializeToString()
    moved, count = rewrite.pool_before_norm(model)
    assert count == 1 and model.SerializeToString() == before, "the input model is never modified"
    assert [n.op_type for n in moved.graph.node] == ["Conv", "Relu", "MaxPool", "BatchNormalization", "Flatten",
                                                     "Gemm"]
    assert "norm" not in {v.name for v in moved.graph.value_info}, "the full-resolution tensor's shape is gone"
    onnx.checker.check_model(moved, full_check=True)
    assert np.array_equal(_run(moved, _images()), _run(model, _images()))


@pytest.mark.parametrize("gamma", [np.array([1.0, -0.5, 2.0, 1.0]), np.array([1.0, 0.0, 2.0, 1.0])],
                         ids=["negative scale", "zero scale"])
def test_a_normalization_that_is_not_positive_in_every_channel_stays(gamma):
    """max(a*x + b) is a*min(x) + b where a < 0: moving the pool would change the answer."""
    model = _cnn(gamma)
    assert rewrite.pool_before_norm(model) == (model, 0)


def test_a_normalized_tensor_read_elsewhere_stays():
    model = _cnn(second_reader=True)
    assert rewrite.pool_before_norm(model) == (model, 0)


def test_static_int8_pools_in_uint8_and_says_so(tmp_path):
    """After the move ONNX Runtime runs the pool on the quantized ReLU output (its uint8 NhwcMaxPool); before it, a
    float MaxPool on the dequantized normalization."""
    images = _images(32)
    r = quantize.quantize(_cnn(), quantize.QuantizeOptions(mode="static", calibration=({"image": images},)))
    assert r.figures()["pools_before_norm"] == 1 and r.figures()["channels_padded"] == 1
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(r.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = {(n.domain, n.op_type) for n in onnx.load(tmp_path / "optimized.onnx").graph.node}
    assert ("com.microsoft", "NhwcMaxPool") in ops and ("", "MaxPool") not in ops
    cos = [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(_run(r.model, images),
                                                                                 _run(_cnn(), images), strict=True)]
    assert min(cos) > 0.99


def test_dynamic_int8_leaves_the_graph_order_alone():
    r = quantize.quantize(_cnn(), quantize.QuantizeOptions(mode="dynamic"))
    assert "pools_before_norm" not in r.figures() and "channels_padded" not in r.figures()


def test_a_convolution_on_three_channels_reads_four_and_gives_the_same_outputs():
    model = _cnn()
    before = model.SerializeToString()
    padded, count = rewrite.channels_to_four(model)
    assert count == 1 and model.SerializeToString() == before, "the input model is never modified"
    assert [n.op_type for n in padded.graph.node][:2] == ["Pad", "Conv"]
    weight = next(i for i in padded.graph.initializer if i.name == "w")
    assert list(weight.dims) == [4, 4, 3, 3] and not numpy_helper.to_array(weight)[:, 3].any()
    onnx.checker.check_model(padded, full_check=True)
    np.testing.assert_allclose(_run(padded, _images()), _run(model, _images()), rtol=1e-6, atol=1e-5)
    assert rewrite.channels_to_four(padded) == (padded, 0), "four channels already"


def _one_conv(channels: int, group: int = 1, shared: bool = False, opset: int = 17) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((2, channels // group, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], group=group)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if shared:
        nodes.append(helper.make_node("Conv", ["x", "w"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                           [1, channels, 5, 5])], outputs, [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize(("model", "why"), [(_one_conv(6, group=3), "grouped"), (_one_conv(3, shared=True), "shared"),
                                            (_one_conv(8), "a multiple of four"),
                                            (_one_conv(3, opset=10), "Pad's pads are an attribute before opset 11")])
def test_grouped_shared_or_wide_enough_convolutions_stay(model, why):
    assert rewrite.channels_to_four(model) == (model, 0), why


@pytest.mark.parametrize("pool_first", [False, True], ids=["relu-norm", "relu-pool-norm"])
def test_a_positive_normalization_becomes_its_convolutions_scale_and_an_add(pool_first):
    model = rewrite.pool_before_norm(_cnn())[0] if pool_first else _cnn()
    before = model.SerializeToString()
    folded, count = rewrite.scale_into_conv(model)
    assert count == 1 and model.SerializeToString() == before, "the input model is never modified"
    assert "BatchNormalization" not in {n.op_type for n in folded.graph.node}
    assert {"gamma", "beta", "mean", "var"}.isdisjoint(i.name for i in folded.graph.initializer)
    onnx.checker.check_model(folded, full_check=True)
    np.testing.assert_allclose(_run(folded, _images()), _run(model, _images()), rtol=1e-5, atol=1e-4)


def test_a_normalization_that_is_not_positive_or_whose_input_is_read_elsewhere_keeps_its_scale():
    assert rewrite.scale_into_conv(_cnn(np.array([1.0, -0.5, 2.0, 1.0])))[1] == 0
    model = _cnn()
    graph = model.graph
    graph.output.append(helper.make_tensor_value_info("relu", TensorProto.FLOAT, ["batch", 4, 8, 8]))
    assert rewrite.scale_into_conv(model) == (model, 0), "the ReLU's output is a graph output too"


def test_static_int8_has_no_float_normalization_and_pads_the_image_in_float(tmp_path):
    images = _images(32)
    r = quantize.quantize(_cnn(), quantize.QuantizeOptions(mode="static", calibration=({"image": images},)))
    assert r.figures()["norms_folded"] == 1
    pad = next(n for n in r.model.graph.node if n.op_type == "Pad")
    assert pad.input[0] == "image", "the channel Pad reads the float image, not a dequantized copy of it"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(r.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node]
    assert "BatchNormalization" not in ops and "QLinearAdd" in ops
    cos = [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(_run(r.model, images),
                                                                                 _run(_cnn(), images), strict=True)]
    assert min(cos) > 0.99


def test_a_weight_a_subgraph_also_reads_keeps_its_values():
    """An If branch reads the outer graph's tensors by name: scaling the weight would change what it reads."""
    model = _cnn()
    branch = helper.make_graph([helper.make_node("Identity", ["w"], ["seen"])], "branch", [],
                               [helper.make_tensor_value_info("seen", TensorProto.FLOAT, [4, 3, 3, 3])])
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(helper.make_node("If", ["cond"], ["w_seen"], then_branch=branch, else_branch=branch))
    model.graph.output.append(helper.make_tensor_value_info("w_seen", TensorProto.FLOAT, [4, 3, 3, 3]))
    onnx.checker.check_model(model)
    assert rewrite.scale_into_conv(model) == (model, 0)
