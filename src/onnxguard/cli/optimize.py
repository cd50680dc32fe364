from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from onnxguard.bundle.manifest import Step
from onnxguard.cli import options, render, trusting
from onnxguard.cli.app import app
from onnxguard.cli.variant_common import FailOn, Force, GoldenRefs, Overwrite, finish, open_input
from onnxguard.speed import optimize as optimize_lib

_DT = options.DEFAULT_TOLERANCE


@app.command()
def optimize(
    model: Annotated[Path, typer.Argument(help="An .onnx file or a bundle.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The .onnx file (or bundle, for a bundle) to write.")],
    level: Annotated[str, typer.Option(
        "--level", help="ONNX Runtime level: none | basic | extended | all (all is tied to this CPU).")] = "extended",
    fusions: Annotated[bool | None, typer.Option(
        "--fusions/--no-fusions", help="Transformer fusions (default: on for transformer graphs).")] = None,
    model_type: Annotated[str | None, typer.Option(
        "--model-type", help="Transformer model type (default: the bundle's source config, else bert).")] = None,
    num_heads: Annotated[int, typer.Option(
        "--num-heads", help="Attention heads (0: from the bundle, else detected).")] = 0,
    hidden_size: Annotated[int, typer.Option(
        "--hidden-size", help="Hidden size (0: from the bundle, else detected).")] = 0,
    golden_npz: GoldenRefs = None,
    atol: options.Atol = _DT.atol,
    rtol: options.Rtol = _DT.rtol,
    min_cosine: options.MinCosine = _DT.min_cosine,
    min_label_agreement: options.MinAgreement = _DT.min_label_agreement,
    force: Force = False,
    overwrite: Overwrite = False,
    fail_on: FailOn = "medium",
    public_key: trusting.PublicKey = None,
    allow_unsigned: trusting.AllowUnsigned = False,
    identity: trusting.Identity = None,
    passphrase_env: trusting.PassphraseEnv = None,
) -> None:
    """ONNX Runtime graph optimization and transformer fusions; reports the graph before and after.

    The input is security-scanned first (a bundle through the trust door). An FP32 graph must keep the
    export's strict parity with the source (the --atol/--rtol defaults)."""
    onnx_model, parent = open_input(model, output, overwrite, fail_on=fail_on, public_key=public_key,
                                    allow_unsigned=allow_unsigned, identity=identity, passphrase_env=passphrase_env)
    arch = (parent.manifest.source.architecture if parent else None) or {}
    opts = optimize_lib.OptimizeOptions(
        level=level, fusions=optimize_lib.is_transformer(onnx_model) if fusions is None else fusions,
        model_type=model_type or arch.get("model_type"), num_heads=num_heads or arch.get("num_heads", 0),
        hidden_size=hidden_size or arch.get("hidden_size", 0))
    result = optimize_lib.optimize(onnx_model, opts)
    t = Table(title=f"optimize: {result.nodes_before} -> {result.nodes_after} nodes", title_justify="left")
    for col in ("domain", "op", "before", "after"):
        t.add_column(col, justify="right" if col in ("before", "after") else "left")
    domains = sorted(set(result.ops_before) | set(result.ops_after))
    for d in domains:
        ops = sorted(set(result.ops_before.get(d, {})) | set(result.ops_after.get(d, {})))
        for op in ops:
            b, a = result.ops_before.get(d, {}).get(op, 0), result.ops_after.get(d, {}).get(op, 0)
            if a != b:
                t.add_row(d, op, str(b), str(a))
    render.out.print(t)
    if result.fused:
        render.out.print("fused: " + ", ".join(f"{k} {v}" for k, v in result.fused.items()))
    step = Step(name="optimize", settings=opts.__dict__, figures=result.figures())
    finish(result.model, parent, step, output, golden_npz, force, overwrite,
           options.tolerance(atol, rtol, min_cosine, min_label_agreement), model)
