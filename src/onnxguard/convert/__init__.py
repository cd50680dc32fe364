"""``convert.convert(spec, ConvertOptions) -> ConvertResult``: a source model to an ONNX ``ModelProto``.

The source kind is read from the spec:

===============================  ===========================================
``path/to/file.py:factory``      PyTorch module (its input shapes needed)
``model.pt2``                    PyTorch ``torch.export`` ExportedProgram
``dir/`` with ``config.json``    Hugging Face Transformers model
``org/name`` (not a local path)  Hugging Face hub id (needs a network)
``model.skops``                  scikit-learn, loaded with skops
``model.pkl`` / ``.joblib``      scikit-learn pickle, only when trusted explicitly
``model.onnx``                   an ONNX model as it is (scanned before it runs)
===============================  ===========================================
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import onnx

from onnxguard.convert.interface import ConversionError, ConvertOptions, Exported, Source
from onnxguard.errors import Remedy
from onnxguard.progress import Event, Progress, silent

__all__ = ["ConvertOptions", "ConvertResult", "Source", "convert", "detect", "load", "set_metadata", "spec_path"]

DEFAULT_OPTIONS = ConvertOptions()
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SKLEARN_SUFFIXES = (".skops", ".pkl", ".pickle", ".joblib")
# A missing one of these means a missing extra, not a broken source model.
FRAMEWORK_MODULES = ("torch", "transformers", "sklearn", "skl2onnx", "skops", "onnxscript", "picklescan")
# torchvision is left out of the lock: its release for torch 2.13 (0.28.0) does not import against the CPU build
# of torch 2.13.0 ("operator torchvision::nms does not exist"), and 0.29 needs torch 2.14.
TORCHVISION_WHY = ("torchvision is not part of onnxguard's lock (0.28.0, its release for torch 2.13, does not import "
                   "against the CPU build of torch 2.13.0, and 0.29 needs torch 2.14)")
_MODULE_FACTORY = re.compile(r"^torchvision(\.\w+)*:\w+$")


@dataclass(frozen=True)
class ConvertResult:
    """An exported model, the loaded source it came from, the exporter used, and notes for the parity report."""

    model: onnx.ModelProto
    source: Source
    exporter: str
    notes: tuple[str, ...]


def spec_path(spec: str) -> Path | None:
    """The file or directory a source spec reads (``nets.py`` for ``nets.py:make``), when it exists locally."""
    file_part = spec.rpartition(":")[0]
    path = Path(file_part) if file_part.endswith(".py") else Path(spec)
    return path if os.path.lexists(path) else None


def detect(spec: str) -> str:
    """The source kind of ``spec``: ``torch-module``, ``torch-program``, ``transformers``, ``sklearn`` or ``onnx``."""
    path = Path(spec)
    file_part = spec.rpartition(":")[0]
    if file_part.endswith(".py"):
        return "torch-module"
    if path.suffix == ".py":
        raise ConversionError(f"{spec}: name the factory too, as {spec}:make_model")
    if path.is_dir():
        if (path / "config.json").is_file():
            return "transformers"
        raise ConversionError(f"{path}: a directory without config.json; give a Transformers model directory")
    if path.suffix == ".pt2":
        kind = "torch-program"
    elif path.suffix in SKLEARN_SUFFIXES:
        kind = "sklearn"
    elif path.suffix == ".onnx":
        kind = "onnx"
    elif not path.exists() and _HUB_ID.match(spec):
        return "transformers"
    elif not path.exists() and _MODULE_FACTORY.match(spec):
        raise _torchvision_spec(spec)
    else:
        raise ConversionError(f"{spec}: unknown source kind; give file.py:factory, a .pt2 ExportedProgram, a "
                              "Transformers model directory, a .skops scikit-learn model, or a .onnx model")
    if not path.is_file():
        if os.path.lexists(path):  # a FIFO, a device, a dangling link: never opened, never "no such file"
            raise ConversionError(f"{path}: is {_kind(path)}, not a regular file", hint="give the model file itself")
        raise ConversionError(f"{path}: no such file")
    return kind


def torchvision_error(where: str, e: BaseException) -> ConversionError | None:
    """The one-line error for model code that needs torchvision when it is missing or broken, else None."""
    if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == "torchvision":
        problem = "torchvision is not installed"
    elif "torchvision::" in str(e):  # its C++ operators, registered on import, do not fit this torch
        problem = f"torchvision does not import ({type(e).__name__}: {str(e).strip().splitlines()[0]})"
    else:
        return None
    return ConversionError(f"{where}: needs torchvision, and {problem}; {TORCHVISION_WHY}",
                           hint="install a torch and torchvision pair that import together, or export the model "
                                "to ONNX where they do and build from the .onnx file")


def _torchvision_spec(spec: str) -> ConversionError:
    """``torchvision.models:resnet18``: a torchvision factory by name."""
    import importlib

    try:
        importlib.import_module(spec.partition(":")[0])
    # Importing torchvision runs its operator registration, which raises RuntimeError against a mismatched torch.
    except (ImportError, RuntimeError, AttributeError) as e:
        error = torchvision_error(spec, e)
        if error is not None:
            return error
        raise
    return ConversionError(f"{spec}: a factory is given as file.py:factory; write one that returns "
                           f"{spec.replace(':', '.')}() and give its input shape", remedy=Remedy.INPUT_SHAPES)


def _kind(path: Path) -> str:
    mode = os.lstat(path).st_mode
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISLNK, "a dangling symlink")):
        if test(mode):
            return name
    return "not a regular file"


def _missing_extra(extra: str, e: ImportError) -> ConversionError:
    return ConversionError(f"this source needs the [{extra}] extra ({e.name} is not installed): "
                           f"pip install 'onnxguard[{extra}]'")


def load(spec: str, options: ConvertOptions = DEFAULT_OPTIONS) -> Source:
    """Load the source model in its own framework (imports that framework only now)."""
    kind = detect(spec)
    try:
        if kind == "torch-module":
            from onnxguard.convert import pytorch as torch_source

            return torch_source.load_module(spec, options)
        if kind == "torch-program":
            from onnxguard.convert import pytorch as torch_source

            return torch_source.load_program(Path(spec), options)
        if kind == "transformers":
            from onnxguard.convert import hf_task

            hf_task.refuse_early(spec, options.task)  # before torch and Transformers are imported
            from onnxguard.convert import hf

            return hf.load(spec, options)
        if kind == "onnx":
            from onnxguard.convert import onnxfile as onnx_source

            return onnx_source.load(Path(spec), options)
        from onnxguard.convert import sklearn as sklearn_source

        return sklearn_source.load(Path(spec), options)
    except ModuleNotFoundError as e:
        extra = {"torch-module": "torch", "torch-program": "torch", "transformers": "transformers"}.get(kind, "sklearn")
        if e.name and e.name.split(".")[0] in FRAMEWORK_MODULES:
            raise _missing_extra(extra, e) from e
        raise


def set_metadata(model: onnx.ModelProto, meta: dict[str, str]) -> None:
    """Write ``meta`` into the model's ``metadata_props`` (replacing keys already there)."""
    props = {p.key: p.value for p in model.metadata_props}
    props.update(meta)
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)


def convert(source: str | Source, options: ConvertOptions = DEFAULT_OPTIONS, meta: dict[str, str] | None = None,
            progress: Progress = silent) -> ConvertResult:
    """Load (when given a spec) and export the source model; ``meta`` goes into ``metadata_props``."""
    if isinstance(source, str):
        progress(Event("convert", f"loading {source}"))
        source = load(source, options)
    try:
        exported: Exported = source.export(options.opset, options.exporter, progress)
    except ConversionError as e:
        if str(e).startswith(source.identifier):
            raise
        raise ConversionError(f"{source.identifier}: {e}") from e  # the message names the model it is about
    set_metadata(exported.model, meta or {})
    progress(Event("convert", f"exported with {exported.exporter}", done=True))
    return ConvertResult(exported.model, source, exported.exporter, exported.notes)
