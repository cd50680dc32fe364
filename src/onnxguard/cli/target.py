from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from onnxguard import staging
from onnxguard import target as target_lib
from onnxguard.cli import render, trusting
from onnxguard.cli.app import app


@app.command()
def target(
    source: Annotated[Path, typer.Argument(help="The bundle.")],
    to: Annotated[str, typer.Option(
        "--to", help="mobile (ORT format, ARM) | edge (ORT format, any CPU) | web (onnxruntime-web, WASM).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The target directory to create.")],
    public_key: trusting.PublicKey = None,
    allow_unsigned: trusting.AllowUnsigned = False,
    identity: trusting.Identity = None,
    passphrase_env: trusting.PassphraseEnv = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUTPUT.")] = False,
) -> None:
    """The bundle's model for a phone, a small board or a browser, with its golden set and provenance.

    The bundle is opened through the trust checks first (signature, files, sealed plaintext, scan)."""
    staging.check_output(output, inputs=[source], overwrite=overwrite)  # before any work
    with render.progress_display() as progress:
        parent = trusting.open_from_cli(source, public_key=public_key, allow_unsigned=allow_unsigned,
                                        identity=identity, passphrase_env=passphrase_env, progress=progress)
        result = target_lib.make(parent, to, output, overwrite, progress)
    t = Table(title=f"{to} target {result.path}", show_header=False, title_justify="left")
    for name, size in result.files.items():
        t.add_row(name, render.size(size))
    reduced = " (the set a reduced ONNX Runtime build needs)" if result.kind != "web" else ""
    t.add_row("op types", f"{sum(len(ops) for ops in result.operators.values())}{reduced}")
    for domain, ops in result.operators.items():
        t.add_row(f"ops {domain}", ", ".join(ops))
    render.out.print(t)
    if result.parity is not None:
        render.parity_report(result.parity, "golden set on the ORT format model vs the source framework")
    for note in result.notes:
        render.out.print(note)
