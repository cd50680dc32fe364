"""``bench.bench(variants, inputs, BenchOptions) -> BenchReport``: latency and throughput, in-process.

Every variant (ONNX models, and optionally the source framework) runs on the same batch, after a
warm-up, *interleaved*: one call of each variant per round, so that a slow patch of a shared machine
hits all of them alike. Figures are percentiles of per-call wall time; ratios are taken against a
named baseline measured in the same run.

With ``BenchOptions(profile=True)``, each ONNX variant is also run, after its timed calls and apart from them (the
profiler slows every call), under ONNX Runtime's profiler in a temporary directory the library creates and
removes: its node events, grouped by operator type, give the operators that take the time (:class:`OpTime`).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxguard import runtime
from onnxguard.bundle.golden import Batch
from onnxguard.errors import InputError
from onnxguard.progress import Event, Progress, silent
from onnxguard.runtime.lengths import LengthPlan


@dataclass(frozen=True)
class BenchOptions:
    """What to measure: the cells (batch size x threads), calls per cell, and whether to measure memory."""

    batch_sizes: tuple[int, ...] = (1, 8)
    threads: tuple[int, ...] = (2,)
    warmup: int = 5
    runs: int = 50
    max_seconds: float = 60.0  # per (batch size, threads) cell, all variants together
    memory: bool = True
    profile: bool = False  # the top operators by time, from ONNX Runtime's profiler, in separate runs
    profile_top: int | None = 10  # operator types kept per variant and cell (None: all)
    profile_runs: int = 10  # profiled calls per variant and cell, after one untimed call


@dataclass(frozen=True)
class OpTime:
    """One operator type in a profiled run: its kernels' time per call of the model (summed over its nodes), its
    share of the model's run time as ONNX Runtime measures it (``model_run``), and its kernel calls per run."""

    op: str
    ms: float
    share: float
    calls: int


@dataclass(frozen=True)
class Timing:
    """One variant in one cell: latency percentiles, throughput, size, peak memory and ratio to the baseline."""

    variant: str
    batch: int
    threads: int
    runs: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    items_per_s: float
    size_bytes: int | None
    peak_mb: float | None
    speedup: float | None = None  # baseline p50 / this p50, same run
    profile: tuple[OpTime, ...] | None = None  # slowest operator types first; None when not profiled


@dataclass(frozen=True)
class BenchReport:
    """Every timing of a run, the per-call samples, the baseline and the machine it ran on."""

    timings: tuple[Timing, ...]
    samples: dict[str, list[float]]  # "variant@batch/threads" -> per-call ms
    baseline: str | None
    machine: dict

    def to_dict(self) -> dict:
        return {"machine": self.machine, "baseline": self.baseline, "timings": [asdict(t) for t in self.timings]}


@dataclass(frozen=True)
class Variant:
    """Something to time: ``make(threads)`` returns a function that runs one batch; ``profile(batch, threads,
    runs, top)``, where the variant has one, its top operators by time."""

    name: str
    make: Callable[[int], Callable[[Batch], object]]
    size_bytes: int | None = None
    profile: Callable[[Batch, int, int, int | None], tuple[OpTime, ...]] | None = None


def onnx_variant(name: str, model: onnx.ModelProto | bytes) -> Variant:
    """An ONNX model timed through ONNX Runtime (a session per thread count, made by :mod:`onnxguard.runtime`)."""
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model

    def make(threads: int) -> Callable[[Batch], object]:
        sess = runtime.session(data, threads=threads, name=name, spin=False)
        names = {i.name for i in sess.get_inputs()}
        return lambda batch: sess.run(None, {k: v for k, v in batch.items() if k in names})

    def profile(batch: Batch, threads: int, runs: int, top: int | None) -> tuple[OpTime, ...]:
        return profile_onnx(data, batch, threads, runs=runs, top=top, name=name)

    return Variant(name, make, len(data), profile)


def length_aware_variant(name: str, model: onnx.ModelProto | bytes, plan: LengthPlan | None = None) -> Variant:
    """An ONNX text model run length-aware (:class:`onnxguard.runtime.LengthAware`): padded batches without their
    padding, per ``plan`` (a bundle's recorded plan; None: the default)."""
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model

    def make(threads: int) -> Callable[[Batch], object]:
        return runtime.LengthAware(runtime.session(data, threads=threads, name=name, spin=False), plan).run

    return Variant(name, make, len(data))


def summarize_profile(events: list[dict], skip: int = 0, top: int | None = None) -> tuple[OpTime, ...]:
    """Node events of an ONNX Runtime profile grouped by operator type, slowest first, over the model runs after
    the first ``skip``; times and calls are per run."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[skip:]
    if not runs:
        return ()
    start, run_us = runs[0]["ts"], sum(e["dur"] for e in runs)
    total: dict[str, float] = {}
    calls: dict[str, int] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") or e["ts"] < start:
            continue
        op = str(e.get("args", {}).get("op_name") or e["name"].removesuffix("_kernel_time"))
        total[op] = total.get(op, 0.0) + e["dur"]
        calls[op] = calls.get(op, 0) + 1
    ops = sorted(total, key=lambda op: (-total[op], op))[:top]
    n = len(runs)
    return tuple(OpTime(op, total[op] / n / 1e3, total[op] / run_us if run_us else 0.0, round(calls[op] / n))
                 for op in ops)


def profile_onnx(model: onnx.ModelProto | bytes, batch: Batch, threads: int, *, runs: int = 10,
                 top: int | None = 10, name: str = "the model") -> tuple[OpTime, ...]:
    """``model``'s top operator types by time on ``batch``: one untimed call, then ``runs`` profiled ones.

    The profiler writes into a temporary directory made here (an absolute prefix: never the working directory),
    which is removed with the profile in it before this returns.
    """
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    with tempfile.TemporaryDirectory(prefix="onnxguard-profile-") as tmp:
        sess = runtime.session(data, threads=threads, name=name, profile_prefix=os.path.join(tmp, "ort"))
        names = {i.name for i in sess.get_inputs()}
        feed = {k: v for k, v in batch.items() if k in names}
        try:
            for _ in range(1 + max(runs, 1)):
                sess.run(None, feed)
        finally:
            path = sess.end_profiling()
        with open(path, encoding="utf-8") as f:
            events = json.load(f)
        del sess
    return summarize_profile(events if isinstance(events, list) else [], skip=1, top=top)


def source_variant(source, size_bytes: int | None = None,
                   set_threads: Callable[[int], None] | None = None) -> Variant:
    """The source framework (PyTorch eager under inference_mode, scikit-learn predict/predict_proba).

    A framework's thread count is a setting of the whole process (``torch.set_num_threads``), so the library
    never changes it: the source runs with the threads its process has. A caller that owns the process (the
    command line) passes ``set_threads`` (for example ``torch.set_num_threads``), called with each cell's
    thread count before the source is timed, to compare at equal threads.
    """

    def make(threads: int) -> Callable[[Batch], object]:
        if set_threads is not None:
            set_threads(threads)
        return source.run

    return Variant(f"{source.framework} (source)", make, size_bytes)


def resize(batch: Batch, n: int) -> Batch:
    """Rows of ``batch`` repeated or cut to exactly ``n``."""
    rows = len(next(iter(batch.values())))
    idx = np.arange(n) % rows
    return {k: np.ascontiguousarray(v[idx]) for k, v in batch.items()}


def _rss_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory_mb(variant: Variant, batch: Batch, threads: int) -> float | None:
    """Peak resident memory above the baseline while loading the variant and running it (Linux only)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS, to the current RSS
    except OSError:
        return None
    base = _rss_kb("VmRSS")
    run = variant.make(threads)
    for _ in range(3):
        run(batch)
    peak = _rss_kb("VmHWM")
    del run
    return None if base is None or peak is None else max(peak - base, 0) / 1024


def _pct(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q)) if samples else float("nan")


def _cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def machine() -> dict:
    """The CPU, core count and versions a report was measured with."""
    # Not platform.processor(): on Linux it runs `uname -p` in a subprocess, whose lookup of the executable
    # swaps the process's warnings filters while it runs (os.get_exec_path), unsafe beside other threads.
    import platform

    return {"cpu": _cpu_model() or platform.machine(), "isa": isa(), "cores": os.cpu_count(),
            "python": platform.python_version(), "onnxruntime": ort.__version__}


# The x86 flags that decide ONNX Runtime's INT8 and FP32 kernels: a figure means little without them (U8S8
# kernels saturate without VNNI; see speed.quantize).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def isa(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """Which of ``ISA_FLAGS`` this CPU has (empty where /proc/cpuinfo is not readable)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return []
    return [f for f in ISA_FLAGS if f in flags]


def bench(variants: list[Variant], inputs: Batch, options: BenchOptions = BenchOptions(), baseline: str | None = None,
          progress: Progress = silent) -> BenchReport:
    """Time every variant on ``inputs`` resized to each batch size, interleaved, for each thread count."""
    if not variants:
        raise InputError("nothing to benchmark")
    if baseline is not None and baseline not in {v.name for v in variants}:
        raise InputError(f"baseline {baseline!r} is not among the variants")
    timings, samples = [], {}
    cells = [(b, t) for t in options.threads for b in options.batch_sizes]
    for ci, (batch_size, threads) in enumerate(cells):
        batch = resize(inputs, batch_size)
        progress(Event("bench", f"batch {batch_size}, {threads} threads: warming up", ci, len(cells)))
        runners = [(v, v.make(threads)) for v in variants]
        for _, run in runners:
            for _ in range(options.warmup):
                run(batch)
        cell: dict[str, list[float]] = {v.name: [] for v in variants}
        deadline = time.perf_counter() + options.max_seconds
        for r in range(options.runs):
            order = runners[r % len(runners):] + runners[: r % len(runners)]  # rotate who goes first
            for v, run in order:
                t0 = time.perf_counter()
                run(batch)
                cell[v.name].append((time.perf_counter() - t0) * 1e3)
            if time.perf_counter() > deadline:
                break
        del runners
        profiles = {}
        if options.profile:
            progress(Event("bench", f"batch {batch_size}, {threads} threads: profiling", ci, len(cells)))
            profiles = {v.name: v.profile(batch, threads, options.profile_runs, options.profile_top)
                        for v in variants if v.profile is not None}
        base_p50 = _pct(cell[baseline], 50) if baseline else None
        for v in variants:
            s = cell[v.name]
            p50 = _pct(s, 50)
            peak = peak_memory_mb(v, batch, threads) if options.memory else None
            timings.append(Timing(v.name, batch_size, threads, len(s), p50, _pct(s, 95), _pct(s, 99), float(np.mean(s)),
                                  batch_size / (p50 / 1e3), v.size_bytes, peak,
                                  None if base_p50 is None else base_p50 / p50, profiles.get(v.name)))
            samples[f"{v.name}@{batch_size}/{threads}"] = s
        progress(Event("bench", f"batch {batch_size}, {threads} threads: done", ci + 1, len(cells)))
    return BenchReport(tuple(timings), samples, baseline, machine())


def plot(report: BenchReport, path: str | Path) -> None:
    """Latency distribution per variant (one panel per batch size/threads), throughput against batch size and,
    for a profiled run, each variant's share of run time per operator type."""
    # The figure is drawn without pyplot: no backend is chosen and no figure is registered in this process.
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    cells = sorted({(t.batch, t.threads) for t in report.timings})
    names = list(dict.fromkeys(t.variant for t in report.timings))
    profiled = [t for t in report.timings if t.profile]
    panels = len(cells) + 1 + (1 if profiled else 0)
    ncols = min(3, panels)
    nrows = -(-panels // ncols)
    fig = Figure(figsize=(5.2 * ncols, 3.6 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    flat = list(axes.flat)
    for ax in flat[panels:]:
        ax.set_visible(False)
    for ax, (b, th) in zip(flat, cells, strict=False):
        data = [report.samples[f"{n}@{b}/{th}"] for n in names]
        ax.boxplot(data, showfliers=False, orientation="horizontal")
        ax.set_yticks(range(1, len(names) + 1), names, fontsize=8)
        ax.set_xlabel("latency per call (ms)")
        ax.set_title(f"batch {b}, {th} thread(s)")
        if max(map(max, data)) > 10 * min(map(min, data)):  # log scale only when the spread needs it
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(axis="x", alpha=0.3)
    ax = flat[len(cells)]
    for n in names:
        for th in sorted({t.threads for t in report.timings}):
            pts = sorted((t.batch, t.items_per_s) for t in report.timings if t.variant == n and t.threads == th)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{n} ({th}t)")
    ax.set_xlabel("batch size")
    ax.set_ylabel("items / s (at p50)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_title("throughput")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if profiled:
        ax = flat[len(cells) + 1]
        colors: dict[str, str] = {}
        for row, t in enumerate(profiled):
            left = 0.0
            for op in t.profile or ():
                color = colors.setdefault(op.op, f"C{len(colors) % 10}")  # one colour per operator type
                ax.barh(row, op.share, left=left, color=color, edgecolor="white")
                if op.share >= 0.15:  # room for the name
                    ax.text(left + op.share / 2, row, op.op, ha="center", va="center", fontsize=7)
                left += op.share
        ax.set_yticks(range(len(profiled)), [f"{t.variant} b{t.batch}/{t.threads}t" for t in profiled], fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of run time (ONNX Runtime profiler)")
        ax.set_title("top operators")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
