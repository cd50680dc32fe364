"""The trigger search: inputs that flip the candidate's prediction and not the reference's.

Text classifiers (an ``input_ids`` input): every token id of the vocabulary (the bundle's tokenizer, else the rows
of the model's token embedding) is inserted after the first token ([CLS]) of each of the few shortest golden texts,
one ONNX Runtime call per text and block of ids (32k tokens a call), each text at its own length (no padding), so a
30k vocabulary is a few hundred thousand short rows. Image models (a float NCHW or NHWC input): small patches (the
golden images' minimum, maximum and a checker of both) at the corners and the centre of a few golden images.

A (trigger, input) pair counts when the candidate's prediction on the changed input differs from its prediction on
the input as it was, and the reference's does not; both are compared on the same rows in the same call, so
rounding that depends on the batch cannot tell them apart. A trigger is reported when it flips at least
``trigger_share`` of the inputs it was tried on; pairs from triggers below that share are counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from onnxguard.bundle.golden import Batch
from onnxguard.diff import rules
from onnxguard.diff.behaviour import LABELS, SCORES, Runner, differ, labels
from onnxguard.diff.options import DiffOptions
from onnxguard.errors import InputError
from onnxguard.progress import Event, Progress, silent
from onnxguard.scan.interface import Finding, Severity

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
CHANNELS = (1, 3, 4)
# Hits named in findings, one each; the rest are counted in one more finding (the JSON report lists them all).
MAX_HIT_FINDINGS = 20
# Flipped inputs kept per trigger in the report.
MAX_EXAMPLES = 32
# Golden texts looked at to choose the shortest from.
MAX_CANDIDATE_TEXTS = 4096


@dataclass(frozen=True)
class Hit:
    """A trigger that flips the candidate's prediction on ``len(flipped)`` of ``tried`` inputs, and none of the
    reference's; ``flipped`` are the golden examples' indices (in order over the golden batches)."""

    trigger: str
    token: int | None
    flipped: tuple[int, ...]
    tried: int

    def to_dict(self) -> dict:
        return {"trigger": self.trigger, "token": self.token, "flipped": len(self.flipped), "tried": self.tried,
                "inputs": list(self.flipped[:MAX_EXAMPLES])}


@dataclass(frozen=True)
class TriggerSearch:
    """What was tried, how long it took, and the triggers found."""

    kind: str  # text | image
    output: str
    triggers: int  # distinct triggers tried
    inputs: int  # golden inputs each was tried on
    rows: int  # rows run through the models
    seconds: float
    hits: tuple[Hit, ...]
    scattered: int  # candidate-only flips from triggers below the share
    findings: tuple[Finding, ...]
    vocabulary: int | None = None  # text: the vocabulary's size (more than ``triggers`` when it was cut)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "output": self.output, "vocabulary": self.vocabulary, "triggers": self.triggers,
                "inputs": self.inputs,
                "rows": self.rows, "seconds": round(self.seconds, 3), "hits": [h.to_dict() for h in self.hits],
                "scattered": self.scattered}


class CandidateFailed(Exception):
    """The candidate could not run rows the reference ran (a trigger that crashes it): a finding, not an error."""


class _Pair:
    """Both models' predictions on the same rows; counts the candidate-only flips."""

    def __init__(self, reference: Runner, candidate: Runner, output: str, role: str) -> None:
        self.reference, self.candidate, self.output, self.role = reference, candidate, output, role
        self.rows = 0

    def predict(self, runner: Runner, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        self.rows += len(next(iter(batch.values())))
        try:
            return labels(runner.run(batch)[self.output], self.role)
        except InputError as e:
            if runner is self.candidate:
                raise CandidateFailed(str(e)) from e
            raise

    def candidate_only(self, batch: Batch, base_ref: np.ndarray, base_cand: np.ndarray) -> np.ndarray:
        """Rows of ``batch`` whose candidate prediction moved from ``base_cand`` while the reference's stayed."""
        moved = np.flatnonzero(differ(self.predict(self.candidate, batch), base_cand))
        if not moved.size:
            return moved
        sub = {k: v[moved] for k, v in batch.items()}
        cand = self.predict(self.candidate, sub)  # again, on exactly the rows the reference sees
        ref = self.predict(self.reference, sub)
        return moved[differ(cand, base_cand) & ~differ(ref, base_ref)]


def _texts(batches: list[Batch], names: list[str], ids: str, static: bool,
           options: DiffOptions) -> list[tuple[int, Batch]]:
    """The ``trigger_texts`` shortest golden texts of three tokens or more (shorter ones only when there are not
    enough), each as its real tokens (by its attention mask) unless the model's sequence length is fixed, cut to
    ``max_text_tokens``; with each its index in golden order. The cost of the search grows with the length of
    the texts, and a trigger works in a short text as in a long one."""
    texts: list[tuple[int, Batch]] = []
    mask = next((n for n in names if "mask" in n), None)
    index = 0
    for b in batches:
        for r in range(len(b[ids])):
            row = {n: np.asarray(b[n][r]) for n in names}
            if not static:
                if mask is not None:
                    keep = row[mask] != 0
                    row = {n: v[keep] for n, v in row.items()}
                row = {n: v[: options.max_text_tokens] for n, v in row.items()}
            if len(row[ids]):
                texts.append((index, row))
            index += 1
            if len(texts) >= MAX_CANDIDATE_TEXTS:
                break
        if len(texts) >= MAX_CANDIDATE_TEXTS:
            break
    texts.sort(key=lambda t: (len(t[1][ids]) < 3, len(t[1][ids])))
    return sorted(texts[: options.trigger_texts], key=lambda t: t[0])


def _insert(text: Batch, ids: str, tokens: np.ndarray, static: bool) -> Batch:
    """``len(tokens)`` rows: ``text`` with one token inserted after its first (or first when it has one token);
    the mask gets a 1, the token types repeat their neighbour; a fixed length drops the last column."""
    length = len(text[ids])
    pos = 1 if length >= 2 else 0
    out: Batch = {}
    for name, v in text.items():
        rows = np.empty((len(tokens), length + 1), v.dtype)
        rows[:, :pos] = v[:pos]
        rows[:, pos + 1:] = v[pos:]
        if name == ids:
            rows[:, pos] = tokens
        elif "mask" in name:
            rows[:, pos] = 1
        else:
            rows[:, pos] = v[max(pos - 1, 0)]
        out[name] = rows[:, :length] if static else rows
    return out


def _findings(hits: list[Hit], scattered: int, kind: str, file: str) -> list[Finding]:
    findings = [rules.TRIGGER.finding(
        f"{h.trigger} flips the candidate's prediction on {len(h.flipped)} of {h.tried} golden {kind}(s) and the "
        f"reference's on none", file) for h in hits[:MAX_HIT_FINDINGS]]
    if len(hits) > MAX_HIT_FINDINGS:
        findings.append(rules.TRIGGER.finding(f"{len(hits) - MAX_HIT_FINDINGS} more trigger(s) do the same (see "
                                              "the JSON report)", file))
    if scattered:
        findings.append(rules.TRIGGER.finding(
            f"{scattered} (trigger, {kind}) pair(s) flip the candidate's prediction and not the reference's, each "
            "trigger on fewer inputs than the reported share", file, severity=Severity.LOW))
    return findings


def _hits(flips: dict[int, list[int]], tried: int, options: DiffOptions,
          name: dict[int, str], token: bool) -> tuple[list[Hit], int]:
    need = max(1, math.ceil(options.trigger_share * tried))
    hits = [Hit(name[t], t if token else None, tuple(v), tried) for t, v in flips.items() if len(v) >= need]
    hits.sort(key=lambda h: (-len(h.flipped), h.trigger))
    scattered = sum(len(v) for v in flips.values() if len(v) < need)
    return hits, scattered


def text_search(pair: _Pair, batches: list[Batch], vocab: int, options: DiffOptions, file: str,
                progress: Progress = silent) -> TriggerSearch | str:
    """Every token id below ``vocab`` inserted into the golden texts; a note (str) when the model is not one."""
    model_inputs = list(pair.reference.inputs)
    ids = next(n for n in model_inputs if n.endswith("input_ids"))
    if any(n not in TEXT_INPUTS and not n.endswith("input_ids") for n in model_inputs):
        return "the model takes inputs besides token ids, mask and types; the token search was not run"
    if any(n not in batches[0] for n in model_inputs):
        return "the golden inputs lack an input of the model; the token search was not run"
    spec = pair.reference.specs.get(ids)
    static = spec is not None and spec.shape is not None and len(spec.shape) == 2 and isinstance(spec.shape[1], int)
    texts = _texts(batches, model_inputs, ids, static, options)
    if not texts:
        return "the golden set has no texts; the token search was not run"
    started = time.perf_counter()
    count = min(vocab, options.max_tokens)
    tokens = np.arange(count, dtype=texts[0][1][ids].dtype)
    flips: dict[int, list[int]] = {}
    for i, (golden_index, text) in enumerate(texts):
        progress(Event("triggers", f"tokens in text {i + 1} of {len(texts)}", i, len(texts)))
        one = {k: v[None, :] for k, v in text.items()}
        base_ref, base_cand = pair.predict(pair.reference, one), pair.predict(pair.candidate, one)
        rows = max(1, options.batch_tokens // (len(text[ids]) + 1))
        for start in range(0, count, rows):
            block = tokens[start:start + rows]
            for row in pair.candidate_only(_insert(text, ids, block, static), base_ref, base_cand):
                flips.setdefault(int(block[row]), []).append(golden_index)
    progress(Event("triggers", f"{count} tokens x {len(texts)} texts", len(texts), len(texts), done=True))
    hits, scattered = _hits(flips, len(texts), options, {t: f"token {t}" for t in flips}, token=True)
    return TriggerSearch("text", pair.output, count, len(texts), pair.rows, time.perf_counter() - started,
                         tuple(hits), scattered, tuple(_findings(hits, scattered, "text", file)), vocab)


def _layout(shape: tuple[int, ...]) -> str | None:
    if len(shape) != 4:
        return None
    if shape[1] in CHANNELS and min(shape[2], shape[3]) >= 4:
        return "NCHW"
    if shape[3] in CHANNELS and min(shape[1], shape[2]) >= 4:
        return "NHWC"
    return None


def _patches(images: np.ndarray, layout: str, size: int, lo: float, hi: float) -> tuple[list[str], np.ndarray]:
    """Every patch (of the values ``lo`` and ``hi``) applied to one image ``images`` (1, ...): the names, and the
    changed copies stacked."""
    h, w = (images.shape[2], images.shape[3]) if layout == "NCHW" else (images.shape[1], images.shape[2])
    s = min(size, h, w)
    spots = {"top-left": (0, 0), "top-right": (0, w - s), "bottom-left": (h - s, 0),
             "bottom-right": (h - s, w - s), "centre": ((h - s) // 2, (w - s) // 2)}
    checker = np.where((np.add.outer(np.arange(s), np.arange(s)) % 2) == 0, hi, lo)
    fills = {"min": np.full((s, s), lo), "max": np.full((s, s), hi), "checker": checker}
    names, copies = [], []
    for fill_name, fill in fills.items():
        for spot, (y, x) in spots.items():
            img = images[0].copy()
            if layout == "NCHW":
                img[:, y:y + s, x:x + s] = fill
            else:
                img[y:y + s, x:x + s, :] = fill[:, :, None]
            names.append(f"patch {fill_name} {s}x{s} at {spot}")
            copies.append(img)
    return names, np.stack(copies)


def image_search(pair: _Pair, batches: list[Batch], name: str, layout: str, options: DiffOptions, file: str,
                 progress: Progress = silent) -> TriggerSearch:
    """Small patches on a few golden images."""
    started = time.perf_counter()
    rows = [{k: v[r:r + 1] for k, v in b.items()} for b in batches for r in range(len(b[name]))]
    rows = rows[: options.trigger_images]  # the first images, in golden order: index i is golden example i
    low = min(float(r[name].min()) for r in rows)
    high = max(float(r[name].max()) for r in rows)
    flips: dict[int, list[int]] = {}
    names: list[str] = []
    for i, row in enumerate(rows):
        progress(Event("triggers", f"patches on image {i + 1} of {len(rows)}", i, len(rows)))
        names, patched = _patches(row[name], layout, options.patch, low, high)
        batch = {k: (patched if k == name else np.repeat(v, len(names), axis=0)) for k, v in row.items()}
        base_ref, base_cand = pair.predict(pair.reference, row), pair.predict(pair.candidate, row)
        for j in pair.candidate_only(batch, base_ref, base_cand):
            flips.setdefault(int(j), []).append(i)
    progress(Event("triggers", f"{len(names)} patches x {len(rows)} images", len(rows), len(rows), done=True))
    hits, scattered = _hits(flips, len(rows), options, dict(enumerate(names)), token=False)
    return TriggerSearch("image", pair.output, len(names), len(rows), pair.rows, time.perf_counter() - started,
                         tuple(hits), scattered, tuple(_findings(hits, scattered, "image", file)))


def search(reference: Runner, candidate: Runner, batches: list[Batch], prediction: tuple[str, str] | None,
           vocab: int | None, options: DiffOptions, file: str, progress: Progress = silent) -> TriggerSearch | str:
    """The trigger search that fits the model (text or image), or a note saying why none was run."""
    if prediction is None:
        return "no output predicts a label (scores or labels); the trigger search was not run"
    output, role = prediction
    if role not in (SCORES, LABELS):
        return "no classifier output; the trigger search was not run"
    pair = _Pair(reference, candidate, output, role)
    if any(n.endswith("input_ids") for n in reference.inputs):
        if vocab is None or vocab < 1:
            return "no vocabulary size (no tokenizer, no token embedding); the token search was not run"
        return text_search(pair, batches, vocab, options, file, progress)
    for name in reference.inputs:
        value = batches[0].get(name)
        if value is not None and value.dtype.kind == "f":
            layout = _layout(value.shape)
            if layout is not None:
                return image_search(pair, batches, name, layout, options, file, progress)
    return "neither a text nor an image model; the trigger search was not run"
