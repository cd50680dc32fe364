from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxguard.model import info as inspect_lib
from onnxguard.cli import app, options, render


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="An .onnx file or a bundle directory.")],
    json: options.Json = False,
    identity: Annotated[Path | None, typer.Option("--identity", help="age identity: describe a sealed bundle's model "
                                                  "(decrypted in memory only).")] = None,
) -> None:
    """Opset, IR version, producer, inputs and outputs, op histogram, parameters, size, metadata."""
    ids = None
    if identity is not None:
        from onnxguard.trust import sealing

        ids = sealing.identities(identity)
    info = inspect_lib.inspect(path, ids)
    if json:
        render.print_json(info.to_dict())
    else:
        render.model_info(info)
