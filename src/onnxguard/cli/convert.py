from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxguard import convert as convert_lib
from onnxguard import staging
from onnxguard.cli import options, render
from onnxguard.cli.app import app
from onnxguard.model import onnxfile


@app.command()
def convert(
    source: Annotated[str, typer.Argument(
        help="file.py:factory, model.pt2, a Transformers dir or hub id, model.skops")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The .onnx file to write.")],
    opset: options.Opset = None,
    exporter: options.Exporter = "auto",
    input_shape: options.InputShape = None,
    task: options.Task = None,
    pooling: options.Pooling = "mean",
    max_length: options.MaxLength = None,
    trust_pickle: options.TrustPickle = False,
    meta: options.Meta = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name (metadata 'name').")] = None,
    version: Annotated[str | None, typer.Option("--version", help="Model version (metadata 'version').")] = None,
) -> None:
    """Export a PyTorch, Transformers or scikit-learn model to ONNX with dynamic batch (and sequence) axes."""
    metadata = options.parse_meta(meta)
    metadata.update({k: v for k, v in (("name", name), ("version", version)) if v})
    opts = options.convert_options(opset, exporter, input_shape, task, pooling, max_length, trust_pickle)
    given = convert_lib.spec_path(source)
    staging.check_output(output, kind="file", inputs=[given] if given else [], overwrite=True)  # before the export
    with render.progress_display() as progress:
        result = convert_lib.convert(source, opts, metadata, progress)
    size = onnxfile.save(result.model, output)
    render.out.print(f"wrote {output} ({render.size(size)}, {result.exporter}, {len(result.model.graph.node)} nodes)")
    for note in result.notes:
        render.out.print(f"note: {note}")
