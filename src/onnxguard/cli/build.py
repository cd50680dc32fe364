from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .. import build as build_lib
from ..build import BuildResult
from . import app, options, render

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
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle at OUTPUT.")] = False,
    json: options.Json = False,
) -> None:
    """Convert, check parity against the source framework, and write a bundle."""
    opts = build_lib.BuildOptions(
        convert=options.convert_options(opset, exporter, input_shape, task, pooling, max_length, trust_pickle),
        name=name, version=version, meta=options.parse_meta(meta),
        labels=[x.strip() for x in labels.split(",")] if labels else None,
        golden_npz=golden_npz, texts=texts,
        tolerance=options.tolerance(atol, rtol, min_cosine, min_label_agreement), overwrite=force)
    with render.progress_display(not json) as progress:
        result = build_lib.build(source, output, opts, progress)
    if json:
        render.print_json({"bundle": str(result.bundle.path), "stages": [s.__dict__ for s in result.stages],
                           "manifest": result.bundle.manifest.model_dump()})
        return
    render.parity_report(result.parity)
    summary(result)


def summary(result: BuildResult) -> None:
    t = Table(title=f"built {result.bundle.path}", title_justify="left")
    t.add_column("stage")
    t.add_column("seconds", justify="right")
    t.add_column("result")
    for s in result.stages:
        t.add_row(s.name, f"{s.seconds:.1f}", s.detail)
    render.out.print(t)
