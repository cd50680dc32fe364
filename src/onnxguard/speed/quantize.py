"""``quantize.quantize(model, QuantizeOptions) -> QuantizeResult``: smaller, faster variants.

* ``dynamic``: INT8 weights, activations quantized at run time (MatMul/Gemm-heavy models: transformers).
* ``static``: INT8 weights and activations in QDQ format, per-channel, with ranges calibrated on sample
  inputs (minmax, entropy or percentile). The right choice for convolutions: dynamic quantization makes
  a CNN slower on CPU (ConvInteger; see MEASURED.md B).
* ``fp16``: half-precision weights and compute, for GPU targets; inputs and outputs stay float32 unless asked.

ONNX Runtime's quantization pre-processing (symbolic shape inference, then optimization) runs first for
static quantization, and as the fallback when dynamic quantization cannot type a tensor (a fused graph
fails with "Unable to find data type for weight_name" without it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import platform
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxguard.model import onnxfile
from onnxguard.errors import ModelError
from onnxguard.bundle.golden import Batch
from onnxguard.progress import Event, Progress, silent

MODES = ("dynamic", "static", "fp16")
METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class QuantizeOptions:
    mode: str = "dynamic"
    per_channel: bool = False  # dynamic: per-channel weight scales (static is always per-channel)
    calibration: tuple[Batch, ...] = field(default=(), repr=False)  # static: sample inputs
    method: str = "minmax"
    keep_io_types: bool = True  # fp16: float32 inputs and outputs
    reduce_range: bool | None = None  # 7-bit weights; None: where this CPU's INT8 kernels saturate (see below)

    def settings(self) -> dict:
        s = {"mode": self.mode}
        if self.mode == "dynamic":
            s.update(per_channel=self.per_channel, reduce_range=self.reduce_range)
        elif self.mode == "static":
            s.update(format="QDQ", per_channel=True, method=self.method, calibration_batches=len(self.calibration),
                     reduce_range=self.reduce_range)
        else:
            s.update(keep_io_types=self.keep_io_types)
        return s


@dataclass(frozen=True)
class QuantizeResult:
    model: onnx.ModelProto
    options: QuantizeOptions
    size_before: int
    size_after: int
    preprocessed: bool


class _Reader:
    """ONNX Runtime's CalibrationDataReader over in-memory batches (restricted to the model's inputs)."""

    def __init__(self, batches: tuple[Batch, ...], names: set[str]):
        self._batches = [{k: v for k, v in b.items() if k in names} for b in batches]
        self._it: Iterator[Batch] = iter(self._batches)

    def get_next(self) -> Batch | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


# x86-64 CPUs without VNNI run ONNX Runtime's U8S8 (uint8 activations x int8 weights) kernels with
# vpmaddubsw, whose pairwise int16 sums saturate when 8-bit weights meet large activations. Measured here
# on an AVX2-only AMD EPYC: static INT8 of the digits CNN fell to cosine 0.80 and 96 % top-1 against the
# source, and to cosine 0.998 and 100 % with 7-bit weights (reduce_range), as ONNX Runtime's quantization
# guide advises for such CPUs. A model quantized on a VNNI machine can still saturate on one without:
# `onnxguard consistency` on the deployment machine is what tells.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def saturating_cpu(cpuinfo: Path = Path("/proc/cpuinfo"), machine: str | None = None) -> bool:
    """True on an x86-64 Linux CPU whose ``cpuinfo`` shows none of VNNI_FLAGS."""
    if (machine or platform.machine()).lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return not flags.intersection(VNNI_FLAGS)


def _preprocess(src: Path, dst: Path) -> None:
    """ORT's pre-processing; symbolic shape inference is dropped when it cannot finish on the graph
    (dynamo exports of transformers leave shapes it cannot resolve), keeping ONNX shape inference."""
    from onnxruntime.quantization import quant_pre_process

    # When symbolic shape inference gives up, onnxruntime dumps sym_shape_infer_temp.onnx and its external
    # data into the current directory; run it from the scratch directory so that nothing lands in the user's.
    with contextlib.chdir(src.parent):
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        except Exception as e:  # noqa: BLE001 -- ORT raises a bare Exception("Incomplete symbolic shape inference")
            if "symbolic shape" not in str(e).lower():
                raise
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def _dynamic(src: Path, dst: Path, options: QuantizeOptions) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=options.per_channel, reduce_range=options.reduce_range,
                     weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def _static(src: Path, dst: Path, options: QuantizeOptions, names: set[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[options.method]
    quantize_static(str(src), str(dst), _Reader(options.calibration, names), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=options.reduce_range, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=method,
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def _fp16(model: onnx.ModelProto, options: QuantizeOptions) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=options.keep_io_types)


def _quiet():
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # the quantizer logs per-node chatter to the root logger
    return logger, level


def quantize(model: onnx.ModelProto, options: QuantizeOptions, progress: Progress = silent) -> QuantizeResult:
    if options.mode not in MODES:
        raise ModelError(f"unknown quantization mode {options.mode!r}; use {', '.join(MODES)}")
    if options.mode == "static":
        if options.method not in METHODS:
            raise ModelError(f"unknown calibration method {options.method!r}; use {', '.join(METHODS)}")
        if not options.calibration:
            raise ModelError("static quantization needs calibration inputs (an .npz, a texts file, or the bundle's golden set)")
    if options.reduce_range is None and options.mode != "fp16":
        options = dataclasses.replace(options, reduce_range=saturating_cpu())
    size_before = model.ByteSize()
    preprocessed = False
    logger, level = _quiet()
    try:
        if options.mode == "fp16":
            progress(Event("quantize", "converting to float16"))
            result = _fp16(model, options)
        else:
            with tempfile.TemporaryDirectory(prefix="onnxguard-quant-") as tmp:
                src, pre, dst = Path(tmp) / "in.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "out.onnx"
                onnxfile.save(model, src)
                names = {i.name for i in model.graph.input}
                if options.mode == "static":
                    progress(Event("quantize", "pre-processing (shape inference, optimization)"))
                    _preprocess(src, pre)
                    preprocessed = True
                    progress(Event("quantize", f"calibrating ({options.method}) on {len(options.calibration)} batches"))
                    _static(pre, dst, options, names)
                else:
                    progress(Event("quantize", "dynamic INT8 quantization"))
                    try:
                        _dynamic(src, dst, options)
                    except (ValueError, KeyError, RuntimeError):
                        progress(Event("quantize", "retrying after pre-processing"))
                        _preprocess(src, pre)
                        preprocessed = True
                        _dynamic(pre, dst, options)
                result = onnxfile.load(dst)
    # onnxruntime.quantization raises many types (ValueError, KeyError, RuntimeError, onnx checker errors,
    # ORT Fail on calibration); each means "this model cannot be quantized this way" and is reported.
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{options.mode} quantization failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}") from e
    finally:
        logger.setLevel(level)
    return QuantizeResult(result, options, size_before, result.ByteSize(), preprocessed)
