"""Hugging Face Transformers sources: a local model directory, or a hub id where a network exists.

Tasks, each read from the saved architecture (``config.architectures[0]``), and the ONNX model's outputs:

* ``*ForSequenceClassification``: ``text-classification``, ``logits`` (batch, labels);
* ``*ForTokenClassification``: ``token-classification``, ``logits`` (batch, sequence, labels), one row per token;
* ``*ForQuestionAnswering``: ``question-answering``, ``start_logits`` and ``end_logits`` (batch, sequence);
* ``*ForImageClassification``: ``image-classification``, ``logits`` (batch, labels) from ``pixel_values``;
* a bare text ``*Model``: ``feature-extraction``, ``embeddings`` pooled over the attention mask (mean or cls).

Any other head (language modelling, multiple choice, sequence-to-sequence ...) is refused by name, never dropped in
silence; ``--task feature-extraction`` asks for the encoder's embeddings of any text model by name, and says so in
the notes. A text model's tokenizer goes into the bundle; an image model's processor is recorded in the manifest's
``preprocessing`` (resize, crop, rescale, normalise: see :mod:`onnxguard.preprocess.image`), after checking that
the recorded steps give what the processor gives.

Padding is the trap for text: a graph exported from unpadded examples can bake in "no mask" shortcuts.
The export example is a padded batch, both axes are dynamic, and the golden set holds right- and
left-padded batches of very different lengths, the longest allowed sequence and a single token; for question
answering, question/context pairs with their segment ids. Image golden sets are synthetic pictures of several sizes
and aspect ratios through the model's own image processor, plus all-black and all-white images.

Third-party noise (Transformers' load reports and warnings, Python warnings while loading and running) is captured,
never printed: a failure carries it as notes on the exception, which the CLI's ``--debug`` traceback shows.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import shutil
import sys
import tempfile
import threading
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from onnxguard.accuracy.parity import SCORES, VALUES
from onnxguard.bundle.golden import Batch
from onnxguard.convert import hf_task
from onnxguard.convert.interface import ConversionError, ConvertOptions, Exported
from onnxguard.convert.pytorch import _ANSI, InputSpec, export_module
from onnxguard.errors import InputError, ModelError, Remedy
from onnxguard.preprocess import image as image_preprocessing
from onnxguard.progress import Progress

POOLINGS = ("mean", "cls")
DEFAULT_MAX_LENGTH = 512  # longest golden sequence when the model allows more
GOLDEN_BATCH = 8
# The task's Auto class, the ONNX outputs it gives, and the architecture suffix that keeps its head.
_AUTO = {"text-classification": AutoModelForSequenceClassification,
         "token-classification": AutoModelForTokenClassification,
         "question-answering": AutoModelForQuestionAnswering,
         "image-classification": AutoModelForImageClassification,
         "feature-extraction": AutoModel}
OUTPUTS = {"text-classification": ("logits",), "token-classification": ("logits",),
           "question-answering": ("start_logits", "end_logits"), "image-classification": ("logits",),
           "feature-extraction": ("embeddings",)}
IMAGE_SIZES = ((24, 32), (40, 40), (48, 30), (33, 57))  # golden pictures: several sizes and aspect ratios


class _Heads(torch.nn.Module):
    """The model's named outputs (``logits``; ``start_logits`` and ``end_logits``), positionally."""

    def __init__(self, model, names, outputs):
        super().__init__()
        self.model, self.names, self.outputs = model, names, outputs

    def forward(self, *args):
        out = self.model(**dict(zip(self.names, args, strict=True)))
        heads = tuple(getattr(out, n) for n in self.outputs)
        return heads[0] if len(heads) == 1 else heads


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


# -- third-party noise ---------------------------------------------------------------------------------------------

class _Capture(logging.Handler):
    """While any thread is inside :func:`captured`: stands in for Transformers' own stderr handler and for
    ``warnings.showwarning``. The records and warnings of the threads inside are kept for them; any other thread's
    are written as they would have been (Transformers' ``[transformers] message``, Python's own warning display)."""

    def __init__(self) -> None:
        super().__init__()
        self.guard = threading.Lock()  # (Handler.lock is the handler's own, for emit)
        self.threads: dict[int, list[str]] = {}
        self.depth = 0
        self.showwarning = warnings.showwarning  # the display it stands in for, while it does

    def emit(self, record: logging.LogRecord) -> None:
        lines = self.threads.get(record.thread or 0)
        if lines is not None:
            lines.append(_ANSI.sub("", f"transformers {record.levelname.lower()}: {record.getMessage()}"))
        else:
            print(f"[transformers] {record.getMessage()}", file=sys.stderr)

    def warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        lines = self.threads.get(threading.get_ident())
        if lines is not None:
            lines.append(_ANSI.sub("", f"{category.__name__}: {message}"))
        else:
            self.showwarning(message, category, filename, lineno, file, line)


_CAPTURE = _Capture()


@contextlib.contextmanager
def captured() -> Iterator[list[str]]:
    """Transformers' log records and the Python warnings shown in this thread, kept in the list it yields instead of
    printed; the conversion step's noise, for a failure's notes (see :func:`_quiet`).

    Scoped and restored, and safe with threads: the first thread in swaps Transformers' stderr handler for the
    capture (Transformers' own ``disable_default_handler``/``add_handler``) and ``warnings.showwarning`` for its
    router, the last one out puts both back, and other threads' records and warnings are shown as before. The
    warnings filters are left alone (``warnings.catch_warnings`` is not used: entered and left by overlapping threads
    it restores their states out of order)."""
    from transformers.utils import logging as hf_logging

    me, c = threading.get_ident(), _CAPTURE
    lines: list[str] = []
    with c.guard:
        if c.depth == 0:
            hf_logging.disable_default_handler()
            hf_logging.add_handler(c)
            if warnings.showwarning != c.warning:  # (left in place by a catch_warnings that outlived a scope)
                c.showwarning = warnings.showwarning
            warnings.showwarning = c.warning
        c.depth += 1
        outer = c.threads.get(me)
        c.threads[me] = lines
    try:
        yield lines
    finally:
        with c.guard:
            if outer is None:
                del c.threads[me]
            else:
                c.threads[me] = outer
                outer += lines
            c.depth -= 1
            if c.depth == 0:
                hf_logging.remove_handler(c)
                hf_logging.enable_default_handler()
                warnings.showwarning = c.showwarning


def _with_log(e: BaseException, lines: list[str]) -> None:
    """The captured noise on the exception: not in its one-line message, in its ``--debug`` traceback."""
    for line in dict.fromkeys(lines):
        e.add_note(line)


_BARS_GUARD = threading.Lock()
_bars = {"depth": 0, "enabled": False}  # threads inside no_progress_bars, and the setting the first one found


@contextlib.contextmanager
def no_progress_bars():
    """Transformers draws tqdm bars on stderr while loading; the caller's progress display is the one to show.
    Off from the first thread in to the last one out, then as it was."""
    from transformers.utils import logging as hf_logging

    with _BARS_GUARD:
        if _bars["depth"] == 0:
            _bars["enabled"] = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
        _bars["depth"] += 1
    try:
        yield
    finally:
        with _BARS_GUARD:
            _bars["depth"] -= 1
            if _bars["depth"] == 0 and _bars["enabled"]:
                hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Noise captured for the duration; an error raised inside carries it (see :func:`captured`)."""
    lines: list[str] = []
    try:
        with captured() as lines:
            yield
    except (ConversionError, InputError, ModelError) as e:
        _with_log(e, lines)
        raise


# -- the source ----------------------------------------------------------------------------------------------------

@dataclass
class HFSource:
    """A Transformers model wrapped for export, its tokenizer or image processor, and how its golden set is made."""

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
    pair: tuple[list[int], list[int], list[int], list[int]] | None = None  # question answering: see _pair_frame
    attn_implementation: str = "eager"
    architecture: dict | None = None  # model_type, num_heads, hidden_size: what graph fusions need
    framework: str = "transformers"
    framework_version: str = f"{transformers.__version__} (torch {torch.__version__})"
    assets: dict[str, Path] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # for the parity report: a head an explicit --task left out
    processor: Any | None = None  # an image model's Transformers image processor
    channels: int = 3  # an image model's input channels (1: grey, 3: RGB)
    image: dict | None = None  # an image model's preprocessing, as the manifest records it

    @property
    def output_names(self) -> tuple[str, ...]:
        return OUTPUTS[self.task]

    @property
    def output_roles(self) -> dict[str, str]:
        role = VALUES if self.task == "feature-extraction" else SCORES
        return {n: role for n in self.output_names}

    @property
    def preprocessing(self) -> dict | None:
        if self.image is not None:
            return self.image
        if self.tokenizer is None:
            return None
        pre = {"kind": "tokenizer", "path": "tokenizer", "max_length": self.max_length,
               "padding_side": self.tokenizer.padding_side, "model_input_names": self.input_names,
               "pooling": self.pooling}
        if self.task == "question-answering":
            pre["text_pairs"] = True  # the model takes (question, context) pairs, tokenized as pairs
        return pre

    def export(self, opset: int | None, exporter: str, progress: Progress) -> Exported:
        if self.task == "image-classification":
            example = self.golden_inputs()[0]
            specs = [InputSpec("pixel_values", ("batch", *example["pixel_values"].shape[1:]), "float32")]
        else:  # a padded example: the second sequence is shorter, so the mask has zeros while exporting
            low = min(5, self.vocab_size - 20)
            example = self._pack([self._special(list(range(low, low + 14))),
                                  self._special(list(range(low, low + 5)))], "right")
            specs = [InputSpec(n, ("batch", "sequence"), "int64") for n in self.input_names]
        args = tuple(torch.from_numpy(example[s.name]) for s in specs)
        with _quiet():
            exported = export_module(self.wrapper, args, specs, list(self.output_names), opset, exporter, progress)
        if self.task in ("token-classification", "question-answering"):
            _name_sequence_axis(exported.model, self.output_names)
        attention = f", {self.attn_implementation} attention" if (self.architecture or {}).get("num_heads") else ""
        return Exported(exported.model, exported.exporter + attention, self.notes + tuple(exported.notes))

    # -- golden set --------------------------------------------------------------------------------
    def _special(self, ids: list[int]) -> list[int]:
        return self.prefix + ids + self.suffix

    def _pack(self, sequences: list[list[int]], side: str, types: list[list[int]] | None = None) -> Batch:
        length = max(len(s) for s in sequences)
        pad = getattr(self.tokenizer, "pad_token_id", None) or 0
        ids = np.full((len(sequences), length), pad, np.int64)
        mask = np.zeros((len(sequences), length), np.int64)
        segments = np.zeros((len(sequences), length), np.int64)
        for i, s in enumerate(sequences):
            sl = slice(0, len(s)) if side == "right" else slice(length - len(s), length)
            ids[i, sl], mask[i, sl] = s, 1
            if types is not None:
                segments[i, sl] = types[i]
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": segments}
        return {n: batch[n] for n in self.input_names}

    def _pairs(self, questions: list[list[int]], contexts: list[list[int]], side: str) -> Batch:
        """Question/context pairs framed as the tokenizer frames them, with their segment ids."""
        prefix, middle, suffix, types = self.pair or ([], [], [], [0, 1])
        seqs, segs = [], []
        for q, c in zip(questions, contexts, strict=True):
            seqs.append(prefix + q + middle + c + suffix)
            segs.append([types[0]] * (len(prefix) + len(q) + len(middle)) + [types[1]] * (len(c) + len(suffix)))
        return self._pack(seqs, side, segs)

    def golden_inputs(self) -> list[Batch]:
        """Text: padded batches both sides, lengths spread from 3 to the longest allowed, one token, short texts
        (question answering: pairs of those). Images: synthetic pictures through the model's image processor."""
        rng = np.random.default_rng(0)
        if self.task == "image-classification":
            return self._golden_images(rng)
        low = min(5, self.vocab_size - 1)

        def ids(n: int) -> list[int]:
            return rng.integers(low, self.vocab_size, max(1, n)).tolist()

        if self.task == "question-answering":
            frame = len(self._pairs([[]], [[]], "right")["input_ids"][0])
            lengths = [int(n) for n in np.linspace(4, self.max_length, GOLDEN_BATCH)]
            questions = [ids(max(1, min(12, (n - frame) // 3))) for n in lengths]
            contexts = [ids(max(1, n - frame - len(q))) for n, q in zip(lengths, questions, strict=True)]
            short_q = [ids(int(n)) for n in rng.integers(1, 6, GOLDEN_BATCH)]
            short_c = [ids(int(n)) for n in rng.integers(1, 20, GOLDEN_BATCH)]
            return [self._pairs(questions, contexts, "right"), self._pairs(questions, contexts, "left"),
                    self._pairs(short_q, short_c, "right"), self._pairs(short_q, short_c, "left"),
                    self._pairs([ids(1)], [ids(1)], "right")]
        specials = len(self._special([]))

        def seq(n: int) -> list[int]:
            return self._special(ids(n - specials))

        spread = [seq(int(n)) for n in np.linspace(3, self.max_length, GOLDEN_BATCH)]
        short = [seq(int(n)) for n in rng.integers(3, 24, GOLDEN_BATCH)]
        return [self._pack(spread, "right"), self._pack(spread, "left"), self._pack(short, "right"),
                self._pack(short, "left"), self._pack([self._special(ids(1))], "right"),
                self._pack([seq(self.max_length)], "right")]

    def _golden_images(self, rng: np.random.Generator) -> list[Batch]:
        """Pictures of several sizes through the image processor: batches of 3, 8 and 1, then black and white."""
        pictures = [synthetic_image(rng, *IMAGE_SIZES[i % len(IMAGE_SIZES)]) for i in range(12)]
        edges = [np.zeros((30, 30, 3), np.uint8), np.full((30, 30, 3), 255, np.uint8)]
        return [self._processed(b) for b in (pictures[:3], pictures[3:11], pictures[11:], edges)]

    def _processed(self, pictures: list[np.ndarray]) -> Batch:
        if self.processor is None:
            raise ConversionError(f"{self.identifier}: an image model without its image processor")
        out = self.processor(images=[self._channels(p) for p in pictures], return_tensors="np")
        return {"pixel_values": np.ascontiguousarray(out["pixel_values"], np.float32)}

    def _channels(self, picture: np.ndarray) -> np.ndarray:
        return picture if self.channels == 3 else picture.mean(-1, keepdims=True).round().astype(np.uint8)

    def texts_inputs(self, texts: list[str]) -> list[Batch]:
        if self.task == "image-classification":
            raise ConversionError(f"{self.identifier}: an image model takes no texts; give golden inputs "
                                  "(pixel_values) as an .npz file", remedy=Remedy.GOLDEN_INPUTS)
        if self.tokenizer is None:
            raise ConversionError(f"{self.identifier}: has no tokenizer, so a texts file cannot be used")
        batches = []
        if self.task == "question-answering":
            pairs = [t.split("\t", 1) for t in texts]
            if not any(len(p) == 2 for p in pairs):  # plain texts (the built-in sentences): paired line by line
                pairs = [[q, c] for q, c in zip(texts[0::2], texts[1::2], strict=False)]
            if not pairs or any(len(p) != 2 for p in pairs):
                raise InputError("a question-answering model takes one question and its context per line, "
                                 "separated by a tab (or texts without tabs, paired line by line)")
            for side in ("right", "left"):
                for i in range(0, len(pairs), GOLDEN_BATCH):
                    chunk = pairs[i : i + GOLDEN_BATCH]
                    enc = self.tokenizer([q for q, _ in chunk], [c for _, c in chunk], truncation="only_second",
                                         max_length=self.max_length)
                    types: list[list[int]] = enc.get("token_type_ids") or [[0] * len(s) for s in enc["input_ids"]]
                    batches.append(self._pack(enc["input_ids"], side, types))
            return batches
        for side in ("right", "left"):
            for i in range(0, len(texts), GOLDEN_BATCH):
                enc = self.tokenizer(texts[i : i + GOLDEN_BATCH], truncation=True, max_length=self.max_length)
                batches.append(self._pack(enc["input_ids"], side))
        return batches

    def run(self, batch: Batch) -> Batch:
        names = ["pixel_values"] if self.task == "image-classification" else self.input_names
        with _quiet(), torch.inference_mode():
            out = self.wrapper(*(torch.from_numpy(batch[n]) for n in names))
        outs = out if isinstance(out, tuple) else (out,)
        return {n: o.numpy() for n, o in zip(self.output_names, outs, strict=True)}


def synthetic_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A picture-like 8-bit RGB image (H, W, 3): smooth colour gradients, a bright disc and a little noise."""
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width]).reshape(2, 1, 1)
    phase = rng.uniform(0, 2 * np.pi, 3)
    img = np.stack([0.5 + 0.4 * np.sin(3 * x + 2 * y + p) for p in phase], -1)
    cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.3)
    img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(0.6, 1.0, 3)
    img += rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _name_sequence_axis(model: onnx.ModelProto, outputs: tuple[str, ...]) -> None:
    """Per-token outputs are (batch, sequence, ...): the TorchScript exporter fixes the sequence axis to the
    example's length unless told; name it as the inputs' is named."""
    inputs = {v.name: v for v in model.graph.input}
    dims = inputs["input_ids"].type.tensor_type.shape.dim if "input_ids" in inputs else []
    name = dims[1].dim_param if len(dims) > 1 and dims[1].HasField("dim_param") else "sequence"
    for value in model.graph.output:
        if value.name in outputs:
            out = value.type.tensor_type.shape.dim
            if len(out) > 1:
                out[1].dim_param = name


def _special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer adds before and after a text (``[CLS]``/``[SEP]``, ``<s>``/``</s>``)."""
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    body = tokenizer("a", add_special_tokens=False)["input_ids"]
    for i in range(len(full) - len(body) + 1):
        if full[i : i + len(body)] == body:
            return full[:i], full[i + len(body):]
    return [], []


def _pair_frame(tokenizer) -> tuple[list[int], list[int], list[int], list[int]] | None:
    """How the tokenizer frames a (question, context) pair: the special tokens before, between and after, and the
    segment ids of the question part and of the context part (``[CLS] q [SEP] c [SEP]``, types 0 then 1)."""
    enc = tokenizer("a", "a", add_special_tokens=True)
    full, body = enc["input_ids"], tokenizer("a", add_special_tokens=False)["input_ids"]
    starts = [i for i in range(len(full) - len(body) + 1) if full[i : i + len(body)] == body]
    if len(starts) != 2:
        return None
    (a, b), n = starts, len(body)
    types = enc.get("token_type_ids") or [0] * len(full)
    return full[:a], full[a + n : b], full[b + n :], [types[a], types[b]]


def _architecture(config) -> dict:
    """Model type, head count and hidden size, under the names that differ between architectures."""
    def first(*names):
        return next((getattr(config, n) for n in names if isinstance(getattr(config, n, None), int)), 0)
    return {"model_type": config.model_type, "num_heads": first("num_attention_heads", "n_heads", "n_head"),
            "hidden_size": first("hidden_size", "dim", "d_model", "n_embd")}


def _auto_class_name(auto, config) -> str | None:
    """The class ``auto`` (``AutoModel``, ...) makes for this config, or None where it makes none."""
    try:
        return auto._model_mapping[type(config)].__name__
    except (KeyError, AttributeError, ValueError):
        return None


def _resolve_task(spec: str, config, requested: str | None) -> tuple[str, str | None]:
    """The task to build (see :func:`hf_task.resolve`), from the loaded ``config``."""
    arch = hf_task.architecture(getattr(config, "architectures", None))
    base = _auto_class_name(AutoModel, config)
    bare = arch is not None and (arch == base or (base is None and arch.endswith("Model")))
    return hf_task.resolve(spec, arch, requested, bare)


def load(spec: str, options: ConvertOptions) -> HFSource:
    """A local Transformers model directory (or a hub id where a network exists) as an :class:`HFSource`.

    Transformers' log and Python's warnings are captured while it loads (see :func:`captured`)."""
    with _quiet():
        return _load(spec, options)


def _load(spec: str, options: ConvertOptions) -> HFSource:
    path = Path(spec)
    try:
        config = AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as e:
        raise ConversionError(f"{spec}: not a loadable Transformers model ({str(e).splitlines()[0]}); give a model "
                              "directory with config.json, or a hub id where a network exists") from e
    task, head_note = _resolve_task(spec, config, options.task)
    image = task == "image-classification"
    if not image and not isinstance(getattr(config, "vocab_size", None), int):
        arch = (getattr(config, "architectures", None) or [type(config).__name__])[0]
        raise ConversionError(f"{spec}: {arch}: takes no token ids (its config has no vocab_size); of the models that "
                              "take images, only *ForImageClassification is supported yet")
    if options.pooling not in POOLINGS:
        raise ConversionError(f"pooling {options.pooling!r}: not one of {', '.join(POOLINGS)}",
                              hint=f"use {' or '.join(POOLINGS)}")
    model = _model(spec, task, options)
    if image:
        return _image_source(spec, path, config, model, options)
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
    if task == "feature-extraction":
        wrapper: torch.nn.Module = _Embedder(model, names, options.pooling)
    else:
        wrapper = _Heads(model, names, OUTPUTS[task])
    source = HFSource(wrapper.eval(), tokenizer, names, spec, (path,) if path.is_dir() else (), task,
                      _labels(config) if task in ("text-classification", "token-classification") else None,
                      max_length, config.vocab_size, options.pooling if task == "feature-extraction" else None,
                      attn_implementation=options.attn_implementation, architecture=_architecture(config),
                      notes=(head_note,) if head_note else ())
    if tokenizer is not None:
        source.prefix, source.suffix = _special_frame(tokenizer)
        source.pair = _pair_frame(tokenizer) if task == "question-answering" else None
        tmp = Path(tempfile.mkdtemp(prefix="onnxguard-tokenizer-"))
        weakref.finalize(source, shutil.rmtree, tmp, True)
        tokenizer.save_pretrained(tmp)
        source.assets = {f"tokenizer/{f.name}": f for f in sorted(tmp.iterdir()) if f.is_file()}
    return source


def _labels(config) -> list[str] | None:
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label[i]) for i in range(len(id2label))] if id2label else None


def _model(spec: str, task: str, options: ConvertOptions):
    """The task's model with the saved weights; weights the checkpoint lacks would be random, so they are refused."""
    try:
        with no_progress_bars():
            model, info = _AUTO[task].from_pretrained(spec, attn_implementation=options.attn_implementation,
                                                      output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: tensors of the wrong size
        raise ConversionError(f"{spec}: cannot load the {task} model: {str(e).splitlines()[0]}") from e
    model.eval()
    # The pooler is never used here.
    missing = sorted(k for k in info.get("missing_keys") or () if not k.startswith("pooler."))
    if missing:
        raise ConversionError(f"{spec}: the saved weights lack {len(missing)} tensor(s) of {type(model).__name__} "
                              f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); they would be random")
    return model


# -- image models --------------------------------------------------------------------------------------------------

_RESAMPLE_NAMES = {v: k for k, v in image_preprocessing.RESAMPLE.items()}


def _image_source(spec: str, path: Path, config, model, options: ConvertOptions) -> HFSource:
    try:
        processor = AutoImageProcessor.from_pretrained(spec)
    except (OSError, ValueError) as e:
        raise ConversionError(f"{spec}: has no image processor (preprocessor_config.json), so raw images cannot be "
                              f"prepared as the model was trained: {str(e).splitlines()[0]}",
                              hint="save the model's image processor beside it (processor.save_pretrained(dir))") from e
    channels = getattr(config, "num_channels", 3)
    if channels not in (1, 3):
        raise ConversionError(f"{spec}: {channels} input channels; only grey and RGB image models are supported")
    source = HFSource(_Heads(model, ["pixel_values"], OUTPUTS["image-classification"]).eval(), None,
                      ["pixel_values"], spec, (path,) if path.is_dir() else (), "image-classification",
                      _labels(config), 0, 0, None, attn_implementation=options.attn_implementation,
                      architecture=_architecture(config), processor=processor, channels=channels)
    source.image = _recorded(spec, processor, source)
    try:  # the processor's images must be what the model takes (a ViT's image_size, its channels)
        source.run(source._processed([synthetic_image(np.random.default_rng(0), 24, 32)]))
    except (ValueError, RuntimeError) as e:
        raise ConversionError(f"{spec}: the model does not take its image processor's {source.image['height']}x"
                              f"{source.image['width']} images: {str(e).splitlines()[0]}") from e
    return source


def _recorded(spec: str, processor, source: HFSource) -> dict:
    """The processor's steps as the manifest records them, checked: the serving preprocessing
    (:func:`onnxguard.preprocess.image.prepare_raw`) must give what the processor gives on pictures of several
    sizes and aspect ratios, or the build is refused rather than served with a preprocessing it does not have."""
    d = processor.to_dict()
    name = d.get("image_processor_type") or type(processor).__name__
    unsupported = [k for k in ("do_pad", "do_reduce_labels", "do_flip_channel_order") if d.get(k)]
    if unsupported:
        raise ConversionError(f"{spec}: {name}: {', '.join(unsupported)} is not supported yet in a recorded "
                              "image preprocessing")
    pre: dict[str, Any] = {"kind": "image", "input": "pixel_values", "processor": name, "layout": "NHWC",
                           "channel_order": "RGB", "channels": source.channels}
    if d.get("do_resize", True):
        size = {k: v for k, v in (d.get("size") or {}).items() if v is not None}
        resample = d.get("resample")
        pre["resample"] = _RESAMPLE_NAMES.get(2 if resample is None else int(resample), "bilinear")
        crop_pct = d.get("crop_pct")
        if "shortest_edge" in size and crop_pct and size["shortest_edge"] < 384 and set(size) == {"shortest_edge"}:
            # ConvNeXt-style: the short side to shortest_edge / crop_pct, then the centre crop to shortest_edge
            edge = size["shortest_edge"]
            pre["resize"], pre["crop"] = {"shortest_edge": int(edge / crop_pct)}, {"height": edge, "width": edge}
        elif "shortest_edge" in size and crop_pct and set(size) == {"shortest_edge"}:
            pre["resize"] = {"height": size["shortest_edge"], "width": size["shortest_edge"]}
        elif set(size) in ({"height", "width"}, {"shortest_edge"}):
            pre["resize"] = size
        else:
            raise ConversionError(f"{spec}: {name}: resizing to {size} is not supported yet in a recorded image "
                                  "preprocessing")
    if d.get("do_center_crop"):
        crop = d.get("crop_size") or {}
        pre["crop"] = {"height": crop.get("height"), "width": crop.get("width")}
    if d.get("do_rescale", True):
        pre["scale"] = float(d.get("rescale_factor", 1 / 255))
    if d.get("do_normalize", True):
        pre["mean"], pre["std"] = [float(v) for v in d["image_mean"]], [float(v) for v in d["image_std"]]
    try:
        image_spec = image_preprocessing.spec(pre)
    except ModelError as e:
        raise ConversionError(f"{spec}: {name}: cannot be recorded ({e})") from e
    rng = np.random.default_rng(1)
    pictures = [source._channels(synthetic_image(rng, h, w)) for h, w in (*IMAGE_SIZES, (64, 48))]
    expected = [source._processed([p])["pixel_values"][0] for p in pictures]
    try:
        got = [image_preprocessing.prepare_raw([p], image_spec)["pixel_values"][0] for p in pictures]
    except InputError as e:
        raise ConversionError(f"{spec}: {name}: the recorded preprocessing cannot reproduce it ({e})") from e
    worst = max((float(np.abs(g - x).max()) if g.shape == x.shape else float("inf"))
                for g, x in zip(got, expected, strict=True))
    if worst > 1e-5:
        raise ConversionError(f"{spec}: {name}: the recorded preprocessing differs from the processor's "
                              f"(max |diff| {worst:.3g}); this image processor is not supported yet")
    _, pre["height"], pre["width"] = expected[0].shape
    return pre


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
