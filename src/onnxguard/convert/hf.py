"""Hugging Face Transformers sources: a local model directory, or a hub id where a network exists.

Tasks: ``text-classification`` (output ``logits``) and ``feature-extraction`` (output ``embeddings``,
pooled over the attention mask: ``mean`` or ``cls``). The tokenizer goes into the bundle.

The task is the saved architecture's (``config.architectures[0]``): ``*ForSequenceClassification`` is
text-classification, a bare ``*Model`` encoder is feature-extraction. Any other head (token classification,
question answering, language modelling, image classification ...) is refused by name, never dropped in silence;
``--task feature-extraction`` asks for the encoder's embeddings of any text model by name, and says so in the notes.

Padding is the trap here: a graph exported from unpadded examples can bake in "no mask" shortcuts.
The export example is a padded batch, both axes are dynamic, and the golden set holds right- and
left-padded batches of very different lengths, the longest allowed sequence and a single token.
"""

from __future__ import annotations

import contextlib
import inspect
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from onnxguard.accuracy.parity import SCORES, VALUES
from onnxguard.bundle.golden import Batch
from onnxguard.convert.interface import ConversionError, ConvertOptions, Exported
from onnxguard.convert.pytorch import InputSpec, export_module
from onnxguard.errors import Remedy
from onnxguard.progress import Progress

TASKS = ("text-classification", "feature-extraction")
POOLINGS = ("mean", "cls")
DEFAULT_MAX_LENGTH = 512  # longest golden sequence when the model allows more
GOLDEN_BATCH = 8


class _Classifier(torch.nn.Module):
    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args):
        return self.model(**dict(zip(self.names, args, strict=True))).logits


class _Embedder(torch.nn.Module):
    def __init__(self, model, names, pooling):
        super().__init__()
        self.model, self.names, self.pooling = model, names, pooling

    def forward(self, *args):
        kw = dict(zip(self.names, args, strict=True))
        hidden = self.model(**kw).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = kw["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


@dataclass
class HFSource:
    """A Transformers model wrapped for export, its tokenizer, and how its golden set is made."""

    wrapper: torch.nn.Module
    tokenizer: Any | None  # a Transformers tokenizer
    input_names: list[str]
    identifier: str
    files: tuple[Path, ...]
    task: str
    labels: list[str] | None
    max_length: int
    vocab_size: int
    pooling: str | None
    prefix: list[int] = field(default_factory=list)  # special tokens the tokenizer puts around a text
    suffix: list[int] = field(default_factory=list)
    attn_implementation: str = "eager"
    architecture: dict | None = None  # model_type, num_heads, hidden_size: what graph fusions need
    framework: str = "transformers"
    framework_version: str = f"{transformers.__version__} (torch {torch.__version__})"
    assets: dict[str, Path] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # for the parity report: a head an explicit --task left out

    @property
    def output_name(self) -> str:
        return "logits" if self.task == "text-classification" else "embeddings"

    @property
    def output_roles(self) -> dict[str, str]:
        return {self.output_name: SCORES if self.task == "text-classification" else VALUES}

    @property
    def preprocessing(self) -> dict | None:
        if self.tokenizer is None:
            return None
        return {"kind": "tokenizer", "path": "tokenizer", "max_length": self.max_length,
                "padding_side": self.tokenizer.padding_side, "model_input_names": self.input_names,
                "pooling": self.pooling}

    def export(self, opset: int | None, exporter: str, progress: Progress) -> Exported:
        # A padded example: the second sequence is shorter, so the mask has zeros while exporting.
        low = min(5, self.vocab_size - 20)
        batch = self._pack([self._special(list(range(low, low + 14))), self._special(list(range(low, low + 5)))],
                           "right")
        specs = [InputSpec(n, ("batch", "sequence"), "int64") for n in self.input_names]
        args = tuple(torch.from_numpy(batch[n]) for n in self.input_names)
        exported = export_module(self.wrapper, args, specs, [self.output_name], opset, exporter, progress)
        return Exported(exported.model, f"{exported.exporter}, {self.attn_implementation} attention",
                        self.notes + tuple(exported.notes))

    # -- golden set --------------------------------------------------------------------------------
    def _special(self, ids: list[int]) -> list[int]:
        return self.prefix + ids + self.suffix

    def _pack(self, sequences: list[list[int]], side: str) -> Batch:
        length = max(len(s) for s in sequences)
        pad = getattr(self.tokenizer, "pad_token_id", None) or 0
        ids = np.full((len(sequences), length), pad, np.int64)
        mask = np.zeros((len(sequences), length), np.int64)
        for i, s in enumerate(sequences):
            sl = slice(0, len(s)) if side == "right" else slice(length - len(s), length)
            ids[i, sl], mask[i, sl] = s, 1
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return {n: batch[n] for n in self.input_names}

    def golden_inputs(self) -> list[Batch]:
        """Padded batches both sides, lengths spread from 3 to the longest allowed, one token, short texts."""
        rng = np.random.default_rng(0)
        specials = len(self._special([]))
        low = min(5, self.vocab_size - 1)
        def seq(n: int) -> list[int]:
            return self._special(rng.integers(low, self.vocab_size, max(1, n - specials)).tolist())
        spread = [seq(int(n)) for n in np.linspace(3, self.max_length, GOLDEN_BATCH)]
        short = [seq(int(n)) for n in rng.integers(3, 24, GOLDEN_BATCH)]
        return [self._pack(spread, "right"), self._pack(spread, "left"), self._pack(short, "right"),
                self._pack(short, "left"),
                self._pack([self._special(rng.integers(low, self.vocab_size, 1).tolist())], "right"),
                self._pack([seq(self.max_length)], "right")]

    def texts_inputs(self, texts: list[str]) -> list[Batch]:
        if self.tokenizer is None:
            raise ConversionError(f"{self.identifier}: has no tokenizer, so a texts file cannot be used")
        batches = []
        for side in ("right", "left"):
            for i in range(0, len(texts), GOLDEN_BATCH):
                enc = self.tokenizer(texts[i : i + GOLDEN_BATCH], truncation=True, max_length=self.max_length)
                batches.append(self._pack(enc["input_ids"], side))
        return batches

    def run(self, batch: Batch) -> Batch:
        with torch.inference_mode():
            out = self.wrapper(*(torch.from_numpy(batch[n]) for n in self.input_names))
        return {self.output_name: out.numpy()}


def _special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer adds before and after a text (``[CLS]``/``[SEP]``, ``<s>``/``</s>``)."""
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    body = tokenizer("a", add_special_tokens=False)["input_ids"]
    for i in range(len(full) - len(body) + 1):
        if full[i : i + len(body)] == body:
            return full[:i], full[i + len(body):]
    return [], []


@contextlib.contextmanager
def no_progress_bars():
    """Transformers draws tqdm bars on stderr while loading; the caller's progress display is the one to show."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _quiet_load_report():
    """Transformers logs a multi-line "LOAD REPORT" of dropped or missing tensors; ``load`` decides what they mean."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _architecture(config) -> dict:
    """Model type, head count and hidden size, under the names that differ between architectures."""
    def first(*names):
        return next((getattr(config, n) for n in names if isinstance(getattr(config, n, None), int)), 0)
    return {"model_type": config.model_type, "num_heads": first("num_attention_heads", "n_heads", "n_head"),
            "hidden_size": first("hidden_size", "dim", "d_model", "n_embd")}


# Heads no task here keeps, by the end of their class name: what a build would silently drop.
UNSUPPORTED_HEADS = (
    ("ForTokenClassification", "token classification"),
    ("ForQuestionAnswering", "question answering"),
    ("ForImageClassification", "image classification"),
    ("ForCausalLM", "causal language modelling"),
    ("LMHeadModel", "language modelling"),
    ("ForMaskedLM", "masked language modelling"),
    ("ForMultipleChoice", "multiple choice"),
    ("ForConditionalGeneration", "sequence-to-sequence generation"),
    ("ForPreTraining", "pre-training"),
    ("ForNextSentencePrediction", "next sentence prediction"),
)


def _auto_class_name(auto, config) -> str | None:
    """The class ``auto`` (``AutoModel``, ...) makes for this config, or None where it makes none."""
    try:
        return auto._model_mapping[type(config)].__name__
    except (KeyError, AttributeError, ValueError):
        return None


def _native_task(config) -> tuple[str | None, str | None]:
    """The saved architecture (``config.architectures[0]``) and the task that keeps its head, or None."""
    archs = getattr(config, "architectures", None) or []
    arch = str(archs[0]) if archs else None
    if arch is None:
        return None, None
    if arch.endswith("ForSequenceClassification"):
        return arch, "text-classification"
    if any(arch.endswith(suffix) for suffix, _ in UNSUPPORTED_HEADS):
        return arch, None
    base = _auto_class_name(AutoModel, config)
    if arch == base or (base is None and arch.endswith("Model")):
        return arch, "feature-extraction"
    return arch, None


def _head_name(arch: str) -> str:
    return next((what for suffix, what in UNSUPPORTED_HEADS if arch.endswith(suffix)), "this architecture")


def _resolve_task(spec: str, config, requested: str | None) -> tuple[str, str | None]:
    """The task to build and, where an explicit ``--task feature-extraction`` leaves a head out, a note saying so.

    The task is the saved architecture's: ``*ForSequenceClassification`` keeps its classifier, ``*Model`` (the bare
    encoder) gives pooled embeddings. Any other head is refused by name rather than dropped without a word."""
    arch, native = _native_task(config)
    if requested is not None and requested not in TASKS:
        raise ConversionError(f"{spec}: task {requested!r} is not supported (only {' and '.join(TASKS)})",
                              remedy=Remedy.TASK)
    if arch is None:
        if requested is None:
            raise ConversionError(f"{spec}: config.json names no architecture, so its task cannot be read from it",
                                  hint=f"name the task ({' or '.join(TASKS)})", remedy=Remedy.TASK)
        return requested, None
    if requested is None or requested == native:
        if native is None:
            what = _head_name(arch)
            if what == "this architecture":
                raise ConversionError(f"{spec}: {arch}: this architecture is not supported yet (supported: "
                                      "*ForSequenceClassification and bare *Model encoders)")
            raise ConversionError(f"{spec}: {arch}: {what} is not supported yet; the build would drop its head")
        return native, None
    if requested == "feature-extraction":  # asked for by name: the encoder's embeddings, its head left out
        return requested, f"{arch}'s head is left out: the task feature-extraction, asked for, builds the encoder's " \
            "embeddings"
    raise ConversionError(f"{spec}: the task {requested} contradicts the saved {arch}, which has no "
                          f"{requested} head (its classifier would be random weights)",
                          hint="name no task, to build the one the model was saved for")


def load(spec: str, options: ConvertOptions) -> HFSource:
    """A local Transformers model directory (or a hub id where a network exists) as an :class:`HFSource`."""
    path = Path(spec)
    try:
        config = AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as e:
        raise ConversionError(f"{spec}: not a loadable Transformers model ({str(e).splitlines()[0]}); give a model "
                              "directory with config.json, or a hub id where a network exists") from e
    task, head_note = _resolve_task(spec, config, options.task)
    if not isinstance(getattr(config, "vocab_size", None), int):
        arch = (getattr(config, "architectures", None) or [type(config).__name__])[0]
        raise ConversionError(f"{spec}: {arch}: takes no token ids (its config has no vocab_size); only text models "
                              "are supported yet")
    if options.pooling not in POOLINGS:
        raise ConversionError(f"pooling {options.pooling!r}: not one of {', '.join(POOLINGS)}",
                              hint=f"use {' or '.join(POOLINGS)}")
    auto = AutoModelForSequenceClassification if task == "text-classification" else AutoModel
    try:
        with no_progress_bars(), _quiet_load_report():
            model, info = auto.from_pretrained(spec, attn_implementation=options.attn_implementation,
                                               output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: tensors of the wrong size
        raise ConversionError(f"{spec}: cannot load the {task} model: {str(e).splitlines()[0]}") from e
    model.eval()
    # Weights the checkpoint lacks are random: a model built on them is wrong. The pooler is never used here.
    missing = sorted(k for k in info.get("missing_keys") or () if not k.startswith("pooler."))
    if missing:
        raise ConversionError(f"{spec}: the saved weights lack {len(missing)} tensor(s) of {type(model).__name__} "
                              f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); they would be random")
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError):
        tokenizer = None  # model-only directory: golden inputs are drawn from the vocabulary instead
    forward_args = set(inspect.signature(model.forward).parameters)
    names = list(getattr(tokenizer, "model_input_names", None) or ["input_ids", "attention_mask"])
    names = [n for n in names if n in forward_args and n in ("input_ids", "attention_mask", "token_type_ids")]
    if "attention_mask" not in names:
        raise ConversionError(f"{spec}: the model takes no attention_mask, so padded batches cannot be correct")
    limits = [getattr(config, "max_position_embeddings", None), DEFAULT_MAX_LENGTH,
              getattr(tokenizer, "model_max_length", None), options.max_length]
    max_length = min(x for x in limits if isinstance(x, int) and x > 0)
    if task == "text-classification":
        wrapper: torch.nn.Module = _Classifier(model, names)
        id2label = getattr(config, "id2label", None) or {}
        labels = [str(id2label[i]) for i in range(len(id2label))] if id2label else None
    else:
        wrapper = _Embedder(model, names, options.pooling)
        labels = None
    source = HFSource(wrapper.eval(), tokenizer, names, spec, (path,) if path.is_dir() else (), task, labels,
                      max_length, config.vocab_size, options.pooling if task == "feature-extraction" else None,
                      attn_implementation=options.attn_implementation, architecture=_architecture(config),
                      notes=(head_note,) if head_note else ())
    if tokenizer is not None:
        source.prefix, source.suffix = _special_frame(tokenizer)
        tmp = Path(tempfile.mkdtemp(prefix="onnxguard-tokenizer-"))
        weakref.finalize(source, shutil.rmtree, tmp, True)
        tokenizer.save_pretrained(tmp)
        source.assets = {f"tokenizer/{f.name}": f for f in sorted(tmp.iterdir()) if f.is_file()}
    return source


def tokenize_with_bundle(b, texts: list[str]) -> list[Batch]:
    """Tokenize ``texts`` with a bundle's own tokenizer, as its golden batches are: padded both sides.

    ``b`` is an opened (``trust.open_bundle``) or read (``bundle.read``) bundle. The tokenizer is the serving one
    (:mod:`onnxguard.preprocess.tokenizer`), made from the bytes the bundle hashed, so calibration inputs are
    exactly what the server will feed the model."""
    from onnxguard.preprocess import tokenizer as serving

    files = b.contents if hasattr(b, "contents") else b.data  # trust.OpenedBundle or bundle.Bundle
    tok = serving.load(files, b.manifest.preprocessing)
    return [tok.encode(texts[i : i + GOLDEN_BATCH], padding_side=side)
            for side in ("right", "left") for i in range(0, len(texts), GOLDEN_BATCH)]
