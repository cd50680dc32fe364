"""ONNX's C++ passes (file.checker, file.shape-inference) are handed the bytes the model was parsed from, not a
re-serialization of the parsed model (one more copy of every weight while they run), and that changes no verdict:
the same outcome on every corpus model, on re-encoded variants of a model, and the same scan report."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from scan_corpus import CLEAN, UNSAFE, Case, relu_model, scan_any
from scan_support import ORDINARY

from onnxguard import scan
from onnxguard.scan import interface, policy
from onnxguard.scan.checks import file


def _recording(monkeypatch) -> list[tuple[str, object]]:
    """Record what onnx.checker.check_model and onnx.shape_inference.infer_shapes are called with."""
    calls: list[tuple[str, object]] = []
    real_check, real_infer = onnx.checker.check_model, onnx.shape_inference.infer_shapes

    def check_model(model, *args, **kwargs):
        calls.append(("check_model", model))
        return real_check(model, *args, **kwargs)

    def infer_shapes(model, *args, **kwargs):
        calls.append(("infer_shapes", model))
        return real_infer(model, *args, **kwargs)

    monkeypatch.setattr(onnx.checker, "check_model", check_model)
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", infer_shapes)
    return calls


def test_checker_and_shape_inference_get_the_scanned_bytes_themselves(monkeypatch):
    data = relu_model().SerializeToString()
    calls = _recording(monkeypatch)
    report = scan.scan_bytes(data, "model.onnx")
    assert [name for name, _ in calls] == ["check_model", "infer_shapes"], report.findings
    assert all(arg is data for _, arg in calls), [type(arg) for _, arg in calls]


def test_a_file_scan_hands_them_bytes_too(monkeypatch, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(relu_model().SerializeToString())
    calls = _recording(monkeypatch)
    scan.scan(path)
    assert [name for name, _ in calls] == ["check_model", "infer_shapes"]
    assert all(isinstance(arg, bytes) and arg == path.read_bytes() for _, arg in calls)


def test_a_context_without_the_bytes_falls_back_to_serializing_the_model():
    model = relu_model()
    ctx = interface.ScanContext(policy.for_profile("default"), None, "m", model=model)
    assert ctx.serialized == model.SerializeToString()
    with pytest.raises(ValueError, match="no parsed model"):
        _ = interface.ScanContext(policy.for_profile("default"), None, "m").serialized


def _outcome(run) -> str:
    try:
        run()
    except Exception as e:  # noqa: BLE001 -- the outcome compared is whatever onnx raises, of any type
        return f"{type(e).__name__}: {e}"
    return "ok"


def _passes(target) -> list[str]:
    return [_outcome(lambda: onnx.checker.check_model(target))] + [
        _outcome(lambda prop=prop: onnx.shape_inference.infer_shapes(target, check_type=True, strict_mode=True,
                                                                      data_prop=prop))
        for prop in (False, True)]


def _corpus_files(tmp_path: Path) -> list[tuple[str, bytes]]:
    """Every corpus file (unsafe and clean) that parses as a model, as its bytes."""
    found = []
    for name, build in [(c.name, c.build) for c in UNSAFE] + CLEAN:
        if name in {"many-small-ifs", "too-many-nodes", "tiny-messages-bomb", "concat-doubling-bomb",
                    "function-nesting-doubling"}:
            continue  # built to stall onnx's passes: the scan never runs them on these (scan.budget)
        (tmp_path / name).mkdir()
        target = build(tmp_path / name)
        if target.is_dir() or target.stat().st_size > 1 << 20:
            continue
        data = target.read_bytes()
        m = onnx.ModelProto()
        try:
            m.ParseFromString(data)
        except Exception:  # noqa: BLE001,S112 -- not a model: the file checks report it, onnx's passes never run
            continue
        if m.HasField("graph") and m.ir_version:
            found.append((name, data))
    return found


def test_onnx_passes_judge_the_bytes_as_they_judge_the_reserialized_model(tmp_path):
    files = _corpus_files(tmp_path)
    assert len(files) > 30, [name for name, _ in files]
    assert any("ok" not in _passes(data) for _, data in files), "the corpus no longer exercises a failing pass"
    for name, data in files:
        reserialized = onnx.load_from_string(data).SerializeToString()
        assert _passes(data) == _passes(reserialized), name


def _reencoded() -> list[tuple[str, bytes]]:
    """Encodings of a model that a parser merges or keeps: the same bytes re-serialized differ from them."""
    good = relu_model().SerializeToString()
    bad = helper.make_model(helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g",
                                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
                                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])]),
                            opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    unknown = b"\xf8\x07\x2a"  # field 127, varint 42: unknown to onnx.proto
    overlong_ir = b"\x08" + b"\x88\x80\x80\x80\x00"  # ir_version 8 as a 5-byte varint
    return [("concatenated (merged graphs)", good + bad), ("concatenated other way", bad + good),
            ("unknown field first", unknown + good), ("overlong varint", good + overlong_ir),
            ("ir_version 3 last", good + b"\x08\x03")]


@pytest.mark.parametrize("name, data", _reencoded(), ids=[n for n, _ in _reencoded()])
def test_reencoded_models_are_judged_alike(name, data):
    reserialized = onnx.load_from_string(data).SerializeToString()
    assert reserialized != data
    assert _passes(data) == _passes(reserialized)


def _report_reserializing(monkeypatch, target: Path, case_policy) -> dict:
    """The scan report as before: the C++ passes handed a re-serialization of the parsed model."""
    with monkeypatch.context() as m:
        m.setattr(interface.ScanContext, "serialized", property(lambda self: self.parsed.SerializeToString()))
        return scan_any(target, case_policy).to_dict()


REPORTED_ALIKE = {"shape-derived-bomb", "resize-bomb", "initializer-dims-mismatch", "ext-past-end",
                  "function-recursion", "deep-if", "custom-domain-node", "tree-loop"}


@pytest.mark.parametrize("case", [c for c in UNSAFE if c.check.startswith("file.") or c.name in REPORTED_ALIKE],
                         ids=lambda c: c.name)
def test_scan_report_is_the_same_as_when_the_model_was_reserialized(case: Case, tmp_path, monkeypatch):
    case_policy = dataclasses.replace(policy.for_profile(case.profile), **case.policy)
    target = case.build(tmp_path)
    assert scan_any(target, case_policy).to_dict() == _report_reserializing(monkeypatch, target, case_policy)


# --- strict shape inference on a light copy (file.WEIGHT_ONLY_INPUTS) -----------------------------------------

W = 512  # a 512 x 512 float32 weight: 1 MiB of values, file.LIGHT_MIN_BYTES


def _weighted(op: str = "MatMul", weight=None, opset: int = 18, x_shape=(2, W), extra_nodes=(), extra_inits=(),
              inputs=(), outputs=None) -> onnx.ModelProto:
    """x @ w (or Gather(w, i), Gemm(x, w)) with a large float weight ``w``."""
    w = weight if weight is not None else numpy_helper.from_array(np.ones((W, W), np.float32), "w")
    if op == "Gather":
        node = helper.make_node("Gather", ["w", "i"], ["y"])
        graph_inputs = [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, [3])]
    else:
        node = helper.make_node(op, ["x", "w"], ["y"])
        graph_inputs = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x_shape))]
    rows = 3 if op == "Gather" else x_shape[0]
    outs = outputs or [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [rows, W])]
    graph = helper.make_graph([node, *extra_nodes], "g", [*graph_inputs, *inputs], outs, [w, *extra_inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _shape_findings(data: bytes, light: bool, monkeypatch) -> list[dict]:
    with monkeypatch.context() as m:
        if not light:
            m.setattr(file, "without_weights", lambda model: None)
        report = scan.scan_bytes(data, "model.onnx", checks=(file.ShapeInference(),))
    return [f.to_dict() for f in report.findings]


def test_shape_inference_gets_a_light_copy_and_nothing_else_when_it_passes(monkeypatch):
    data = _weighted().SerializeToString()
    calls = _recording(monkeypatch)
    report = scan.scan_bytes(data, "model.onnx")
    assert report.findings == ()
    (name, arg), = [c for c in calls if c[0] == "infer_shapes"]
    assert isinstance(arg, bytes) and len(arg) < len(data) - W * W * 4 + 1024, len(arg)
    assert [c for c in calls if c[0] == "check_model"][0][1] is data  # the checker still reads every value


def test_when_the_light_copy_fails_the_model_itself_is_inferred_and_reported(monkeypatch):
    data = _weighted(x_shape=(2, W - 1)).SerializeToString()  # inner dims differ: inference fails
    calls = _recording(monkeypatch)
    report = scan.scan_bytes(data, "model.onnx", checks=(file.ShapeInference(),))
    args = [arg for name, arg in calls if name == "infer_shapes"]
    assert len(args) == 2 and len(args[0]) < len(data) and args[1] is data
    assert [f.check for f in report.findings] == ["file.shape-inference"]
    assert "MatMul" in report.findings[0].message
    assert _shape_findings(data, True, monkeypatch) == _shape_findings(data, False, monkeypatch)


def _malformed() -> list[tuple[str, onnx.ModelProto]]:
    """Weights a light copy might judge otherwise than the model: each must be reported alike."""
    def weight(array=None, **changes) -> onnx.TensorProto:
        t = numpy_helper.from_array(np.ones((W, W), np.float32) if array is None else array, "w")
        for k, v in changes.items():
            setattr(t, k, v)
        return t

    short = weight(raw_data=b"\0" * (W * W * 4 - 4))
    wrong_type = weight(data_type=onnx.TensorProto.INT64)
    f16 = weight(np.ones((W, W), np.float16))
    reshape = helper.make_node("Reshape", ["x", "w"], ["z"])  # the weight read as a shape: never left out
    sub_if = helper.make_node("If", ["c"], ["z"], then_branch=helper.make_graph(
        [helper.make_node("Identity", ["w"], ["t"])], "then", [], [helper.make_tensor_value_info("t", 1, None)]),
        else_branch=helper.make_graph([helper.make_node("Identity", ["w"], ["e"])], "else", [],
                                      [helper.make_tensor_value_info("e", 1, None)]))
    cond = helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])
    out_z = [helper.make_tensor_value_info("y", 1, None), helper.make_tensor_value_info("z", 1, None)]
    cases = [
        ("raw_data one element short", _weighted(weight=short)),
        ("raw_data one element short, Gather", _weighted("Gather", weight=short)),
        ("raw_data one element short, Gemm", _weighted("Gemm", weight=short)),
        ("int64 type with float bytes", _weighted(weight=wrong_type)),
        ("float16 weight, float input", _weighted(weight=f16)),
        ("also a graph input of another shape", _weighted(inputs=[helper.make_tensor_value_info("w", 1, [3, 3])])),
        ("also a graph input of another type", _weighted(inputs=[helper.make_tensor_value_info("w", 7, [W, W])])),
        ("also a graph output declared otherwise", _weighted(outputs=[helper.make_tensor_value_info("y", 1, None),
                                                                       helper.make_tensor_value_info("w", 1, [2])])),
        ("also read as Reshape's shape", _weighted(extra_nodes=[reshape], outputs=out_z)),
        ("also read in a subgraph", _weighted(extra_nodes=[sub_if], inputs=[cond], outputs=out_z)),
        ("named twice", _weighted(extra_inits=[numpy_helper.from_array(np.ones((3,), np.int64), "w")])),
        ("output of a node too", _weighted(extra_nodes=[helper.make_node("Relu", ["x"], ["w"])])),
        ("inner dims differ", _weighted(x_shape=(2, 3))),
        ("Gemm dims differ", _weighted("Gemm", x_shape=(2, 3))),
    ]
    cases += [(f"opset {v} {op}", _weighted(op, opset=v)) for v in (1, 6, 7, 9, 11, 13, 21, 23)
              for op in ("MatMul", "Gemm", "Gather")]
    cases += [(f"opset {v} {op} dims differ", _weighted(op, opset=v, x_shape=(2, 7))) for v in (7, 13, 23)
              for op in ("MatMul", "Gemm")]
    return cases


@pytest.mark.parametrize("name, model", _malformed(), ids=[n for n, _ in _malformed()])
def test_the_light_copy_changes_no_shape_inference_finding(name, model, monkeypatch):
    data = model.SerializeToString()
    assert _shape_findings(data, True, monkeypatch) == _shape_findings(data, False, monkeypatch)


def test_the_malformed_weights_exercise_both_outcomes_and_the_light_copy(monkeypatch):
    made = [file.without_weights(model) is not None for _, model in _malformed()]
    assert sum(made) >= 20 and not all(made), made
    found = [bool(_shape_findings(model.SerializeToString(), True, monkeypatch)) for _, model in _malformed()]
    assert any(found) and not all(found), found


@pytest.mark.parametrize("case", [c for c in UNSAFE if c.check.startswith("file.") or c.name in REPORTED_ALIKE],
                         ids=lambda c: c.name)
def test_a_light_copy_of_every_size_reports_the_corpus_alike(case: Case, tmp_path, monkeypatch):
    """With no size floor, every corpus weight at a weight-only input is left out of the light copy."""
    case_policy = dataclasses.replace(policy.for_profile(case.profile), **case.policy)
    target = case.build(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(file, "LIGHT_MIN_BYTES", 0)
        light = scan_any(target, case_policy).to_dict()
    with monkeypatch.context() as m:
        m.setattr(file, "without_weights", lambda model: None)
        full = scan_any(target, case_policy).to_dict()
    assert light == full


@pytest.mark.parametrize("fixture", ORDINARY)
def test_a_light_copy_of_every_size_reports_ordinary_models_alike(fixture, request, monkeypatch):
    """Real exports (torch, transformers, optimized, quantized, scikit-learn): with no size floor, the light copy
    is made, and judged as the model itself."""
    path: Path = request.getfixturevalue(fixture)
    made: list[bool] = []
    real = file.without_weights

    def recording(model):
        light = real(model)
        made.append(light is not None)
        return light

    with monkeypatch.context() as m:
        m.setattr(file, "LIGHT_MIN_BYTES", 0)
        m.setattr(file, "without_weights", recording)
        light = scan_any(path).to_dict()
    if fixture in {"torch_cnn", "hf_onnx", "hf_optimized"}:
        assert made == [True]
    with monkeypatch.context() as m:
        m.setattr(file, "without_weights", lambda model: None)
        full = scan_any(path).to_dict()
    assert light == full
