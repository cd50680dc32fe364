from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxguard.cli import options, render, trusting
from onnxguard.cli.app import app
from onnxguard.model import info as inspect_lib
from onnxguard.scan.interface import Severity
from onnxguard.trust import PublicKeys, TrustPolicy, UnsafeUnscanned, UnsafeUnsigned, open_bundle


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="An .onnx file or a bundle directory.")],
    json: options.Json = False,
    public_key: trusting.PublicKey = None,
    identity: trusting.Identity = None,
    passphrase_env: trusting.PassphraseEnv = None,
) -> None:
    """Opset, IR version, producer, inputs and outputs, op histogram, parameters, size, metadata.

    A bundle is read through the trust checks (files against the manifest, the model scanned in memory; a
    critical finding refuses it). inspect describes, it does not vouch: the signature is checked only with
    --public-key, and a sealed model opened without --identity is described from its manifest."""
    if path.is_dir():
        # Describing is not trusting: the signature and the sealed plaintext are waived unless given, and say so.
        policy = TrustPolicy(PublicKeys(tuple(public_key)) if public_key else UnsafeUnsigned(),
                             UnsafeUnscanned(fail_on=Severity.CRITICAL))
        opened = open_bundle(path, policy, trusting.identity_source(identity), trusting.passphrase(passphrase_env))
        info = inspect_lib.describe_bundle(opened)
    else:
        info = inspect_lib.inspect(path)
    if json:
        render.print_json(info.to_dict())
    else:
        render.model_info(info)
