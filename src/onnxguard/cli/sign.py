from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from onnxguard.cli import options, render
from onnxguard.cli.app import app
from onnxguard.errors import InputError
from onnxguard.trust import signing


def env_secret(var: str | None, option: str) -> str | None:
    """The value of the environment variable named by ``option`` (secrets never go on the command line)."""
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise InputError(f"{option} {var}: the environment variable {var} is not set or empty")
    return value


@app.command()
def sign(
    bundle: Annotated[Path, typer.Argument(help="The bundle directory to sign (writes BUNDLE/model.sig).")],
    key: Annotated[Path | None, typer.Option("--key", "-k", help="EC private key (PEM; P-256/384/521), "
                                             "e.g. from `onnxguard keygen`.")] = None,
    password_env: Annotated[str | None, typer.Option("--password-env", help="Name of the environment variable "
                                                     "holding the private key's password, if it is encrypted.")] = None,
    certificate: Annotated[Path | None, typer.Option("--certificate", help="Certificate mode: the signing "
                                                     "certificate (PEM) of --key.")] = None,
    certificate_chain: Annotated[list[Path] | None, typer.Option("--certificate-chain", help="Certificate mode: "
                                                                 "chain certificates (PEM), repeatable.")] = None,
    sigstore: Annotated[bool, typer.Option("--sigstore", help="Sigstore keyless signing (needs a network and an "
                                           "OIDC identity).")] = False,
    identity_token_env: Annotated[str | None, typer.Option(
        "--identity-token-env", help="Sigstore: name of the environment variable holding an OIDC identity "
                                     "token.")] = None,
    staging: Annotated[bool, typer.Option("--staging", help="Sigstore: use the staging instance.")] = False,
    json: options.Json = False,
) -> None:
    """Sign a bundle with OpenSSF model-signing (key, certificate or Sigstore keyless); seal first, then sign."""
    if sigstore:
        if key is not None or certificate is not None:
            raise InputError("--sigstore signs keyless: do not give --key or --certificate with it")
        result = signing.sign_with_sigstore(bundle, env_secret(identity_token_env, "--identity-token-env"),
                                            use_staging=staging)
    elif key is None:
        raise InputError("give --key PRIVATE.pem (make one with `onnxguard keygen`), or --sigstore")
    elif certificate is not None:
        if password_env is not None:
            raise InputError("--password-env: encrypted keys are supported in key mode only; decrypt the key")
        result = signing.sign_with_certificate(bundle, key, certificate, certificate_chain or [])
    elif certificate_chain:
        raise InputError("--certificate-chain needs --certificate (the signing certificate of --key)")
    else:
        result = signing.sign(bundle, key, env_secret(password_env, "--password-env"))
    if json:
        render.print_json(result.to_dict())
    else:
        verb = "re-signed" if result.replaced else "signed"
        render.out.print(f"{verb} {result.bundle} ({result.method}, {result.files} files): {result.signature}")
