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
    platform: Annotated[bool, typer.Option("--platform", help="Make the simulation platform's attestation key "
                                           "(Ed25519) instead: serve --confidential --platform-key.")] = False,
    json: options.Json = False,
) -> None:
    """Make a signing key pair (EC P-256, PEM) and an age identity with its recipient (with --platform: the
    simulation platform's Ed25519 attestation key pair)."""
    if platform:
        from onnxguard.confidential.platform import simulation

        made = simulation.generate_key(out)
        if json:
            render.print_json(made.to_dict())
            return
        render.out.print(f"platform key (private, keep secret)  {made.private_key}")
        render.out.print(f"platform key (public, for verifiers) {made.public_key}: {made.fingerprint}")
        return
    paths = keys.generate(out)
    if json:
        render.print_json(paths.to_dict())
        return
    render.out.print(f"signing key (private, keep secret)  {paths.private_key}")
    render.out.print(f"signing key (public, for verify)    {paths.public_key}")
    render.out.print(f"age identity (private, keep secret) {paths.age_identity}")
    render.out.print(f"age recipient (public, for seal)    {paths.age_recipient}: {paths.recipient}")
