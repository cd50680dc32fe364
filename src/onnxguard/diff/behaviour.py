"""The behavioural diff: both models on the same golden inputs, output by output (max and mean |diff|) and, for
classifier outputs, the examples whose predicted label differs.

The inputs are the caller's (``DiffOptions.golden``), else the reference bundle's golden set, else the
candidate bundle's, else generated from the reference's signature: token ids within the model's embedding with
an attention mask of varied lengths, images in [0, 1), normal values for other floats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxguard import runtime
from onnxguard.bundle.golden import Batch
from onnxguard.diff import rules
from onnxguard.diff.graph import Graph
from onnxguard.diff.options import DiffOptions
from onnxguard.diff.subject import Subject
from onnxguard.errors import InputError, Remedy
from onnxguard.model import onnxfile
from onnxguard.scan.interface import Finding, quote

SCORES, LABELS, VALUES = "scores", "labels", "values"
# Symbolic sequence lengths of the generated inputs (one batch each), and the vocabulary assumed when nothing says.
SEQUENCES = (16, 5)
DEFAULT_VOCAB = 100
# The most elements one generated input may have (64 MiB of float32): a shape the model only declares is never
# allocated past this.
MAX_GENERATED = 1 << 24


class Runner:
    """One model's ONNX Runtime session (made by :mod:`onnxguard.runtime`) and how its outputs are read."""

    def __init__(self, subject: Subject, model: onnx.ModelProto) -> None:
        self.subject = subject
        self.session: ort.InferenceSession = runtime.session(subject.model, model_dir=subject.model_dir,
                                                             name=subject.name)
        self.inputs = tuple(i.name for i in self.session.get_inputs())
        self.outputs = tuple(o.name for o in self.session.get_outputs())
        self.specs = {s.name: s for s in onnxfile.inputs(model)}

    def run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return runtime.run(self.session, [batch])[0]


def role_of(name: str, value: np.ndarray, roles: Mapping[str, str]) -> str:
    """How an output is read: the manifest's role, else labels for strings and integer vectors, scores for float
    matrices of two or more columns, values otherwise."""
    if name in roles:
        return roles[name]
    if value.dtype.kind in "USO" or (value.dtype.kind in "biu" and value.ndim == 1):
        return LABELS
    if value.dtype.kind == "f" and value.ndim == 2 and value.shape[-1] >= 2:
        return SCORES
    return VALUES


def labels(value: np.ndarray, role: str) -> np.ndarray:
    """The predicted labels of each row, as a (rows, k) array: the argmax over the last axis of scores, the labels
    themselves otherwise. Two rows predict the same when all their k labels agree."""
    if role == SCORES and value.ndim >= 2:
        value = np.argmax(value, axis=-1)
    return value.reshape(len(value), -1)


def differ(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Which rows of two (rows, k) label arrays predict differently."""
    return np.asarray((a != b).any(axis=1))


def prediction_output(sample: Mapping[str, np.ndarray], roles: Mapping[str, str]) -> tuple[str, str] | None:
    """The output that carries the model's prediction (a labels output first, else scores) and its role."""
    found = [(n, role_of(n, v, roles)) for n, v in sample.items()]
    return next(((n, r) for n, r in found if r == LABELS), None) or next(((n, r) for n, r in found if r == SCORES),
                                                                          None)


def _lengths(rng: np.random.Generator, rows: int, seq: int) -> np.ndarray:
    return rng.integers(max(1, seq // 2), seq + 1, rows)


def generate(graph: Graph, options: DiffOptions, vocab: int | None) -> list[Batch]:
    """Inputs for ``graph``'s model from its signature: two batches of different sizes and sequence lengths."""
    rng = np.random.default_rng(0)
    specs = onnxfile.inputs(graph.model)
    batches = []
    for rows, seq in ((options.generated_rows, SEQUENCES[0]), (2, SEQUENCES[1])):
        lengths = None
        batch: Batch = {}
        for spec in specs:
            if spec.shape is None:
                raise InputError(f"input {quote(spec.name)} has no shape to generate values from",
                                 remedy=Remedy.GOLDEN_INPUTS)
            shape = [d if isinstance(d, int) and d > 0 else (rows if i == 0 else seq)
                     for i, d in enumerate(spec.shape)]
            if shape and not isinstance(spec.shape[0], int) and math.prod(shape) > MAX_GENERATED:
                shape[0] = 1  # a large input: one row per batch
            if math.prod(shape) > MAX_GENERATED:
                raise InputError(f"input {quote(spec.name)} has shape {shape}: too large to generate values for "
                                 f"(over {MAX_GENERATED} elements)", remedy=Remedy.GOLDEN_INPUTS)
            dtype = np.dtype(spec.dtype) if spec.dtype in np.sctypeDict else None
            if dtype is None or dtype.kind not in "biuf":
                raise InputError(f"input {quote(spec.name)} is {spec.dtype}; values cannot be generated for it",
                                 remedy=Remedy.GOLDEN_INPUTS)
            if dtype.kind in "iu" and len(shape) == 2:
                if lengths is None or len(lengths) != shape[0]:
                    lengths = np.minimum(_lengths(rng, shape[0], shape[1]), shape[1])
                mask = np.arange(shape[1])[None, :] < lengths[:, None]
                if "mask" in spec.name:
                    batch[spec.name] = mask.astype(dtype)
                    continue
                if "type" in spec.name:
                    batch[spec.name] = np.zeros(shape, dtype)
                    continue
                size = graph.embedding_rows(spec.name) or vocab or DEFAULT_VOCAB
                batch[spec.name] = np.where(mask, rng.integers(min(5, size - 1), size, shape), 0).astype(dtype)
            elif dtype.kind in "iu":
                size = graph.embedding_rows(spec.name) or 2
                batch[spec.name] = rng.integers(0, size, shape).astype(dtype)
            elif dtype.kind == "b":
                batch[spec.name] = rng.integers(0, 2, shape).astype(bool)
            elif len(shape) >= 3:
                batch[spec.name] = rng.random(shape).astype(dtype)
            else:
                batch[spec.name] = rng.standard_normal(shape).astype(dtype)
        batches.append(batch)
    return batches


@dataclass(frozen=True)
class OutputDiff:
    """One output of both models on the golden inputs."""

    name: str
    role: str
    items: int
    max_abs: float | None
    mean_abs: float | None
    flips: int | None

    def to_dict(self) -> dict:
        return {"name": self.name, "role": self.role, "items": self.items, "max_abs": self.max_abs,
                "mean_abs": self.mean_abs, "label_flips": self.flips}


@dataclass(frozen=True)
class BehaviourDiff:
    """Both models on the golden inputs: where the inputs came from, and each output compared."""

    origin: str
    batches: int
    items: int
    outputs: tuple[OutputDiff, ...]
    flipped: tuple[int, ...]  # golden examples (in order over the batches) whose prediction changed
    findings: tuple[Finding, ...]
    error: str | None = None  # why the candidate could not run the inputs

    def to_dict(self) -> dict:
        return {"origin": self.origin, "batches": self.batches, "items": self.items,
                "outputs": [o.to_dict() for o in self.outputs], "flipped": list(self.flipped), "error": self.error}


def compare(reference: Runner, candidate: Runner, batches: list[Batch], origin: str, roles: Mapping[str, str],
            options: DiffOptions, file: str) -> tuple[BehaviourDiff, list[dict[str, np.ndarray]]]:
    """Both models on ``batches``; returns the diff and the reference's outputs (per batch)."""
    ref_out = [reference.run(b) for b in batches]  # the reference must run its own inputs: exit 2 otherwise
    items = sum(len(next(iter(o.values()))) for o in ref_out if o)
    try:
        cand_out = [candidate.run(b) for b in batches]
    except InputError as e:
        finding = rules.BEHAVIOUR.finding(f"the candidate cannot run the golden inputs: {e}", file,
                                          severity=rules.FLIPS.severity)
        return BehaviourDiff(origin, len(batches), items, (), (), (finding,), str(e)), ref_out
    outputs = []
    flipped: set[int] = set()
    findings = []
    for name in ref_out[0]:
        if name not in cand_out[0]:
            continue
        refs = [o[name] for o in ref_out]
        cands = [o[name] for o in cand_out]
        role = role_of(name, refs[0], roles)
        if any(r.shape != c.shape for r, c in zip(refs, cands, strict=True)):
            findings.append(rules.BEHAVIOUR.finding(f"output {quote(name)} has another shape in the candidate",
                                                    file, tensor=name))
            outputs.append(OutputDiff(name, role, items, None, None, None))
            continue
        max_abs = mean_abs = None
        if refs[0].dtype.kind in "biuf" and cands[0].dtype.kind in "biuf":
            with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is nan: a difference, made inf below
                delta = np.concatenate([np.abs(c.astype(np.float64) - r.astype(np.float64)).reshape(-1)
                                        for r, c in zip(refs, cands, strict=True)])
            same = np.concatenate([((r == c) | (np.isnan(r.astype(np.float64)) & np.isnan(c.astype(np.float64))))
                                   .reshape(-1) for r, c in zip(refs, cands, strict=True)])
            delta = np.where(same, 0.0, delta)  # equal infinities and NaN in both are no difference
            max_abs = float(np.nan_to_num(delta, nan=np.inf).max()) if delta.size else 0.0
            mean_abs = float(np.nan_to_num(delta, nan=np.inf).mean()) if delta.size else 0.0
            if max_abs > options.max_abs:
                findings.append(rules.BEHAVIOUR.finding(
                    f"output {quote(name)}: max |diff| {max_abs:.4g} on {items} golden example(s) "
                    f"(mean {mean_abs:.3g}; threshold {options.max_abs:g})", file, tensor=name))
        flips = None
        if role in (SCORES, LABELS):
            offset, flips = 0, 0
            for r, c in zip(refs, cands, strict=True):
                changed = np.flatnonzero(differ(labels(r, role), labels(c, role)))
                flipped.update(int(offset + i) for i in changed)
                flips += len(changed)
                offset += len(r)
            if flips > options.max_flips:
                findings.append(rules.FLIPS.finding(
                    f"output {quote(name)}: the predicted label differs on {flips} of {items} golden example(s)",
                    file, tensor=name))
        outputs.append(OutputDiff(name, role, items, max_abs, mean_abs, flips))
    return BehaviourDiff(origin, len(batches), items, tuple(outputs), tuple(sorted(flipped)), tuple(findings)), ref_out
