from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxguard.accuracy.thresholds import GATE
from onnxguard.bundle.golden import Batch
from onnxguard.bundle.manifest import Step
from onnxguard.cli import options, render, trusting
from onnxguard.cli.app import app
from onnxguard.cli.variant_common import FailOn, Force, GoldenRefs, Overwrite, finish, is_bundle, open_input
from onnxguard.errors import InputError
from onnxguard.speed import quantize as quantize_lib
from onnxguard.speed import select as variants


def _tokenizer(parent):
    """Texts to model inputs with the bundle's own tokenizer, when it has one."""
    if parent is None or parent.manifest.preprocessing is None:
        return None
    from onnxguard.convert.hf import tokenize_with_bundle

    return lambda texts: tokenize_with_bundle(parent, texts)


@app.command()
def quantize(
    model: Annotated[Path, typer.Argument(help="An .onnx file or a bundle.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The .onnx file (or bundle, for a bundle) to write.")],
    mode: Annotated[str, typer.Option(
        "--mode", help="dynamic (INT8 weights) | static (INT8 QDQ, calibrated) | fp16.")] = "dynamic",
    per_channel: Annotated[bool, typer.Option(
        "--per-channel", help="dynamic: per-channel weight scales (static is always per-channel).")] = False,
    calibration: options.Calibration = None,
    method: options.CalibrationMethod = "minmax",
    keep_io_types: Annotated[bool, typer.Option(
        "--keep-io-types/--fp16-io", help="fp16: keep float32 inputs and outputs.")] = True,
    reduce_range: Annotated[bool | None, typer.Option(
        "--reduce-range/--full-range", help="INT8: 7-bit weights (default: static yes, as x86 CPUs without VNNI "
                                            "saturate its kernels with 8-bit ones; dynamic no).")] = None,
    golden_npz: GoldenRefs = None,
    gate_min_cosine: options.GateMinCosine = GATE.min_cosine,
    gate_min_label_agreement: options.GateMinAgreement = GATE.min_label_agreement,
    force: Force = False,
    overwrite: Overwrite = False,
    fail_on: FailOn = "medium",
    public_key: trusting.PublicKey = None,
    allow_unsigned: trusting.AllowUnsigned = False,
    identity: trusting.Identity = None,
    passphrase_env: trusting.PassphraseEnv = None,
) -> None:
    """Quantize (dynamic INT8, static QDQ INT8, FP16) behind the accuracy gate; exit 1 if it fails, unless --force.

    The input is security-scanned first (a bundle through the trust door)."""
    if mode == "static" and calibration is None and not is_bundle(model):
        raise InputError("static quantization of an .onnx file needs --calibration inputs.npz "
                         "(or give a bundle: its golden set is used)")
    onnx_model, parent = open_input(model, output, overwrite, fail_on=fail_on, public_key=public_key,
                                    allow_unsigned=allow_unsigned, identity=identity, passphrase_env=passphrase_env)
    calib: tuple[Batch, ...] = ()
    if mode == "static":
        calib = variants.calibration(calibration, parent.golden() if parent else None, _tokenizer(parent))
    opts = quantize_lib.QuantizeOptions(mode=mode, per_channel=per_channel, calibration=calib, method=method,
                                        keep_io_types=keep_io_types, reduce_range=reduce_range)
    result = quantize_lib.quantize(onnx_model, opts)
    render.out.print(f"quantize ({mode}): {render.size(result.size_before)} -> {render.size(result.size_after)}"
                     + (" (after ONNX Runtime pre-processing)" if result.preprocessed else ""))
    step = Step(name="quantize", settings=result.options.settings(),
                figures=result.figures())
    finish(result.model, parent, step, output, golden_npz, force, overwrite,
           options.gate(gate_min_cosine, gate_min_label_agreement), model)
