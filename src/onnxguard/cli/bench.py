from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from onnxguard import convert
from onnxguard.bundle import golden
from onnxguard.bundle.golden import Batch
from onnxguard.cli import loadtest, options, render, trusting
from onnxguard.cli.app import app
from onnxguard.cli.variant_common import is_bundle
from onnxguard.convert import ConvertOptions, Source
from onnxguard.errors import InputError
from onnxguard.model import onnxfile
from onnxguard.runtime.loading import plan_of
from onnxguard.speed import bench as bench_lib
from onnxguard.speed import select as variants

# Sources that run in PyTorch (a Transformers model is a torch module).
TORCH_FRAMEWORKS = ("pytorch", "transformers")


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError as e:
        raise InputError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,8") from e
    if not values or min(values) < 1:
        raise InputError(f"{flag} {text!r}: values must be >= 1")
    return values


def _signature_inputs(model) -> Batch:
    """Random inputs from the model's declared inputs (symbolic dims: 1 for the batch axis, 16 otherwise)."""
    rng = np.random.default_rng(0)
    batch = {}
    for spec in onnxfile.inputs(model):
        shape = [d if isinstance(d, int) else (1 if i == 0 else 16) for i, d in enumerate(spec.shape or ())]
        dtype = np.dtype(spec.dtype)
        values = rng.standard_normal(shape) if dtype.kind == "f" else rng.integers(0, 2, shape)
        batch[spec.name] = values.astype(dtype)
    return batch


def _torch_threads(src: Source, stack: contextlib.ExitStack) -> Callable[[int], None] | None:
    """``torch.set_num_threads`` for a torch source, so that it runs on each cell's threads like the ONNX variants:
    a process-wide setting, which the library never changes and the command line, owning its process, may. The
    count it had is put back when ``stack`` closes (the command can run inside another program, such as a test)."""
    if src.framework not in TORCH_FRAMEWORKS:
        return None
    import torch  # already imported by the source's loader

    stack.callback(torch.set_num_threads, torch.get_num_threads())
    return torch.set_num_threads


def _sleeping_openmp(stack: contextlib.ExitStack) -> None:
    """Make PyTorch's OpenMP threads sleep between calls, unless the user chose a policy or torch is loaded already.

    libgomp's threads spin-wait after each call by default and hold the cores while the ONNX variant timed after it
    runs, the way ONNX Runtime's spinning threads would (their sessions here do not spin). Measured on the CIFAR CNN
    of docs/benchmarks.md B, batch 32, 2 threads, AVX2 EPYC: its static INT8 model ran 6.86 ms alone, 8.96 ms right
    after each PyTorch call, 7.07 ms with ``OMP_WAIT_POLICY=PASSIVE``; PyTorch itself 29.2 and 29.5 ms. libgomp
    reads the policy once, when torch loads it; the variable is put back when ``stack`` closes."""
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    stack.callback(os.environ.pop, "OMP_WAIT_POLICY", None)


@app.command()
def bench(
    models: Annotated[list[Path] | None, typer.Argument(help="Bundles and/or .onnx files, timed side by side.")] = None,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "1,8",
    threads: Annotated[str, typer.Option("--threads", help="Comma-separated intra-op thread counts.")] = "2",
    runs: Annotated[int, typer.Option("--runs", help="Timed calls per variant and cell.")] = 50,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls per variant first.")] = 5,
    max_seconds: Annotated[float, typer.Option("--max-seconds", help="Time cap per (batch, threads) cell.")] = 60.0,
    compare: Annotated[bool, typer.Option(
        "--compare", help="Also run the source framework (from the first bundle's manifest, or --source).")] = False,
    source: Annotated[str | None, typer.Option(
        "--source", help="Source model spec for --compare (default: the bundle's).")] = None,
    input_shape: options.InputShape = None,
    inputs: Annotated[Path | None, typer.Option(
        "--inputs", help="An .npz batch to time on (rows repeated or cut to each batch size).")] = None,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Measure peak memory per variant.")] = True,
    profile: Annotated[bool, typer.Option(
        "--profile", help="Also the top operators by time per variant, from ONNX Runtime's profiler (separate "
                          "runs, not in the timings).")] = False,
    top: Annotated[int, typer.Option("--top", min=1, help="Operator types shown per variant with --profile.")] = 5,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Write latency and throughput charts to this PNG.")] = None,
    json: options.Json = False,
    public_key: trusting.PublicKey = None,
    allow_unsigned: trusting.AllowUnsigned = False,
    identity: trusting.Identity = None,
    passphrase_env: trusting.PassphraseEnv = None,
    url: loadtest.Url = None,
    model_name: loadtest.Model = None,
    key_env: loadtest.KeyEnv = None,
    concurrency: loadtest.Concurrency = "1,4,16,64",
    duration: loadtest.Duration = 10.0,
    max_requests: loadtest.MaxRequests = 100_000,
    texts: loadtest.Texts = None,
) -> None:
    """Latency percentiles, throughput, size and peak memory, interleaved in one run, with ratios; or, with
    --url, a bounded load on a running server: throughput and latency per concurrency level."""
    if url is not None:
        if models:
            raise InputError("give bundles/.onnx files or --url, not both")
        loadtest.bench_url(url, model_name, key_env, concurrency, duration, max_requests, inputs, texts, plot, json)
        return
    if not models:
        raise InputError("nothing to time: give bundles and/or .onnx files, or --url URL of a running server")
    opts = bench_lib.BenchOptions(_ints(batch_sizes, "--batch-sizes"), _ints(threads, "--threads"), warmup, runs,
                                  max_seconds, memory, profile=profile, profile_top=top)
    variant_list, first_bundle, batch, first_model = [], None, None, None
    for path in models:
        if is_bundle(path):
            b = trusting.open_from_cli(path, public_key=public_key, allow_unsigned=allow_unsigned, identity=identity,
                                       passphrase_env=passphrase_env)
            first_bundle = first_bundle or b
            variant_list.append(bench_lib.onnx_variant(f"{b.manifest.name} ({path.name})", b.model_bytes))
            if b.manifest.lengths is not None:  # a text model: its padded batches also run without their padding
                variant_list.append(bench_lib.length_aware_variant(
                    f"{b.manifest.name} ({path.name}) length-aware", b.model_bytes, plan_of(b.manifest)))
            batch = batch or variants.measure_batch(b.golden(), 1)
        else:
            model = onnxfile.load(path)
            first_model = first_model or model
            variant_list.append(bench_lib.onnx_variant(path.name, model))
    if inputs is not None:
        batch = golden.load(inputs).inputs[0]
    batch = batch or _signature_inputs(first_model)
    baseline = variant_list[0].name
    with contextlib.ExitStack() as stack:
        if compare:
            spec = source or (first_bundle.manifest.source.identifier if first_bundle else None)
            if spec is None:
                raise InputError("--compare needs a bundle (its manifest names the source) or --source SPEC")
            m = first_bundle.manifest if first_bundle else None
            _sleeping_openmp(stack)
            src = convert.load(spec, ConvertOptions(task=m.source.task if m else None, attn_implementation="sdpa",
                                                    input_shapes=tuple(input_shape or ())))
            sv = bench_lib.source_variant(src, set_threads=_torch_threads(src, stack))
            variant_list.insert(0, sv)
            baseline = sv.name
        with render.progress_display(not json) as progress:
            report = bench_lib.bench(variant_list, batch, opts, baseline, progress)
    if plot is not None:
        bench_lib.plot(report, plot)
    if json:
        render.print_json(report.to_dict())
        return
    t = Table(title=f"bench ({report.machine['cores']} cores, onnxruntime {report.machine['onnxruntime']}; "
                    f"ratios: {baseline} p50 / variant p50, same run)", title_justify="left")
    for col in ("variant", "batch", "threads", "p50 ms", "p95 ms", "p99 ms", "items/s", "x baseline", "size",
                "peak MB"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for x in report.timings:
        t.add_row(x.variant, str(x.batch), str(x.threads), f"{x.p50_ms:.3f}", f"{x.p95_ms:.3f}", f"{x.p99_ms:.3f}",
                  f"{x.items_per_s:,.0f}", "-" if x.speedup is None else f"{x.speedup:.2f}x",
                  "-" if x.size_bytes is None else render.size(x.size_bytes),
                  "-" if x.peak_mb is None else f"{x.peak_mb:.0f}")
    render.out.print(t)
    for x in report.timings:
        if x.profile is None:
            continue
        render.out.print(f"top operators: {x.variant}, batch {x.batch}, {x.threads} threads (ONNX Runtime's "
                         "profiler; ms and calls per run, share of the run)", soft_wrap=True)
        p = Table()
        for col in ("operator", "ms", "share", "calls"):
            p.add_column(col, justify="left" if col == "operator" else "right")
        for op in x.profile:
            p.add_row(op.op, f"{op.ms:.3f}", f"{op.share:.0%}", str(op.calls))
        render.out.print(p)
    if plot is not None:
        render.out.print(f"plot: {plot}")
