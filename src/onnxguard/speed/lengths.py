"""``lengths.plan(model, export, golden, ...) -> Planned``: the bucket plan ``build`` records for a text model.

Three measurements, on this bundle's own model:

1. **Where padding may go.** On the plain FP32 export and the golden set (plus each golden batch with its
   padding mirrored to the other side), length-aware runs that move left-padded rows are compared with the plain
   padded run. Equal within 1e-5 (relative to the output's scale): ``shift_free``. A model with absolute
   position embeddings is not; its left-padded rows then keep their width. Length-aware runs that only drop
   trailing padding must be equal in any case, or no plan is recorded.
2. **The cost model.** The chosen model is timed at a few (rows, width) points; :meth:`Cost.fit` fits
   ``overhead + rows*width*(token + token2*width)``.
3. **The gate.** The chosen model, run length-aware on the golden set, is judged against the SOURCE framework's
   references with the tolerance the model passed (INT8 activations are quantized per run, so a length-aware run
   of a quantized model is close to, not equal to, its padded run: the gate says whether it is close enough).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxguard import runtime
from onnxguard.accuracy import parity
from onnxguard.accuracy.parity import ParityReport, Tolerance
from onnxguard.bundle.golden import Batch, GoldenSet
from onnxguard.progress import Event, Progress, silent
from onnxguard.runtime import lengths as runtime_lengths
from onnxguard.runtime.lengths import MASK, Cost, LengthAware, LengthPlan, rows

EXACT = 1e-5  # FP32: a length-aware run equals the padded run within this, relative to the output's scale
MAX_PROBES = 8  # golden batches (and their mirrors) the exactness checks run


@dataclass(frozen=True)
class Planned:
    """The plan (None when the model gets none, with ``why``), its gate report and what was measured."""

    plan: LengthPlan | None
    why: str
    gate: ParityReport | None = None
    figures: dict = field(default_factory=dict)


def mirrored(batch: Batch, mask: str = MASK) -> Batch:
    """``batch`` with every row's padding moved to the other side (right-padded rows become left-padded)."""
    m = batch[mask]
    width = m.shape[1]
    r = rows(m, shift_free=True)
    right = r.first == 0
    shift = np.where(right, width - r.last, -r.first)  # roll right by the trailing pad, or left by the leading
    cols = (np.arange(width)[None, :] - shift[:, None]) % width
    idx = np.arange(len(m))[:, None]
    return {k: (v[idx, cols] if v.ndim >= 2 and v.shape[:2] == m.shape else v) for k, v in batch.items()}


def _real_only(out: dict[str, np.ndarray], like: dict[str, np.ndarray], mask: np.ndarray,
               sequence: frozenset[str]) -> dict[str, np.ndarray]:
    """``out`` with the padding positions of sequence outputs taken from ``like``: only real tokens are judged."""
    fixed = dict(out)
    for name in sequence & out.keys():
        v = out[name].copy()
        v[mask == 0] = like[name][mask == 0]
        fixed[name] = v
    return fixed


def _worst(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """The largest difference of ``a`` from ``b``, relative to ``b``'s scale (at least 1)."""
    worst = 0.0
    for name, ref in b.items():
        if ref.dtype.kind not in "fc":
            if not np.array_equal(a[name], ref):
                return float("inf")
            continue
        scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
        worst = max(worst, float(np.abs(a[name].astype(np.float64) - ref).max(initial=0.0)) / scale)
    return worst


def equal_to_plain(la: LengthAware, batches: list[Batch]) -> float:
    """The worst relative difference between length-aware and plain runs of ``batches``."""
    worst = 0.0
    for b in batches:
        plain = la.plain(b)
        aware = _real_only(la.run(b), plain, b[la.plan.mask], la.sequence_outputs)
        worst = max(worst, _worst(aware, plain))
    return worst


def measure_cost(la: LengthAware, batches: list[Batch], rows_at: tuple[int, ...] = (1, 8)) -> tuple[Cost, list]:
    """The cost model of ``la``'s session, fitted to timings of the longest golden row cut and repeated to a few
    (rows, width) points."""
    mask = la.plan.mask
    widest = max(batches, key=lambda b: b[mask].shape[1])
    row = int(np.argmax((widest[mask] != 0).sum(axis=1)))
    per_row = {k for k, v in widest.items() if v.ndim >= 1 and len(v) == len(widest[mask])}
    return runtime_lengths.measure_cost(la.plain, {k: v[row:row + 1] if k in per_row else v for k, v in widest.items()},
                                        mask, rows_at=rows_at)


def plan(model: onnx.ModelProto, export: onnx.ModelProto, golden: GoldenSet, roles: dict[str, str],
         tolerance: Tolerance, threads: int = 0, progress: Progress = silent) -> Planned:
    """The bucket plan of ``model`` (the chosen variant of the plain FP32 ``export``), checked on ``golden``."""
    sess_export = runtime.session(export, threads=threads, name="the plain export", spin=False)
    names = {i.name for i in sess_export.get_inputs()}
    if MASK not in names:
        return Planned(None, f"the model takes no {MASK} input")
    batches = [b for b in golden.inputs if MASK in b and b[MASK].ndim == 2]
    if not batches:
        return Planned(None, f"the golden set has no {MASK}")
    step = max(1, len(batches) // MAX_PROBES)  # a spread of the golden batches is enough to see where padding may go
    probes = [*batches[::step], *batches[-2:]]
    probes += [mirrored(b) for b in probes]
    greedy = Cost(0.0, 1.0, 0.0)  # every distinct width its own bucket: the check exercises every cut
    progress(Event("lengths", "checking length-aware runs of the export against its padded runs"))
    trailing = equal_to_plain(LengthAware(sess_export, LengthPlan(cost=greedy, shift_free=False)), probes)
    if trailing > EXACT:
        return Planned(None, f"dropping trailing padding changes the export's outputs by {trailing:.2g} "
                             "(the model reads padded positions)")
    moved = equal_to_plain(LengthAware(sess_export, LengthPlan(cost=greedy, shift_free=True)), probes)
    shift_free = moved <= EXACT
    sequence = LengthAware(sess_export).sequence_outputs
    del sess_export
    progress(Event("lengths", "timing the cost model"))
    sess = runtime.session(model, threads=threads, name="the chosen model", spin=False)
    cost, points = measure_cost(LengthAware(sess, LengthPlan(sequence_outputs=tuple(sorted(sequence)))), batches)
    chosen = LengthPlan(cost=cost, shift_free=shift_free, sequence_outputs=tuple(sorted(sequence)))
    la = LengthAware(sess, chosen)
    progress(Event("lengths", "gating length-aware runs against the source"))
    if golden.references is None:
        return Planned(None, "the golden set has no reference outputs")
    outputs = [_real_only(la.run(b), ref, b[MASK], la.sequence_outputs)
               for b, ref in zip(golden.inputs, golden.references, strict=True)]
    report = parity.compare(list(golden.references), outputs, roles, tolerance)
    widest = max(batches, key=lambda b: b[MASK].size)
    figures = {"trailing_max_rel": trailing, "moved_max_rel": moved, "points": points,
               "golden_widest_buckets": [int(b.width) for b in la.plan_for(widest[MASK])]}
    if not report.passed:
        failures = "; ".join(f for o in report.outputs for f in o.failures)
        return Planned(None, f"length-aware runs fail the gate ({failures})", report, figures)
    side = "either side" if shift_free else "the right (left-padded rows keep their width)"
    return Planned(chosen, f"padding dropped from {side}; cost {cost.overhead_ms:.3g} ms + "
                           f"{cost.token_ms:.3g} ms/token + {cost.token2_ms:.3g} ms/token^2", report, figures)
