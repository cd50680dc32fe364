from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import inspect as inspect_lib
from . import app, options, render


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="An .onnx file or a bundle directory.")],
    json: options.Json = False,
) -> None:
    """Opset, IR version, producer, inputs and outputs, op histogram, parameters, size, metadata."""
    info = inspect_lib.inspect(path)
    if json:
        render.print_json(info.to_dict())
    else:
        render.model_info(info)
