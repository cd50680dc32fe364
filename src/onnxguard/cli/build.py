from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from onnxguard import build as build_lib
from onnxguard.accuracy.thresholds import GATE
from onnxguard.build import BuildResult
from onnxguard.cli import options, render
from onnxguard.cli.app import app
from onnxguard.cli.variant_common import severity
from onnxguard.errors import InputError
from onnxguard.speed.select import Selection
from onnxguard.trust import sealing

_DT = options.DEFAULT_TOLERANCE


@app.command()
def build(
    source: Annotated[str, typer.Argument(help="The source model, as for convert.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The bundle directory to create.")],
    name: Annotated[str | None, typer.Option("--name", help="Bundle name (default: from the source).")] = None,
    version: Annotated[str, typer.Option("--version", help="Bundle version.")] = "0.1.0",
    meta: options.Meta = None,
    labels: Annotated[str | None, typer.Option("--labels", help="Comma-separated class labels.")] = None,
    golden_npz: options.GoldenNpz = None,
    texts: options.Texts = None,
    opset: options.Opset = None,
    exporter: options.Exporter = "auto",
    input_shape: options.InputShape = None,
    task: options.Task = None,
    pooling: options.Pooling = "mean",
    max_length: options.MaxLength = None,
    trust_pickle: options.TrustPickle = False,
    atol: options.Atol = _DT.atol,
    rtol: options.Rtol = _DT.rtol,
    min_cosine: options.MinCosine = _DT.min_cosine,
    min_label_agreement: options.MinAgreement = _DT.min_label_agreement,
    optimize: Annotated[str, typer.Option(
        "--optimize", help="none | auto (measure, keep the faster) | fusions | basic | extended | all.")] = "auto",
    quantize: Annotated[str, typer.Option(
        "--quantize", help="none | auto (try dynamic and static INT8, keep the fastest that passes the gate) | dynamic "
                           "| static | blockwise (8-bit MatMulNBits, int8 activations per block) | fp16.")] = "none",
    calibration: options.Calibration = None,
    calibration_method: options.CalibrationMethod = "minmax",
    gate_min_cosine: options.GateMinCosine = GATE.min_cosine,
    gate_min_label_agreement: options.GateMinAgreement = GATE.min_label_agreement,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size at which candidates are timed.")] = 1,
    threads: Annotated[int, typer.Option(
        "--threads", help="Threads at which candidates are timed (0: all cores).")] = 0,
    sign_key: Annotated[Path | None, typer.Option(
        "--sign-key", help="Sign the bundle with this private key (PEM; see keygen).")] = None,
    recipient: Annotated[list[str] | None, typer.Option(
        "--recipient", help="Seal the model and golden set to this age recipient (age1..., ssh-ed25519 ...); "
                            "repeatable.")] = None,
    scan: Annotated[bool, typer.Option(
        "--scan/--no-scan", help="Security-scan the chosen model before bundling it.")] = True,
    policy: Annotated[Path | None, typer.Option(
        "--policy", help="Scan policy TOML (default: the built-in default profile).")] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="Scan policy profile: default | strict.")] = None,
    fail_on: Annotated[str, typer.Option(
        "--fail-on", help="Stop the build on a scan finding at or above: info | low | medium | high | "
                          "critical.")] = "medium",
    force: Annotated[bool, typer.Option(
        "--force", help="Keep a requested variant that fails the accuracy gate (recorded in the manifest).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle at OUTPUT.")] = False,
    json: options.Json = False,
) -> None:
    """Convert, check parity against the source framework, optimize and quantize behind the accuracy gate,
    keep the fastest variant that passes, scan it, and write a bundle (sealed, then signed, when asked)."""
    severity(fail_on)  # --fail-on checked here, where the flag has its name
    for r in recipient or ():
        sealing.parse_recipient(r, "--recipient")  # likewise a bad --recipient, before a long build
    if optimize not in build_lib.OPTIMIZE_CHOICES or quantize not in build_lib.QUANTIZE_CHOICES:
        raise InputError(f"--optimize must be one of {', '.join(build_lib.OPTIMIZE_CHOICES)}; "
                         f"--quantize one of {', '.join(build_lib.QUANTIZE_CHOICES)}")
    opts = build_lib.BuildOptions(
        convert=options.convert_options(opset, exporter, input_shape, task, pooling, max_length, trust_pickle),
        name=name, version=version, meta=options.parse_meta(meta),
        labels=[x.strip() for x in labels.split(",")] if labels else None,
        golden_npz=golden_npz, texts=texts,
        tolerance=options.tolerance(atol, rtol, min_cosine, min_label_agreement), overwrite=overwrite,
        optimize=optimize, quantize=quantize, calibration=calibration, calibration_method=calibration_method,
        gate=options.gate(gate_min_cosine, gate_min_label_agreement), force=force,
        bench_batch=batch_size, bench_threads=threads, scan=scan, policy=_policy(policy, profile), fail_on=fail_on,
        sign_key=sign_key, recipients=tuple(recipient or ()))
    with render.progress_display(not json) as progress:
        result = build_lib.build(source, output, opts, progress)
    if json:
        render.print_json({"bundle": str(result.bundle.path), "stages": [s.__dict__ for s in result.stages],
                           "manifest": result.bundle.manifest.model_dump()})
        return
    render.parity_report(result.parity, "parity of the export")
    if result.selection:
        candidates(result.selection)
    summary(result)


def candidates(sel: Selection) -> None:
    t = Table(title=f"variants (timed at batch {sel.batch_size}, {sel.threads} threads; gate vs the source framework)",
              title_justify="left")
    for col in ("variant", "size", "gate", "worst cosine", "label agreement", "p50 ms", "vs fp32"):
        t.add_column(col, justify="left" if col in ("variant", "gate") else "right")
    base = sel.candidates[0].p50_ms
    for c in sel.candidates:
        cos = [o.min_cosine for o in c.gate.outputs if o.min_cosine is not None] if c.gate else []
        agree = [o.label_agreement for o in c.gate.outputs if o.label_agreement is not None] if c.gate else []
        if c.error or c.gate is None:  # a candidate that could not be made or gated
            gate = "[red]error[/] (see manifest)"
        else:
            gate = "[green]passed[/]" if c.gate.passed else "[red]failed[/]"
        name = f"[bold]{c.name}[/] (chosen)" if c is sel.winner else c.name
        t.add_row(name, render.size(c.size) if not c.error else "-", gate, f"{min(cos):.5f}" if cos else "-",
                  f"{min(agree):.2%}" if agree else "-", f"{c.p50_ms:.2f}" if c.p50_ms else "-",
                  f"{1 / c.to_base:.2f}x" if base and c.p50_ms else "-")  # paired ratios, not p50s apart
    render.out.print(t)
    render.out.print(f"chosen: {sel.reason}")


def _policy(path: Path | None, profile: str | None):
    from onnxguard import scan as scanner

    if path is not None:
        return scanner.load_policy(path, profile)
    return scanner.for_profile(profile or "default")


def summary(result: BuildResult) -> None:
    t = Table(title=f"built {result.bundle.path}", title_justify="left")
    t.add_column("stage")
    t.add_column("seconds", justify="right")
    t.add_column("result")
    for s in result.stages:
        t.add_row(s.name, f"{s.seconds:.1f}", s.detail)
    render.out.print(t)
