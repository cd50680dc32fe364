"""``quantize.quantize(model, QuantizeOptions) -> QuantizeResult``: smaller, faster variants.

* ``dynamic``: INT8 weights, activations quantized at run time (MatMul/Gemm-heavy models: transformers).
* ``static``: INT8 weights and activations in QDQ format, per-channel, with ranges calibrated on sample
  inputs (minmax, entropy or percentile). The right choice for convolutions: dynamic quantization makes
  a CNN slower on CPU (ConvInteger; see MEASURED.md B).
* ``fp16``: half-precision weights and compute, for GPU targets; inputs and outputs stay float32 unless asked.
* ``blockwise``: each MatMul with a constant weight becomes ONNX Runtime's ``com.microsoft`` ``MatMulNBits`` with
  8-bit weights in blocks of ``block_size`` along K (one scale per block) and ``accuracy_level`` 4, at which the
  CPU kernel quantizes the *activations* to int8 per block of K at run time and runs int8 dot products: far finer
  activation scales than dynamic INT8's one per tensor, so an outlier costs only its own block. The other MatMuls
  (attention's activation x activation products) stay FP32. See ``BLOCKWISE_WHY`` for what it bought on MiniLM.

Static quantization first moves each MaxPool ahead of a BatchNormalization it follows where that is exact
(``speed.rewrite``), then runs ONNX Runtime's quantization pre-processing (symbolic shape inference, then
optimization). The pre-processing is also dynamic quantization's fallback when it cannot type a tensor (a fused
graph fails with "Unable to find data type for weight_name" without it).
"""

from __future__ import annotations

import dataclasses
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxguard import runtime
from onnxguard.bundle.golden import Batch
from onnxguard.errors import ModelError
from onnxguard.model import onnxfile
from onnxguard.progress import Progress, silent
from onnxguard.speed import rewrite

MODES = ("dynamic", "static", "fp16", "blockwise")
# Models this large go to the quantizer and come back through external data (tensors in a side file): no
# serialized copy of the whole model in memory, and ONNX Runtime's tools past protobuf's 2 GiB limit.
EXTERNAL_DATA_BYTES = 1 << 30
METHODS = ("minmax", "entropy", "percentile")
# blockwise: the weight bits (MatMulNBits also takes 2 and 4; 8 is the width whose accuracy INT8 gates expect).
BLOCKWISE_BITS = 8
# blockwise: K-blocks of 64 with symmetric weights, chosen on the real-weights MiniLM classifier
# (benchmarks/minilm.py, docs/benchmarks.md F; AMD EPYC with VNNI, onnxruntime 1.32): of blocks 32/64/128,
# symmetric or not, at accuracy level 4, only 64-symmetric kept >= 99 % of the labels of both the golden set
# (99.22 %) and the 482 real-sentence rows (99.38 %; 32-symmetric 98.96 %, 128-symmetric fell to cosine 0.986).
BLOCKWISE_BLOCK = 64
BLOCKWISE_MIN_BLOCK = 16  # MatMulNBits' contract (ContribOperators.md): block_size a power of two >= 16
# 4: int8 activations and int8 kernels (the speed); 0 keeps FP32 compute with dequantized weights, which was as
# accurate but no faster than FP32 there (0.88-0.96x).
BLOCKWISE_ACCURACY_LEVEL = 4
BLOCKWISE_WHY = ("8-bit block-wise weights with int8 activations quantized per block of K at run time "
                 "(MatMulNBits accuracy_level 4): per-tensor activation scales (dynamic INT8) lose labels to outlier "
                 "activations in transformers; on a CPU without an int8 MatMulNBits kernel ONNX Runtime computes "
                 "in FP32 instead (as accurate, not faster)")


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantize: the mode, per-channel scales, calibration inputs and method, 7-bit weights."""

    mode: str = "dynamic"
    per_channel: bool = False  # dynamic: per-channel weight scales (static is always per-channel)
    calibration: tuple[Batch, ...] = field(default=(), repr=False)  # static: sample inputs
    method: str = "minmax"
    keep_io_types: bool = True  # fp16: float32 inputs and outputs
    reduce_range: bool | None = None  # 7-bit weights; None: static yes, dynamic no (STATIC_WHY, DYNAMIC_WHY)
    why: str = ""  # why the weights have the bits they have (set by ``quantize`` when it chooses)
    exclude: tuple[str, ...] = ()  # names of nodes left in FP32 (mixed precision, see speed.mixed)
    block_size: int = BLOCKWISE_BLOCK  # blockwise: weights per scale along K (a power of two >= 16)
    symmetric: bool = True  # blockwise: weights without zero points
    accuracy_level: int = BLOCKWISE_ACCURACY_LEVEL  # blockwise: MatMulNBits' compute type (4: int8 activations)

    def settings(self) -> dict:
        s: dict[str, object] = {"mode": self.mode}
        if self.mode == "dynamic":
            s.update(per_channel=self.per_channel, reduce_range=self.reduce_range,
                     activations="uint8 asymmetric per tensor (DynamicQuantizeLinear)")
            if self.exclude:
                s.update(fp32_nodes=list(self.exclude))
        elif self.mode == "static":
            s.update(format="QDQ", per_channel=True, method=self.method, calibration_batches=len(self.calibration),
                     reduce_range=self.reduce_range, activations="uint8 asymmetric", weights="int8 symmetric")
        elif self.mode == "blockwise":
            s.update(op="com.microsoft MatMulNBits", block_size=self.block_size, symmetric=self.symmetric,
                     accuracy_level=self.accuracy_level,
                     activations=("int8 per block of K at run time" if self.accuracy_level == 4 else
                                  f"float (accuracy_level {self.accuracy_level})"))
            if self.exclude:
                s.update(fp32_nodes=list(self.exclude))
        else:
            s.update(keep_io_types=self.keep_io_types)
        if self.mode == "blockwise":
            s.update(weight_bits=BLOCKWISE_BITS, why=self.why)
        elif self.mode != "fp16":
            s.update(weight_bits=7 if self.reduce_range else 8, why=self.why)
        return s


@dataclass(frozen=True)
class QuantizeResult:
    """The quantized model, the options it was made with, its sizes and whether it was pre-processed."""

    model: onnx.ModelProto
    options: QuantizeOptions
    size_before: int
    size_after: int
    preprocessed: bool
    pools_before_norm: int = 0  # static: MaxPools moved ahead of their BatchNormalization (speed.rewrite)
    channels_padded: int = 0  # static: convolutions given input channels to a multiple of 4 (speed.rewrite)
    norms_folded: int = 0  # static: normalizations whose scale went into their convolution (speed.rewrite)

    def figures(self) -> dict:
        """What the manifest's quantize step records beside the settings."""
        figures: dict[str, object] = {"size_before": self.size_before, "size_after": self.size_after,
                                      "preprocessed": self.preprocessed}
        if self.pools_before_norm:
            figures["pools_before_norm"] = self.pools_before_norm
        if self.channels_padded:
            figures["channels_padded"] = self.channels_padded
        if self.norms_folded:
            figures["norms_folded"] = self.norms_folded
        return figures


# Static INT8 runs U8S8 QLinearConv/QGemm kernels wherever the bundle is deployed, not where it was built: a bundle
# built on a VNNI machine is served on AVX2 ones, where those kernels use vpmaddubsw, whose pairwise int16 sums
# saturate when 8-bit weights meet large activations. With weights in [-64, 64] a pair sum is at most
# 2*255*64 = 32640, inside int16, so 7-bit weights never saturate on any x86 CPU. Measured on an AVX2-only AMD EPYC
# (benchmarks/cifar_calibration.py, docs/benchmarks.md B): static INT8 of the CIFAR CNN calibrated on training
# images kept worst cosine 0.9967 and 100 % top-1 against PyTorch with 7-bit weights, 0.9298 and 99.33 % with 8-bit.
STATIC_WHY = ("7-bit weights: static INT8 runs U8S8 kernels wherever the bundle is deployed, and without VNNI (AVX2) "
              "their int16 pair sums saturate with 8-bit weights (2*255*127 > 32767); 2*255*64 never does")
# Dynamic INT8 (DynamicQuantizeMatMul) of plain weights showed no such saturation, and loses much to the lost bit.
# Measured on the same AVX2-only EPYC, the real-weights MiniLM classifier's 482 real-sentence rows
# (benchmarks/minilm.py): 8-bit weights kept 89.21 % of PyTorch's labels, as on a VNNI CPU (89.2 %), 7-bit 76.97 %.
# The mixed search's smoothing moves activation outliers into the weights, and there 8-bit weights do saturate
# without VNNI: tests/speed/test_mixed.py's chain with a 500x channel, smoothed, passed its gate with 7-bit weights
# and failed with 8-bit on the AVX2-only EPYC (both passed on VNNI). speed.mixed therefore asks for 7 bits on such
# a CPU (SMOOTHED_WHY).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
SMOOTHED_WHY = ("7-bit weights: the mixed search may smooth activation outliers into the weights, and this CPU has "
                "no VNNI, whose U8S8 kernels saturate on large 8-bit weights")
DYNAMIC_WHY = ("8-bit weights: dynamic INT8 MatMuls kept as many labels without VNNI (AVX2) as with it, and 7-bit "
               "weights lost 12 points of them on a real transformer; `onnxguard consistency` checks a deployment CPU")


# ONNX Runtime's quantization tools run in a child process (runtime.isolated): they log through the root logger
# (and configure it), print, and when symbolic shape inference gives up they dump sym_shape_infer_temp.onnx and
# its external data into the working directory, which is the child's scratch directory here.
_WORKER = """
import numpy as np
import onnx


class Reader:  # ONNX Runtime's CalibrationDataReader over the saved batches
    def __init__(self, batches):
        self._batches, self._it = batches, iter(batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._batches)


def preprocess(src, dst, external=False):
    # ORT's pre-processing; symbolic shape inference is dropped when it cannot finish on the graph (dynamo
    # exports of transformers leave shapes it cannot resolve), keeping ONNX shape inference.
    from onnxruntime.quantization import quant_pre_process

    try:
        quant_pre_process(src, dst, skip_symbolic_shape=False, save_as_external_data=external)
    except Exception as e:  # ORT raises a bare Exception("Incomplete symbolic shape inference")
        if "symbolic shape" not in str(e).lower():
            raise
        quant_pre_process(src, dst, skip_symbolic_shape=True, save_as_external_data=external)


def dynamic(src, dst, job):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, per_channel=job["per_channel"], reduce_range=job["reduce_range"],
                     weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
                     nodes_to_exclude=job["exclude"], use_external_data_format=job["external"])


def blockwise(src, dst, job):
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=job["block_size"], is_symmetric=job["symmetric"],
                                          accuracy_level=job["accuracy_level"], bits=job["bits"])
    quantizer = MatMulNBitsQuantizer(onnx.load(src), nodes_to_exclude=job["exclude"], algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(dst, job["external"])


def merge_every(n, method):
    # MinMax ranges merged every k batches: k batches' intermediate outputs in memory, not all n. ORT 1.32 fails
    # ("No data is collected") when the last group is empty, so k must not divide n.
    if method != "minmax":
        return None
    return next((k for k in range(2, n) if n % k), None)


def static(src, dst, job):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[job["method"]]
    with np.load(job["calibration"], allow_pickle=False) as arrays:
        batches = [{name: arrays[key] for name, key in batch} for batch in job["batches"]]
    quantize_static(src, dst, Reader(batches), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=job["reduce_range"], activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=method, use_external_data_format=job["external"], nodes_to_exclude=job["exclude"],
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT,
                                   "CalibMaxIntermediateOutputs": merge_every(len(batches), job["method"])})


def main(job, event):
    src, pre, dst = job["src"], job["pre"], job["dst"]
    if job["mode"] == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        event("converting to float16")
        onnx.save(convert_float_to_float16(onnx.load(src), keep_io_types=job["keep_io_types"]), dst,
                  save_as_external_data=job["external"])
        return {"preprocessed": False}
    if job["mode"] == "static":
        event("pre-processing (shape inference, optimization)")
        preprocess(src, pre, job["external"])
        event(f"calibrating ({job['method']}) on {len(job['batches'])} batches")
        static(pre, dst, job)
        return {"preprocessed": True}
    if job["mode"] == "blockwise":
        event(f"block-wise {job['bits']}-bit MatMulNBits quantization (block {job['block_size']})")
        blockwise(src, dst, job)
        return {"preprocessed": False}
    event("dynamic INT8 quantization")
    try:
        dynamic(src, dst, job)
    except (ValueError, KeyError, RuntimeError):  # "Unable to find data type for weight_name": type it first
        event("retrying after pre-processing")
        preprocess(src, pre, job["external"])
        dynamic(pre, dst, job)
        return {"preprocessed": True}
    return {"preprocessed": False}
"""


def saturating_cpu(cpuinfo: Path = Path("/proc/cpuinfo"), machine: str | None = None) -> bool:
    """True on an x86-64 Linux CPU whose ``cpuinfo`` shows none of VNNI_FLAGS."""
    if (machine or platform.machine()).lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return not flags.intersection(VNNI_FLAGS)


def _save_calibration(batches: tuple[Batch, ...], names: set[str], path: Path) -> list[list[list[str]]]:
    """The batches' model inputs in one .npz; returns each batch as ``[[input name, key in the .npz], ...]``."""
    arrays: dict[str, np.ndarray] = {}
    index: list[list[list[str]]] = []
    for b in batches:
        entry = []
        for name in sorted(k for k in b if k in names):
            key = f"a{len(arrays)}"
            arrays[key] = np.asarray(b[name])
            entry.append([name, key])
        index.append(entry)
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub reads **arrays as allow_pickle
    return index


def resolved(options: QuantizeOptions) -> QuantizeOptions:
    """``options`` with the weight bits chosen (``reduce_range``) and why, as :func:`quantize` uses them."""
    if options.reduce_range is None and options.mode == "static":
        return dataclasses.replace(options, reduce_range=True, why=STATIC_WHY)
    if options.reduce_range is None and options.mode == "dynamic":
        return dataclasses.replace(options, reduce_range=False, why=DYNAMIC_WHY)
    if options.mode == "blockwise" and not options.why:
        return dataclasses.replace(options, why=BLOCKWISE_WHY)
    if options.mode != "fp16" and not options.why:
        return dataclasses.replace(options, why=f"{7 if options.reduce_range else 8}-bit weights, as asked")
    return options


def quantize(model: onnx.ModelProto, options: QuantizeOptions, progress: Progress = silent) -> QuantizeResult:
    """Quantize ``model`` as ``options`` say; ONNX Runtime's tools run in a child process (see ``_WORKER``)."""
    if options.mode not in MODES:
        raise ModelError(f"unknown quantization mode {options.mode!r}; use {', '.join(MODES)}")
    if options.mode == "static":
        if options.method not in METHODS:
            raise ModelError(f"unknown calibration method {options.method!r}; use {', '.join(METHODS)}")
        if not options.calibration:
            raise ModelError("static quantization needs calibration inputs (an .npz, a texts file, or the bundle's "
                             "golden set)")
    if options.mode == "blockwise" and (options.block_size < BLOCKWISE_MIN_BLOCK or
                                        options.block_size & (options.block_size - 1)):
        raise ModelError(f"block size {options.block_size}: MatMulNBits takes a power of two >= {BLOCKWISE_MIN_BLOCK}")
    options = resolved(options)
    size_before = model.ByteSize()
    moved = padded = folded = 0
    exclude = list(options.exclude)
    if options.mode == "static":  # uint8 pooling, no float normalizations, faster narrow convolutions (speed.rewrite)
        model, moved = rewrite.pool_before_norm(model)
        model, folded = rewrite.scale_into_conv(model)
        before = {node.name for node in model.graph.node}
        model, padded = rewrite.channels_to_four(model)
        # The channel Pads stay in float, on the input: quantized, each cost a quantize/dequantize pair more
        # (benchmark B's CNN 0.4-0.8 % faster without it, outputs identical).
        exclude += [node.name for node in model.graph.node if node.op_type == "Pad" and node.name not in before]
    with tempfile.TemporaryDirectory(prefix="onnxguard-quant-") as tmp:
        work = Path(tmp)
        job = {"mode": options.mode, "per_channel": options.per_channel, "reduce_range": options.reduce_range,
               "method": options.method, "keep_io_types": options.keep_io_types, "exclude": exclude,
               "src": str(work / "in.onnx"), "pre": str(work / "pre.onnx"), "dst": str(work / "out.onnx"),
               "external": size_before >= EXTERNAL_DATA_BYTES, "bits": BLOCKWISE_BITS, "block_size": options.block_size,
               "symmetric": options.symmetric, "accuracy_level": options.accuracy_level}
        if job["external"]:  # no serialized copy of the whole model in this process; the child reads it back
            onnx.save_model(model, str(work / "in.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                            location="in.onnx.data", size_threshold=1024)
        else:
            onnxfile.save(model, work / "in.onnx")
        if options.mode == "static":
            job["calibration"] = str(work / "calibration.npz")
            job["batches"] = _save_calibration(options.calibration, {i.name for i in model.graph.input},
                                               work / "calibration.npz")
        # onnxruntime.quantization raises many types (ValueError, KeyError, RuntimeError, onnx checker errors,
        # ORT Fail on calibration); each means "this model cannot be quantized this way": a ModelError.
        outcome = runtime.isolated(_WORKER, job, what=f"{options.mode} quantization", stage="quantize",
                                   progress=progress, cwd=work)
        # The result is this function's own scratch file (not an untrusted input): its external data, if the
        # quantizer wrote any, lies beside it in the scratch directory.
        result = onnx.load_model(str(work / "out.onnx"), load_external_data=True) if job["external"] else (
            onnxfile.load(work / "out.onnx"))
    preprocessed = bool(outcome.get("preprocessed"))
    return QuantizeResult(result, options, size_before, result.ByteSize(), preprocessed, moved, padded, folded)
