"""``parity.parity(model, golden, roles, Tolerance) -> ParityReport``: ONNX Runtime against the source framework.

Each output is compared on every golden example: max and mean absolute difference, the minimum cosine
similarity between an example's output vectors, and for classifier outputs the share of examples whose
predicted label agrees. An output passes when every element satisfies ``|onnx - ref| <= atol + rtol * |ref|``
and the cosine and label-agreement floors hold.

For class scores the cosine is taken between class probabilities (the scores as they are when they already are
probabilities, else their softmax). On logits it would not measure closeness for a few classes: a two-class
head's logits are often each other's negatives, so every example's cosine is +1 or -1, and one example whose
coin-toss margin flipped would fail a gate that allows 1 % of labels to differ. On probabilities that example
reads as nearly 1, and a confident answer turned round still reads as far from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx

from onnxguard import runtime
from onnxguard.bundle.golden import Batch, GoldenSet
from onnxguard.errors import InputError

# Output roles: how an output is judged.
SCORES = "scores"  # logits or probabilities over classes: label agreement is argmax over the last axis
LABELS = "labels"  # predicted class labels: agreement is equality
VALUES = "values"  # anything else (embeddings, regression values)


@dataclass(frozen=True)
class Tolerance:
    """How close outputs must be to the references: per-element atol/rtol, cosine and label agreement."""

    atol: float = 1e-4
    rtol: float = 1e-3
    min_cosine: float = 0.9999
    min_label_agreement: float = 1.0


@dataclass(frozen=True)
class OutputParity:
    """One output compared with its references over the golden set: its figures and its failures."""

    name: str
    role: str
    items: int
    max_abs: float
    mean_abs: float
    min_cosine: float | None
    label_agreement: float | None
    passed: bool
    failures: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParityReport:
    """Every output compared with its references; passed when all of them are within the tolerance."""

    outputs: tuple[OutputParity, ...]
    tolerance: Tolerance
    batches: int
    items: int
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(both_zero, 1.0, (a * b).sum(axis=1) / (na * nb))
    return np.nan_to_num(cos, nan=0.0)


def _probabilities(scores: np.ndarray) -> np.ndarray:
    """One batch of scores over classes (the last axis) as probabilities, one row per example: kept when they
    already are (in [0, 1], summing to 1), else their softmax. A single score per example stays as it is."""
    z = scores.astype(np.float64)
    if z.ndim < 2 or z.shape[-1] < 2:
        return z.reshape(len(z), -1)
    if not (((z >= 0) & (z <= 1)).all() and np.allclose(z.sum(-1), 1.0, atol=1e-3)):
        e = np.exp(z - z.max(-1, keepdims=True))
        z = e / e.sum(-1, keepdims=True)
    return z.reshape(len(z), -1)


def compare_output(name: str, role: str, refs: list[np.ndarray], outs: list[np.ndarray],
                   tol: Tolerance) -> OutputParity:
    """Compare one output with its references as its ``role`` (scores, labels, values) asks, within ``tol``."""
    failures = []
    items = sum(len(r) for r in refs)
    if any(r.shape != o.shape for r, o in zip(refs, outs, strict=True)):
        shapes = next(f"{r.shape} vs {o.shape}" for r, o in zip(refs, outs, strict=True) if r.shape != o.shape)
        return OutputParity(name, role, items, float("inf"), float("inf"), None, None, False,
                            (f"shape differs: {shapes}",))
    if refs[0].dtype.kind in "USO" or role == LABELS:
        agree = sum(int((r == o).sum()) for r, o in zip(refs, outs, strict=True)) / max(items, 1)
        if agree < tol.min_label_agreement:
            failures.append(f"label agreement {agree:.2%} < {tol.min_label_agreement:.2%}")
        return OutputParity(name, role, items, 0.0, 0.0, None, agree, not failures, tuple(failures))
    # Each batch is flattened on its own: per-token outputs have rows of a different length in each batch.
    ref_rows = [r.reshape(len(r), -1).astype(np.float64) for r in refs]
    out_rows = [o.reshape(len(o), -1).astype(np.float64) for o in outs]
    ref, out = np.concatenate([r.ravel() for r in ref_rows]), np.concatenate([o.ravel() for o in out_rows])
    diff = np.abs(out - ref)
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff.mean()) if diff.size else 0.0
    if not np.isfinite(out).all() and np.isfinite(ref).all():
        failures.append("non-finite values in the ONNX output")
    over = diff > tol.atol + tol.rtol * np.abs(ref)
    if over.any():
        failures.append(f"{int(over.sum())} element(s) beyond atol {tol.atol:g} + rtol {tol.rtol:g} "
                        f"(max |diff| {max_abs:.3g})")
    if role == SCORES and np.isfinite(out).all():  # class probabilities (see the module's docstring)
        ref_rows, out_rows = [_probabilities(r) for r in refs], [_probabilities(o) for o in outs]
    min_cos = min((float(_cosines(o, r).min()) for o, r in zip(out_rows, ref_rows, strict=True) if len(r)),
                  default=1.0)
    if min_cos < tol.min_cosine:
        failures.append(f"min cosine {min_cos:.6f} < {tol.min_cosine}")
    agreement = None
    if role == SCORES:
        agree = sum(int((np.argmax(r, -1) == np.argmax(o, -1)).sum()) for r, o in zip(refs, outs, strict=True))
        agreement = agree / max(sum(np.argmax(r, -1).size for r in refs), 1)
        if agreement < tol.min_label_agreement:
            failures.append(f"label agreement {agreement:.2%} < {tol.min_label_agreement:.2%}")
    return OutputParity(name, role, items, max_abs, mean_abs, min_cos, agreement, not failures, tuple(failures))


def compare(references: list[Batch] | tuple[Batch, ...], outputs: list[Batch], roles: dict[str, str],
            tolerance: Tolerance = Tolerance(), notes: tuple[str, ...] = ()) -> ParityReport:
    """Compare per-batch outputs with per-batch references, output by output."""
    if not references:
        raise InputError("the golden set holds no reference outputs to compare with")
    names = [n for n in references[0] if n in outputs[0]]
    if not names:
        raise InputError(f"no output in common: references have {sorted(references[0])}, model gives "
                         f"{sorted(outputs[0])}")
    report = tuple(
        compare_output(n, roles.get(n, VALUES), [r[n] for r in references], [o[n] for o in outputs], tolerance)
        for n in names
    )
    items = sum(len(next(iter(r.values()))) for r in references)
    return ParityReport(report, tolerance, len(references), items, notes)


def parity(model: onnx.ModelProto | bytes, golden: GoldenSet, roles: dict[str, str],
           tolerance: Tolerance = Tolerance(), notes: tuple[str, ...] = ()) -> ParityReport:
    """Run ``golden``'s inputs through ONNX Runtime (see :mod:`onnxguard.runtime`) and compare with its reference
    outputs."""
    if golden.references is None:
        raise InputError("the golden set has no reference outputs; run the source framework first")
    outputs = runtime.run(runtime.session(model), golden.inputs)
    return compare(golden.references, outputs, roles, tolerance, notes)


def summary(report: ParityReport):
    """The manifest's record of a parity report (``manifest.Parity``): what passed, under which tolerance."""
    from onnxguard.bundle.manifest import Parity

    d = report.to_dict()
    return Parity(passed=report.passed, tolerance=d["tolerance"], batches=report.batches, items=report.items,
                  outputs=d["outputs"], notes=list(report.notes))


def golden_from_source(source, golden_npz=None, texts=None, progress=None, stage: str = "golden"):
    """The golden set of ``source`` (a loaded ``convert.Source``): its inputs from ``golden_npz`` (an .npz of
    inputs), from ``texts`` (a file of texts, tokenized as the source does), or generated by the source, and the
    SOURCE framework's outputs on them as references. A text model without ``texts`` is judged on the built-in
    real sentences (padded right and left) and the signature's edge cases: random token ids put a classifier's
    class margins a hair apart, so a gate on them judges noise. Returns ``(GoldenSet, origin)``, origin being
    ``"npz"``, ``"texts"``, ``"builtin"`` or ``"signature"``. Build and the parity verb share it, so both judge the
    same way."""
    from onnxguard.bundle import golden as golden_files
    from onnxguard.progress import Event, silent

    progress = progress or silent
    if golden_npz is not None:
        inputs, origin = list(golden_files.load(golden_npz).inputs), "npz"
    elif texts is not None:
        inputs, origin = source.texts_inputs(golden_files.read_texts(texts)), "texts"
    elif (source.preprocessing or {}).get("kind") == "tokenizer":
        inputs, origin = [*source.texts_inputs(golden_files.builtin_texts()), *source.golden_inputs()], "builtin"
    else:
        inputs, origin = source.golden_inputs(), "signature"
    references = []
    for i, batch in enumerate(inputs):
        progress(Event(stage, f"running {source.framework} on batch {i + 1}/{len(inputs)}", i, len(inputs)))
        references.append(source.run(batch))
    return GoldenSet(tuple(inputs), tuple(references)), origin
