"""optimize and quantize: an .onnx input is security-scanned before anything is done with it, a bundle is opened
through the trust door, and the output is never the input."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT
OPSET = [helper.make_opsetid("", 18)]


def _vi(name, shape, dtype=F):
    return helper.make_tensor_value_info(name, dtype, shape)


def _model(nodes, inputs, outputs, initializers=(), opsets=OPSET):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=list(opsets))


def _relu():
    return _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", ["n", 4])], [_vi("y", ["n", 4])])


def custom_domain_op():
    return _model([helper.make_node("Backdoor", ["x"], ["y"], domain="evil.ops")], [_vi("x", ["n", 4])],
                  [_vi("y", ["n", 4])], opsets=[*OPSET, helper.make_opsetid("evil.ops", 1)])


def allocation_bomb():
    shape = numpy_helper.from_array(np.array([2**20, 2**20], np.int64), "shape")  # 4 TiB of zeros
    return _model([helper.make_node("ConstantOfShape", ["shape"], ["y"])], [_vi("x", ["n", 4])], [_vi("y", None)],
                  [shape])


def deep_if(depth: int = 20):
    def branch(name, op):
        return helper.make_graph([helper.make_node(op, ["x"], [f"{name}_out"])], name, [], [_vi(f"{name}_out", [4])])

    inner = branch("leaf", "Relu")
    for level in range(depth, 0, -1):
        node = helper.make_node("If", ["c"], [f"out{level}"], then_branch=inner,
                                else_branch=branch(f"else{level}", "Neg"))
        inner = helper.make_graph([node], f"level{level}", [], [_vi(f"out{level}", [4])])
    return _model([inner.node[0]], [_vi("c", [], TensorProto.BOOL), _vi("x", [4])], [_vi("out1", [4])])


def huge_metadata():
    m = _relu()
    helper.set_model_props(m, {"notes": "A" * (50 << 20)})
    return m


HOSTILE = {"custom-domain": (custom_domain_op, "high domain.node"),
           "allocation-bomb": (allocation_bomb, "high resources.allocation"),
           "deep-if": (deep_if, "high control-flow.depth"),
           "50MB-metadata": (huge_metadata, "metadata.size")}


@pytest.mark.parametrize("verb", ["optimize", "quantize"])
@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_onnx_input_is_refused_before_any_work(cli, expect_err, tmp_path, verb, case):
    make, worst = HOSTILE[case]
    model = tmp_path / "model.onnx"
    model.write_bytes(make().SerializeToString())
    out = tmp_path / "out.onnx"
    line = expect_err(cli(verb, model, "-o", out, timeout=300), 1, str(model), "at or above medium", worst)
    assert "refused" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_fail_on_sets_the_level_and_is_checked(cli, expect_err, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(huge_metadata().SerializeToString())  # a medium finding only
    r = cli("optimize", model, "-o", tmp_path / "out.onnx", "--fail-on", "high", timeout=300)
    assert r.code == 0, str(r)
    expect_err(cli("optimize", model, "-o", tmp_path / "o2.onnx", "--fail-on", "severe"), 2, "--fail-on", "'severe'")


def test_a_clean_onnx_input_is_processed(cli, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(_relu().SerializeToString())
    for verb in ("optimize", "quantize"):
        r = cli(verb, model, "-o", tmp_path / f"{verb}.onnx")
        assert r.code == 0 and (tmp_path / f"{verb}.onnx").is_file(), str(r)


def test_the_output_is_never_the_input(cli, expect_err, tmp_path, sklearn_bundle, copy_tree):
    model = tmp_path / "model.onnx"
    model.write_bytes(_relu().SerializeToString())
    expect_err(cli("optimize", model, "-o", model, "--overwrite"), 2, str(model), "is also an input")
    b = copy_tree(sklearn_bundle)
    before = sorted(p.name for p in b.iterdir())
    expect_err(cli("quantize", b, "-o", b, "--overwrite", "--allow-unsigned"), 2, str(b), "is also an input")
    expect_err(cli("quantize", b, "-o", b / "inner", "--allow-unsigned"), 2, "is inside the input")
    assert sorted(p.name for p in b.iterdir()) == before


def test_a_bundle_input_goes_through_the_trust_door(cli, expect_err, tmp_path, sklearn_bundle):
    expect_err(cli("optimize", sklearn_bundle, "-o", tmp_path / "o"), 1, "unsigned", "--allow-unsigned")
    assert not (tmp_path / "o").exists()
    r = cli("optimize", sklearn_bundle, "-o", tmp_path / "o", "--allow-unsigned")
    assert r.code == 0 and "accuracy gate vs the source framework: PASSED" in r.out, str(r)


def test_a_sealed_bundle_never_becomes_a_plaintext_variant(cli, expect_err, tmp_path, sklearn_bundle, copy_tree):
    from onnxguard.trust import keys, sealing

    k = keys.generate(tmp_path / "keys")
    sealed = copy_tree(sklearn_bundle)
    sealing.seal(sealed, [k.recipient])
    expect_err(cli("quantize", sealed, "-o", tmp_path / "q", "--allow-unsigned", "--identity", k.age_identity), 2,
               "sealed", "plaintext")
    assert not (tmp_path / "q").exists()


def test_fail_on_is_the_doors_level_for_a_bundle(cli, expect_err, tmp_path, sklearn_bundle, copy_tree):
    """A bundle whose model has a medium finding only: refused at the default level, kept under --fail-on high
    (optimize and quantize share the opening; quantize cannot quantize this scikit-learn graph)."""
    verb = "optimize"
    import json

    import onnx

    from onnxguard.bundle import MANIFEST, digest

    b = copy_tree(sklearn_bundle)
    model = onnx.load(b / "model.onnx")
    helper.set_model_props(model, {"notes": "A" * (100 << 10)})  # over the 64 KiB of metadata.size: medium
    onnx.save(model, b / "model.onnx")
    m = json.loads((b / MANIFEST).read_text())  # a self-consistent unsigned bundle: only the scan can refuse it
    entry = {"sha256": digest.file(b / "model.onnx"), "size": (b / "model.onnx").stat().st_size}
    m["files"]["model.onnx"] = entry
    m["model"].update(entry)
    (b / MANIFEST).write_text(json.dumps(m))
    expect_err(cli(verb, b, "-o", tmp_path / "v1", "--allow-unsigned", timeout=300), 1, "metadata.size")
    assert not (tmp_path / "v1").exists()
    r = cli(verb, b, "-o", tmp_path / "v2", "--allow-unsigned", "--fail-on", "high", timeout=300)
    assert r.code == 0 and (tmp_path / "v2" / "model.onnx").is_file(), str(r)
