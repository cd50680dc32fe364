"""Variants of a model (optimized, quantized), the accuracy gate, and choosing the fastest that passes.

The gate judges a variant against the SOURCE framework's reference outputs on the golden set, never
against another ONNX file: drift accumulates, and a variant that only agrees with another variant has
not shown that it gives the source model's answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnxguard import bundle, staging
from onnxguard import scan as scanner
from onnxguard.accuracy import parity
from onnxguard.accuracy.parity import ParityReport, Tolerance
from onnxguard.accuracy.thresholds import GATE
from onnxguard.bundle import golden as golden_files
from onnxguard.bundle.golden import Batch, GoldenSet
from onnxguard.bundle.manifest import Step
from onnxguard.errors import CheckFailed, InputError, Remedy
from onnxguard.model import onnxfile
from onnxguard.progress import Event, Progress, silent
from onnxguard.scan.interface import Severity
from onnxguard.speed import bench

__all__ = ["GATE", "MIN_GAIN", "Candidate", "GateFailed", "Kept", "Selection", "calibration", "check_output", "derive",
           "gate", "keep", "measure_batch", "scanned_model", "select"]

# A candidate must be this much faster than a simpler one to be preferred (timing noise on shared CPUs).
MIN_GAIN = 0.03


@dataclass
class Candidate:
    """A variant of the model: how it was made, its gate report and its timing (or why it could not be made)."""

    name: str
    model: onnx.ModelProto
    steps: list[Step] = field(default_factory=list)
    gate: ParityReport | None = None
    p50_ms: float | None = None
    error: str | None = None
    eligible: bool = True  # False: timed as a baseline only (an explicit quantization mode asks for a quantized model)
    tolerance: Tolerance | None = None  # None: the gate's; FP32 variants are held to the export's strict parity

    @property
    def size(self) -> int:
        return self.model.ByteSize()

    def figures(self) -> dict:
        d: dict = {"name": self.name, "size": self.size, "steps": [s.name for s in self.steps]}
        if self.gate is not None:
            d["gate_passed"] = self.gate.passed
            d["gate"] = {o.name: {"max_abs": o.max_abs, "min_cosine": o.min_cosine,
                                  "label_agreement": o.label_agreement}
                         for o in self.gate.outputs}
        if self.p50_ms is not None:
            d["p50_ms"] = round(self.p50_ms, 4)
        if self.error:
            d["error"] = self.error
        return d


def gate(model: onnx.ModelProto, golden: GoldenSet, roles: dict[str, str], tolerance: Tolerance = GATE) -> ParityReport:
    """Compare ``model`` with the source framework's reference outputs stored in ``golden``."""
    return parity.parity(model, golden, roles, tolerance)


def measure_batch(golden: GoldenSet, batch_size: int) -> Batch:
    """The golden batch with the most rows (for text: the padded spread of lengths), resized to ``batch_size``."""
    widest = max(golden.inputs, key=lambda b: (len(next(iter(b.values()))), next(iter(b.values())).size))
    return bench.resize(widest, batch_size)


@dataclass(frozen=True)
class Selection:
    """The chosen variant among all candidates, and why."""

    winner: Candidate
    candidates: tuple[Candidate, ...]
    reason: str
    batch_size: int
    threads: int
    forced: bool = False

    def step(self) -> Step:
        gate = GATE if self.winner.gate is None else self.winner.gate.tolerance
        return Step(name="select", settings={"batch_size": self.batch_size, "threads": self.threads,
                                             "gate": gate.__dict__},
                    figures={"winner": self.winner.name, "reason": self.reason, "forced": self.forced,
                             "candidates": [c.figures() for c in self.candidates]})


def _why(c: Candidate) -> str:
    failures = ", ".join(f for o in c.gate.outputs for f in o.failures) if c.gate is not None else "not gated"
    return f"{c.name}: {c.error or failures}"


def select(candidates: list[Candidate], golden: GoldenSet, roles: dict[str, str], batch_size: int, threads: int,
           tolerance: Tolerance = GATE, runs: int = 20, force: bool = False, progress: Progress = silent) -> Selection:
    """Gate every candidate, time those that pass (interleaved, same run), keep the fastest eligible one.

    The first candidate is the baseline (the plain export); a later one wins only if it is at least
    ``MIN_GAIN`` faster than the best so far, so noise never picks a more complex graph. When no eligible
    candidate passes the gate: ``CheckFailed``, or with ``force`` the first eligible one, recorded as forced.
    """
    for i, c in enumerate(candidates):
        if c.error is None:
            progress(Event("select", f"gate: {c.name}", i, len(candidates)))
            c.gate = gate(c.model, golden, roles, c.tolerance or tolerance)
    passing = [c for c in candidates if c.error is None and c.gate is not None and c.gate.passed]
    eligible = [c for c in passing if c.eligible]
    if not eligible:
        failed = "; ".join(_why(c) for c in candidates if c.eligible)
        usable = [c for c in candidates if c.eligible and c.error is None]
        if not force or not usable:
            raise CheckFailed(f"no variant passed the accuracy gate ({failed})",
                              hint="relax the gate", remedy=Remedy.FORCE)
        return Selection(usable[0], tuple(candidates), f"{usable[0].name}: FORCED past a failed gate ({failed})",
                         batch_size, threads, forced=True)
    progress(Event("select", f"timing {len(passing)} variants at batch {batch_size}, {threads} threads"))
    report = bench.bench([bench.onnx_variant(c.name, c.model) for c in passing], measure_batch(golden, batch_size),
                         bench.BenchOptions(batch_sizes=(batch_size,), threads=(threads,), warmup=3, runs=runs,
                                            max_seconds=30, memory=False))
    timed = {t.variant: t.p50_ms for t in report.timings}
    for c in passing:
        c.p50_ms = timed.get(c.name)

    def p50(c: Candidate) -> float:  # a variant the time cap left untimed is never the faster one
        return math.inf if c.p50_ms is None else c.p50_ms

    best = eligible[0]
    for c in eligible[1:]:
        if p50(c) < p50(best) * (1 - MIN_GAIN):
            best = c
    base = candidates[0]
    if best is base or base.p50_ms is None:
        reason = f"{best.name}: fastest passing variant ({p50(best):.2f} ms p50)"
    else:
        reason = (f"{best.name}: {p50(best):.2f} ms p50 vs {base.name} {base.p50_ms:.2f} ms "
                  f"({base.p50_ms / p50(best):.2f}x), gate passed")
    progress(Event("select", reason))
    return Selection(best, tuple(candidates), reason, batch_size, threads)


def _refuse_sealed(parent) -> None:
    if parent.manifest.sealed is not None:
        raise InputError(f"{parent.path}: the bundle is sealed; a variant of it would be written in plaintext",
                         hint="unseal it to a new directory first, then seal the variant's bundle again")


def _file_bytes(parent, rel: str) -> bytes:
    """A parent file's bytes as they were hashed when the bundle was opened (never a second read of the disk)."""
    return parent.file(rel) if hasattr(parent, "file") else parent.data[rel]


def derive(parent, model: onnx.ModelProto, step: Step, report: ParityReport, target: str | Path,
           forced: bool = False, overwrite: bool = False) -> bundle.Bundle:
    """A new bundle holding ``model`` in place of the parent's, with the parent's golden set and assets,
    the step appended to the manifest, and ``report`` (the gate against the source) as its parity.

    ``parent`` is an opened bundle (``trust.open_bundle``) or a read one (``bundle.read``); a sealed parent is
    refused, since its variant would hold the plaintext."""
    _refuse_sealed(parent)
    m = parent.manifest
    data = model.SerializeToString()
    assets = {rel: _file_bytes(parent, rel) for rel in m.files if rel not in (m.model.file, bundle.GOLDEN)}
    step = step.model_copy(update={"figures": {**step.figures, "forced": forced}}) if forced else step
    model_entry = m.model.model_copy(update={
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import}, "ir_version": model.ir_version})
    manifest = m.model_copy(update={"steps": [*m.steps, step], "parity": parity.summary(report), "model": model_entry})
    return bundle.write(target, manifest, data, parent.golden(), assets, overwrite=overwrite, inputs=[parent.path])


def scanned_model(path: str | Path, policy: scanner.Policy | None = None, fail_on: Severity = Severity.MEDIUM,
                  progress: Progress = silent) -> onnx.ModelProto:
    """An .onnx file to make a variant of: read once, scanned (``policy``, default profile) and refused with
    ``CheckFailed`` naming the worst finding when any is at or above ``fail_on``, then parsed from the same bytes."""
    data = onnxfile.read_file(path)
    report = scanner.scan_bytes(data, str(path), policy, Path(path).absolute().parent, progress)
    failing = report.at_or_above(fail_on)
    if failing:
        worst = max(failing, key=lambda f: f.severity)
        raise CheckFailed(f"{path}: refused, {len(failing)} scan finding(s) at or above {fail_on.label}, worst: "
                          f"{worst.severity.label} {worst.check}: {worst.message}",
                          hint="see the whole report with a scan of the file; make variants only of models you trust")
    return onnxfile.parse(data, str(path))


def check_output(output: str | Path, *, parent=None, overwrite: bool = False, inputs: Sequence[Path] = ()) -> None:
    """Refuse, before any work, an output a variant cannot be written to: a bundle beside ``parent`` (never
    inside, over or around it), else an .onnx file; never one of ``inputs``."""
    if parent is not None:
        _refuse_sealed(parent)
        bundle.check_writable(Path(output), overwrite, inputs=[parent.path, *inputs])
    else:
        staging.check_output(output, inputs=inputs, overwrite=overwrite, kind="file")


class GateFailed(CheckFailed):
    """A variant failed the accuracy gate and was not kept; ``report`` says by how much."""

    def __init__(self, message: str, report: ParityReport, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.report = report


@dataclass(frozen=True)
class Kept:
    """A variant written to disk: a bundle derived from its parent, or an .onnx file."""

    path: Path
    size: int  # bytes of the model
    gate: ParityReport | None  # None: not gated (an .onnx file without reference outputs)
    forced: bool = False
    bundle: bundle.Bundle | None = None


def keep(model: onnx.ModelProto, output: str | Path, step: Step, *, parent=None, golden_npz: Path | None = None,
         tolerance: Tolerance = GATE, force: bool = False, overwrite: bool = False,
         inputs: Sequence[Path] = ()) -> Kept:
    """Gate a variant against the SOURCE framework's outputs and write it.

    From a bundle (``parent``): gated against its golden set and written as a new bundle (see ``derive``).
    From an .onnx file: gated against ``golden_npz`` when given (an .npz holding reference outputs, such as a
    bundle's golden.npz), then written as an .onnx file. A variant that fails the gate is not written
    (``GateFailed``, carrying the report) unless ``force``. The output is checked before any work: it must be
    writable and must not be, hold or lie inside ``inputs`` or the parent bundle.
    """
    output = Path(output)
    check_output(output, parent=parent, overwrite=overwrite, inputs=[*inputs, *([golden_npz] if golden_npz else [])])
    if parent is not None:
        roles = {o.name: o.role for o in parent.manifest.model.outputs if o.role}
        gated = gate(model, parent.golden(), roles, tolerance)
        _refuse_failed(gated, output, force)
        b = derive(parent, model, step, gated, output, forced=not gated.passed, overwrite=overwrite)
        return Kept(b.path, b.manifest.model.size, gated, not gated.passed, b)
    references = golden_files.load(golden_npz) if golden_npz is not None else None
    if references is not None and references.references is None:
        raise InputError(f"{golden_npz}: holds inputs only; the gate needs reference outputs",
                         hint="give a golden set with the source's outputs, such as a bundle's golden.npz")
    report = gate(model, references, {}, tolerance) if references is not None else None
    if report is not None:
        _refuse_failed(report, output, force)
    return Kept(output, onnxfile.save(model, output), report, report is not None and not report.passed)


def _refuse_failed(report: ParityReport, output: Path, force: bool) -> None:
    """``GateFailed`` for a variant that failed the gate, unless ``force`` keeps it."""
    if not report.passed and not force:
        raise GateFailed(f"the variant fails the accuracy gate; nothing written to {output}", report,
                         hint="relax the gate", remedy=Remedy.FORCE)


def calibration(path: Path | None, golden: GoldenSet | None = None,
                tokenize: Callable[[list[str]], list[Batch]] | None = None) -> tuple[Batch, ...]:
    """Static quantization's calibration inputs: an .npz of inputs, a texts file (tokenized with ``tokenize``),
    or, when ``path`` is None, the golden set's inputs."""
    if path is None:
        if golden is None:
            raise InputError("static quantization needs calibration inputs",
                             hint="give an .npz of model inputs, or a bundle (its golden set is used)")
        return tuple(golden.inputs)
    if Path(path).suffix == ".npz":
        return tuple(golden_files.load(path).inputs)
    if tokenize is None:
        raise InputError(f"{path}: a texts file needs a model with a tokenizer",
                         hint="give an .npz of model inputs instead")
    return tuple(tokenize(golden_files.read_texts(path)))
