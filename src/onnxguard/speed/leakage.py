"""``leakage.measure(url, model, requests) -> LeakageReport``: what a response's latency tells about its label.

The timing side channel of a model server, measured from outside: ``n`` requests are sent one at a time (never
two in flight, so each latency is the server's own work plus the network), in a shuffled order that sends every
input about equally often, and each response's latency and returned label are recorded. ``analyze`` then says
how much the latency tells about the label:

* the mutual information between the latency (cut into equally filled bins) and the label, in bits, beside its
  level under no relation (the mean over random shuffles of the labels: the plug-in estimate's own bias) and the
  share of shuffles that reach it (a permutation p-value);
* the cross-validated accuracy of a classifier that guesses the label from the latency alone (nearest class
  median latency), beside chance (the majority label's share) and its own permutation p-value.

A server that pads every answer to a fixed deadline after arrival should show mutual information at its chance
level and an accuracy at chance. ``plot`` draws the latency of each label, one panel per report.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from onnxguard.errors import InputError
from onnxguard.progress import Event, Progress, silent
from onnxguard.speed.loadgen import Endpoint, encode, endpoint_url, refusal, require_httpx

# The verdict: latency "tells" the label when its mutual information is above every level reached by shuffled
# labels in this share of shuffles or fewer (a permutation test at 1 %).
ALPHA = 0.01


@dataclass(frozen=True)
class ClassLatency:
    """The latency of the answers that carried one label."""

    label: str
    count: int
    median_ms: float
    p95_ms: float
    mean_ms: float


@dataclass(frozen=True)
class Analysis:
    """How much the latencies tell about the labels (see the module's description)."""

    n: int
    bins: int
    mutual_information_bits: float
    mi_chance_bits: float  # mean over shuffled labels: what the estimate gives with no relation at all
    mi_p_value: float
    label_entropy_bits: float  # the most the latency could tell
    accuracy: float  # cross-validated, nearest class-median latency
    chance: float  # the majority label's share
    accuracy_p_value: float
    folds: int
    permutations: int
    leaks: bool  # mi_p_value < ALPHA
    classes: tuple[ClassLatency, ...]

    def to_dict(self) -> dict[str, Any]:
        """The analysis as plain JSON data."""
        return asdict(self)


@dataclass(frozen=True)
class LeakageReport:
    """A measurement: where, how many requests, the analysis and every (latency, label) sample in order."""

    url: str
    model: str
    endpoint: str
    inputs: int  # distinct request bodies
    analysis: Analysis
    latencies_ms: tuple[float, ...]
    labels: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON data (samples included)."""
        return {"url": self.url, "model": self.model, "endpoint": self.endpoint, "inputs": self.inputs,
                **self.analysis.to_dict(), "latencies_ms": list(self.latencies_ms), "labels": list(self.labels)}


def _mi(bins: np.ndarray, codes: np.ndarray, nb: int, nk: int) -> float:
    joint = np.bincount(bins * nk + codes, minlength=nb * nk).reshape(nb, nk) / len(codes)
    pb, pk = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log2(joint[nz] / (pb @ pk)[nz])).sum())


def _cv_accuracy(t: np.ndarray, codes: np.ndarray, folds: np.ndarray, nk: int) -> float:
    correct = 0
    for f in np.unique(folds):
        train, test = folds != f, folds == f
        present = [k for k in range(nk) if np.any(codes[train] == k)]
        centers = np.array([np.median(t[train][codes[train] == k]) for k in present])
        guess = np.asarray(present)[np.abs(t[test][:, None] - centers[None, :]).argmin(1)]
        correct += int((guess == codes[test]).sum())
    return correct / len(codes)


def analyze(latencies_ms: Sequence[float], labels: Sequence[str], *, bins: int | None = None, folds: int = 5,
            permutations: int = 500, seed: int = 0) -> Analysis:
    """What the latencies tell about the labels (pairs in the same order): mutual information over ``bins``
    equally filled latency bins (default: the square root of n/5, kept between 2 and 10), and a
    ``folds``-fold cross-validated nearest class-median classifier, each against ``permutations`` shuffles."""
    t = np.asarray(latencies_ms, dtype=np.float64)
    if t.ndim != 1 or len(t) != len(labels):
        raise InputError(f"{len(t)} latencies for {len(labels)} labels; give one latency per label")
    n = len(t)
    names, codes = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    if n < 2 * folds:
        raise InputError(f"{n} samples are too few for {folds}-fold cross-validation",
                         hint=f"send at least {2 * folds} requests")
    if len(names) < 2:
        raise InputError(f"every answer carried the label {names[0]!r}: latency cannot tell labels apart when "
                         "there is one", hint="send inputs that the model labels differently (e.g. the bundle's "
                         "golden set, or texts of different lengths)")
    if not np.all(np.isfinite(t)):
        raise InputError("a latency is not a finite number")
    nk = len(names)
    nb = bins if bins is not None else int(np.clip(round(np.sqrt(n / 5)), 2, 10))
    if nb < 2:
        raise InputError(f"{nb} latency bin(s): give at least 2")
    # Equally filled bins: cut at the latency quantiles (ties may leave a bin smaller).
    edges = np.quantile(t, np.linspace(0, 1, nb + 1)[1:-1])
    b = np.searchsorted(edges, t, side="right")
    rng = np.random.default_rng(seed)
    mi = _mi(b, codes, nb, nk)
    null_mi = np.array([_mi(b, rng.permutation(codes), nb, nk) for _ in range(permutations)])
    fold_of = rng.permutation(np.arange(n) % folds)
    acc = _cv_accuracy(t, codes, fold_of, nk)
    acc_perms = max(1, permutations // 5)  # each one a full cross-validation: fewer shuffles, still p >= 1/101
    null_acc = np.array([_cv_accuracy(t, rng.permutation(codes), fold_of, nk) for _ in range(acc_perms)])
    counts = np.bincount(codes, minlength=nk)
    p = counts / n
    mi_p = float((1 + np.sum(null_mi >= mi - 1e-12)) / (1 + permutations))
    classes = tuple(ClassLatency(str(names[k]), int(counts[k]), float(np.median(t[codes == k])),
                                 float(np.percentile(t[codes == k], 95)), float(t[codes == k].mean()))
                    for k in range(nk))
    return Analysis(n=n, bins=nb, mutual_information_bits=mi, mi_chance_bits=float(null_mi.mean()),
                    mi_p_value=mi_p, label_entropy_bits=float(-(p * np.log2(p)).sum()), accuracy=acc,
                    chance=float(counts.max() / n),
                    accuracy_p_value=float((1 + np.sum(null_acc >= acc - 1e-12)) / (1 + acc_perms)),
                    folds=folds, permutations=permutations, leaks=mi_p < ALPHA, classes=classes)


def label_of(doc: Any, endpoint: Endpoint) -> str:
    """The label a response carries: a ``:predict`` answer's first prediction's label; for ``infer``, the first
    output's first value when it is a label (integers or strings), else the index of its largest value."""
    try:
        if endpoint == "predict":
            return str(doc["predictions"][0]["label"])
        out = doc["outputs"][0]
        data = out["data"]
        if out.get("datatype") == "BYTES" or out.get("datatype", "").startswith(("INT", "UINT")):
            return str(data[0])
        shape = out.get("shape") or [len(data)]
        width = int(np.prod(shape[1:])) if len(shape) > 1 else len(data)
        return str(int(np.argmax(np.asarray(data[:width], dtype=np.float64))))
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise InputError(f"the response carries no label ({type(e).__name__}: {e})",
                         hint="measure a classifier, through its predict endpoint or an infer request whose "
                         "outputs are JSON") from None


def measure(url: str, model: str, requests: Sequence[bytes | Mapping[str, Any]], *,
            headers: Mapping[str, str] | None = None, n: int = 400, endpoint: Endpoint = "predict",
            warmup: int = 10, timeout: float = 30.0, seed: int = 0, progress: Progress = silent) -> LeakageReport:
    """Send ``n`` of ``requests`` (bodies for ``endpoint``, in a shuffled order that uses each about equally)
    one at a time to ``model`` on the server at ``url``, after ``warmup`` untimed ones; record each latency
    and label; ``analyze`` them. Any answer other than 2xx stops the measurement (it would not carry a label)."""
    httpx = require_httpx()
    target = endpoint_url(url, model, endpoint)
    if n < 1 or warmup < 0:
        raise InputError(f"n {n} must be >= 1 and warmup {warmup} >= 0")
    bodies = encode(requests)
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(bodies)) for _ in range(-(-(n + warmup) // len(bodies)))])
    latencies: list[float] = []
    labels: list[str] = []
    step = max(1, n // 50)
    with httpx.Client(headers={"content-type": "application/json", **dict(headers or {})},
                      timeout=httpx.Timeout(timeout)) as client:
        for i, j in enumerate(order[: n + warmup]):
            t0 = time.perf_counter()
            try:
                r = client.post(target, content=bodies[j])
            except httpx.TransportError as e:
                raise InputError(f"no answer from {target} ({type(e).__name__}: {e})",
                                 hint="check that the server is running and listening at that address") from None
            t1 = time.perf_counter()
            if not 200 <= r.status_code < 300:
                raise InputError(f"{target} answered {r.status_code} {refusal(r)} (request {i + 1})",
                                 hint="check the API key (its rate limit and budget), the model name and the "
                                 "inputs")
            try:
                label = label_of(orjson.loads(r.content), endpoint)
            except orjson.JSONDecodeError:
                raise InputError(f"{target} answered with something other than JSON",
                                 hint="measure an endpoint that answers JSON") from None
            if i >= warmup:
                latencies.append((t1 - t0) * 1e3)
                labels.append(label)
                if len(latencies) % step == 0:
                    progress(Event("leakage", f"{len(latencies)}/{n} requests", len(latencies), n))
    analysis = analyze(latencies, labels, seed=seed)
    progress(Event("leakage", f"{n} requests, {len(analysis.classes)} labels", n, n, done=True))
    return LeakageReport(url=target, model=model, endpoint=endpoint, inputs=len(bodies), analysis=analysis,
                         latencies_ms=tuple(latencies), labels=tuple(labels))


def plot(reports: LeakageReport | Sequence[LeakageReport], path: str | Path,
         titles: Sequence[str] | None = None) -> None:
    """The latency of each label's answers, one panel per report (e.g. padding off and on), with the mutual
    information and the classifier's accuracy against chance, on a figure of its own; written to ``path``."""
    from matplotlib.figure import Figure

    runs = [reports] if isinstance(reports, LeakageReport) else list(reports)
    if not runs:
        raise InputError("no leakage report to plot")
    names = list(titles) if titles is not None else [r.model for r in runs]
    if len(names) != len(runs):
        raise InputError(f"{len(names)} title(s) for {len(runs)} report(s)")
    fig = Figure(figsize=(5.5 * len(runs), 3.2 + 0.25 * max(len(r.analysis.classes) for r in runs)))
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    for ax, r, name in zip(axes, runs, names, strict=True):
        a = r.analysis
        t = np.asarray(r.latencies_ms)
        lab = np.asarray(r.labels)
        order = [c.label for c in a.classes]
        data = [t[lab == c] for c in order]
        ax.boxplot(data, vert=False, showfliers=True, flierprops={"markersize": 2})
        jitter = np.random.default_rng(0)
        for i, d in enumerate(data, start=1):
            ax.scatter(d, i + jitter.uniform(-0.15, 0.15, len(d)), s=4, alpha=0.4)
        ax.set_yticks(range(1, len(order) + 1), [f"{c} ({len(d)})" for c, d in zip(order, data, strict=True)],
                      fontsize=8)
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("label (answers)")
        ax.set_title(f"{name}\nMI {a.mutual_information_bits:.3f} bits (chance {a.mi_chance_bits:.3f}, "
                     f"p={a.mi_p_value:.3f}); accuracy {a.accuracy:.2f} vs chance {a.chance:.2f}", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
