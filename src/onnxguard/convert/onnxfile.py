"""ONNX-first sources: an existing ``model.onnx`` as what a build starts from.

The file is read once through the one reader of untrusted files (:func:`onnxguard.model.onnxfile.read_file`),
and those bytes are scanned under the default profile before anything runs them: a finding at or above
``SOURCE_FAIL_ON`` refuses the source (a custom domain no runtime here has, an external-data path out of the
model's folder, a memory bomb, ...). Only then is the model parsed and run.

Its "source framework" is ONNX Runtime itself: the references of the golden set are the model's outputs under a
plain CPU session with graph optimizations turned off, on the golden inputs given (``--golden FILE.npz``) or
generated from the model's signature. Every variant a build makes (optimized, quantized) is judged against them.
The module is named ``onnxfile`` so that it never shadows the ``onnx`` package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from onnxguard import runtime
from onnxguard import scan as scanner
from onnxguard.accuracy.parity import LABELS, SCORES, VALUES
from onnxguard.bundle.golden import Batch
from onnxguard.convert.interface import ConversionError, ConvertOptions, Exported
from onnxguard.errors import Remedy
from onnxguard.model import onnxfile as reader
from onnxguard.progress import Event, Progress
from onnxguard.scan.checks import external_data

SOURCE_FAIL_ON = scanner.Severity.HIGH  # a source with a finding this grave is never run, whatever the build's level
SCORE_NAMES = ("probabilities", "probability", "logits", "scores")  # float outputs judged by argmax agreement too
OTHER_DIM = 8  # size of a symbolic dimension other than the batch axis in generated golden inputs
NOTE = ("an ONNX source: the references are its own outputs under ONNX Runtime "
        f"{ort.__version__} without graph optimizations")


def _roles(model: onnx.ModelProto) -> dict[str, str]:
    roles = {}
    for spec in reader.outputs(model):
        if spec.dtype in ("object", "bool") or spec.dtype.startswith(("int", "uint")):
            roles[spec.name] = LABELS
        elif spec.name.lower() in SCORE_NAMES and spec.shape is not None and len(spec.shape) == 2 \
                and spec.shape[1] != 1:  # one column has nothing to take the argmax of
            roles[spec.name] = SCORES
        else:
            roles[spec.name] = VALUES
    return roles


def _example(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if dtype == "object":
        return rng.choice(np.array(["a", "b", "c"]), shape)
    np_dtype = np.dtype(dtype)
    if np_dtype.kind == "f":
        return rng.standard_normal(shape).astype(np_dtype)
    if np_dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    # ids, indices and pixels alike: small non-negative values stay inside any table they index
    return rng.integers(0, 10, shape).astype(np_dtype)


@dataclass
class OnnxSource:
    """An ONNX file as a ``convert.Source``: ONNX Runtime is its framework."""

    model: onnx.ModelProto
    identifier: str
    files: tuple[Path, ...]
    golden_size: int = 64
    task: str | None = None
    labels: list[str] | None = None
    framework: str = "onnx"
    framework_version: str = f"onnxruntime {ort.__version__}"
    preprocessing: dict | None = None
    assets: dict[str, Path] = field(default_factory=dict)
    architecture: dict | None = None
    _session: ort.InferenceSession | None = field(default=None, init=False, repr=False)

    @property
    def output_roles(self) -> dict[str, str]:
        return _roles(self.model)

    @property
    def opset(self) -> int:
        return next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def export(self, opset: int | None, exporter: str, progress: Progress) -> Exported:
        if opset is not None and opset != self.opset:
            raise ConversionError(f"{self.identifier}: an ONNX source keeps its own opset {self.opset}; "
                                  f"opset {opset} was asked for", hint="convert it with onnx.version_converter first")
        progress(Event("convert", "the ONNX model as given"))
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        return Exported(model, f"onnx file (as given, opset {self.opset})", (NOTE,))

    def golden_inputs(self) -> list[Batch]:
        """Random inputs from the signature: batches of 1, 16, ... (the batch axis when it is symbolic, else its
        fixed size), then zeros; symbolic dims other than the batch axis get ``OTHER_DIM``."""
        specs = reader.inputs(self.model)
        if not specs:
            raise ConversionError(f"{self.identifier}: the model takes no inputs")
        for s in specs:
            if not s.shape or s.dtype.endswith("_type"):
                what = "a scalar" if s.shape == () else ("not a tensor" if s.dtype.endswith("_type") else "of no shape")
                raise ConversionError(f"{self.identifier}: input {s.name!r} is {what}, so no golden inputs can be "
                                      "made from the signature", remedy=Remedy.GOLDEN_INPUTS)
        fixed = {d for s in specs for d in (s.shape or ())[:1] if isinstance(d, int) and d > 0}
        if len(fixed) > 1:
            raise ConversionError(f"{self.identifier}: the inputs' first dims differ ({sorted(fixed)})",
                                  remedy=Remedy.GOLDEN_INPUTS)
        n = max(self.golden_size, 2)
        batch = fixed.pop() if fixed else None
        sizes = [batch] * max(1, min(8, n // batch)) if batch else [1] + [16] * (-(-(n - 1) // 16))
        rng = np.random.default_rng(0)
        batches = [self._batch(specs, size, rng) for size in sizes]
        edge = self._batch(specs, batch or 2, rng)
        return batches + [{k: v if v.dtype.kind == "U" else np.zeros_like(v) for k, v in edge.items()}]

    @staticmethod
    def _batch(specs: list[reader.TensorSpec], size: int, rng: np.random.Generator) -> Batch:
        symbols: dict[str, int] = {}
        out = {}
        for s in specs:
            shape = tuple(size if i == 0 and not (isinstance(d, int) and d > 0) else
                          (d if isinstance(d, int) and d > 0 else symbols.setdefault(str(d), OTHER_DIM))
                          for i, d in enumerate(s.shape or ()))
            out[s.name] = _example(s.dtype, shape, rng)
        return out

    def texts_inputs(self, texts: list[str]) -> list[Batch]:
        raise ConversionError(f"{self.identifier}: an ONNX source has no tokenizer for a texts file",
                              hint="give the golden inputs as an .npz instead", remedy=Remedy.GOLDEN_INPUTS)

    def run(self, batch: Batch) -> Batch:
        if self._session is None:
            self._session = runtime.session(self.model, optimization="none", name=self.identifier)
        return runtime.run(self._session, [batch])[0]


def _check_tensors_only(model: onnx.ModelProto, path: Path) -> None:
    refs = external_data.external_tensors(model)
    if refs:
        raise ConversionError(f"{path}: tensor {refs[0].name!r} keeps its data in an external file; a build source "
                              "must be one self-contained .onnx file", hint="save it with save_as_external_data=False")
    for value in [*model.graph.input, *model.graph.output]:
        if not value.type.HasField("tensor_type"):
            kind: Any = value.type.WhichOneof("value")
            raise ConversionError(f"{path}: {value.name!r} is a {kind}, not a tensor (a ZipMap?); only tensor "
                                  "inputs and outputs can be compared", hint="re-export it with plain tensor outputs")


def load(path: Path, options: ConvertOptions) -> OnnxSource:
    """Read ``path`` once, scan those bytes, then parse them: an :class:`OnnxSource`."""
    data = reader.read_file(path)
    scanner.refuse_unsafe(data, str(path), path.parent, SOURCE_FAIL_ON)
    model = reader.parse(data, str(path))
    _check_tensors_only(model, path)
    return OnnxSource(model, str(path), (path,), options.golden_size, options.task)
