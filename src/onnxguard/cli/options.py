"""Options shared by several verbs, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxguard.accuracy.parity import Tolerance
from onnxguard.accuracy.thresholds import GATE
from onnxguard.convert import ConvertOptions
from onnxguard.errors import InputError

Opset = Annotated[int | None, typer.Option("--opset", help="ONNX opset (default: the exporter's, 18).")]
Exporter = Annotated[str, typer.Option(
    "--exporter", help="PyTorch exporter: auto (dynamo, then TorchScript), dynamo, torchscript.")]
InputShape = Annotated[list[str] | None, typer.Option(
    "--input-shape", help="PyTorch module input, repeatable: [NAME=]D1,D2,..[:DTYPE]; a dim is an int or a symbol "
    "(dynamic axis). Dim 0 becomes the dynamic 'batch' axis when all dims are ints.")]
Task = Annotated[str | None, typer.Option("--task", help="Transformers (default: the saved architecture's): "
                                          "text-classification | token-classification | question-answering | "
                                          "image-classification | feature-extraction; classification marks PyTorch "
                                          "outputs as class scores.")]
Pooling = Annotated[str, typer.Option("--pooling", help="feature-extraction pooling: mean | cls.")]
MaxLength = Annotated[int | None, typer.Option("--max-length", help="Longest text sequence in the golden set.")]
TrustPickle = Annotated[bool, typer.Option("--trust-pickle", help="Load a scikit-learn pickle after a pickle scan.")]
Meta = Annotated[list[str] | None, typer.Option(
    "--meta", help="KEY=VALUE metadata, repeatable (ONNX metadata_props and manifest).")]
GoldenNpz = Annotated[Path | None, typer.Option("--golden", help="Golden inputs as .npz (keys: input names).")]
Texts = Annotated[Path | None, typer.Option("--texts", help="Golden inputs for text models: one text per line.")]
Atol = Annotated[float, typer.Option("--atol", help="Absolute tolerance per element.")]
Rtol = Annotated[float, typer.Option("--rtol", help="Relative tolerance per element.")]
MinCosine = Annotated[float, typer.Option("--min-cosine", help="Lowest allowed cosine similarity per example.")]
MinAgreement = Annotated[float, typer.Option("--min-label-agreement", help="Lowest allowed label agreement (0..1).")]
Calibration = Annotated[Path | None, typer.Option(
    "--calibration", help="Static quantization inputs: .npz, or a texts file (default: the golden set).")]
CalibrationMethod = Annotated[str, typer.Option("--calibration-method", help="minmax | entropy | percentile.")]
GateMinCosine = Annotated[float, typer.Option(
    "--gate-min-cosine", help="Accuracy gate: lowest cosine similarity to the source's outputs.")]
GateMinAgreement = Annotated[float, typer.Option(
    "--gate-min-label-agreement", help="Accuracy gate: lowest label agreement with the source.")]
Json = Annotated[bool, typer.Option("--json", help="Print a JSON report instead of tables.")]

DEFAULT_TOLERANCE = Tolerance()


def convert_options(opset: int | None, exporter: str, input_shape: list[str] | None, task: str | None,
                    pooling: str, max_length: int | None, trust_pickle: bool) -> ConvertOptions:
    return ConvertOptions(opset=opset, exporter=exporter, input_shapes=tuple(input_shape or ()), task=task,
                          pooling=pooling, max_length=max_length, trust_pickle=trust_pickle)


def tolerance(atol: float, rtol: float, min_cosine: float, min_agreement: float) -> Tolerance:
    if min(atol, rtol) < 0 or not 0 <= min_agreement <= 1 or not -1 <= min_cosine <= 1:
        raise InputError("tolerances: --atol/--rtol must be >= 0, --min-cosine in [-1, 1], --min-label-agreement "
                         "in [0, 1]")
    return Tolerance(atol, rtol, min_cosine, min_agreement)


def gate(min_cosine: float, min_agreement: float) -> Tolerance:
    return tolerance(GATE.atol, GATE.rtol, min_cosine, min_agreement)


def parse_meta(items: list[str] | None) -> dict[str, str]:
    meta = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--meta {item!r}: expected KEY=VALUE")
        meta[key.strip()] = value
    return meta
