"""``mixed.search(model, golden, roles, tolerance) -> Mixed``: dynamic INT8 that leaves its most sensitive MatMuls in
FP32, as Neural Compressor's and Olive's accuracy-aware tuners do.

1. Each quantizable MatMul's dynamic-INT8 error is measured on the golden set (:mod:`onnxguard.speed.sensitivity`:
   one FP32 pass, then numpy), with the weights per tensor and per channel. The graph is smoothed
   (:mod:`onnxguard.speed.smooth`: activation outliers moved into the weights) and measured again; the smoothed
   graph is kept when the simulation says it cuts the error by ``1 - SMOOTH_GAIN`` at least.
2. Per-channel weights are chosen when the simulation says they cut the summed squared error by at least
   ``1 - PER_CHANNEL_GAIN`` (the activations have no such choice: ONNX Runtime's dynamic quantization only has
   ``DynamicQuantizeLinear``, uint8 asymmetric with one scale per tensor).
3. ONNX Runtime quantizes the model with the ``k`` most sensitive nodes excluded (``nodes_to_exclude``), ``k``
   growing (0 with per-channel weights, then 1, 2, 4, ...), and each try is gated against the source's outputs,
   until one passes, ``MAX_TRIES`` tries were made, ``MAX_SHARE`` of the nodes would stay in FP32, or a try cut the
   error by less than ``MIN_PROGRESS`` (the error is spread over many nodes, as in a random-weight model: leaving a
   few more in FP32 will not make it pass).

The plan (which nodes stay FP32, their sensitivity and why, per-channel or not) and every try are recorded in the
manifest's quantize step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import onnx

from onnxguard import runtime
from onnxguard.accuracy import parity
from onnxguard.accuracy.parity import ParityReport, Tolerance
from onnxguard.accuracy.thresholds import GATE
from onnxguard.bundle.golden import Batch, GoldenSet
from onnxguard.bundle.manifest import Step
from onnxguard.errors import InputError, ModelError
from onnxguard.progress import Event, Progress, silent
from onnxguard.speed import quantize, sensitivity, smooth
from onnxguard.speed.quantize import QuantizeOptions, QuantizeResult
from onnxguard.speed.sensitivity import NodeSensitivity, Sensitivity

MAX_TRIES = 4
MAX_SHARE = 0.5  # beyond half the MatMuls in FP32, INT8 has little speed left to give
PER_CHANNEL_GAIN = 0.8
MIN_PROGRESS = 0.1  # a try must cut the mean |error| by a tenth to be worth another
SMOOTH_GAIN = 0.8  # smoothing is kept when the simulation says it cuts the summed squared error by a fifth
SENSITIVITY_BATCHES = 16  # the golden batches the sensitivity is measured on (a spread of them)
DYNAMIC = QuantizeOptions(mode="dynamic")


@dataclass(frozen=True)
class Try:
    """One quantization the search made and gated: how many nodes stayed FP32, and the gate's figures."""

    fp32_nodes: int
    per_channel: bool
    passed: bool
    mean_abs: float
    max_abs: float
    min_cosine: float | None
    label_agreement: float | None
    failures: tuple[str, ...]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["failures"] = list(self.failures)
        return d


@dataclass(frozen=True)
class Mixed:
    """The search's outcome: the model of the passing try (else of the try with the smallest error), the nodes it
    keeps in FP32, the weights' scales, the sensitivity measured, and every try."""

    result: QuantizeResult
    passed: bool
    fp32_nodes: tuple[NodeSensitivity, ...]
    per_channel: bool
    why_per_channel: str
    sensitivity: Sensitivity
    tries: tuple[Try, ...]
    stopped: str  # why the search stopped
    smoothing: dict | None = None  # SmoothQuant's settings and why it was kept or not (None: not tried)

    def step(self) -> Step:
        """The manifest's quantize step: the options' settings with the plan, the figures with every try."""
        settings = {**self.result.options.settings(), "mixed_precision": True,
                    "per_channel_why": self.why_per_channel, "smoothing": self.smoothing,
                    "fp32_nodes": [{**n.to_dict(), "error": round(n.error(self.per_channel), 5)}
                                   for n in self.fp32_nodes]}
        s = self.sensitivity
        figures = {"size_before": self.result.size_before, "size_after": self.result.size_after,
                   "preprocessed": self.result.preprocessed, "passed": self.passed, "stopped": self.stopped,
                   "quantized_nodes": len(s.nodes) - len(self.fp32_nodes), "tries": [t.to_dict() for t in self.tries],
                   "sensitivity": {"batches": s.batches, "rows": s.rows, "seconds": round(s.seconds, 2),
                                   "method": "one FP32 pass; DynamicQuantizeLinear and int8 weights simulated in "
                                             "numpy; relative RMS error of each MatMul's output",
                                   "ranked": [n.to_dict() for n in s.ranked(self.per_channel)]}}
        return Step(name="quantize", settings=settings, figures=figures)


def schedule(nodes: int, per_channel: bool) -> list[int]:
    """How many of the most sensitive nodes each try leaves in FP32: 0 (only when per-channel weights are new
    against the plain per-tensor variant), then 1, 2, 4, ... up to ``MAX_SHARE`` of ``nodes``, ``MAX_TRIES`` at most."""
    cap = max(1, math.floor(nodes * MAX_SHARE))
    counts = [0] if per_channel else []
    k = 1
    while k < cap and len(counts) < MAX_TRIES - 1:
        counts.append(k)
        k *= 2
    counts.append(cap)
    return sorted(set(counts))[:MAX_TRIES]


def _sample(golden: GoldenSet) -> list[Batch]:
    """A spread of at most ``SENSITIVITY_BATCHES`` golden batches."""
    batches = list(golden.inputs)
    return batches[:: max(1, -(-len(batches) // SENSITIVITY_BATCHES))]


def _worst_mean_abs(report: ParityReport) -> float:
    return max(o.mean_abs for o in report.outputs)


def search(model: onnx.ModelProto, golden: GoldenSet, roles: dict[str, str], tolerance: Tolerance = GATE,
           options: QuantizeOptions = DYNAMIC, threads: int = 0, alpha: float = smooth.ALPHA,
           progress: Progress = silent) -> Mixed:
    """Dynamic INT8 of ``model`` with its most sensitive MatMuls in FP32, the fewest that pass ``tolerance``
    against ``golden``'s reference outputs (see the module's docstring). When no try passes, the try with the
    smallest error is returned with ``passed`` False. ``alpha``: SmoothQuant's migration strength (0: none); the
    smoothed graph is used when the simulation says it cuts the error by ``1 - SMOOTH_GAIN`` at least."""
    if golden.references is None:
        raise InputError("the golden set has no reference outputs; run the source framework first")
    options = quantize.resolved(dataclasses.replace(options, mode="dynamic"))
    sample = _sample(golden)
    sens = sensitivity.measure(model, sample, bool(options.reduce_range), threads, progress)
    smoothing = None
    if alpha:
        smoothed = smooth.smooth(model, sens.maxima, alpha)
        if smoothed.activations:
            progress(Event("quantize", f"mixed INT8: smoothing {len(smoothed.activations)} activations"))
            after = sensitivity.measure(smoothed.model, sample, bool(options.reduce_range), threads, progress)
            before_total, after_total = min(sens.total(False), sens.total(True)), min(after.total(False),
                                                                                      after.total(True))
            kept = after_total < SMOOTH_GAIN * before_total
            smoothing = {**smoothed.settings(), "kept": kept,
                         "why": f"simulated squared error summed over the nodes: {after_total:.3g} smoothed, "
                                f"{before_total:.3g} not"}
            if kept:
                model, sens = smoothed.model, after
    per_tensor, per_channel_total = sens.total(False), sens.total(True)
    per_channel = per_channel_total < PER_CHANNEL_GAIN * per_tensor
    why = (f"simulated squared error summed over the MatMuls: {per_channel_total:.3g} per channel, {per_tensor:.3g} "
           f"per tensor")
    ranked = [n for n in sens.ranked(per_channel) if n.node]
    tries: list[Try] = []
    best: tuple[float, QuantizeResult, int] | None = None
    stopped = "no try passed"
    for k in schedule(len(ranked), per_channel):
        progress(Event("quantize", f"mixed INT8: {k} most sensitive MatMul(s) in FP32"))
        opts = dataclasses.replace(options, per_channel=per_channel, exclude=tuple(n.node for n in ranked[:k]))
        result = quantize.quantize(model, opts, progress)
        report = parity.compare(golden.references,
                                runtime.run(runtime.session(result.model, threads=threads, name="a mixed INT8 model"),
                                            golden.inputs), roles, tolerance)
        error = _worst_mean_abs(report)
        out = report.outputs
        tries.append(Try(k, per_channel, report.passed, error, max(o.max_abs for o in out),
                         min((o.min_cosine for o in out if o.min_cosine is not None), default=None),
                         min((o.label_agreement for o in out if o.label_agreement is not None), default=None),
                         tuple(f for o in out for f in o.failures)))
        previous = best[0] if best is not None else None
        if best is None or error < best[0]:
            best = (error, result, k)
        if report.passed:
            best, stopped = (error, result, k), f"passed with {k} node(s) in FP32"
            break
        if previous is not None and error > (1 - MIN_PROGRESS) * previous:
            stopped = (f"{k} node(s) in FP32 cut the mean |error| by less than {MIN_PROGRESS:.0%} "
                       f"({previous:.3g} -> {error:.3g}): the error is spread over many nodes")
            break
    if best is None:  # schedule() always gives at least one count
        raise ModelError("mixed INT8: no quantization was tried")
    _, result, k = best
    return Mixed(result, tries[-1].passed and tries[-1].fp32_nodes == k, tuple(ranked[:k]), per_channel, why, sens,
                 tuple(tries), stopped, smoothing)


def make(parent, plain, golden: GoldenSet, roles: dict[str, str], tolerance: Tolerance = GATE,
         threads: int = 0) -> tuple[onnx.ModelProto, Step]:
    """The maker of ``build``'s mixed-precision candidate (``select.Candidate.make``): the search on ``parent``'s
    model. ``plain`` is the plain dynamic INT8 candidate of the same parent, which select gates first: when it
    passed, a mix can only be slower, and this raises ``ModelError`` saying so (select records it and moves on)."""
    if plain.gate is not None and plain.gate.passed:
        raise ModelError(f"not needed: {plain.name} passed the gate")
    if parent.model is None:
        raise ModelError(f"its base {parent.name} could not be made")
    mixed = search(parent.model, golden, roles, tolerance, threads=threads)
    return mixed.result.model, mixed.step()
