"""Variants of a model (optimized, quantized), the accuracy gate, and choosing the fastest that passes.

The gate judges a variant against the SOURCE framework's reference outputs on the golden set, never
against another ONNX file: drift accumulates, and a variant that only agrees with another variant has
not shown that it gives the source model's answers.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxguard import bundle, runtime, staging
from onnxguard import scan as scanner
from onnxguard.accuracy import parity
from onnxguard.accuracy.parity import ParityReport, Tolerance
from onnxguard.accuracy.thresholds import GATE
from onnxguard.bundle import golden as golden_files
from onnxguard.bundle.golden import Batch, GoldenSet
from onnxguard.bundle.manifest import Step
from onnxguard.errors import CheckFailed, InputError, ModelError, OnnxguardError, Remedy
from onnxguard.model import onnxfile
from onnxguard.progress import Event, Progress, silent
from onnxguard.runtime import memory
from onnxguard.scan.interface import Severity
from onnxguard.speed import bench

__all__ = ["GATE", "MIN_GAIN", "Candidate", "GateFailed", "Kept", "Selection", "calibration", "check_output", "derive",
           "gate", "keep", "measure_batch", "scanned_model", "select"]

# Static calibration from the golden set uses a spread of at most this many of its batches.
MAX_CALIBRATION_BATCHES = 16
# A candidate must be this much faster than a simpler one to be preferred (timing noise on shared CPUs).
MIN_GAIN = 0.03
# The sequential timing test: at least MIN_PAIRS paired calls, then stop as soon as the mean log ratio is this
# many standard errors on one side of the MIN_GAIN line (clearly slower, or clearly faster).
MIN_PAIRS = 3
CONFIDENCE = 2.5
# Calls timing the baseline alone, before any race: its p50 only reports (every comparison is a paired race), and
# on DistilBERT-base at batch 8 on an AVX2 CPU each call is half a second (20 of them were 11 s of the build).
ALONE_RUNS = 5
# What a candidate that raises while it is made, gated or timed raises: it is dropped with its reason, never the
# build. (ONNX Runtime's own errors, and onnx's checker, for tools that run in this process.)
CANDIDATE_ERRORS = (OnnxguardError, *runtime.LOAD_ERRORS, *runtime.RUN_ERRORS, onnx.checker.ValidationError)

Maker = Callable[[], tuple[onnx.ModelProto, Step]]


@dataclass
class Candidate:
    """A variant of the model: how it was made, its gate report and its timing (or why it could not be made).

    A candidate is made when ``select`` comes to it (``make``, from its ``parent``'s model), gated, timed against
    the best so far, and freed when it lost: one large model at a time, not all of them together.
    """

    name: str
    model: onnx.ModelProto | None = None
    steps: list[Step] = field(default_factory=list)
    gate: ParityReport | None = None  # given: not gated again when made at the tolerance select holds it to
    p50_ms: float | None = None
    error: str | None = None
    eligible: bool = True  # False: timed as a baseline only (an explicit quantization mode asks for a quantized model)
    tolerance: Tolerance | None = None  # None: the gate's; FP32 variants are held to the export's strict parity
    make: Maker | None = field(default=None, repr=False)  # how to make the model (None: given)
    parent: Candidate | None = field(default=None, repr=False)  # the candidate ``make`` starts from
    size_bytes: int | None = None
    opponent: str | None = None  # the name of what it was timed against
    ratio: float | None = None  # its time / the opponent's, the median of the paired ratios
    early: bool = False  # the sequential test stopped timing it early
    to_base: float = 1.0  # its time / the baseline's, through the paired ratios of the winners it was timed against

    @property
    def size(self) -> int:
        if self.size_bytes is None and self.model is not None:
            self.size_bytes = self.model.ByteSize()
        return self.size_bytes or 0

    def free(self) -> None:
        """Drop the model (its figures stay)."""
        _ = self.size
        self.model = None

    def figures(self) -> dict:
        d: dict = {"name": self.name, "size": self.size, "steps": [s.name for s in self.steps]}
        if self.gate is not None:
            d["gate_passed"] = self.gate.passed
            d["gate"] = {o.name: {"max_abs": o.max_abs, "min_cosine": o.min_cosine,
                                  "label_agreement": o.label_agreement}
                         for o in self.gate.outputs}
        if self.p50_ms is not None:
            d["p50_ms"] = round(self.p50_ms, 4)
        if self.ratio is not None:
            d["x_baseline"] = round(1 / self.to_base, 3)  # the paired ratios along the winners back to the baseline
            d["timed_against"] = f"{self.opponent} x{self.ratio:.3f}"
            d["stopped_early"] = self.early
        if self.error:
            d["error"] = self.error
        return d


def needed_after(plain: Candidate) -> None:
    """For the maker of a slower, more accurate alternative to ``plain`` (which select gates first): raise
    ``ModelError`` when ``plain`` passed the gate, so the alternative is not made (select records why)."""
    if plain.gate is not None and plain.gate.passed:
        raise ModelError(f"not needed: {plain.name} passed the gate")


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
                                             "gate": gate.__dict__, "timing": "sequential, paired"},
                    figures={"winner": self.winner.name, "reason": self.reason, "forced": self.forced,
                             "candidates": [c.figures() for c in self.candidates]})


def _why(c: Candidate) -> str:
    failures = ", ".join(f for o in c.gate.outputs for f in o.failures) if c.gate is not None else "not gated"
    return f"{c.name}: {c.error or failures}"


@dataclass(frozen=True)
class Race:
    """Paired timings of an incumbent and a challenger, and whether the sequential test stopped early."""

    incumbent_ms: list[float]
    challenger_ms: list[float]
    early: bool

    @property
    def ratio(self) -> float:
        """Median of challenger / incumbent over the pairs (below 1: the challenger is faster)."""
        return float(np.exp(np.median(self._logs())))

    def _logs(self) -> np.ndarray:
        return np.log(np.array(self.challenger_ms) / np.array(self.incumbent_ms))

    @property
    def challenger_wins(self) -> bool:
        """At least ``MIN_GAIN`` faster by the median pair, and faster at all with confidence (the mean log ratio
        ``CONFIDENCE`` standard errors below 0): noise never picks the more complex graph."""
        d = self._logs()
        se = float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else math.inf
        return self.ratio < 1 - MIN_GAIN and float(d.mean()) + CONFIDENCE * se < 0


def race(incumbent: Callable[[Batch], object], challenger: Callable[[Batch], object], batch: Batch, runs: int = 20,
         max_seconds: float = 30.0, warmup: int = 2) -> Race:
    """Time both on ``batch`` in pairs (who goes first alternates) until the sequential test decides: after
    ``MIN_PAIRS`` pairs, stop once the mean log ratio is ``CONFIDENCE`` standard errors clear of the ``MIN_GAIN``
    line on either side; else after ``runs`` pairs or ``max_seconds``."""
    for _ in range(warmup):
        incumbent(batch)
        challenger(batch)
    a: list[float] = []
    b: list[float] = []
    line = math.log(1 - MIN_GAIN)
    deadline = time.perf_counter() + max_seconds
    for i in range(runs):
        for first in ((incumbent, a), (challenger, b))[:: 1 if i % 2 == 0 else -1]:
            run, into = first
            t0 = time.perf_counter()
            run(batch)
            into.append((time.perf_counter() - t0) * 1e3)
        n = len(a)
        if n >= MIN_PAIRS:
            d = np.log(np.array(b) / np.array(a))
            se = float(d.std(ddof=1)) / math.sqrt(n)
            if abs(float(d.mean()) - line) > CONFIDENCE * se and n < runs:
                return Race(a, b, True)
        if time.perf_counter() > deadline:
            break
    return Race(a, b, False)


def _alone(run: Callable[[Batch], object], batch: Batch, runs: int, max_seconds: float) -> list[float]:
    for _ in range(2):
        run(batch)
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < runs and (len(times) < MIN_PAIRS or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        run(batch)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _ordered(candidates: list[Candidate]) -> list[Candidate]:
    """Each candidate right after its parent's subtree starts: a parent is made before its children and can be
    freed once they are done."""
    children: dict[int, list[Candidate]] = {}
    roots = []
    for c in candidates:
        if c.parent is not None and any(c.parent is p for p in candidates):
            children.setdefault(id(c.parent), []).append(c)
        else:
            roots.append(c)
    out: list[Candidate] = []

    def visit(c: Candidate) -> None:
        out.append(c)
        for child in children.get(id(c), []):
            visit(child)

    for r in roots:
        visit(r)
    return out


def _give_back_memory() -> None:
    """Hand the memory of freed models and sessions back to the system. glibc keeps freed blocks of its heap for
    reuse (a session's weights are thousands of such blocks): without this, each candidate made, gated and freed
    adds its size to the build's peak (measured on DistilBERT-base: ~0.5 GB retained per freed candidate)."""
    gc.collect()  # (a model or session held only by a reference cycle)
    memory.give_back()


def _runner(sess: ort.InferenceSession) -> Callable[[Batch], object]:
    names = {i.name for i in sess.get_inputs()}
    return lambda batch: sess.run(None, {k: v for k, v in batch.items() if k in names})


def select(candidates: list[Candidate], golden: GoldenSet, roles: dict[str, str], batch_size: int, threads: int,
           tolerance: Tolerance = GATE, runs: int = 20, force: bool = False, progress: Progress = silent) -> Selection:
    """Make, gate and time the candidates one at a time; keep the fastest eligible one that passes.

    The first candidate is the baseline (the plain export). Each later one that passes the gate is timed in pairs
    against the best so far (:func:`race`), and wins only if it is at least ``MIN_GAIN`` faster, so noise never
    picks a more complex graph. A loser's model is freed as soon as no candidate still to come is made from it.
    A candidate that raises while made, gated or timed is dropped with its reason. When no eligible candidate
    passes the gate: ``CheckFailed``, or with ``force`` the first eligible one, recorded as forced.
    """
    if golden.references is None:
        raise InputError("the golden set has no reference outputs; run the source framework first")
    references = golden.references
    batch = measure_batch(golden, batch_size)
    order = _ordered(candidates)
    base = order[0]
    best: Candidate | None = None  # the fastest eligible passing candidate so far
    best_run: Callable[[Batch], object] | None = None
    ref: Candidate | None = None  # what a challenger is timed against while no eligible one passed
    ref_run: Callable[[Batch], object] | None = None
    fallback: Candidate | None = None  # the first eligible candidate made, for force

    def keep_model(c: Candidate, done: set[int]) -> bool:
        pending = any(k.parent is c and id(k) not in done for k in order)
        return c is base or c is best or (c is fallback and best is None) or pending

    done: set[int] = set()
    for i, c in enumerate(order):
        done.add(id(c))
        progress(Event("select", c.name, i, len(order)))
        phase = "making it"
        model: onnx.ModelProto | None = None
        sess: ort.InferenceSession | None = None
        run: Callable[[Batch], object] | None = None
        try:
            if c.model is None and c.error is None:
                if c.parent is not None and c.parent.gate is not None and not c.parent.gate.passed:
                    c.error = f"its base {c.parent.name} failed the gate"  # (a re-export failing strict parity)
                elif c.make is None or (c.parent is not None and c.parent.model is None):
                    c.error = c.error or f"its base {c.parent.name if c.parent else '?'} could not be made"
                else:
                    model, step = c.make()
                    c.model, c.steps = model, [*(c.parent.steps if c.parent else []), *c.steps, step]
            if c.error is not None or c.model is None:
                continue
            if c.eligible and fallback is None:
                fallback = c
            phase = "gating it"
            sess = runtime.session(c.model, threads=threads, name=c.name, spin=False)  # gates and times it
            if c.gate is None or c.gate.tolerance != (c.tolerance or tolerance):  # (else gated by the caller)
                progress(Event("select", f"gate: {c.name}", i, len(order)))
                c.gate = parity.compare(references, runtime.run(sess, golden.inputs), roles,
                                        c.tolerance or tolerance)
            if not c.gate.passed:
                continue
            phase = "timing it"
            run, sess = _runner(sess), None
            opponent, opponent_run = (best, best_run) if best is not None else (ref, ref_run)
            if opponent is None or opponent_run is None:
                c.p50_ms = float(np.median(_alone(run, batch, min(runs, ALONE_RUNS), 30)))
                wins = c.eligible
            else:
                progress(Event("select", f"timing {c.name} against {opponent.name}", i, len(order)))
                r = race(opponent_run, run, batch, runs)
                c.p50_ms = float(np.median(r.challenger_ms))
                c.opponent, c.ratio, c.early = opponent.name, r.ratio, r.early
                c.to_base = r.ratio * opponent.to_base
                wins = c.eligible and (best is None or r.challenger_wins)
            if wins:
                best, best_run = c, run  # the former best's session goes with its last reference
                ref, ref_run = (ref, None)  # a challenger is timed against the best from now on
            elif ref is None and best is None:
                ref, ref_run = c, run
        except CANDIDATE_ERRORS as e:
            c.error = f"dropped, it raised while {phase}: {runtime.first_line(e)}"
            progress(Event("select", f"{c.name} dropped: {e}"))
        finally:
            # Only the best so far keeps a session, and only what is still needed keeps a model: the loser's
            # session and model go now, not when the next candidate overwrites these names.
            model = sess = run = opponent_run = None
            for k in order[: i + 1]:
                if k.model is not None and not keep_model(k, done):
                    k.free()
            _give_back_memory()
    if best is None:
        failed = "; ".join(_why(c) for c in candidates if c.eligible)
        usable = fallback if fallback is not None and fallback.model is not None else None
        if not force or usable is None:
            raise CheckFailed(f"no variant passed the accuracy gate ({failed})",
                              hint="relax the gate", remedy=Remedy.FORCE)
        return Selection(usable, tuple(candidates), f"{usable.name}: FORCED past a failed gate ({failed})",
                         batch_size, threads, forced=True)
    if best is base or base.p50_ms is None or best.p50_ms is None:
        reason = f"{best.name}: fastest passing variant ({best.p50_ms or math.inf:.2f} ms p50)"
    else:  # the product of the paired ratios along the chain of winners back to the baseline; the p50 is the
        # winner's in its own race (the baseline's, timed alone or in another race, is not comparable with it)
        reason = (f"{best.name}: {1 / best.to_base:.2f}x {base.name} in paired timings ({best.p50_ms:.2f} ms p50 "
                  f"in its race vs {best.opponent}), gate passed")
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


def _constant(batch: Batch) -> bool:
    """A batch whose every floating-point input holds one value throughout (a golden edge case)."""
    floats = [v for v in batch.values() if v.dtype.kind == "f" and v.size]
    return bool(floats) and all(float(v.min()) == float(v.max()) for v in floats)


def calibration(path: Path | None, golden: GoldenSet | None = None,
                tokenize: Callable[[list[str]], list[Batch]] | None = None) -> tuple[Batch, ...]:
    """Static quantization's calibration inputs: an .npz of inputs, a texts file (tokenized with ``tokenize``),
    or, when ``path`` is None, the golden set's inputs."""
    if path is None:
        if golden is None:
            raise InputError("static quantization needs calibration inputs",
                             hint="give an .npz of model inputs, or a bundle (its golden set is used)")
        # The golden set holds edge cases on purpose (all zeros, every value 1e3): as calibration data they
        # stretch MinMax ranges until real inputs fall into a few INT8 steps. Calibrate on the varied batches only.
        varied = tuple(b for b in golden.inputs if not _constant(b)) or tuple(golden.inputs)
        return varied[:: max(1, -(-len(varied) // MAX_CALIBRATION_BATCHES))]
    if Path(path).suffix == ".npz":
        return tuple(golden_files.load(path).inputs)
    if tokenize is None:
        raise InputError(f"{path}: a texts file needs a model with a tokenizer",
                         hint="give an .npz of model inputs instead")
    return tuple(tokenize(golden_files.read_texts(path)))
