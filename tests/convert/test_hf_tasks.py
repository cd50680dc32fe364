"""The task of a Transformers directory comes from its saved architecture: a head no task keeps is refused by name
(one line, exit 2, nothing written), never built as mean-pooled embeddings with exit 0."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from onnxguard import bundle


def _save(path: Path, cls_name: str) -> Path:
    """A tiny random-weight model of the Transformers class ``cls_name``, with the test tokenizer for text models."""
    import torch
    import transformers

    from onnxguard.convert.hf import no_progress_bars
    from onnxguard.examples.text import VOCAB, save_tokenizer

    labels = {i: f"LABEL_{i}" for i in range(3)}
    config: transformers.PretrainedConfig
    if cls_name.startswith("Bert"):
        config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                         id2label=labels)
    elif cls_name.startswith("GPT2"):
        config = transformers.GPT2Config(vocab_size=len(VOCAB), n_embd=32, n_layer=1, n_head=2, n_positions=64)
    elif cls_name.startswith("ViT"):
        config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64, image_size=16, patch_size=8, id2label=labels)
    else:
        raise ValueError(cls_name)
    torch.manual_seed(0)
    with no_progress_bars():
        getattr(transformers, cls_name)(config).eval().save_pretrained(path)
    if not cls_name.startswith("ViT"):
        save_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    made: dict[str, Path] = {}

    def make(cls_name: str) -> Path:
        if cls_name not in made:
            made[cls_name] = _save(root / cls_name, cls_name)
        return made[cls_name]

    return make


@pytest.mark.parametrize(("cls_name", "what"), [
    ("GPT2LMHeadModel", "language modelling is not supported yet; the build would drop its head"),
    ("BertForMaskedLM", "masked language modelling is not supported yet"),
    ("BertForMultipleChoice", "multiple choice is not supported yet"),
    ("ViTForImageClassification", "has no image processor (preprocessor_config.json), so raw images cannot be"),
])
def test_a_head_no_task_keeps_is_refused_by_name(cls_name, what, saved, cli, expect_err, tmp_path):
    src = saved(cls_name)
    out = tmp_path / "bundle"
    expect_err(cli("build", src, "-o", out), 2, cls_name, what)
    assert not out.exists()


def test_the_build_refuses_a_head_from_config_json_before_the_conversion_process_starts(cli, expect_err, tmp_path,
                                                                                       monkeypatch):
    """What config.json's architecture alone decides is refused in the build process (torch is never imported
    for it); what depends on Transformers' own knowledge (is this class a bare encoder?) is left to the child."""
    from onnxguard.convert import isolated

    def no_child(*args, **kwargs):
        raise AssertionError("the conversion process was started")

    monkeypatch.setattr(isolated, "_run_child", no_child)
    src = tmp_path / "model"
    src.mkdir()
    for arch, task, what in (("GPT2LMHeadModel", None, "language modelling is not supported yet"),
                             ("BertModel", "text-classification", "the task text-classification contradicts"),
                             (None, None, "names no architecture"),
                             ("BertForMaskedLM", "sentiment", "task 'sentiment' is not supported")):
        config = {"model_type": "bert"} | ({"architectures": [arch]} if arch else {})
        (src / "config.json").write_text(json.dumps(config))
        expect_err(cli("build", src, "-o", tmp_path / "bundle", *(("--task", task) if task else ())), 2, what)
        assert not (tmp_path / "bundle").exists()
    (src / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(AssertionError, match="conversion process was started"):
        isolated.convert(isolated.Job(str(src)))


@pytest.mark.parametrize("config", ["[" * 100_000, "not json", "[1, 2]", '{"architectures": "BertModel"}', None])
def test_an_unreadable_config_is_left_to_the_conversion_process(config, tmp_path):
    from onnxguard.convert import hf_task

    src = tmp_path / "model"
    src.mkdir()
    if config is None:  # a FIFO: never opened for reading
        os.mkfifo(src / "config.json")
    else:
        (src / "config.json").write_text(config)
    hf_task.refuse_early(str(src), None)  # no refusal, no crash, no stall
    hf_task.refuse_early("org/not-a-local-directory", None)


def test_an_image_encoder_without_a_vocabulary_is_refused_by_name(saved, cli, expect_err, tmp_path):
    out = tmp_path / "bundle"
    expect_err(cli("build", saved("ViTModel"), "-o", out), 2, "ViTModel", "no vocab_size",
               "only *ForImageClassification is supported yet")
    assert not out.exists()


def test_a_task_that_would_invent_a_classifier_is_refused(saved, cli, expect_err, tmp_path):
    """A bare encoder has no classifier: text-classification would build one from random weights."""
    out = tmp_path / "bundle"
    expect_err(cli("build", saved("BertModel"), "-o", out, "--task", "text-classification"), 2,
               "the task text-classification contradicts", "BertModel")
    assert not out.exists()
    expect_err(cli("build", saved("BertForTokenClassification"), "-o", out, "--task", "text-classification"), 2,
               "the task text-classification contradicts", "BertForTokenClassification")
    assert not out.exists()


def test_a_config_without_an_architecture_needs_the_task_named(saved, cli, expect_err, tmp_path, copy_tree):
    src = copy_tree(saved("BertModel"))
    config = json.loads((src / "config.json").read_text())
    del config["architectures"]
    (src / "config.json").write_text(json.dumps(config))
    out = tmp_path / "embed.onnx"
    expect_err(cli("convert", src, "-o", out), 2, "names no architecture", "give --task")
    assert not out.exists()
    r = cli("convert", src, "-o", out, "--task", "feature-extraction")
    assert r.code == 0, str(r)


def test_feature_extraction_asked_by_name_builds_the_encoder_and_says_the_head_is_left_out(saved, cli, tmp_path):
    out = tmp_path / "bundle"
    r = cli("build", saved("BertForTokenClassification"), "-o", out, "--task", "feature-extraction",
            "--max-length", "32", "--optimize", "none")
    assert r.code == 0, str(r)
    m = bundle.read(out).manifest
    assert m.source.task == "feature-extraction" and m.parity.passed
    assert "LOAD REPORT" not in r.err + r.out
    assert any("BertForTokenClassification's head is left out" in n for n in m.parity.notes), m.parity.notes


def test_a_bare_encoder_builds_embeddings_from_its_architecture(saved, cli, tmp_path):
    out = tmp_path / "embed.onnx"
    r = cli("convert", saved("BertModel"), "-o", out)
    assert r.code == 0, str(r)


@pytest.mark.parametrize(("config_cls", "arch", "what"), [
    ("LlamaConfig", "LlamaForCausalLM", "causal language modelling"),
    ("BertConfig", "BertForMultipleChoice", "multiple choice"),
    ("T5Config", "T5ForConditionalGeneration", "sequence-to-sequence generation"),
    ("T5Config", "T5EncoderModel", "this architecture is not supported yet"),
])
def test_the_task_is_read_from_the_architecture_before_any_weights_load(config_cls, arch, what):
    import transformers

    from onnxguard.convert.hf import _resolve_task
    from onnxguard.errors import ConversionError

    config = getattr(transformers, config_cls)(architectures=[arch])
    with pytest.raises(ConversionError) as e:
        _resolve_task("model-dir", config, None)
    assert str(e.value).startswith(f"model-dir: {arch}: {what}") and "\n" not in str(e.value)
    assert _resolve_task("d", transformers.BertConfig(architectures=["BertForSequenceClassification"]), None) == (
        "text-classification", None)
    bare = transformers.BertConfig(architectures=["BertModel"])
    assert _resolve_task("d", bare, None) == ("feature-extraction", None)
    for config_cls, arch, task in (("ConvNextConfig", "ConvNextForImageClassification", "image-classification"),
                                   ("ResNetConfig", "ResNetForImageClassification", "image-classification"),
                                   ("BertConfig", "BertForTokenClassification", "token-classification"),
                                   ("BertConfig", "BertForQuestionAnswering", "question-answering")):
        assert _resolve_task("d", getattr(transformers, config_cls)(architectures=[arch]), None) == (task, None)
