"""Token classification, question answering and image classification built from Transformers directories with the
real CLI, and each bundle checked against Transformers itself on inputs made here: per-token logits on padded
batches (right and left, real tokens compared), start/end logits of question/context pairs, and raw images (of
several sizes, one as PNG bytes) through the manifest's recorded preprocessing against the model's own image
processor and model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from onnxguard import bundle, runtime
from onnxguard.errors import InputError
from onnxguard.preprocess import image

ATOL = 1e-4
LABELS = {i: f"TAG_{i}" for i in range(3)}


def _bert(**kw):
    import transformers

    from onnxguard.examples.text import VOCAB

    return transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=64, **kw)


def _save(path: Path, kind: str) -> Path:
    """A tiny random-weight model of ``kind`` saved as its users save it: with its tokenizer or image processor."""
    import torch
    import transformers

    from onnxguard.convert.hf import no_progress_bars
    from onnxguard.examples.text import save_tokenizer

    torch.manual_seed(0)
    if kind == "token":
        model = transformers.BertForTokenClassification(_bert(id2label=LABELS))
    elif kind == "qa":
        model = transformers.BertForQuestionAnswering(_bert())
    elif kind == "vit":
        model = transformers.ViTForImageClassification(transformers.ViTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8, id2label=LABELS))
        processor = transformers.ViTImageProcessorPil(size={"height": 32, "width": 32})
    elif kind == "convnext":
        model = transformers.ConvNextForImageClassification(transformers.ConvNextConfig(
            hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, id2label=LABELS))
        processor = transformers.ConvNextImageProcessorPil(size={"shortest_edge": 32})  # resize 36, crop 32
    elif kind == "resnet":
        model = transformers.ResNetForImageClassification(transformers.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", id2label=LABELS))
        # as the hub's ResNets ship: ConvNeXt's processor, bilinear, ImageNet statistics
        processor = transformers.ConvNextImageProcessorPil(size={"shortest_edge": 40}, resample=2,
                                                           image_mean=[0.485, 0.456, 0.406],
                                                           image_std=[0.229, 0.224, 0.225])
    else:
        raise ValueError(kind)
    with no_progress_bars():
        model.eval().save_pretrained(path)
    if kind in ("token", "qa"):
        save_tokenizer(path)
    else:
        processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``saved(kind)``: the model's directory, saved once."""
    root = tmp_path_factory.mktemp("heads")

    def save(kind: str) -> Path:
        src = root / kind
        return src if src.exists() else _save(src, kind)

    return save


@pytest.fixture(scope="module")
def built(saved, tmp_path_factory):
    """``built(kind, *flags)``: the saved model's directory and its bundle, built once with the real CLI."""
    import cli_runner

    root = tmp_path_factory.mktemp("bundles")
    made: dict[tuple[str, ...], tuple[Path, Path]] = {}

    def build(kind: str, *flags: str) -> tuple[Path, Path]:
        if (kind, *flags) not in made:
            src = saved(kind)
            out = root / f"{kind}-{len(made)}.bundle"
            r = cli_runner.run("build", src, "-o", out, *flags)
            assert r.code == 0, str(r)
            made[kind, *flags] = src, out
        return made[kind, *flags]

    return build


def _run(out: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    b = bundle.read(out)
    (outputs,) = runtime.run(runtime.session(b.model_path.read_bytes()), [inputs])
    return outputs


def _texts(n: int, seed: int, low: int, high: int) -> list[str]:
    from onnxguard.examples.text import WORDS

    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(k))) for k in rng.integers(low, high, n)]


def _encode(tokenizer, side: str, *texts: list[str]) -> dict[str, np.ndarray]:
    tokenizer.padding_side = side
    enc = tokenizer(*texts, padding=True, return_tensors="np")
    return {k: v.astype(np.int64) for k, v in enc.items()}


@pytest.mark.slow
def test_token_classification_gives_per_token_logits_as_transformers_on_padded_batches(built):
    """The default build (fused and optimized candidates gated on left- and right-padded golden batches)."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    src, out = built("token")
    m = bundle.read(out).manifest
    assert m.source.task == "token-classification" and m.labels == list(LABELS.values()) and m.parity.passed
    (logits,) = m.model.outputs
    assert logits.name == "logits" and logits.role == "scores"
    assert logits.shape[2] == 3 and all(isinstance(d, str) for d in logits.shape[:2])  # (batch, sequence, labels)
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")  # the one the bundle ships
    source = AutoModelForTokenClassification.from_pretrained(src).eval()  # transformers' default attention
    texts = _texts(6, 1, 1, 40)
    with torch.inference_mode():
        alone = [source(**tokenizer([t], return_tensors="pt")).logits[0].numpy() for t in texts]
    for side in ("right", "left"):
        enc = _encode(tokenizer, side, texts)
        assert (enc["attention_mask"] == 0).any()  # padded
        got = _run(out, {i.name: enc[i.name] for i in m.model.inputs})["logits"]
        with torch.inference_mode():
            ref = source(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
        real = enc["attention_mask"].astype(bool)
        assert got.shape == ref.shape == (*real.shape, 3)
        assert np.abs(got[real] - ref[real]).max() < ATOL, side
        assert (got[real].argmax(-1) == ref[real].argmax(-1)).all()
        if side == "right":  # right padding leaves the real tokens as they are alone
            for row, mask, expected in zip(got, real, alone, strict=True):
                assert np.abs(row[mask] - expected).max() < ATOL


@pytest.mark.slow
def test_question_answering_gives_start_and_end_logits_of_question_context_pairs(built):
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from onnxguard.convert import hf
    from onnxguard.convert.interface import ConvertOptions

    src, out = built("qa", "--optimize", "none")
    b = bundle.read(out)
    m = b.manifest
    assert m.source.task == "question-answering" and m.parity.passed and m.preprocessing["text_pairs"] is True
    assert m.golden.origin == "builtin"  # the built-in sentences, paired, then the signature's pairs
    assert [o.name for o in m.model.outputs] == ["start_logits", "end_logits"]
    # the golden set holds pairs: segment ids 0 (question) then 1 (context)
    golden = b.golden().inputs[0]
    assert set(np.unique(golden["token_type_ids"])) == {0, 1}
    # a texts file gives one question and its context per line, tab-separated, tokenized as pairs
    loaded = hf.load(str(src), ConvertOptions())
    right, left = loaded.texts_inputs(["what film\tthe film was good", "who\tthe actor"])
    assert right["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert right["token_type_ids"][1].tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0]  # padded on the right
    assert left["attention_mask"][1].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    with pytest.raises(InputError, match="one question and its context per line, separated by a tab"):
        loaded.texts_inputs(["what film\tthe film", "no tab here"])
    # texts without any tab (the built-in sentences a build falls back on) are paired line by line
    (plain, _) = loaded.texts_inputs(["what film", "the film was good", "who", "the actor", "left over"])
    np.testing.assert_array_equal(plain["input_ids"], right["input_ids"])
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    source = AutoModelForQuestionAnswering.from_pretrained(src).eval()
    questions, contexts = _texts(5, 2, 2, 6), _texts(5, 3, 5, 40)
    for side in ("right", "left"):
        enc = _encode(tokenizer, side, questions, contexts)
        assert set(np.unique(enc["token_type_ids"])) == {0, 1}
        got = _run(out, {i.name: enc[i.name] for i in m.model.inputs})
        with torch.inference_mode():
            ref = source(**{k: torch.from_numpy(v) for k, v in enc.items()})
        real = enc["attention_mask"].astype(bool)
        for name in ("start_logits", "end_logits"):
            expected = getattr(ref, name).numpy()
            assert got[name].shape == expected.shape == real.shape
            assert np.abs(got[name][real] - expected[real]).max() < ATOL, (side, name)


def _pictures() -> list:
    """Three real-looking images of different sizes: scikit-learn's digits, upscaled and coloured, 8-bit RGB."""
    from sklearn.datasets import load_digits

    digits = load_digits().images[:3] / 16.0
    tints = np.array([[1.0, 0.6, 0.2], [0.3, 0.9, 0.5], [0.8, 0.8, 1.0]])
    sizes = [(5, 6), (6, 4), (4, 7)]  # upscaling factors: 40x48, 48x32, 32x56
    out = []
    for d, tint, (fy, fx) in zip(digits, tints, sizes, strict=True):
        big = np.kron(d, np.ones((fy, fx)))
        out.append((np.clip(big[..., None] * tint + 0.1 * (1 - big[..., None]), 0, 1) * 255).round().astype(np.uint8))
    return out


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["vit", "convnext", "resnet"])
def test_image_classification_from_raw_images_as_transformers(kind, built):
    """The manifest's preprocessing on raw images (two pixel lists and one PNG) against the processor + model."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    src, out = built(kind, "--optimize", "none")
    m = bundle.read(out).manifest
    assert m.source.task == "image-classification" and m.labels == list(LABELS.values()) and m.parity.passed
    (pixel_values,) = m.model.inputs
    assert pixel_values.name == "pixel_values" and pixel_values.dtype == "float32"
    size = 40 if kind == "resnet" else 32
    assert isinstance(pixel_values.shape[0], str) and pixel_values.shape[1:] == [3, size, size]
    pre = m.preprocessing
    assert pre["kind"] == "image" and pre["channels"] == 3 and pre["scale"] == pytest.approx(1 / 255)
    if kind != "vit":
        assert pre["crop"] == {"height": pre["height"], "width": pre["width"]} and "shortest_edge" in pre["resize"]
    pictures = _pictures()
    raw = [pictures[0].tolist(), _png(pictures[1]), pictures[2].tolist()]  # as a :predict request carries them
    ours = image.prepare_raw(raw, image.spec(pre))["pixel_values"]
    processor = AutoImageProcessor.from_pretrained(src)
    theirs = processor(images=pictures, return_tensors="np")["pixel_values"]
    assert ours.shape == theirs.shape == (3, 3, *pixel_values.shape[2:])
    assert np.abs(ours - theirs).max() < 1e-6
    got = _run(out, {"pixel_values": ours})["logits"]
    source = AutoModelForImageClassification.from_pretrained(src).eval()
    with torch.inference_mode():
        ref = source(pixel_values=torch.from_numpy(theirs)).logits.numpy()
    assert got.shape == ref.shape == (3, 3)
    assert np.abs(got - ref).max() < ATOL and (got.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.parametrize("change, message", [
    ({"size": {"height": 48, "width": 48}}, "the model does not take its image processor's 48x48 images"),
    ({"do_pad": True}, "ViTImageProcessor: do_pad is not supported yet in a recorded image preprocessing"),
    ({"size": {"longest_edge": 40}}, "resizing to {'longest_edge': 40} is not supported yet"),
])
def test_an_image_processor_the_bundle_cannot_reproduce_is_refused_in_one_line(change, message, saved, copy_tree, cli,
                                                                               expect_err, tmp_path):
    import json

    src = copy_tree(saved("vit"))
    config = json.loads((src / "preprocessor_config.json").read_text())
    (src / "preprocessor_config.json").write_text(json.dumps({**config, **change}))
    out = tmp_path / "bundle"
    expect_err(cli("build", src, "-o", out), 2, message)
    assert not out.exists()
