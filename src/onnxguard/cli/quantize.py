from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxguard.bundle import golden
from onnxguard.speed import quantize as quantize_lib
from onnxguard.errors import InputError
from onnxguard.bundle.manifest import Step
from onnxguard.speed.select import GATE
from onnxguard.cli import app, options, render
from onnxguard.cli.optimize import Force, GoldenRefs, Overwrite
from onnxguard.cli.variant_common import finish, load_model


def _calibration(path: Path | None, parent) -> tuple:
    if path is None:
        if parent is None:
            raise InputError("static quantization needs --calibration inputs.npz (or give a bundle: its golden set is used)")
        return parent.golden().inputs
    if path.suffix == ".npz":
        return golden.load(path).inputs
    if parent is None or parent.manifest.preprocessing is None:
        raise InputError(f"{path}: a texts file needs a bundle with a tokenizer; give an .npz for an .onnx model")
    from onnxguard.convert.hf import tokenize_with_bundle

    return tuple(tokenize_with_bundle(parent, golden.read_texts(path)))


@app.command()
def quantize(
    model: Annotated[Path, typer.Argument(help="An .onnx file or a bundle.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The .onnx file (or bundle, for a bundle) to write.")],
    mode: Annotated[str, typer.Option("--mode", help="dynamic (INT8 weights) | static (INT8 QDQ, calibrated) | fp16.")] = "dynamic",
    per_channel: Annotated[bool, typer.Option("--per-channel", help="dynamic: per-channel weight scales (static is always per-channel).")] = False,
    calibration: options.Calibration = None,
    method: options.CalibrationMethod = "minmax",
    keep_io_types: Annotated[bool, typer.Option("--keep-io-types/--fp16-io", help="fp16: keep float32 inputs and outputs.")] = True,
    reduce_range: Annotated[bool | None, typer.Option(
        "--reduce-range/--full-range", help="INT8: 7-bit weights, for x86 CPUs without VNNI, whose INT8 kernels saturate "
                                            "(default: detected on this CPU).")] = None,
    golden_npz: GoldenRefs = None,
    gate_min_cosine: options.GateMinCosine = GATE.min_cosine,
    gate_min_label_agreement: options.GateMinAgreement = GATE.min_label_agreement,
    force: Force = False,
    overwrite: Overwrite = False,
) -> None:
    """Quantize (dynamic INT8, static QDQ INT8, FP16) behind the accuracy gate; exit 1 if it fails, unless --force."""
    onnx_model, parent = load_model(model)
    calib = _calibration(calibration, parent) if mode == "static" else ()
    opts = quantize_lib.QuantizeOptions(mode=mode, per_channel=per_channel, calibration=calib, method=method,
                                        keep_io_types=keep_io_types, reduce_range=reduce_range)
    result = quantize_lib.quantize(onnx_model, opts)
    render.out.print(f"quantize ({mode}): {render.size(result.size_before)} -> {render.size(result.size_after)}"
                     + (" (after ONNX Runtime pre-processing)" if result.preprocessed else ""))
    step = Step(name="quantize", settings=result.options.settings(),
                figures={"size_before": result.size_before, "size_after": result.size_after, "preprocessed": result.preprocessed})
    finish(result.model, parent, step, output, golden_npz, force, overwrite,
           options.gate(gate_min_cosine, gate_min_label_agreement))
