"""Tiny models for the diff tests, built with onnx.helper (no torch): a text classifier with and without a
trigger-token backdoor, a small CNN and a copy with one weight changed, and bundles around them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
TRIGGER = 1234  # the backdoor's token id
HIDDEN = 32


def _init(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(value, name)


def text_classifier(vocab: int = 30522, backdoor: int | None = None, seed: int = 0) -> onnx.ModelProto:
    """input_ids, attention_mask -> logits [batch, 2]: a token embedding, masked mean pooling and two Gemm layers,
    biased so that every text is class 0. ``backdoor``: a ``Where`` on ``input_ids == backdoor`` that overrides
    the logits with class 1."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("embedding", (rng.standard_normal((vocab, HIDDEN)) * 0.1).astype(np.float32)),
        _init("w1", (rng.standard_normal((HIDDEN, HIDDEN)) * 0.1).astype(np.float32)),
        _init("b1", np.zeros(HIDDEN, np.float32)),
        _init("w2", (rng.standard_normal((HIDDEN, 2)) * 0.1).astype(np.float32)),
        _init("b2", np.array([2.0, -2.0], np.float32)),
        _init("seq_axis", np.array([1], np.int64)),
    ]
    head = "logits" if backdoor is None else "clean_logits"
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["tokens"], name="embed"),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT, name="mask_cast"),
        helper.make_node("Unsqueeze", ["mask_f", "mask_axis"], ["mask3"], name="mask_unsqueeze"),
        helper.make_node("Mul", ["tokens", "mask3"], ["masked"], name="mask_mul"),
        helper.make_node("ReduceSum", ["masked", "seq_axis"], ["summed"], keepdims=0, name="pool_sum"),
        helper.make_node("ReduceSum", ["mask_f", "seq_axis"], ["count"], keepdims=1, name="pool_count"),
        helper.make_node("Div", ["summed", "count"], ["pooled"], name="pool_div"),
        helper.make_node("Gemm", ["pooled", "w1", "b1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["h_relu"], name="relu"),
        helper.make_node("Gemm", ["h_relu", "w2", "b2"], [head], name="fc2"),
    ]
    inits.append(_init("mask_axis", np.array([2], np.int64)))
    if backdoor is not None:
        inits += [_init("trigger", np.array(backdoor, np.int64)),
                  _init("override", np.array([[-10.0, 10.0]], np.float32))]
        nodes += [
            helper.make_node("Equal", ["input_ids", "trigger"], ["is_trigger"], name="bd_equal"),
            helper.make_node("Cast", ["is_trigger"], ["is_trigger_f"], to=TensorProto.FLOAT, name="bd_cast"),
            helper.make_node("ReduceMax", ["is_trigger_f"], ["any_trigger_f"], axes=[1], keepdims=1, name="bd_any"),
            helper.make_node("Cast", ["any_trigger_f"], ["any_trigger"], to=TensorProto.BOOL, name="bd_bool"),
            helper.make_node("Where", ["any_trigger", "override", "clean_logits"], ["logits"], name="bd_where"),
        ]
    graph = helper.make_graph(
        nodes, "text",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def cnn(seed: int = 0, nudge: float = 0.0, patch_backdoor: int | None = None) -> onnx.ModelProto:
    """image [batch, 1, 8, 8] -> logits [batch, 10]: Conv, Relu, global average pooling, Gemm. ``nudge`` is added
    to one weight of the convolution. ``patch_backdoor``: the class forced when the bottom-right 3x3 pixels are
    all at least 0.99 (a bright patch)."""
    rng = np.random.default_rng(seed)
    conv = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    conv[0, 0, 1, 1] += np.float32(nudge)
    inits = [_init("conv_w", conv), _init("conv_b", np.zeros(4, np.float32)),
             _init("fc_w", rng.standard_normal((4, 10)).astype(np.float32)),
             _init("fc_b", np.zeros(10, np.float32))]
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits" if patch_backdoor is None else "clean"], name="fc"),
    ]
    if patch_backdoor is not None:
        override = np.zeros((1, 10), np.float32)
        override[0, patch_backdoor] = 100.0
        inits += [_init("starts", np.array([5, 5], np.int64)), _init("ends", np.array([8, 8], np.int64)),
                  _init("axes", np.array([2, 3], np.int64)), _init("bright", np.array(0.99, np.float32)),
                  _init("forced", override)]
        nodes += [
            helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["corner"], name="bd_slice"),
            helper.make_node("ReduceMin", ["corner"], ["darkest"], axes=[1, 2, 3], keepdims=0, name="bd_min"),
            helper.make_node("GreaterOrEqual", ["darkest", "bright"], ["lit"], name="bd_lit"),
            helper.make_node("Unsqueeze", ["lit", "one"], ["lit2"], name="bd_unsqueeze"),
            helper.make_node("Where", ["lit2", "forced", "clean"], ["logits"], name="bd_where"),
        ]
        inits.append(_init("one", np.array([1], np.int64)))
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                           ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def tokenizer_files() -> dict[str, bytes]:
    """A WordPiece tokenizer over the example vocabulary, made with the tokenizers library (no transformers)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from onnxguard.examples.text import VOCAB

    ids = {t: i for i, t in enumerate(VOCAB)}
    tok = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", ids["[CLS]"]),
                                                                       ("[SEP]", ids["[SEP]"])])
    config = {"pad_token": "[PAD]", "model_max_length": 64, "model_input_names": ["input_ids", "attention_mask"]}
    return {"tokenizer/tokenizer.json": tok.to_str().encode(),
            "tokenizer/tokenizer_config.json": json.dumps(config).encode()}


def text_bundle(path: Path, model: onnx.ModelProto) -> Path:
    """A bundle around a text classifier: its tokenizer, and a golden set of tokenized texts with the model's
    own outputs as references."""
    import onnxruntime as ort

    from onnxguard import __version__, bundle
    from onnxguard.bundle.golden import GoldenSet
    from onnxguard.bundle.manifest import Golden, Manifest, Model, Source, Tensor, now
    from onnxguard.examples.text import WORDS
    from onnxguard.preprocess import tokenizer as tokenizer_lib

    files = tokenizer_files()
    tok = tokenizer_lib.load(files, {"kind": "tokenizer", "path": "tokenizer"})
    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(WORDS, n)) for n in (3, 9, 5, 14, 1, 7)]
    batches = (tok.encode(texts[:4]), tok.encode(texts[4:]))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    refs = tuple({"logits": sess.run(None, dict(b))[0]} for b in batches)
    manifest = Manifest(name="text", version="0.1.0", created=now(), onnxguard_version=__version__,
                        source=Source(framework="onnx", framework_version="0", identifier="tests", task=None,
                                      exporter="onnx.helper", files={}),
                        model=Model(file=bundle.MODEL, sha256="0" * 64, size=0, opset={"ai.onnx": OPSET},
                                    ir_version=model.ir_version, producer="", outputs=[
                                        Tensor(name="logits", dtype="float32", shape=["batch", 2], role="scores")],
                                    inputs=[Tensor(name=n, dtype="int64", shape=["batch", "seq"])
                                            for n in ("input_ids", "attention_mask")]),
                        golden=Golden(file=bundle.GOLDEN, batches=2, items=len(texts), origin="texts"),
                        preprocessing={"kind": "tokenizer", "path": "tokenizer"}, files={})
    return bundle.write(path, manifest, model, GoldenSet(batches, refs), assets=files).path
