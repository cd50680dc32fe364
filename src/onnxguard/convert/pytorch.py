"""PyTorch sources: a ``file.py:factory`` spec, or a saved ``torch.export`` ExportedProgram (``.pt2``).

Export uses ``torch.onnx.export``. ``auto`` tries the dynamo (``torch.export``-based) exporter first and
falls back to TorchScript tracing when dynamo cannot capture the model; the manifest records which one
produced the file, and the parity stage checks the result either way.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from onnxguard.accuracy.parity import SCORES, VALUES
from onnxguard.bundle.golden import Batch
from onnxguard.convert import torchvision_error
from onnxguard.convert.interface import ConversionError, ConvertOptions, Exported
from onnxguard.errors import Remedy
from onnxguard.progress import Event, Progress

DEFAULT_OPSET = 18
EXPORTERS = ("dynamo", "torchscript")
CLASSIFICATION_TASKS = ("classification", "image-classification", "text-classification")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64,
           "int64": torch.int64, "int32": torch.int32, "bool": torch.bool, "uint8": torch.uint8}
_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, dims (int = fixed, str = dynamic axis named so), dtype."""

    name: str
    dims: tuple[int | str, ...]
    dtype: str = "float32"

    def example(self, sizes: dict[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else sizes.get(d, 8) for d in self.dims)

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.dims) if isinstance(d, str)}


def parse_input_shape(text: str, default_name: str) -> InputSpec:
    """``[NAME=]D1,D2,...[:DTYPE]``; a dim is an int or a symbol. Without a symbol, dim 0 becomes ``batch``."""
    name, _, rest = text.rpartition("=") if "=" in text else (default_name, "", text)
    dims_text, _, dtype = rest.partition(":")
    dtype = dtype or "float32"
    if dtype not in _DTYPES:
        raise ConversionError(f"input shape {text!r}: unknown dtype {dtype!r}", hint=f"use one of {', '.join(_DTYPES)}",
                              remedy=Remedy.INPUT_SHAPES)
    dims: list[int | str] = []
    for d in dims_text.split(","):
        d = d.strip()
        if d.isdigit() and int(d) > 0:
            dims.append(int(d))
        elif _SYMBOL.match(d):
            dims.append(d)
        else:
            raise ConversionError(f"input shape {text!r}: dim {d!r} is neither a positive int nor a symbol name",
                                  remedy=Remedy.INPUT_SHAPES)
    if dims and all(isinstance(d, int) for d in dims):
        dims[0] = "batch"
    return InputSpec(name or default_name, tuple(dims), dtype)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[list[warnings.WarningMessage]]:
    """Collect the exporters' warnings and silence their log chatter, for the duration of an export only."""
    saved = []
    for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        for logger, level in saved:
            logger.setLevel(level)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(e: BaseException | Warning | str, limit: int = 300) -> str:
    """The first line of a message, without terminal colour codes (torch's exporter colours its errors)."""
    text = _ANSI.sub("", str(e)).strip()
    return (text.splitlines() or [""])[0][:limit]


def _notes(caught: list[warnings.WarningMessage]) -> list[str]:
    """Tracer warnings are worth a user's attention (a traced branch may be wrong for other inputs; parity
    checks padded batches for that reason); the exporters' deprecation chatter is not."""
    return sorted({f"{w.category.__name__}: {first_line(w.message, 200)}" for w in caught
                   if w.category.__name__ == "TracerWarning"})[:3]


def export_module(module: torch.nn.Module, args: tuple[torch.Tensor, ...], inputs: list[InputSpec],
                  output_names: list[str], opset: int | None, exporter: str, progress: Progress) -> Exported:
    """Export with the chosen exporter, or with ``auto``: dynamo first, TorchScript tracing if dynamo fails."""
    if exporter not in ("auto", *EXPORTERS):
        raise ConversionError(f"unknown exporter {exporter!r}; use auto, dynamo or torchscript")
    order = EXPORTERS if exporter == "auto" else (exporter,)
    opset = opset or DEFAULT_OPSET
    failures: list[str] = []
    for name in order:
        progress(Event("convert", f"exporting with the {name} exporter (opset {opset})"))
        try:
            with quiet_exporter() as caught:
                model = (_dynamo if name == "dynamo" else _torchscript)(module, args, inputs, output_names, opset)
        # The exporters raise dozens of unrelated exception types (dynamo, FX, onnxscript, TorchScript).
        # Any of them means "this exporter cannot export this model": it is recorded and reported, never ignored.
        except Exception as e:  # noqa: BLE001
            failures.append(f"{name} exporter failed: {type(e).__name__}: {first_line(e)}")
            continue
        return Exported(model, f"torch.onnx.export ({name})", tuple(failures + _notes(caught)))
    if exporter == "auto":  # both were tried
        raise ConversionError("; ".join(failures), hint="fix the model")
    raise ConversionError("; ".join(failures), hint="fix the model", remedy=Remedy.EXPORTER)


def _dynamo(module, args, inputs: list[InputSpec], output_names, opset) -> onnx.ModelProto:
    dims: dict[str, torch.export.Dim] = {}
    per_input = tuple({a: dims.setdefault(s, torch.export.Dim(s)) for a, s in spec.dynamic_axes().items()}
                      for spec in inputs)
    params = list(inspect.signature(module.forward).parameters.values())
    variadic = len(params) == 1 and params[0].kind == params[0].VAR_POSITIONAL
    shapes: tuple[object, ...] = (per_input,) if variadic else per_input  # forward(*args): one spec, the tuple's
    program = torch.onnx.export(module, args, dynamo=True, opset_version=opset, input_names=[i.name for i in inputs],
                                output_names=output_names, dynamic_shapes=shapes, verbose=False)
    return _proto(program)


def _proto(program: torch.onnx.ONNXProgram | None) -> onnx.ModelProto:
    """The model of a dynamo export (which returns no program only when given a file to write, never here)."""
    if program is None:
        raise ConversionError("the dynamo exporter returned no ONNX program")
    return program.model_proto


def _torchscript(module, args, inputs: list[InputSpec], output_names, opset) -> onnx.ModelProto:
    buf = io.BytesIO()
    axes = {i.name: i.dynamic_axes() for i in inputs}
    axes.update({o: {0: "batch"} for o in output_names})
    # torch annotates ``f`` as a path only; the TorchScript exporter writes to any binary file object.
    torch.onnx.export(module, args, buf, dynamo=False,  # type: ignore[arg-type]
                      opset_version=opset, input_names=[i.name for i in inputs], output_names=output_names,
                      dynamic_axes=axes)
    return onnx.load_from_string(buf.getvalue())


def name_batch_axis(model: onnx.ModelProto) -> None:
    """Call the symbolic dim on axis 0 of the inputs ``batch`` (torch.export names it ``s0``, ``s40``, ...)."""
    rename = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_param"):
            rename[dims[0].dim_param] = "batch"
    if not rename:
        return
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for d in value.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in rename:
                d.dim_param = rename[d.dim_param]


def flatten_outputs(out) -> dict[str, torch.Tensor]:
    """A module's output as named tensors: a tensor is ``output``, a tuple ``output_0..``, a dict keeps its keys."""
    if isinstance(out, torch.Tensor):
        return {"output": out}
    if isinstance(out, dict) or hasattr(out, "items"):
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
    if isinstance(out, (tuple, list)):
        return {f"output_{i}": v for i, v in enumerate(out) if isinstance(v, torch.Tensor)}
    raise ConversionError(f"the module returned {type(out).__name__}; return a tensor, a tuple or a dict of tensors")


class _Positional(torch.nn.Module):
    """Wraps a module so that it returns a tuple of tensors, in a fixed order (dicts and tuples flattened)."""

    def __init__(self, module: torch.nn.Module, names: list[str]):
        super().__init__()
        self.module, self.names = module, names

    def forward(self, *args):
        out = flatten_outputs(self.module(*args))
        return tuple(out[n] for n in self.names)


def random_batch(inputs: list[InputSpec], batch: int, rng: np.random.Generator, sizes: dict[str, int],
                 fill: float | None = None) -> Batch:
    """``batch`` rows for ``inputs`` (other symbolic dims sized by ``sizes``): random by dtype, or all ``fill``."""
    out = {}
    for spec in inputs:
        shape = spec.example({**sizes, "batch": batch})
        if fill is not None:
            out[spec.name] = np.full(shape, fill, dtype=spec.dtype)
        elif spec.dtype.startswith("float"):
            out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == "bool":
            out[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            out[spec.name] = rng.integers(0, 10, shape).astype(spec.dtype)
    return out


def golden_from_specs(inputs: list[InputSpec], size: int, seed: int = 0) -> list[Batch]:
    """Random normal batches of sizes 1, 8, ... (varying other dynamic dims), then zeros and large values."""
    rng = np.random.default_rng(seed)
    symbols = {d for i in inputs for d in i.dims if isinstance(d, str) and d != "batch"}
    batches, n = [], 0
    sizes = [1] + [8] * max(1, (size - 5) // 8)
    for k, b in enumerate(sizes):
        batches.append(random_batch(inputs, b, rng, {s: 8 * (1 + k % 2) for s in symbols}))
        n += b
    batches.append(random_batch(inputs, 2, rng, {}, fill=0.0))
    batches.append(random_batch(inputs, 2, rng, {}, fill=1e3 if inputs[0].dtype.startswith("float") else 1))
    return batches


def to_tensors(batch: Batch, inputs: list[InputSpec]) -> tuple[torch.Tensor, ...]:
    """A batch as torch tensors in the order of ``inputs`` (the module's positional arguments)."""
    return tuple(torch.from_numpy(np.ascontiguousarray(batch[i.name])) for i in inputs)


@dataclass
class TorchSource:
    """A ``torch.nn.Module`` (from a factory spec, or from an ExportedProgram's ``module()``)."""

    module: torch.nn.Module
    inputs: list[InputSpec]
    identifier: str
    files: tuple[Path, ...]
    task: str | None = None
    labels: list[str] | None = None
    golden_size: int = 64
    program: torch.export.ExportedProgram | None = None
    framework: str = "pytorch"
    framework_version: str = torch.__version__
    preprocessing: dict | None = None
    assets: dict[str, Path] = field(default_factory=dict)
    architecture: dict | None = None
    output_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        example = random_batch(self.inputs, 2, np.random.default_rng(0), {})
        with torch.inference_mode():
            out = flatten_outputs(self.module(*to_tensors(example, self.inputs)))
        self.output_names = list(out)

    @property
    def output_roles(self) -> dict[str, str]:
        role = SCORES if self.task in CLASSIFICATION_TASKS else VALUES
        return {n: role for n in self.output_names}

    def export(self, opset: int | None, exporter: str, progress: Progress) -> Exported:
        args = to_tensors(random_batch(self.inputs, 2, np.random.default_rng(0), {}), self.inputs)
        if self.program is not None:
            if exporter == "torchscript":
                raise ConversionError(f"{self.identifier}: an ExportedProgram exports with the dynamo exporter only")
            progress(Event("convert", f"exporting the ExportedProgram (opset {opset or DEFAULT_OPSET})"))
            try:
                with quiet_exporter() as caught:
                    onnx_program = torch.onnx.export(self.program, args, dynamo=True,
                                                     opset_version=opset or DEFAULT_OPSET,
                                                     input_names=[i.name for i in self.inputs],
                                                     output_names=self.output_names, verbose=False)
                    model = _proto(onnx_program)
            except Exception as e:  # noqa: BLE001  (see export_module: any exporter error is reported)
                raise ConversionError(f"{self.identifier}: export failed: {type(e).__name__}: {first_line(e)}") from e
            name_batch_axis(model)
            return Exported(model, "torch.onnx.export (dynamo, ExportedProgram)", tuple(_notes(caught)))
        wrapped = _Positional(self.module, self.output_names).eval()
        return export_module(wrapped, args, self.inputs, self.output_names, opset, exporter, progress)

    def golden_inputs(self) -> list[Batch]:
        return golden_from_specs(self.inputs, self.golden_size)

    def texts_inputs(self, texts: list[str]) -> list[Batch]:
        raise ConversionError(f"{self.identifier}: texts need a tokenizer, which a PyTorch source has none of",
                              remedy=Remedy.GOLDEN_INPUTS)

    def run(self, batch: Batch) -> Batch:
        with torch.inference_mode():
            out = flatten_outputs(self.module(*to_tensors(batch, self.inputs)))
        return {k: v.numpy() for k, v in out.items()}


def import_spec(spec: str) -> torch.nn.Module:
    """``path/to/file.py:name`` -> the module made by calling ``name`` (a factory function or a class)."""
    file, _, attr = spec.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file (spec {spec!r}: give path/to/file.py:factory)")
    mod_name = f"_onnxguard_user_{abs(hash(str(path.resolve())))}"
    mod_spec = importlib.util.spec_from_file_location(mod_name, path)
    if mod_spec is None or mod_spec.loader is None:
        raise ConversionError(f"{path}: cannot be imported as a Python module", hint="give path/to/file.py:factory")
    try:
        mod = importlib.util.module_from_spec(mod_spec)
        sys.modules[mod_name] = mod
        mod_spec.loader.exec_module(mod)
    # User code can raise anything on import; all of it means "the spec does not import".
    except Exception as e:  # noqa: BLE001
        raise torchvision_error(str(path), e) or ConversionError(
            f"{path}: does not import: {type(e).__name__}: {e}; fix the file or its imports") from e
    factory = getattr(mod, attr, None)
    if factory is None:
        raise ConversionError(f"{path}: has no attribute {attr!r}; name a factory function or an nn.Module class")
    try:
        module = factory()
    except Exception as e:  # noqa: BLE001  (user code, as above)
        raise torchvision_error(spec, e) or ConversionError(
            f"{spec}: calling {attr}() failed: {type(e).__name__}: {e}") from e
    if not isinstance(module, torch.nn.Module):
        raise ConversionError(f"{spec}: {attr}() returned {type(module).__name__}, not a torch.nn.Module")
    return module.eval()


def load_module(spec: str, options: ConvertOptions) -> TorchSource:
    """A ``file.py:factory`` spec as a :class:`TorchSource`, its inputs given by ``options.input_shapes``."""
    module = import_spec(spec)
    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not options.input_shapes:
        raise ConversionError(f"{spec}: the shape of each input of forward() is needed (e.g. 1,3,32,32)",
                              remedy=Remedy.INPUT_SHAPES)
    if len(options.input_shapes) > len(params):
        raise ConversionError(f"{spec}: {len(options.input_shapes)} input shapes given, forward() takes {len(params)}",
                              remedy=Remedy.INPUT_SHAPES)
    inputs = [parse_input_shape(s, params[i].name) for i, s in enumerate(options.input_shapes)]
    return _checked(TorchSource, module, inputs, spec, (Path(spec.rpartition(":")[0]),), options)


def _checked(cls, module, inputs, identifier, files, options: ConvertOptions, **kw) -> TorchSource:
    try:
        return cls(module, inputs, identifier, files, task=options.task, golden_size=options.golden_size, **kw)
    except ConversionError as e:
        if str(e).startswith(identifier):
            raise
        raise ConversionError(f"{identifier}: {e}") from e
    except Exception as e:  # noqa: BLE001  (user model code run on an example input)
        raise ConversionError(f"{identifier}: the model fails on an example input of shapes "
                              f"{[i.example({'batch': 2}) for i in inputs]}: {type(e).__name__}: {e}",
                              hint="check the input shapes", remedy=Remedy.INPUT_SHAPES) from e


def load_program(path: Path, options: ConvertOptions) -> TorchSource:
    """A saved ``torch.export`` ExportedProgram (``.pt2``) as a :class:`TorchSource`, its inputs from the program's
    signature."""
    try:
        with quiet_exporter():
            program = torch.export.load(str(path))
    except Exception as e:  # noqa: BLE001  (torch.export.load raises many types for a bad archive)
        raise ConversionError(f"{path}: not a loadable torch.export ExportedProgram ({type(e).__name__}: {e})") from e
    inputs = []
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for name in program.graph_signature.user_inputs:
        val = placeholders[name].meta.get("val")
        if val is None or not hasattr(val, "shape"):
            raise ConversionError(f"{path}: input {name!r} is not a tensor; only tensor inputs are supported")
        dims = tuple(int(d) if isinstance(d, int) else ("batch" if i == 0 else f"dim_{name}_{i}")
                     for i, d in enumerate(val.shape))
        inputs.append(InputSpec(name, dims, str(val.dtype).removeprefix("torch.")))
    return _checked(TorchSource, program.module(), inputs, str(path), (path,), options, program=program)
