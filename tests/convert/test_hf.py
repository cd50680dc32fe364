"""Hugging Face Transformers sources, and THE padding case: random-weight DistilBERT and BERT, a batch of 8 real
texts of 3 to 128 tokens padded to the longest, right and left: ONNX must match the source sequence by sequence."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from onnxguard import bundle

ATOL = 1e-4


@pytest.fixture(scope="module", params=["distilbert", "bert"])
def padded_build(request, hf_model, texts_file, tmp_path_factory, cli):
    """``onnxguard build DIR -o BUNDLE --texts texts.txt --max-length 128`` for one architecture."""
    arch = request.param
    src = hf_model(arch, "text-classification")
    out = tmp_path_factory.mktemp(f"{arch}-bundle") / "bundle"
    r = cli("build", src, "-o", out, "--texts", texts_file, "--max-length", "128")
    assert r.code == 0, str(r)
    return arch, src, out


def _texts(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _encode(tokenizer, texts: list[str], side: str) -> dict[str, np.ndarray]:
    tokenizer.padding_side = side
    enc = tokenizer(texts, padding=True, return_tensors="np")
    return {k: v.astype(np.int64) for k, v in enc.items()}


def test_build_records_a_padded_golden_set(padded_build, text_lengths):
    arch, src, out = padded_build
    b = bundle.read(out)
    m = b.manifest
    assert m.source.framework == "transformers" and m.source.task == "text-classification"
    assert m.source.architecture == {"model_type": arch, "num_heads": 2, "hidden_size": 64}
    assert m.labels == ["LABEL_0", "LABEL_1", "LABEL_2"]
    assert m.golden.origin == "texts" and m.golden.items == 16 and m.golden.batches == 2
    assert m.preprocessing["kind"] == "tokenizer" and m.preprocessing["max_length"] == 128
    assert "tokenizer/tokenizer.json" in m.files and "tokenizer/tokenizer_config.json" in m.files
    logits = next(o for o in m.parity.outputs if o.name == "logits")
    assert m.parity.passed and logits.max_abs < ATOL and logits.label_agreement == 1.0

    golden = b.golden()
    right, left = golden.inputs
    for batch, side in ((right, "right"), (left, "left")):
        mask = batch["attention_mask"]
        assert mask.shape == (8, 128)
        assert sorted(mask.sum(1).tolist()) == text_lengths  # 3 to 128 tokens, [CLS] and [SEP] included
        for row in mask:  # contiguous ones on the padding's other side
            n = int(row.sum())
            expected = np.r_[np.ones(n), np.zeros(128 - n)] if side == "right" else np.r_[np.zeros(128 - n), np.ones(n)]
            np.testing.assert_array_equal(row, expected)
    # the reference outputs are the SOURCE's, and the model reproduces them
    (ref,) = (golden.references[1]["logits"],)
    onnx_logits = _session(b.model_path).run(["logits"], left)[0]
    assert np.abs(onnx_logits - ref).max() < ATOL


def test_padded_batches_match_the_source_sequence_by_sequence(padded_build, texts_file, text_lengths):
    """Directly, without onnxguard's own comparison: the bundle's tokenizer and model against transformers."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    arch, src, out = padded_build
    texts = _texts(texts_file)
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")  # the one shipped in the bundle
    source = AutoModelForSequenceClassification.from_pretrained(src).eval()  # transformers' default attention
    sess = _session(out / "model.onnx")
    names = [i.name for i in sess.get_inputs()]
    assert set(names) <= {"input_ids", "attention_mask", "token_type_ids"} and "attention_mask" in names
    for i in sess.get_inputs():  # symbolic batch and sequence axes
        assert len(i.shape) == 2 and all(isinstance(d, str) for d in i.shape), (i.name, i.shape)

    alone = []
    with torch.inference_mode():
        for t in texts:  # each text on its own, no padding at all
            enc = tokenizer([t], return_tensors="pt")
            alone.append(source(**enc).logits[0].numpy())
    for side in ("right", "left"):
        enc = _encode(tokenizer, texts, side)
        assert enc["input_ids"].shape == (8, 128)
        assert enc["attention_mask"].sum(1).tolist() == text_lengths
        onnx_logits = sess.run(["logits"], {n: enc[n] for n in names})[0]
        with torch.inference_mode():
            ref = source(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
        per_sequence = np.abs(onnx_logits - ref).max(axis=1)
        assert (per_sequence < ATOL).all(), (side, per_sequence)
        if side == "right":
            # padding on the right changes nothing for the real tokens: padded == unpadded, row by row
            diff = np.abs(onnx_logits - np.stack(alone)).max(axis=1)
            assert (diff < ATOL).all(), diff


def test_parity_command_with_texts(padded_build, texts_file, cli):
    arch, src, out = padded_build
    r = cli("parity", src, out / "model.onnx", "--texts", texts_file, "--max-length", "128", "--json")
    assert r.code == 0, str(r)
    report = json.loads(r.out)
    assert report["passed"] is True and report["items"] == 16 and report["batches"] == 2
    (logits,) = report["outputs"]
    assert logits["name"] == "logits" and logits["max_abs"] < ATOL and logits["label_agreement"] == 1.0


@pytest.mark.parametrize(("arch", "pooling"), [("distilbert", "mean"), ("bert", "cls")])
def test_feature_extraction_with_pooling(arch, pooling, hf_model, texts_file, cli, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    src = hf_model(arch, "feature-extraction")
    out = tmp_path / "embed.onnx"
    r = cli("convert", src, "-o", out, "--pooling", pooling)  # the task comes from the config
    assert r.code == 0, str(r)
    sess = _session(out)
    assert [o.name for o in sess.get_outputs()] == ["embeddings"]
    assert sess.get_outputs()[0].shape[1] == 64 and isinstance(sess.get_outputs()[0].shape[0], str)
    tokenizer = AutoTokenizer.from_pretrained(src)
    source = AutoModel.from_pretrained(src).eval()
    names = [i.name for i in sess.get_inputs()]
    for side in ("right", "left"):
        enc = _encode(tokenizer, _texts(texts_file), side)
        (emb,) = sess.run(None, {n: enc[n] for n in names})
        with torch.inference_mode():
            hidden = source(**{k: torch.from_numpy(v) for k, v in enc.items()}).last_hidden_state.numpy()
        mask = enc["attention_mask"][..., None].astype(np.float32)
        ref = hidden[:, 0] if pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1)
        assert emb.shape == (8, 64)
        assert (np.abs(emb - ref).max(axis=1) < ATOL).all(), side


def test_task_flag_overrides_the_config(hf_model, cli, tmp_path):
    out = tmp_path / "embed.onnx"
    r = cli("convert", hf_model("distilbert", "text-classification"), "-o", out, "--task", "feature-extraction")
    assert r.code == 0, str(r)
    assert [o.name for o in _session(out).get_outputs()] == ["embeddings"]


def test_default_golden_set_holds_what_breaks_variants(hf_model):
    """Without --texts: right- and left-padded batches spread from 3 to max length, one token, the longest."""
    from onnxguard import convert
    from onnxguard.convert import ConvertOptions

    src = convert.load(str(hf_model("bert", "text-classification")), ConvertOptions(max_length=96))
    assert src.max_length == 96
    batches = src.golden_inputs()
    masks = [b["attention_mask"] for b in batches]
    lengths = [sorted(m.sum(1).tolist()) for m in masks]
    assert lengths[0][0] == 3 and lengths[0][-1] == 96 and len(lengths[0]) == 8
    assert (masks[0][:, 0] == 1).all() and (masks[0][:, -1] == 0).any()  # right padded
    assert (masks[1][:, -1] == 1).all() and (masks[1][:, 0] == 0).any()  # left padded
    single = len(src.prefix) + 1 + len(src.suffix)  # one token between [CLS] and [SEP]
    assert any(m.shape == (1, single) and m.all() for m in masks)
    assert any(m.shape == (1, 96) and m.all() for m in masks)  # the longest allowed sequence
    for b in batches:
        assert set(b) == set(src.input_names) and all(v.dtype == np.int64 for v in b.values())
        assert b["input_ids"].max() < src.vocab_size
    ref = src.run(batches[0])
    assert ref["logits"].shape == (8, 3)


@pytest.mark.slow
def test_distilbert_base_bundle(tmp_path, cli, texts_file, text_lengths):
    """The issue's "done when": a DistilBERT-base directory (random weights) built into a bundle whose parity on
    padded batches is within 1e-4, and whose inspect --json shows every field."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from onnxguard.examples.text import save_random_model

    src = save_random_model(tmp_path / "distilbert-base", "distilbert", "base")
    out = tmp_path / "bundle"
    # --optimize none: the conversion and its parity are what this test is for; timing graph optimizations of a
    # base-size model (tiny ones: tests/speed) took a minute of its two and a half.
    r = cli("build", src, "-o", out, "--max-length", "128", "--optimize", "none")
    assert r.code == 0, str(r)
    m = bundle.read(out).manifest
    logits = next(o for o in m.parity.outputs if o.name == "logits")
    assert m.parity.passed and logits.max_abs < ATOL and logits.label_agreement == 1.0
    assert m.source.architecture == {"model_type": "distilbert", "num_heads": 12, "hidden_size": 768}
    masks = [b["attention_mask"] for b in bundle.read(out).golden().inputs]
    assert any(mk.shape[1] == 128 and (mk[:, 0] == 0).any() for mk in masks)  # left padding up to 128 tokens
    assert any(mk.shape[1] == 128 and (mk[:, -1] == 0).any() for mk in masks)  # right padding

    r = cli("inspect", out, "--json")
    assert r.code == 0, str(r)
    info = json.loads(r.out)
    assert info["opset"]["ai.onnx"] >= 17 and info["ir_version"] >= 8 and info["producer"]
    assert {i["name"] for i in info["inputs"]} >= {"input_ids", "attention_mask"}
    assert all(len(i["shape"]) == 2 and all(isinstance(d, str) for d in i["shape"]) for i in info["inputs"])
    assert info["outputs"][0]["name"] == "logits" and info["outputs"][0]["shape"][1] == 2
    assert sum(sum(ops.values()) for ops in info["op_histogram"].values()) == info["node_count"] > 0
    assert info["parameter_count"] > 60_000_000 and info["file_size"] > 200_000_000
    assert info["bundle"]["task"] == "text-classification" and "tokenizer/tokenizer.json" in info["bundle"]["files"]
    assert info["external_data"] == [] and isinstance(info["metadata"], dict)

    # and directly: real texts padded right and left through the shipped model and tokenizer
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    source = AutoModelForSequenceClassification.from_pretrained(src).eval()
    sess = _session(out / "model.onnx")
    names = [i.name for i in sess.get_inputs()]
    for side in ("right", "left"):
        enc = _encode(tokenizer, _texts(texts_file), side)
        assert enc["attention_mask"].sum(1).tolist() == text_lengths
        onnx_logits = sess.run(["logits"], {n: enc[n] for n in names})[0]
        with torch.inference_mode():
            ref = source(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
        assert (np.abs(onnx_logits - ref).max(axis=1) < ATOL).all(), side
