"""``LengthAware(session, plan).run(inputs)``: a padded text batch run without its padding.

Rows are grouped by the width they need (from the attention mask) into a few buckets; each bucket is cut to its
widest row and run on its own, and the outputs are put back in the caller's row order. Which buckets: the ones a
cost model (:class:`Cost`, measured by ``build`` on the bundle's own model and recorded in the manifest) says are
cheapest, found exactly by dynamic programming over the rows sorted by width.

What a row needs, so that its outputs equal the plain padded run:

* A row's columns after its last real token are padding: masked keys, whose attention weight is exactly zero.
  Dropping them changes nothing but the order of float additions (FP32 within 1e-5). So a right-padded row
  needs only up to its last token.
* Columns before its first real token (left padding) are also masked, but dropping them moves every real token
  to an earlier position; a model with absolute position embeddings (BERT, DistilBERT) then answers differently.
  Only when ``build`` has measured that the model's outputs do not depend on where the padding sits
  (``LengthPlan.shift_free``: positions from the mask, as RoBERTa computes them) are such rows moved to the
  start and cut to their real length. Otherwise a left-padded row keeps its width: correct, not faster.
* A row with no real token keeps its width (attention over only masked keys averages over all of them).

Outputs with a sequence axis (axis 1, named in the plan) are padded back to the caller's width; their values at
padding positions are 0 (the plain run gives meaningless values there).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnxruntime as ort

from onnxguard.errors import InputError
from onnxguard.runtime.core import RUN_ERRORS, first_line

Batch = Mapping[str, np.ndarray]
MASK = "attention_mask"
MAX_BUCKETS = 4
RUNS_PER_POINT = 5  # timed runs per (rows, width) point of a cost measurement
SECONDS_PER_POINT = 2.0  # ... or fewer (at least two) once a point has taken this long


@dataclass(frozen=True)
class Cost:
    """Milliseconds for one run of ``rows`` rows at width ``width``: ``overhead + rows*width*(token +
    token2*width)`` (the per-token part is the linear layers, the squared part attention)."""

    overhead_ms: float = 0.1
    token_ms: float = 0.001
    token2_ms: float = 0.0

    def __call__(self, rows: int | np.ndarray, width: int | np.ndarray) -> np.ndarray:
        return self.overhead_ms + np.asarray(rows) * np.asarray(width) * (self.token_ms
                                                                          + self.token2_ms * np.asarray(width))

    @classmethod
    def fit(cls, points: Sequence[tuple[int, int, float]]) -> Cost:
        """The non-negative least-squares fit to ``(rows, width, ms)`` measurements."""
        a = np.array([[1.0, r * w, r * w * w] for r, w, _ in points])
        y = np.array([ms for _, _, ms in points])
        keep = [0, 1, 2]
        while True:  # drop terms whose coefficient comes out negative, refit the rest
            coef, *_ = np.linalg.lstsq(a[:, keep], y, rcond=None)
            if (coef >= 0).all() or len(keep) == 1:
                break
            keep = [k for k, c in zip(keep, coef, strict=True) if c >= 0] or [0]
        full = np.zeros(3)
        full[keep] = np.maximum(coef, 0.0)
        return cls(float(full[0]), float(full[1]), float(full[2]))


@dataclass(frozen=True)
class LengthPlan:
    """How to run a padded batch without its padding: the mask input, the cost model, the most buckets per
    batch, whether left-padded rows may be moved (``shift_free``) and the outputs with a sequence axis (None:
    read from the model's declared shapes)."""

    mask: str = MASK
    cost: Cost = field(default_factory=Cost)
    max_buckets: int = MAX_BUCKETS
    shift_free: bool = False
    sequence_outputs: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sequence_outputs"] = None if self.sequence_outputs is None else list(self.sequence_outputs)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> LengthPlan:
        seq = d.get("sequence_outputs")
        return cls(mask=str(d.get("mask", MASK)), cost=Cost(**dict(d.get("cost") or {})),
                   max_buckets=int(d.get("max_buckets", MAX_BUCKETS)), shift_free=bool(d.get("shift_free", False)),
                   sequence_outputs=None if seq is None else tuple(seq))


@dataclass(frozen=True)
class Bucket:
    """Rows run together (indices into the caller's batch) at ``width`` columns."""

    rows: np.ndarray
    width: int


def buckets(needs: np.ndarray, cost: Cost, max_buckets: int = MAX_BUCKETS) -> list[Bucket]:
    """The cheapest grouping of rows needing ``needs`` columns into at most ``max_buckets`` buckets.

    Rows sorted by need; a bucket is a run of consecutive sorted rows at the need of its last one. Rows of equal
    need are never split (two runs at one width cost an overhead more than one), so dynamic programming runs over
    the distinct needs (bucket count, needs covered): exact for the cost model, one (m+1) x (m+1) numpy step per
    bucket for m distinct needs.
    """
    n = len(needs)
    if n == 0:
        return []
    order = np.argsort(needs, kind="stable")
    widths, counts = np.unique(needs[order], return_counts=True)
    if len(widths) == 1:
        return [Bucket(order, int(widths[0]))]
    covered = np.concatenate([[0], np.cumsum(counts)])  # rows with a need below each distinct need, and all
    m = len(widths)
    k_max = max(1, min(max_buckets, m))
    # run[i, j]: the cost of one bucket of the distinct needs [i, j) at the width of need j-1 (inf unless i < j)
    lo, hi = np.arange(m + 1)[:, None], np.arange(m + 1)[None, :]
    run = np.where(lo < hi, cost(covered[hi] - covered[lo], widths[np.maximum(hi - 1, 0)]), math.inf)
    best = np.full((k_max + 1, m + 1), math.inf)
    cut = np.zeros((k_max + 1, m + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for k in range(1, k_max + 1):  # the k-th bucket takes needs [i, j) after k-1 buckets covered [0, i)
        total = best[k - 1][:, None] + run
        cut[k], best[k] = total.argmin(axis=0), total.min(axis=0)
    k = int(np.argmin(best[1:, m])) + 1
    out, j = [], m
    while j > 0:
        start = int(cut[k, j])
        out.append(Bucket(order[covered[start]:covered[j]], int(widths[j - 1])))
        j, k = start, k - 1
    return out[::-1]


def measure_cost(run: Callable[[Batch], object], row: Batch, mask: str = MASK,
                 widths: Sequence[int] | None = None, rows_at: Sequence[int] = (1, 8),
                 runs: int = RUNS_PER_POINT, seconds: float = SECONDS_PER_POINT,
                 fastest: bool = False) -> tuple[Cost, list]:
    """The cost model of ``run`` (a session's run on a batch), fitted to timings of ``row`` (one row, every
    column a real token; inputs without its width are repeated per row or passed as they are) cut to ``widths``
    (default: an eighth, a quarter, a half and all of its width) and repeated to ``rows_at`` rows. Each point is
    the median of ``runs`` runs after one warm-up (at least two within ``seconds``), or with ``fastest`` the fastest
    of them: on a host where other work runs, the least disturbed."""
    full = row[mask].shape
    widths = sorted(set(widths or (max(1, full[1] // 8), max(1, full[1] // 4), max(1, full[1] // 2), full[1])))
    points = []
    for n in rows_at:
        for w in widths:
            feed = {k: (np.repeat(v[:1, :w], n, axis=0) if v.ndim >= 2 and v.shape[:2] == full
                        else np.repeat(v[:1], n, axis=0) if v.ndim >= 1 and len(v) == full[0] else v)
                    for k, v in row.items()}
            feed[mask] = np.ones_like(feed[mask])
            run(feed)  # warm-up
            times: list[float] = []
            deadline = time.perf_counter() + seconds
            while len(times) < runs and (len(times) < 2 or time.perf_counter() < deadline):
                t0 = time.perf_counter()
                run(feed)
                times.append((time.perf_counter() - t0) * 1e3)
            points.append((n, w, float(min(times) if fastest else np.median(times))))
    return Cost.fit(points), [[n, w, round(ms, 4)] for n, w, ms in points]


@dataclass(frozen=True)
class Rows:
    """Where each row's real tokens are: first and last (exclusive) real column, and the columns it needs."""

    first: np.ndarray
    last: np.ndarray
    need: np.ndarray
    shift: np.ndarray  # columns a row is rolled left by before cutting (0: cut in place)


def rows(mask: np.ndarray, shift_free: bool) -> Rows:
    """What each row of ``mask`` (rows x width, nonzero = real token) needs; see the module's rules."""
    real = mask != 0
    width = mask.shape[1]
    count = real.sum(axis=1)
    first = np.where(count > 0, real.argmax(axis=1), 0)
    last = np.where(count > 0, width - real[:, ::-1].argmax(axis=1), width)
    contiguous = (last - first) == count
    movable = shift_free & contiguous & (first > 0) & (count > 0)
    need = np.where(count == 0, width, np.where(movable, count, last))
    return Rows(first, last, need, np.where(movable, first, 0))


def _declared_sequence_outputs(sess: ort.InferenceSession, mask: str) -> tuple[str, ...]:
    """Outputs whose declared axis 1 is the mask's symbolic sequence axis."""
    dims = {i.name: i.shape for i in sess.get_inputs()}
    seq = dims.get(mask, [None, None])
    axis = seq[1] if len(seq) > 1 else None
    if not isinstance(axis, str):
        return ()
    return tuple(o.name for o in sess.get_outputs() if len(o.shape) > 1 and o.shape[1] == axis)


class LengthAware:
    """Runs padded batches on ``session`` without their padding, per ``plan``; safe from several threads (it
    keeps no state between calls). ``run(inputs) -> {output name: array}`` in the caller's row order."""

    def __init__(self, session: ort.InferenceSession, plan: LengthPlan | None = None) -> None:
        self.session = session
        self.plan = plan or LengthPlan()
        self.inputs = [i.name for i in session.get_inputs()]
        self.outputs = [o.name for o in session.get_outputs()]
        seq = self.plan.sequence_outputs
        self.sequence_outputs = frozenset(_declared_sequence_outputs(session, self.plan.mask) if seq is None else seq)

    def plain(self, inputs: Batch) -> dict[str, np.ndarray]:
        """One run of the whole padded batch, as given."""
        missing = [n for n in self.inputs if n not in inputs]
        if missing:
            raise InputError(f"the model needs input(s) {missing}; given {sorted(inputs)}")
        try:
            values = self.session.run(self.outputs, {n: inputs[n] for n in self.inputs})
        except RUN_ERRORS as e:
            raise InputError(f"the batch does not fit the model: {first_line(e)}") from e
        return dict(zip(self.outputs, values, strict=True))

    def _zero_padding(self, out: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
        for name in self.sequence_outputs & out.keys():
            v = out[name]
            if v.ndim >= 2 and v.shape[:2] == mask.shape:
                v = v.copy()
                v[mask == 0] = 0
                out[name] = v
        return out

    def plan_for(self, mask: np.ndarray) -> list[Bucket]:
        """The buckets this batch would run as."""
        r = rows(np.asarray(mask), self.plan.shift_free)
        return buckets(r.need, self.plan.cost, self.plan.max_buckets)

    def run(self, inputs: Batch) -> dict[str, np.ndarray]:
        """The outputs of the padded batch ``inputs``, computed bucket by bucket without the padding."""
        mask = inputs.get(self.plan.mask)
        if mask is None or mask.ndim != 2 or self.plan.mask not in self.inputs or len(mask) == 0:
            return self.plain(inputs)
        n, width = mask.shape
        r = rows(mask, self.plan.shift_free)
        groups = buckets(r.need, self.plan.cost, self.plan.max_buckets)
        if len(groups) == 1 and groups[0].width == width and not r.shift.any():
            return self._zero_padding(self.plain(inputs), mask)
        token = {k for k in self.inputs if k in inputs and inputs[k].ndim >= 2 and inputs[k].shape[:2] == (n, width)}
        per_row = {k for k in self.inputs if k in inputs and inputs[k].ndim >= 1 and len(inputs[k]) == n} - token
        results: list[tuple[Bucket, dict[str, np.ndarray]]] = []
        for g in groups:
            cols = (np.arange(g.width)[None, :] + r.shift[g.rows][:, None]) % width
            feed = {}
            for k in self.inputs:
                v = inputs.get(k)
                if v is None:
                    continue  # plain() names what is missing
                if k in token:
                    feed[k] = np.ascontiguousarray(v[g.rows[:, None], cols])
                elif k in per_row:
                    feed[k] = v[g.rows]
                else:
                    feed[k] = v
            out = self.plain(feed)
            for name, value in out.items():
                if value.ndim == 0 or len(value) != len(g.rows) or (
                        name in self.sequence_outputs and (value.ndim < 2 or value.shape[1] != g.width)):
                    return self.plain(inputs)  # an output without a row (or token) axis cannot be put back
            results.append((g, out))
        merged: dict[str, np.ndarray] = {}
        for name in self.outputs:
            sample = results[0][1][name]
            if name in self.sequence_outputs:
                full = np.zeros((n, width, *sample.shape[2:]), dtype=sample.dtype)
                for g, out in results:
                    cols = (np.arange(g.width)[None, :] + r.shift[g.rows][:, None]) % width
                    full[g.rows[:, None], cols] = out[name]
                full[mask == 0] = 0
            else:
                full = np.empty((n, *sample.shape[1:]), dtype=sample.dtype)
                for g, out in results:
                    full[g.rows] = out[name]
            merged[name] = full
        return merged


def speedup(plan: LengthPlan, mask: np.ndarray) -> float:
    """The cost model's ratio of the plain run to the length-aware one on ``mask``."""
    r = rows(np.asarray(mask), plan.shift_free)
    plain = float(plan.cost(len(mask), mask.shape[1]))
    aware = sum(float(plan.cost(len(b.rows), b.width)) for b in buckets(r.need, plan.cost, plan.max_buckets))
    return plain / aware if aware else 1.0
