from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxguard.cli import options, render
from onnxguard.cli.app import app
from onnxguard.trust import keys


@app.command()
def keygen(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the keys (created; existing key files are "
                                      "never overwritten).")],
    json: options.Json = False,
) -> None:
    """Make a signing key pair (EC P-256, PEM) and an age identity with its recipient."""
    paths = keys.generate(out)
    if json:
        render.print_json(paths.to_dict())
        return
    render.out.print(f"signing key (private, keep secret)  {paths.private_key}")
    render.out.print(f"signing key (public, for verify)    {paths.public_key}")
    render.out.print(f"age identity (private, keep secret) {paths.age_identity}")
    render.out.print(f"age recipient (public, for seal)    {paths.age_recipient}: {paths.recipient}")
