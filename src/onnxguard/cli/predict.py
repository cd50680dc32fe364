from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import orjson
import typer

from onnxguard.cli import loadtest, options, render
from onnxguard.cli.app import app
from onnxguard.confidential import envelope
from onnxguard.confidential.platform import HARDWARE
from onnxguard.confidential.policy import LOCAL, ExpectedPolicy
from onnxguard.errors import InputError

MAX_INPUT_BYTES = 64 << 20


def _read(path: Path) -> tuple[str, Any]:
    """(route, payload): texts (.txt) and instances (.json) go to predict, named arrays (.npz) to infer."""
    from onnxguard.bundle import files, golden

    suffix = path.suffix.lower()
    if suffix == ".txt":
        return "predict", golden.read_texts(path)
    data = files.read_regular(path, MAX_INPUT_BYTES, what="input").data
    if suffix == ".json":
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise InputError(f"{path}: not JSON ({e})") from None
        instances = doc.get("instances") if isinstance(doc, dict) else doc
        if not isinstance(instances, list) or not instances:
            raise InputError(f"{path}: expected a non-empty list of instances, or {{\"instances\": [...]}}")
        return "predict", instances
    if suffix == ".npz":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return "infer", {k: z[k] for k in z.files}
        except (ValueError, OSError) as e:
            raise InputError(f"{path}: not a readable .npz of arrays ({e})") from None
    raise InputError(f"{path}: give texts (.txt, one per line), instances (.json) or named arrays (.npz)")


@app.command()
def predict(
    url: Annotated[str, typer.Argument(help="The confidential server, https://HOST:PORT.")],
    input_file: Annotated[Path, typer.Argument(metavar="INPUT", help="Texts (.txt, one per line), instances "
                                               "(.json) or named input arrays (.npz).")],
    model: Annotated[str, typer.Option("--model", help="The model's name on the server.")],
    expect_digest: Annotated[list[str] | None, typer.Option(
        "--expect-digest", help="Accept the model if its bundle digest (sha256 of manifest.json) is this; "
        "repeatable.")] = None,
    expect_signer: Annotated[list[Path] | None, typer.Option(
        "--expect-signer", help="Accept the model if this public key signed its bundle; repeatable.")] = None,
    expect_code: Annotated[list[str] | None, typer.Option(
        "--expect-code", help=f"An allowed code measurement (sha256), or '{LOCAL}' for this onnxguard's own; "
        "repeatable, at least one.")] = None,
    accept_platform: Annotated[list[str] | None, typer.Option(
        "--accept-platform", help=f"Accepted platforms, repeatable (default: {', '.join(HARDWARE)}); "
        "'simulation' only when named.")] = None,
    platform_key: Annotated[list[Path] | None, typer.Option(
        "--platform-key", help="A trusted simulation platform public key (platform-key.pub.pem).")] = None,
    max_age: Annotated[float, typer.Option("--max-age", help="Oldest attestation accepted, seconds.")] = 60.0,
    suite: Annotated[str, typer.Option("--suite", help=f"HPKE suite: {envelope.PQ} (default, hybrid "
                                       f"post-quantum) or {envelope.CLASSIC}.")] = envelope.DEFAULT_SUITE,
    key_env: loadtest.KeyEnv = None,
    cacert: Annotated[Path | None, typer.Option("--cacert", help="CA certificate to verify the server's TLS.")] = None,
    json: options.Json = False,
) -> None:
    """Predict through a confidential server: verify its attestation first (platform, quote, statement, fresh
    nonce, age, code measurement, model, serving policy, key) and send nothing when a check fails (exit 1,
    naming the check); then send the input end to end encrypted (HPKE) and decrypt the answer."""
    from onnxguard.client import ConfidentialClient

    expected = ExpectedPolicy.of(platforms=accept_platform or HARDWARE, code_measurements=expect_code or (),
                                 bundle_digests=expect_digest or (), signer_keys=expect_signer or (),
                                 platform_keys=platform_key or (), max_age_s=max_age, model=model)
    route, payload = _read(input_file)
    secret = loadtest.headers(key_env).get("Authorization", "").removeprefix("Bearer ") or None
    with ConfidentialClient(url, expected, api_key=secret, suite=suite,
                            verify_tls=str(cacert) if cacert else True) as client:
        verification = client.attest()
        result: Any = client.predict(model, payload) if route == "predict" else \
            {k: v.tolist() for k, v in client.infer(model, payload).items()}
    if json:
        render.print_json({"verification": verification.to_dict(), "suite": suite,
                           "predictions" if route == "predict" else "outputs": result})
        return
    platform = verification.statement["platform"] if verification.statement else "?"
    note = " (SIMULATION: no hardware isolation)" if not verification.hardware else ""
    render.err.print(f"attestation verified: {len(verification.steps)} checks passed, platform {platform}{note}; "
                     f"sent with {suite}")
    if route == "predict":
        for p in result:
            render.out.print(orjson.dumps(p).decode(), soft_wrap=True, markup=False, highlight=False)
    else:
        render.out.print(orjson.dumps(result).decode(), soft_wrap=True, markup=False, highlight=False)
