"""Block-wise INT8 (``quantize`` mode ``blockwise``: ONNX Runtime's MatMulNBits with 8-bit weights and int8
activations per block of K), and the build's ``-int8-blockwise`` candidate."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import cli_runner
from onnxguard import build, bundle
from onnxguard.accuracy.parity import Tolerance
from onnxguard.build import BuildOptions
from onnxguard.convert import ConvertOptions
from onnxguard.errors import ModelError
from onnxguard.model import onnxfile
from onnxguard.speed import quantize
from onnxguard.speed.select import Candidate


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _run(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feed.items() if k in names})[0]


def _feed(model: onnx.ModelProto, batch: int = 3, seq: int = 16) -> dict:
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 40, size=(batch, seq), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, seq // 2:] = 0  # a padded row
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def test_blockwise_makes_8_bit_matmulnbits_close_to_fp32(tiny_text_onnx):
    model = onnxfile.load(tiny_text_onnx)
    r = quantize.quantize(model, quantize.QuantizeOptions(mode="blockwise", block_size=32))
    nbits = [n for n in r.model.graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all(n.domain == "com.microsoft" for n in nbits)
    attrs = _attrs(nbits[0])
    assert (attrs["bits"], attrs["block_size"], attrs["accuracy_level"]) == (8, 32, 4)
    assert not any(n.op_type == "MatMul" and n.input[1] in {i.name for i in r.model.graph.initializer}
                   for n in r.model.graph.node), "every MatMul with a constant weight is block-wise"
    feed = _feed(model)
    ref, out = _run(model, feed), _run(r.model, feed)
    assert np.abs(out - ref).max() < 0.05 * max(1.0, float(np.abs(ref).max()))
    s = r.options.settings()
    assert s["mode"] == "blockwise" and s["weight_bits"] == 8 and s["block_size"] == 32 and s["symmetric"]
    assert s["accuracy_level"] == 4 and "per block" in s["activations"] and s["why"]


def test_blockwise_leaves_excluded_nodes_in_fp32(tiny_text_onnx):
    model = onnxfile.load(tiny_text_onnx)
    weighted = {i.name for i in model.graph.initializer}
    first = next(n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weighted)
    r = quantize.quantize(model, quantize.QuantizeOptions(mode="blockwise", exclude=(first,)))
    assert first in {n.name for n in r.model.graph.node if n.op_type == "MatMul"}
    assert r.options.settings()["fp32_nodes"] == [first]


@pytest.mark.parametrize("block", [8, 48])
def test_blockwise_refuses_a_block_matmulnbits_cannot_take(tiny_text_onnx, block):
    with pytest.raises(ModelError, match="power of two >= 16"):
        quantize.quantize(onnxfile.load(tiny_text_onnx), quantize.QuantizeOptions(mode="blockwise", block_size=block))


def test_build_auto_makes_a_blockwise_candidate_only_when_plain_int8_fails(tiny_text_dir, tmp_path):
    # A gate every INT8 variant of the tiny model passes: plain INT8 passes, the block-wise alternative (slower at
    # every batch of sentences) is not made.
    lenient = Tolerance(atol=1.0, rtol=0.1, min_cosine=0.9, min_label_agreement=0.5)
    options = BuildOptions(convert=ConvertOptions(max_length=32), optimize="none", quantize="auto", gate=lenient,
                           bench_batch=2, bench_threads=1)
    by_name = {c.name: c for c in build.build(str(tiny_text_dir), tmp_path / "a", options).selection.candidates}
    assert by_name["fp32-int8-dynamic"].gate.passed
    assert by_name["fp32-int8-blockwise"].error.endswith("not needed: fp32-int8-dynamic passed the gate")


def test_the_blockwise_candidate_is_made_once_plain_int8_failed(tiny_text_onnx):
    made: list[str] = []
    base = Candidate("fp32", onnxfile.load(tiny_text_onnx))
    options = quantize.QuantizeOptions(mode="blockwise", block_size=32)
    plain = Candidate("fp32-int8-dynamic", gate=SimpleNamespace(passed=True))  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="not needed: fp32-int8-dynamic passed the gate"):
        build._alternative(plain, base, options)
    plain.gate = SimpleNamespace(passed=False)  # type: ignore[assignment]
    made.append(build._alternative(plain, base, options)[1].settings["mode"])
    assert made == ["blockwise"]


def test_build_quantize_blockwise_records_the_choice_and_verifies(tiny_text_dir, tmp_path):
    out = tmp_path / "b"
    r = cli_runner.run("build", str(tiny_text_dir), "-o", str(out), "--max-length", "32", "--optimize", "none",
                "--quantize", "blockwise", "--batch-size", "2", "--threads", "1")
    assert r.code == 0, r
    manifest = json.loads((out / "manifest.json").read_text())
    step = next(s for s in manifest["steps"] if s["name"] == "quantize")
    assert step["settings"]["mode"] == "blockwise"
    assert (step["settings"]["weight_bits"], step["settings"]["block_size"]) == (8, quantize.BLOCKWISE_BLOCK)
    assert step["settings"]["accuracy_level"] == 4 and step["settings"]["why"]
    assert any(n.op_type == "MatMulNBits" for n in onnx.load(out / "model.onnx").graph.node)
    assert bundle.read(out).manifest is not None
    v = cli_runner.run("verify", str(out), "--allow-unsigned")
    assert v.code == 0, v
