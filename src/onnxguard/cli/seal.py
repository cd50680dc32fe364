from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxguard.cli import options, render, trusting
from onnxguard.cli.app import app
from onnxguard.cli.sign import env_secret
from onnxguard.errors import InputError
from onnxguard.trust import sealing

PassphraseEnv = Annotated[str | None, typer.Option("--passphrase-env", help="Name of the environment variable "
                                                   "holding the passphrase.")]


@app.command()
def seal(
    bundle: Annotated[Path, typer.Argument(help="The bundle directory to seal.")],
    recipient: Annotated[list[str] | None, typer.Option("--recipient", "-r", help="age1... recipient or an "
                                                        "ssh-ed25519 / ssh-rsa public key, repeatable.")] = None,
    recipients_file: Annotated[list[Path] | None, typer.Option("--recipients-file", "-R", help="File of recipients, "
                                                               "one per line, repeatable.")] = None,
    passphrase_env: PassphraseEnv = None,
    passphrase: Annotated[bool, typer.Option("--passphrase", help="Also seal to a passphrase, asked for at the "
                                             "terminal.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the sealed bundle here and leave "
                                                "BUNDLE as it is (default: seal in place).")] = None,
    json: options.Json = False,
) -> None:
    """Encrypt the model and golden set with age, streaming; seal first, then sign."""
    recipients = list(recipient or [])
    for r in recipients:
        sealing.parse_recipient(r, "--recipient")  # a bad one is named by the flag that gave it
    for f in recipients_file or []:
        recipients += sealing.read_recipients_file(f)
    secret = env_secret(passphrase_env, "--passphrase-env")
    if passphrase:
        if secret is not None:
            raise InputError("give --passphrase or --passphrase-env, not both")
        secret = typer.prompt("Passphrase", hide_input=True, confirmation_prompt=True, err=True)
    with render.progress_display(enabled=not json and render.err.is_terminal) as progress:
        result = sealing.seal(bundle, recipients, output, secret, progress)
    if json:
        render.print_json(result.to_dict())
        return
    files = ", ".join(f"{plain} -> {sealed}" for plain, sealed in result.files)
    to = list(result.recipients) + (["a passphrase"] if result.passphrase else [])
    render.out.print(f"sealed {result.bundle.path}: {files}")
    for r in to:
        render.out.print(f"  recipient: {r}")
    if result.dropped_signature:
        render.out.print(f"note: {bundle}/model.sig was not copied (it does not cover the sealed files): sign "
                         f"{result.bundle.path}")


@app.command()
def unseal(
    bundle: Annotated[Path, typer.Argument(help="The sealed bundle directory.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="New directory for the plaintext bundle.")],
    identity: trusting.Identity = None,
    passphrase_env: PassphraseEnv = None,
    json: options.Json = False,
) -> None:
    """Decrypt a sealed bundle into a new directory, for operators (serving decrypts in memory instead)."""
    result = sealing.unseal(bundle, trusting.identity_source(identity), output, trusting.passphrase(passphrase_env))
    if json:
        render.print_json({"bundle": str(result.path), "files": sorted(result.manifest.files)})
        return
    render.out.print(f"unsealed {bundle} to {result.path} (plaintext on disk: protect it; it is not signed)")
