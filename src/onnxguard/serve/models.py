"""``models.load(opened) -> ServedModel``: a bundle, opened through the door, made ready to answer.

The session is built from the bytes the door hashed (decrypted in memory when sealed). Before the model is
ready it is warmed up and its golden set is run through this very session and judged against the source
framework's reference outputs by the same thresholds as ``onnxguard consistency``: a model that drifts on this
runtime never serves.
"""

from __future__ import annotations

import heapq
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding

from onnxguard import runtime
from onnxguard.accuracy import consistency
from onnxguard.accuracy.parity import LABELS, SCORES
from onnxguard.accuracy.thresholds import kind_of
from onnxguard.bundle.golden import Batch, GoldenSet
from onnxguard.errors import InputError, ModelError
from onnxguard.model import onnxfile
from onnxguard.preprocess import image as image_lib
from onnxguard.preprocess import table as table_lib
from onnxguard.preprocess import tokenizer as tokenizer_lib
from onnxguard.runtime import lengths, memory
from onnxguard.runtime.lengths import MASK, Cost
from onnxguard.serve.batching import Batcher
from onnxguard.serve.validation import InputSpec, Signature
from onnxguard.trust.opening import OpenedBundle

PLATFORM = "onnxruntime_onnx"


@dataclass
class ServedModel:
    """One model the server answers for: its signature, session, preprocessing and batching queue."""

    name: str
    version: str
    digest: str
    opened: OpenedBundle = field(repr=False)
    session: ort.InferenceSession = field(repr=False)
    signature: Signature
    outputs: tuple[InputSpec, ...]
    roles: dict[str, str]
    labels: tuple[str, ...] | None
    tokenizer: tokenizer_lib.TextTokenizer | None = field(repr=False)
    image: image_lib.ImageSpec | None = field(default=None, repr=False)  # raw images -> the model's input
    table: table_lib.TableSpec | None = field(default=None, repr=False)  # table rows -> the model's inputs
    batcher: Batcher | None = field(default=None, repr=False)
    self_check: str = ""
    lane_session: ort.InferenceSession | None = field(default=None, repr=False)  # one lane's threads (batching.py)
    lanes: int = 1
    cost: Cost | None = None  # a text model's run on every core, by rows and width (measured at load)
    lane_cost: Cost | None = None  # ... and on one lane

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One run on every core (blocking; safe from several threads); a runtime refusal is one-line
        ``InputError``."""
        return self._run(self.session, inputs)

    def run_lane(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One run on one lane's share of the cores, as :meth:`run` otherwise."""
        return self._run(self.lane_session or self.session, inputs)

    def _run(self, session: ort.InferenceSession, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        try:
            values = session.run(names, dict(inputs))
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidArgument,
                ort.capi.onnxruntime_pybind11_state.RuntimeException) as e:
            raise InputError(f"model {self.name!r} refused the input: {runtime.first_line(e)}") from e
        return dict(zip(names, values, strict=True))

    def metadata(self) -> dict[str, Any]:
        """The Open Inference Protocol's model metadata, with the bundle digest."""
        return {"name": self.name, "versions": [self.version], "platform": PLATFORM,
                "inputs": [s.to_dict() for s in self.signature.inputs],
                "outputs": [s.to_dict() for s in self.outputs],
                "parameters": {"digest": self.digest, "labels": list(self.labels or ())}}

    @property
    def text(self) -> bool:
        return self.tokenizer is not None

    @property
    def task(self) -> str | None:
        """The source's task (``text-classification``, ``token-classification``, ``question-answering`` ...)."""
        return self.opened.manifest.source.task

    @property
    def pairs(self) -> bool:
        """Whether the model takes text pairs (a question and its context)."""
        return bool((self.opened.manifest.preprocessing or {}).get("text_pairs"))


def _specs(tensors: Any) -> tuple[InputSpec, ...]:
    return tuple(InputSpec.of(onnxfile.TensorSpec(t.name, t.dtype, None if t.shape is None else tuple(t.shape)))
                 for t in tensors)


def load(opened: OpenedBundle, *, name: str | None = None, threads: int = 0, max_batch: int | None = None,
         allow_nonfinite: bool = False, lanes: int = 1, spin: bool = True) -> ServedModel:
    """Build the sessions from the opened bundle's bytes (one on every core; with ``lanes`` > 1, one more whose
    threads are one lane's share, for batches run side by side: see batching.py), its signature and
    preprocessing, and self-check them."""
    m = opened.manifest
    where = str(opened.path / opened.model_name)
    data = opened.model_bytes
    # The self-check's thresholds follow the graph (int8, fp16, fp32): read here, while the bytes are at hand.
    graph_kind = kind_of(onnxfile.parse(data, where)) if m.golden is not None else None
    # Spin-waiting threads (ONNX Runtime's default) wake at once for each operator: measured on this 2-core host
    # through the server with wrk (benchmarks/server_ab.py), DistilBERT-base INT8, one short text per request, p50
    # 4.7-4.8 ms with spinning against 6.0-6.2 ms without at concurrency 1, 349-370 against 342-352 texts/s at 16.
    # With a Python load
    # generator on the same two cores spinning lost instead (16.0 against 7.4 ms at concurrency 1): the spinning
    # threads took the cores the client needed. ``spin=False`` (serve --no-spin) is for such a crowded host.
    # With lanes, the session on every core runs lone requests between lane batches; its threads spin during a run
    # and stop at its end (SPIN_STOP), or they would hold the cores the lanes' batches need. Measured on this 2-core
    # AVX2 host (benchmarks/server_ab.py, 4 rounds, DistilBERT-base INT8): --lanes 2 answered 174 texts/s at
    # concurrency 16 with it against 167 for one spinning lane (169 for --lanes 2 --no-spin, 3 rounds), p50 at
    # concurrency 1 the same as one spinning lane (6.95-7.03 against 6.95-7.19 ms). One lane gained nothing by it.
    stop = {runtime.SPIN_STOP: "1"} if lanes > 1 and spin else None
    session = runtime.session(data, threads=threads, name=where, spin=spin, config=stop)
    lane_session = None
    if lanes > 1:
        lane_threads = max(1, (threads or os.cpu_count() or 1) // lanes)
        lane_session = runtime.session(data, threads=lane_threads, name=where, spin=False)
    # The sessions hold what they need of the model; the served model keeps the rest of the opening, not the bytes
    # (measured, FP32 DistilBERT-base: 260 MB, most of the gap to a server that loads the file by path).
    del data
    opened = opened.without_model()
    tok, image, table = None, None, None
    pre = m.preprocessing or {}
    kind = pre.get("kind", "tokenizer") if pre else None
    if kind == "tokenizer":
        tok = tokenizer_lib.load(dict(opened.contents), pre, input_names=[t.name for t in m.model.inputs])
    elif kind == "image":
        image = image_lib.spec(pre)
    elif kind == "table":
        table = table_lib.spec(pre)
    vocab = tok.vocab_size if tok is not None else None
    sig = Signature(_specs(m.model.inputs), vocab_size=vocab, allow_nonfinite=allow_nonfinite,
                    **({"max_batch": max_batch} if max_batch else {}))
    model = ServedModel(name or m.name, m.version, opened.digest, opened, session, sig, _specs(m.model.outputs),
                        dict(opened.roles), tuple(m.labels) if m.labels else None, tok, image, table,
                        lane_session=lane_session, lanes=lanes)
    model.self_check = _self_check(model, model.run, graph_kind)
    model.cost = _cost(model, model.run)
    if lane_session is not None:
        _self_check(model, model.run_lane, graph_kind)
        model.lane_cost = _cost(model, model.run_lane)
    memory.give_back()  # the parses' freed heap (measured: 300 MB of RSS for FP32 DistilBERT-base)
    return model


def _self_check(model: ServedModel, run_one: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]],
                kind: str | None) -> str:
    """Warm up, then the golden set through this session against the source's references (consistency's rules,
    by the graph's ``kind``)."""
    golden = model.opened.golden() if model.opened.manifest.golden is not None else None
    if golden is None or golden.references is None or kind is None:
        return "no golden set: warm-up only"

    def run(g: GoldenSet) -> tuple[list[Batch], float]:
        run_one(g.inputs[0])  # warm-up, not timed
        start = time.perf_counter()
        outs = [run_one(b) for b in g.inputs]
        return outs, (time.perf_counter() - start) * 1e3 / max(g.items, 1)

    drift = consistency.drift(model.name, str(model.opened.path), run, kind, golden, model.roles)
    if not drift.passed:
        raise ModelError(f"{model.opened.path}: the golden set drifts on this runtime ({'; '.join(drift.failures)}); "
                         "the model is not served")
    return f"golden set passed ({golden.items} examples, {kind}, max |diff| {drift.max_abs:.2g})"


# What a text model's run costs is measured at load, on this host, for each session: the batcher splits a batch by
# length where that is cheaper than padding (batching.py). Three widths (a 32nd, an eighth and half of the widest
# point; the narrowest pins the overhead of a run) at one and four rows, the fastest of three runs each (a server
# starts beside other work; on a busy host the median of two wide points gave a two-thread session an overhead of
# 0 or 18 ms). DistilBERT-base INT8 on the 2-core AVX2 EPYC, quiet, three times: 1.6-1.7 ms + 0.28-0.37 ms a token
# on both cores (0.5-0.7 s to measure), 1.8-2.1 ms + 0.52-0.54 ms a token on one lane (1 s).
COST_WIDTH = 128  # the widest point (or the model's limit, if lower): served texts are mostly far shorter
COST_ROWS = (1, 4)
COST_RUNS = 3


def _cost(model: ServedModel, run: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]) -> Cost | None:
    """A text model's cost of a run by rows and width (None: not a text model with an attention mask whose rows and
    width may vary)."""
    tok = model.tokenizer
    shapes = {s.name: s.shape for s in model.signature.inputs}
    if tok is None or MASK not in shapes or any(isinstance(d, int) for d in (shapes[MASK] or ())[:2]):
        return None  # not a text model, or one whose batch or sequence axis is fixed: nothing to split
    names = set(shapes)
    width = min(COST_WIDTH, tok.max_length or COST_WIDTH)
    row = tok.encode([" ".join(["a"] * width)], max_length=width)
    if set(row) != names or row[MASK].shape[1] < 2:
        return None
    w = row[MASK].shape[1]
    cost, _ = lengths.measure_cost(run, row, MASK, widths=(max(1, w // 32), max(1, w // 8), w // 2),
                                   rows_at=COST_ROWS, runs=COST_RUNS, fastest=True)
    return cost


# The longest answer span, in tokens, question answering considers (Transformers' pipeline default).
MAX_ANSWER_TOKENS = 30


def predictions(model: ServedModel, outputs: Mapping[str, np.ndarray], policy: str,
                encodings: Sequence[Encoding] = (), texts: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """What ``:predict`` answers for each instance, by the model's task: the class of a classifier
    (:func:`classify`), a label per token of a token classifier (:func:`tag`), the answer span of question
    answering (:func:`answer`); ``encodings`` and ``texts``: the tokenized instances, for the last two."""
    how = _answered_by(model) if encodings else "classify"
    if how == "tag":
        return tag(model, outputs, encodings, texts, policy)
    if how == "answer":
        assert model.tokenizer is not None
        return answer(outputs, encodings, texts, model.tokenizer.padding_side, policy)
    return classify(model, outputs, policy)


def _answered_by(model: ServedModel) -> str:
    """How ``:predict`` answers a model: a label per token (``tag``), a span (``answer``) or a class."""
    if model.tokenizer is not None and model.task == "token-classification":
        return "tag"
    if model.tokenizer is not None and model.task == "question-answering" \
            and {"start_logits", "end_logits"} <= {o.name for o in model.outputs}:
        return "answer"
    return "classify"


def check_policy(model: ServedModel, policy: str, names: Iterable[str] | None = None) -> None:
    """Refuse (``InputError``), before anything runs, what a key's output policy could not be shown: under ``label``
    or ``topk:K``, a model, or the outputs ``names`` asked of it, without class scores or labels. ``names`` None:
    the ``:predict`` answer, whose labels per token and answer spans any policy may see."""
    if policy == "full":
        return
    if names is None:
        if _answered_by(model) != "classify":
            return
        names = [o.name for o in model.outputs]
    if not any(model.roles.get(n) in (SCORES, LABELS) for n in names):
        raise InputError(f"model {model.name!r} has no class scores or labels; this key may only see those")


def _rows(width: int, encodings: Sequence[Encoding], side: str) -> list[range]:
    """Where each instance's tokens sit in its padded row."""
    return [range(0, len(e.ids)) if side == "right" else range(width - len(e.ids), width) for e in encodings]


def tag(model: ServedModel, outputs: Mapping[str, np.ndarray], encodings: Sequence[Encoding], texts: Sequence[Any],
        policy: str) -> list[dict[str, Any]]:
    """A label per word-piece of each text (special tokens left out), with its characters in the text and, unless
    the key may see labels only, its probability."""
    scores = next((n for n, r in model.roles.items() if r == SCORES and n in outputs), next(iter(outputs)))
    logits = outputs[scores].astype(np.float64)
    names = list(model.labels or ())
    assert model.tokenizer is not None
    out = []
    for i, (e, cols) in enumerate(zip(encodings, _rows(logits.shape[1], encodings, model.tokenizer.padding_side),
                                      strict=True)):
        probs = _probabilities(logits[i, cols.start:cols.stop])
        tokens = []
        for j, (token, (start, end), seq) in enumerate(zip(e.tokens, e.offsets, e.sequence_ids, strict=True)):
            if seq is None:
                continue
            best = int(probs[j].argmax())
            item: dict[str, Any] = {"token": token, "start": start, "end": end, "label": _label(best, names)}
            if policy != "label":
                item["score"] = float(probs[j, best])
            tokens.append(item)
        out.append({"text": texts[i] if i < len(texts) else None, "tokens": tokens})
    return out


def answer(outputs: Mapping[str, np.ndarray], encodings: Sequence[Encoding], pairs: Sequence[Any], side: str,
           policy: str) -> list[dict[str, Any]]:
    """The best span of each context (start <= end, at most MAX_ANSWER_TOKENS tokens, inside the context), its
    characters and, unless the key may see labels only, its probability (start's times end's)."""
    start_logits, end_logits = outputs["start_logits"], outputs["end_logits"]
    out = []
    for i, (e, cols) in enumerate(zip(encodings, _rows(start_logits.shape[1], encodings, side), strict=True)):
        context = pairs[i][1]
        s_p = _probabilities(start_logits[i, cols.start:cols.stop].astype(np.float64))
        e_p = _probabilities(end_logits[i, cols.start:cols.stop].astype(np.float64))
        in_context = np.array([seq == 1 for seq in e.sequence_ids])
        if not in_context.any():
            out.append({"answer": "", "start": 0, "end": 0} | ({} if policy == "label" else {"score": 0.0}))
            continue
        # p(start) p(end) over every start <= end < start + MAX_ANSWER_TOKENS inside the context
        joint = np.triu(np.outer(s_p, e_p)) - np.triu(np.outer(s_p, e_p), MAX_ANSWER_TOKENS)
        joint[~in_context, :] = 0
        joint[:, ~in_context] = 0
        s, t = np.unravel_index(int(joint.argmax()), joint.shape)
        first, last = e.offsets[s][0], e.offsets[t][1]
        item: dict[str, Any] = {"answer": context[first:last], "start": first, "end": last}
        if policy != "label":
            item["score"] = float(joint[s, t])
        out.append(item)
    return out


def classify(model: ServedModel, outputs: Mapping[str, np.ndarray], policy: str) -> list[dict[str, Any]]:
    """Per-row predictions of a classifier under an output policy: ``full`` (label, score, every class's score),
    ``topk:K`` (the K best) or ``label``. Non-classifiers give their values whole under ``full`` only."""
    scores = next((n for n, r in model.roles.items() if r == SCORES and n in outputs), None)
    labels_out = next((n for n, r in model.roles.items() if r == LABELS and n in outputs), None)
    names = list(model.labels or ())
    if scores is None and labels_out is None:
        check_policy(model, policy, outputs)
        rows = len(next(iter(outputs.values())))
        return [{k: v[i].tolist() for k, v in outputs.items()} for i in range(rows)]
    if scores is None:
        assert labels_out is not None
        return [{"label": _label(v, names)} for v in outputs[labels_out].reshape(-1)]
    k = int(policy.split(":", 1)[1]) if policy.startswith("topk:") else None
    out = []
    for row in _probability_rows(outputs[scores]):
        classes = range(len(row))
        best = max(classes, key=row.__getitem__)  # the first of equals, as numpy's argmax
        pred: dict[str, Any] = {"label": _label(best, names)}
        if policy == "full":
            pred["score"] = row[best]
            pred["scores"] = {_label(i, names): p for i, p in enumerate(row)}
        elif k is not None:
            pred["top"] = [{"label": _label(i, names), "score": row[i]}
                           for i in heapq.nlargest(k, classes, key=row.__getitem__)]
        out.append(pred)
    return out


def _label(value: Any, names: list[str]) -> str:
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, str | np.str_):
        return str(value)
    i = int(value)
    return names[i] if 0 <= i < len(names) else str(i)


# Outputs that already are probabilities: every value >= 0 and each row's sum within this of 1.
SUM_TOLERANCE = 1e-3
# A classifier's scores up to this many values are made probabilities in plain Python, not numpy: a lone text
# request calls it with cold caches after its run, where numpy's cost per call added up. Paired request by request
# through two servers (2-core AMD EPYC, AVX2 only, DistilBERT-base INT8, 1500 pairs), the plain Python answer was
# 0.09 ms faster (p50 11.55 against 11.64 ms).
SMALL_SCORES = 256


def _probability_rows(scores: np.ndarray) -> list[list[float]]:
    """A classifier's scores as one list of probabilities per row (see :func:`_probabilities`)."""
    flat = scores.reshape(len(scores), -1)
    if flat.size > SMALL_SCORES:
        return _probabilities(flat.astype(np.float64)).tolist()
    rows = flat.tolist()
    if all(x >= 0 for row in rows for x in row) and all(abs(sum(row) - 1.0) <= SUM_TOLERANCE for row in rows):
        return rows
    out = []
    for row in rows:
        top = max(row)
        e = [math.exp(x - top) for x in row]
        total = sum(e)
        out.append([x / total for x in e])
    return out


def _probabilities(x: np.ndarray) -> np.ndarray:
    """Rows that already are probabilities stay; logits go through a softmax."""
    if x.size and (x >= 0).all() and np.abs(x.sum(-1) - 1.0).max() <= SUM_TOLERANCE:
        return x
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def restrict(model: ServedModel, outputs: Mapping[str, np.ndarray], policy: str) -> list[tuple[str, np.ndarray]]:
    """Open Inference Protocol outputs under an output policy: whole for ``full``; for a classifier's scores,
    ``NAME.label`` (int64 class per row) under ``label``, ``NAME.topk_indices``/``NAME.topk_values`` under
    ``topk:K``. Other outputs (not class scores) are withheld from a restricted key (the endpoints refuse, with
    :func:`check_policy`, before the run, a request that would leave it nothing)."""
    if policy == "full":
        return list(outputs.items())
    out: list[tuple[str, np.ndarray]] = []
    for name, arr in outputs.items():
        role = model.roles.get(name)
        if role == LABELS:
            out.append((name, arr))
        elif role == SCORES:  # classes on the last axis: per row, or per token of a token classifier
            flat = arr if arr.ndim > 2 else arr.reshape(len(arr), -1)
            if policy == "label":
                out.append((f"{name}.label", flat.argmax(-1).astype(np.int64)))
            else:
                k = min(int(policy.split(":", 1)[1]), flat.shape[-1])
                idx = np.argsort(-flat, axis=-1)[..., :k].astype(np.int64)
                out.append((f"{name}.topk_indices", idx))
                out.append((f"{name}.topk_values", np.take_along_axis(flat, idx, axis=-1)))
    if not out:  # fail closed for a caller that did not check first
        raise InputError(f"model {model.name!r} has no class scores or labels; this key may only see those")
    return out
