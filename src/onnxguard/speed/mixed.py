"""``mixed.search(model, golden, roles, tolerance) -> Mixed``: dynamic INT8 that leaves its most sensitive MatMuls in
FP32, as Neural Compressor's and Olive's accuracy-aware tuners do.

1. Each quantizable MatMul's dynamic-INT8 error is measured on the golden set (:mod:`onnxguard.speed.sensitivity`:
   one FP32 pass, then numpy), with the weights per tensor and per channel. Smoothing (:mod:`onnxguard.speed.smooth`:
   activation outliers moved into the weights) is simulated from the same pass for each of ``ALPHAS``; the
   smallest alpha whose simulated error is within ``ALPHA_TIE`` of the best is kept when it cuts the unsmoothed
   error by ``1 - SMOOTH_GAIN`` at least (on the MiniLM classifier of ``examples.minilm`` the simulation cannot
   tell 0.7 from 0.85 apart, 7 %, and the milder one moves the weights less).
2. Per-channel weights are chosen when the simulation says they cut the summed squared error by at least
   ``1 - PER_CHANNEL_GAIN`` (the activations have no such choice: ONNX Runtime's dynamic quantization only has
   ``DynamicQuantizeLinear``, uint8 asymmetric with one scale per tensor).
3. ONNX Runtime quantizes the model with the ``k`` most sensitive nodes excluded (``nodes_to_exclude``) and each
   try is judged by the gate itself (``tolerance`` on the golden set: per-element bound, cosine, label agreement),
   not by a proxy, batch by batch: a try stops at the batch after which it can no longer pass (:func:`gate`).
   ``k`` grows geometrically (0 when smoothing or per-channel weights make it differ from the plain INT8 variant,
   then 2, 4, 8, ..., every node but one) until a try passes, then is bisected back between the last failing and
   the passing count until they lie within ``BISECT`` of each other: the fewest nodes found that pass (the gate is
   not monotone in ``k``; a handful of rows with coin-toss margins decide it). The search also stops when a try
   runs the golden set's largest batch less than ``MIN_SPEEDUP`` times faster than the FP32 model (leaving more in
   FP32 would only be slower), or after ``MAX_TRIES`` tries. (A pass is timed again in select, against the others.)

The plan (which nodes stay FP32, their sensitivity and why, per-channel or not) and every try are recorded in the
manifest's quantize step.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxguard import runtime
from onnxguard.accuracy import parity
from onnxguard.accuracy.parity import ParityReport, Tolerance
from onnxguard.accuracy.thresholds import GATE
from onnxguard.bundle.golden import Batch, GoldenSet
from onnxguard.bundle.manifest import Step
from onnxguard.errors import InputError, ModelError
from onnxguard.progress import Event, Progress, silent
from onnxguard.speed import quantize, select, sensitivity, smooth
from onnxguard.speed.quantize import QuantizeOptions, QuantizeResult
from onnxguard.speed.sensitivity import NodeSensitivity, Sensitivity

MAX_TRIES = 8
GROWTH = 2  # each failing try leaves this many times more nodes in FP32 (2, 4, 8, ...)
BISECT = 4  # bisection stops when the failing and passing counts are within max(1, passing // BISECT)
MIN_SPEEDUP = 1.05  # a try no faster than this against FP32 (largest golden batch) ends the search
PER_CHANNEL_GAIN = 0.8
SMOOTH_GAIN = 0.8  # smoothing is kept when the simulation says it cuts the summed squared error by a fifth
ALPHAS = (0.5, 0.7, 0.85)  # SmoothQuant's migration strengths simulated
ALPHA_TIE = 1.1  # the smallest alpha within this factor of the best simulated error is taken
SENSITIVITY_BATCHES = 16  # the golden batches the sensitivity is measured on (a spread of them)
TIMING_RUNS = 3  # runs of the largest golden batch per try, alternating with FP32 (the fastest of each counts)
DYNAMIC = QuantizeOptions(mode="dynamic")


@dataclass(frozen=True)
class Try:
    """One quantization the search made and gated: how many nodes stayed FP32, the gate's figures, and its time on
    the golden set's largest batch against the FP32 model's."""

    fp32_nodes: int
    per_channel: bool
    passed: bool
    mean_abs: float
    max_abs: float
    min_cosine: float | None
    label_agreement: float | None
    failures: tuple[str, ...]
    seconds: float = 0.0
    x_fp32: float = 0.0  # the FP32 model's time over this try's, timed in alternation with it
    batches: int = 0  # the golden batches run before the gate's verdict (fewer than all: failed early)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["failures"] = list(self.failures)
        d["seconds"], d["x_fp32"] = round(self.seconds, 4), round(self.x_fp32, 3)
        return d


@dataclass(frozen=True)
class Mixed:
    """The search's outcome: the model of the passing try with the fewest FP32 nodes (else of the failing try
    closest to passing), the nodes it keeps in FP32, the weights' scales, the sensitivity measured, and every
    try."""

    result: QuantizeResult
    passed: bool
    fp32_nodes: tuple[NodeSensitivity, ...]
    per_channel: bool
    why_per_channel: str
    sensitivity: Sensitivity
    tries: tuple[Try, ...]
    stopped: str  # why the search stopped
    smoothing: dict | None = None  # SmoothQuant's settings and why it was kept or not (None: not tried)
    fp32_seconds: float = 0.0  # the FP32 model on the golden set's largest batch (fastest run beside any try)

    @property
    def chosen(self) -> Try:
        """The try whose model this is."""
        return next(t for t in self.tries if t.fp32_nodes == len(self.fp32_nodes))

    def step(self) -> Step:
        """The manifest's quantize step: the options' settings with the plan, the figures with every try."""
        settings = {**self.result.options.settings(), "mixed_precision": True,
                    "per_channel_why": self.why_per_channel, "smoothing": self.smoothing,
                    "fp32_nodes": [{**n.to_dict(), "error": round(n.error(self.per_channel), 5)}
                                   for n in self.fp32_nodes]}
        s = self.sensitivity
        figures = {**self.result.figures(), "passed": self.passed, "stopped": self.stopped,
                   "quantized_nodes": len(s.nodes) - len(self.fp32_nodes), "tries": [t.to_dict() for t in self.tries],
                   "fp32_seconds": round(self.fp32_seconds, 4),
                   "sensitivity": {"batches": s.batches, "rows": s.rows, "seconds": round(s.seconds, 2),
                                   "method": "one FP32 pass; DynamicQuantizeLinear and int8 weights simulated in "
                                             "numpy; relative RMS error of each MatMul's output",
                                   "ranked": [n.to_dict() for n in s.ranked(self.per_channel)]}}
        return Step(name="quantize", settings=settings, figures=figures)


def _sample(golden: GoldenSet) -> list[Batch]:
    """A spread of at most ``SENSITIVITY_BATCHES`` golden batches."""
    batches = list(golden.inputs)
    return batches[:: max(1, -(-len(batches) // SENSITIVITY_BATCHES))]


def _largest(golden: GoldenSet) -> Batch:
    """The golden batch with the most input elements (for a text model: the longest full batch)."""
    return max(golden.inputs, key=lambda b: sum(np.asarray(v).size for v in b.values()))


def _paired(sess, fp32, batch: Batch) -> tuple[float, float]:
    """The fastest of ``TIMING_RUNS`` runs of ``batch`` by ``sess`` and by the FP32 session, alternating (after one
    warm-up run each): a burst of load on a shared machine slows both sides of a pair, not one try."""
    feeds = [{i.name: batch[i.name] for i in s.get_inputs()} for s in (sess, fp32)]
    best = [math.inf, math.inf]
    for run in range(TIMING_RUNS + 1):
        for side, (s, feed) in enumerate(zip((sess, fp32), feeds, strict=True)):
            start = time.perf_counter()
            s.run(None, feed)
            if run:
                best[side] = min(best[side], time.perf_counter() - start)
    return best[0], best[1]


def _smoothing(model: onnx.ModelProto, sens: Sensitivity, alphas: tuple[float, ...]
               ) -> tuple[onnx.ModelProto, Sensitivity, dict | None]:
    """The smoothed model and its simulated sensitivity for the alpha chosen among ``alphas`` (see the module's
    docstring), or ``model`` and ``sens`` as they are when smoothing does not pay; and the settings to record."""
    before = min(sens.total(False), sens.total(True))
    simulated = {}
    for alpha in alphas:
        scales = smooth.scales(model, sens.maxima, alpha)
        if scales:
            after = sens.simulate(scales)
            simulated[alpha] = (min(after.total(False), after.total(True)), after)
    if not simulated:
        return model, sens, None
    best = min(total for total, _ in simulated.values())
    alpha = min(a for a, (total, _) in simulated.items() if total <= ALPHA_TIE * best)
    total, after = simulated[alpha]
    kept = total < SMOOTH_GAIN * before
    smoothed = smooth.smooth(model, sens.maxima, alpha) if kept else None
    settings = {**(smoothed.settings() if smoothed else {"alpha": alpha}), "kept": kept,
                "simulated": {"none": round(before, 5), **{str(a): round(t, 5) for a, (t, _) in simulated.items()}},
                "why": f"simulated squared error summed over the nodes: {total:.3g} with alpha {alpha} (the smallest "
                       f"within {ALPHA_TIE:g}x of the best, {best:.3g}), {before:.3g} not smoothed"}
    return (smoothed.model, after, settings) if smoothed else (model, sens, settings)


def _disagreements(ref: np.ndarray, out: np.ndarray, role: str) -> tuple[int, int]:
    """How many labels of one batch differ, of how many, as ``parity.compare_output`` counts them."""
    if ref.dtype.kind in "USO" or role == parity.LABELS:
        return int((ref != out).sum()), len(ref)
    if role == parity.SCORES and ref.shape == out.shape:
        a, b = np.argmax(ref, -1), np.argmax(out, -1)
        return int((a != b).sum()), a.size
    return 0, 0


def gate(sess, golden: GoldenSet, roles: dict[str, str], tolerance: Tolerance) -> tuple[ParityReport, int]:
    """``parity.compare`` of ``sess``'s outputs on ``golden`` within ``tolerance`` (the gate), batch by batch,
    stopping at the first batch after which the gate can no longer pass: an element beyond the bound or a cosine
    below the floor in that batch, or more labels differing so far than the whole set allows. Returns the report on
    the batches run and how many were run (all of them: the report is the gate's verdict)."""
    refs = golden.references or ()
    totals = {n: sum(_disagreements(r[n], r[n], roles.get(n, parity.VALUES))[1] for r in refs) for n in refs[0]}
    lenient = dataclasses.replace(tolerance, min_label_agreement=0.0)
    differing = dict.fromkeys(totals, 0)
    outs: list[Batch] = []
    for ref, batch in zip(refs, golden.inputs, strict=True):
        out = runtime.run(sess, [batch])[0]
        outs.append(out)
        if not parity.compare([ref], [out], roles, lenient).passed:
            break
        for name in totals:
            differing[name] += _disagreements(ref[name], out[name], roles.get(name, parity.VALUES))[0] if (
                name in out) else 0
        if any(totals[n] and (totals[n] - d) / totals[n] < tolerance.min_label_agreement for n, d in differing.items()):
            break
    return parity.compare(refs[:len(outs)], outs, roles, tolerance), len(outs)


def _closeness(t: Try) -> tuple:
    """How near a failing try came to passing: label agreement, then the worst cosine, then the mean |error|."""
    return (t.label_agreement if t.label_agreement is not None else 1.0,
            t.min_cosine if t.min_cosine is not None else 1.0, -t.mean_abs)


def counts(nodes: int, start: int, judge: Callable[[int], Try]) -> tuple[int | None, str]:
    """The search over how many of the ``nodes`` most sensitive nodes stay FP32 (see the module's docstring):
    ``judge(k)`` quantizes and gates with ``k`` of them in FP32. Returns the passing count with the fewest found
    (None when none passed) and why the search stopped."""
    failing, passing, tried, k = start - 1, None, 0, start  # start - 1: failed before the search (or untried)
    top = nodes - 1  # at least one node stays INT8: with every node in FP32 it is the FP32 model, slower
    stopped = f"{MAX_TRIES} tries, none passed"
    if k > top:
        return None, f"{nodes} quantizable node(s): none left to quantize with {k} in FP32"
    while tried < MAX_TRIES:
        t, tried = judge(k), tried + 1
        if t.passed:
            passing = k
            break
        failing = k
        if t.x_fp32 < MIN_SPEEDUP:
            stopped = (f"{k} node(s) in FP32 ran the largest golden batch {t.x_fp32:.2f}x as fast as FP32 "
                       f"(< {MIN_SPEEDUP:g}x): more in FP32 would not be faster than FP32")
            break
        if k >= top:
            stopped = "every node but one in FP32 and no try passed"
            break
        k = min(top, max(GROWTH, GROWTH * k))
    while passing is not None and passing - failing > max(1, passing // BISECT) and tried < MAX_TRIES:
        k, tried = (failing + passing) // 2, tried + 1
        if judge(k).passed:
            passing = k
        else:
            failing = k
    if passing is not None:
        stopped = f"passed with {passing} node(s) in FP32" + (f"; {failing} failed" if failing >= start else "")
    return passing, stopped


def search(model: onnx.ModelProto, golden: GoldenSet, roles: dict[str, str], tolerance: Tolerance = GATE,
           options: QuantizeOptions = DYNAMIC, threads: int = 0, alphas: tuple[float, ...] = ALPHAS,
           progress: Progress = silent) -> Mixed:
    """Dynamic INT8 of ``model`` with its most sensitive MatMuls in FP32, the fewest found that pass ``tolerance``
    against ``golden``'s reference outputs (see the module's docstring). When no try passes, the try closest to
    passing is returned with ``passed`` False. ``alphas``: SmoothQuant's migration strengths to simulate (empty:
    no smoothing)."""
    if golden.references is None:
        raise InputError("the golden set has no reference outputs; run the source framework first")
    options = dataclasses.replace(options, mode="dynamic")
    if options.reduce_range is None and alphas and quantize.saturating_cpu():
        options = dataclasses.replace(options, reduce_range=True, why=quantize.SMOOTHED_WHY)
    options = quantize.resolved(options)
    sample = _sample(golden)
    sens = sensitivity.measure(model, sample, bool(options.reduce_range), threads, progress)
    fp32 = model
    model, sens, smoothing = _smoothing(model, sens, alphas) if alphas else (model, sens, None)
    if smoothing and smoothing["kept"]:
        progress(Event("quantize", f"mixed INT8: smoothing {smoothing['activations']} activations "
                                   f"(alpha {smoothing['alpha']})"))
    per_tensor, per_channel_total = sens.total(False), sens.total(True)
    per_channel = per_channel_total < PER_CHANNEL_GAIN * per_tensor
    why = (f"simulated squared error summed over the MatMuls: {per_channel_total:.3g} per channel, {per_tensor:.3g} "
           f"per tensor")
    ranked = [n for n in sens.ranked(per_channel) if n.node]
    largest = _largest(golden)
    fp32_session = runtime.session(fp32, threads=threads, name="the FP32 model", spin=False)  # timed beside each try
    fp32_times: list[float] = []
    tries: dict[int, Try] = {}
    results: dict[str, tuple[int, QuantizeResult]] = {}

    def attempt(k: int) -> Try:
        progress(Event("quantize", f"mixed INT8: {k} most sensitive node(s) in FP32"))
        opts = dataclasses.replace(options, per_channel=per_channel, exclude=tuple(n.node for n in ranked[:k]))
        result = quantize.quantize(model, opts, progress)
        sess = runtime.session(result.model, threads=threads, name="a mixed INT8 model", spin=False)
        report, judged = gate(sess, golden, roles, tolerance)
        seconds, fp32_seconds = _paired(sess, fp32_session, largest)
        fp32_times.append(fp32_seconds)
        out = report.outputs
        passed = report.passed and judged == len(golden.inputs)
        failures = tuple(f for o in out for f in o.failures)
        if judged < len(golden.inputs):
            failures += (f"failed the gate after {judged} of {len(golden.inputs)} batches",)
        tries[k] = Try(k, per_channel, passed, max(o.mean_abs for o in out), max(o.max_abs for o in out),
                       min((o.min_cosine for o in out if o.min_cosine is not None), default=None),
                       min((o.label_agreement for o in out if o.label_agreement is not None), default=None),
                       failures, seconds, fp32_seconds / seconds, judged)
        # Only two models are held: the passing one with the fewest FP32 nodes, and the failing one closest to
        # passing (a base-size transformer's INT8 model is ~100 MB).
        key = "passing" if passed else "failing"
        held = results.get(key)
        if held is None or (held[0] > k if passed else _closeness(tries[held[0]]) < _closeness(tries[k])):
            results[key] = (k, result)
        return tries[k]

    passing, stopped = counts(len(ranked), 0 if per_channel or smoothing and smoothing["kept"] else 1, attempt)
    kept = "passing" if passing is not None else "failing"
    if kept not in results:  # nothing left to quantize: no try was made
        raise ModelError(f"no mixed INT8 plan: {stopped}")
    k, result = results[kept]
    stopped += f" ({tries[k].x_fp32:.2f}x FP32 on the largest golden batch with {k})"
    return Mixed(result, passing is not None, tuple(ranked[:k]), per_channel, why, sens, tuple(tries.values()),
                 stopped, smoothing, min(fp32_times))


def make(parent, plain, golden: GoldenSet, roles: dict[str, str], tolerance: Tolerance = GATE,
         threads: int = 0) -> tuple[onnx.ModelProto, Step]:
    """The maker of ``build``'s mixed-precision candidate (``select.Candidate.make``): the search on ``parent``'s
    model. ``plain`` is the plain dynamic INT8 candidate of the same parent, which select gates first: when it
    passed, a mix can only be slower, and this raises ``ModelError`` saying so (select records it and moves on)."""
    select.needed_after(plain)
    if parent.model is None:
        raise ModelError(f"its base {parent.name} could not be made")
    mixed = search(parent.model, golden, roles, tolerance, threads=threads)
    return mixed.result.model, mixed.step()
