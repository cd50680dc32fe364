"""Variants of a model (optimized, quantized), the accuracy gate, and choosing the fastest that passes.

The gate judges a variant against the SOURCE framework's reference outputs on the golden set, never
against another ONNX file: drift accumulates, and a variant that only agrees with another variant has
not shown that it gives the source model's answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnxguard.speed import bench
from onnxguard import bundle
from onnxguard.accuracy import parity
from onnxguard.bundle import Bundle
from onnxguard.errors import CheckFailed
from onnxguard.bundle.golden import Batch, GoldenSet
from onnxguard.bundle.manifest import Step
from onnxguard.accuracy.parity import ParityReport, Tolerance
from onnxguard.progress import Event, Progress, silent

# Defaults for the gate on quantized variants: they may move numbers, not answers. FP32 variants (fused,
# optimized, re-exported) must keep the strict parity of the export: a fused graph that is exact on
# right-padded batches and off on left-padded ones (MEASURED.md) is a wrong graph, not a rounding.
GATE = Tolerance(atol=1.0, rtol=0.1, min_cosine=0.99, min_label_agreement=0.99)
# A candidate must be this much faster than a simpler one to be preferred (timing noise on shared CPUs).
MIN_GAIN = 0.03


@dataclass
class Candidate:
    name: str
    model: onnx.ModelProto
    steps: list[Step] = field(default_factory=list)
    gate: ParityReport | None = None
    p50_ms: float | None = None
    error: str | None = None
    eligible: bool = True  # False: timed as a baseline only (an explicit --quantize asks for a quantized model)
    tolerance: Tolerance | None = None  # None: the gate's; FP32 variants are held to the export's strict parity

    @property
    def size(self) -> int:
        return self.model.ByteSize()

    def figures(self) -> dict:
        d: dict = {"name": self.name, "size": self.size, "steps": [s.name for s in self.steps]}
        if self.gate is not None:
            d["gate_passed"] = self.gate.passed
            d["gate"] = {o.name: {"max_abs": o.max_abs, "min_cosine": o.min_cosine, "label_agreement": o.label_agreement}
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
    winner: Candidate
    candidates: tuple[Candidate, ...]
    reason: str
    batch_size: int
    threads: int
    forced: bool = False

    def step(self) -> Step:
        return Step(name="select", settings={"batch_size": self.batch_size, "threads": self.threads,
                                             "gate": GATE.__dict__ if self.winner.gate is None else self.winner.gate.tolerance.__dict__},
                    figures={"winner": self.winner.name, "reason": self.reason, "forced": self.forced,
                             "candidates": [c.figures() for c in self.candidates]})


def _why(c: Candidate) -> str:
    return f"{c.name}: {c.error or ', '.join(f for o in c.gate.outputs for f in o.failures)}"


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
    passing = [c for c in candidates if c.error is None and c.gate.passed]
    eligible = [c for c in passing if c.eligible]
    if not eligible:
        failed = "; ".join(_why(c) for c in candidates if c.eligible)
        usable = [c for c in candidates if c.eligible and c.error is None]
        if not force or not usable:
            raise CheckFailed(f"no variant passed the accuracy gate ({failed}); --force keeps it anyway")
        return Selection(usable[0], tuple(candidates), f"{usable[0].name}: FORCED past a failed gate ({failed})",
                         batch_size, threads, forced=True)
    progress(Event("select", f"timing {len(passing)} variants at batch {batch_size}, {threads} threads"))
    report = bench.bench([bench.onnx_variant(c.name, c.model) for c in passing], measure_batch(golden, batch_size),
                         bench.BenchOptions(batch_sizes=(batch_size,), threads=(threads,), warmup=3, runs=runs,
                                            max_seconds=30, memory=False))
    for t in report.timings:
        next(c for c in passing if c.name == t.variant).p50_ms = t.p50_ms
    best = eligible[0]
    for c in eligible[1:]:
        if c.p50_ms < best.p50_ms * (1 - MIN_GAIN):
            best = c
    base = candidates[0]
    if best is base or base.p50_ms is None:
        reason = f"{best.name}: fastest passing variant ({best.p50_ms:.2f} ms p50)"
    else:
        reason = (f"{best.name}: {best.p50_ms:.2f} ms p50 vs {base.name} {base.p50_ms:.2f} ms "
                  f"({base.p50_ms / best.p50_ms:.2f}x), gate passed")
    progress(Event("select", reason))
    return Selection(best, tuple(candidates), reason, batch_size, threads)


def derive(parent: Bundle, model: onnx.ModelProto, step: Step, report: ParityReport, target: str | Path,
           forced: bool = False, overwrite: bool = False) -> Bundle:
    """A new bundle holding ``model`` in place of the parent's, with the parent's golden set and assets,
    the step appended to the manifest, and ``report`` (the gate against the source) as its parity."""
    from onnxguard.build import parity_summary

    m = parent.manifest
    data = model.SerializeToString()
    assets = {rel: parent.path / rel for rel in m.files if rel not in (m.model.file, bundle.GOLDEN)}
    step = step.model_copy(update={"figures": {**step.figures, "forced": forced}}) if forced else step
    model_entry = m.model.model_copy(update={
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import}, "ir_version": model.ir_version})
    manifest = m.model_copy(update={"steps": [*m.steps, step], "parity": parity_summary(report), "model": model_entry})
    return bundle.write(target, manifest, data, parent.golden(), assets, overwrite=overwrite)
