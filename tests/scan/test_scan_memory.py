"""ONNX's C++ passes (file.checker, file.shape-inference) are handed the bytes the model was parsed from, not a
re-serialization of the parsed model (one more copy of every weight while they run), and that changes no verdict:
the same outcome on every corpus model, on re-encoded variants of a model, and the same scan report."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
import pytest
from onnx import helper
from scan_corpus import CLEAN, UNSAFE, Case, relu_model, scan_any

from onnxguard import scan
from onnxguard.scan import interface, policy


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
