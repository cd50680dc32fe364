from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxguard import bundle, convert
from onnxguard.accuracy import parity as parity_lib
from onnxguard.cli import options, render, trusting
from onnxguard.cli.app import app
from onnxguard.errors import CheckFailed, InputError
from onnxguard.model import onnxfile
from onnxguard.progress import Event

_DT = options.DEFAULT_TOLERANCE


@app.command()
def parity(
    source: Annotated[str, typer.Argument(help="The source model (as for convert), or a bundle directory.")],
    model: Annotated[Path | None, typer.Argument(help="The .onnx file to check (not with a bundle).")] = None,
    golden_npz: options.GoldenNpz = None,
    texts: options.Texts = None,
    input_shape: options.InputShape = None,
    task: options.Task = None,
    pooling: options.Pooling = "mean",
    max_length: options.MaxLength = None,
    trust_pickle: options.TrustPickle = False,
    atol: options.Atol = _DT.atol,
    rtol: options.Rtol = _DT.rtol,
    min_cosine: options.MinCosine = _DT.min_cosine,
    min_label_agreement: options.MinAgreement = _DT.min_label_agreement,
    json: options.Json = False,
    public_key: trusting.PublicKey = None,
    allow_unsigned: trusting.AllowUnsigned = False,
    identity: trusting.Identity = None,
    passphrase_env: trusting.PassphraseEnv = None,
) -> None:
    """Compare ONNX Runtime with the source framework on a golden set; exit 1 when out of tolerance.

    With a bundle, its stored golden set is re-run on this machine's runtime against the stored references.
    """
    tol = options.tolerance(atol, rtol, min_cosine, min_label_agreement)
    if (Path(source) / bundle.MANIFEST).is_file():
        if model is not None:
            raise InputError(f"{source}: a bundle carries its model; do not give MODEL too")
        opened = trusting.open_from_cli(Path(source), public_key=public_key, allow_unsigned=allow_unsigned,
                                        identity=identity, passphrase_env=passphrase_env)
        report = parity_lib.parity(opened.model_bytes, opened.golden(), opened.roles, tol)
    else:
        if model is None:
            raise InputError("give the ONNX model to check: onnxguard parity SOURCE MODEL.onnx")
        onnx_model = onnxfile.load(model)
        opts = options.convert_options(None, "auto", input_shape, task, pooling, max_length, trust_pickle)
        with render.progress_display(not json) as progress:
            progress(Event("load", f"loading {source}"))
            src = convert.load(source, opts)
            golden, _ = parity_lib.golden_from_source(src, golden_npz, texts, progress, stage="source")
            n = len(golden.inputs)
            progress(Event("source", f"{n} batches", n, n, done=True))
        report = parity_lib.parity(onnx_model, golden, src.output_roles, tol, getattr(src, "parity_notes", ()))
    if json:
        render.print_json(report.to_dict())
    else:
        render.parity_report(report)
    if not report.passed:
        raise CheckFailed("parity out of tolerance")
