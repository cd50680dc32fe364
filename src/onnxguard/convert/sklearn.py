"""scikit-learn sources: ``.skops`` files, and pickles (``.pkl``/``.joblib``) only when trusted explicitly.

Loading a pickle runs code chosen by whoever wrote the file, so a pickle is loaded only after a
static scan (picklescan) that finished reading the whole stream, found no dangerous global, and found
only globals from the scientific stack. A ``.skops`` file is loaded with skops' own type allow-list.

Classifiers export without ZipMap: ``label`` and a plain ``probabilities`` tensor, with the class
labels kept in the manifest. scikit-learn computes in float64 and the ONNX graph in float32; the
parity report states that difference instead of hiding it.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import skl2onnx
import sklearn
from skl2onnx.common.data_types import FloatTensorType

from onnxguard.accuracy.parity import LABELS, SCORES, VALUES
from onnxguard.bundle.golden import Batch
from onnxguard.convert.interface import ConversionError, ConvertOptions, Exported
from onnxguard.errors import Remedy
from onnxguard.model import onnxfile
from onnxguard.progress import Event, Progress

DEFAULT_OPSET = 18
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
# Modules a scikit-learn pickle legitimately references. Anything else is refused even when picklescan
# does not call it dangerous: its safe list is a deny-list, and a deny-list fails open.
ALLOWED_PICKLE_MODULES = ("sklearn.", "numpy", "scipy.", "joblib.numpy_pickle", "collections", "copyreg", "_codecs")
SKOPS_TRUSTED_PREFIX = "sklearn."
# A pickle is read whole into memory to be scanned before it is loaded: refuse, from its size alone, one far
# larger than any scikit-learn model (a forest of thousands of deep trees is hundreds of MB), not allocate it.
MAX_PICKLE_BYTES = 4 << 30
FLOAT64_NOTE = "scikit-learn computes in float64, the ONNX graph in float32: small differences are expected"


def _scan_pickle(path: Path, data: bytes) -> None:
    from picklescan.scanner import SafetyLevel, scan_pickle_bytes

    result = scan_pickle_bytes(io.BytesIO(data), str(path))
    if result.scan_err:
        raise ConversionError(f"{path}: the pickle scan could not read the whole file (joblib keeps raw arrays "
                              "inside the pickle stream, and compressed files cannot be read); save the model "
                              "with skops.io.dump instead")
    dangerous = [f"{g.module}.{g.name}" for g in result.globals if g.safety == SafetyLevel.Dangerous]
    foreign = [f"{g.module}.{g.name}" for g in result.globals
               if not any(g.module == m.rstrip(".") or g.module.startswith(m) for m in ALLOWED_PICKLE_MODULES)]
    if dangerous or foreign:
        raise ConversionError(f"{path}: refused, the pickle imports {', '.join(sorted(set(dangerous + foreign)))}; "
                              "a scikit-learn model never needs these")


@runtime_checkable
class Estimator(Protocol):
    """A fitted scikit-learn estimator, as far as the source runs it."""

    def predict(self, x: np.ndarray) -> Any: ...


@runtime_checkable
class Classifier(Estimator, Protocol):
    """A fitted classifier: class probabilities, and the classes they are for."""

    classes_: Any

    def predict_proba(self, x: np.ndarray) -> Any: ...


def load_estimator(path: Path, trust_pickle: bool) -> object:
    """The estimator in ``path``: a .skops file through skops' type allow-list, a pickle only trusted and scanned."""
    if path.suffix == ".skops":
        import skops.io as sio

        try:
            untrusted = sio.get_untrusted_types(file=path)
            # skops leaves scikit-learn's own Cython types (the ``Tree`` of every tree ensemble) off its default
            # list; they are as trusted as the estimators holding them. Anything outside scikit-learn is refused.
            foreign = [t for t in untrusted if not t.startswith(SKOPS_TRUSTED_PREFIX)]
            if foreign:
                raise ConversionError(f"{path}: holds types skops does not trust: {', '.join(foreign)}; "
                                      "re-save it with only scikit-learn estimators")
            return sio.load(path, trusted=untrusted)
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
            raise ConversionError(f"{path}: not a readable .skops file ({e})") from e
    if not trust_pickle:
        raise ConversionError(f"{path}: pickle files can run code when loaded",
                              hint="save the model with skops (.skops)", remedy=Remedy.TRUST_PICKLE)
    data = onnxfile.read_file(path, MAX_PICKLE_BYTES, what="a scikit-learn pickle")
    _scan_pickle(path, data)
    try:
        return pickle.loads(data)  # noqa: S301 -- only after _scan_pickle above allowed every global
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as e:
        raise ConversionError(f"{path}: the pickle does not load ({type(e).__name__}: {e})") from e


@dataclass
class SklearnSource:
    """A scikit-learn estimator as a ``convert.Source``."""

    estimator: Estimator
    identifier: str
    files: tuple[Path, ...]
    n_features: int
    golden_size: int = 64
    task: str | None = None
    framework: str = "sklearn"
    framework_version: str = sklearn.__version__
    preprocessing: dict | None = None
    assets: dict[str, Path] = field(default_factory=dict)
    architecture: dict | None = None
    parity_notes: tuple[str, ...] = (FLOAT64_NOTE,)  # what any comparison with this source should say

    @property
    def classifier(self) -> Classifier | None:
        """The estimator when it is a classifier (probabilities and classes), else None."""
        return self.estimator if isinstance(self.estimator, Classifier) else None

    @property
    def is_classifier(self) -> bool:
        return self.classifier is not None

    @property
    def labels(self) -> list[str] | None:
        classifier = self.classifier
        return [str(c) for c in classifier.classes_] if classifier is not None else None

    @property
    def output_roles(self) -> dict[str, str]:
        if self.is_classifier:
            return {"label": LABELS, "probabilities": SCORES}
        return {"variable": VALUES}

    def export(self, opset: int | None, exporter: str, progress: Progress) -> Exported:
        progress(Event("convert", f"converting with skl2onnx {skl2onnx.__version__}"))
        options = {id(self.estimator): {"zipmap": False}} if self.is_classifier else None
        try:
            model = skl2onnx.convert_sklearn(
                self.estimator, initial_types=[("input", FloatTensorType([None, self.n_features]))],
                target_opset={"": opset or DEFAULT_OPSET, "ai.onnx.ml": 3}, options=options)
        except (RuntimeError, NotImplementedError, ValueError, TypeError, KeyError) as e:
            kind = type(self.estimator).__name__
            raise ConversionError(f"{self.identifier}: skl2onnx cannot convert {kind}: {e}") from e
        for value in [*model.graph.input, *model.graph.output]:  # skl2onnx leaves the batch axis unnamed
            dims = value.type.tensor_type.shape.dim
            if dims and not dims[0].HasField("dim_value") and not dims[0].HasField("dim_param"):
                dims[0].dim_param = "batch"
        names = [o.name for o in model.graph.output]
        if self.is_classifier and names != ["label", "probabilities"]:
            raise ConversionError(f"{self.identifier}: unexpected classifier outputs {names}")
        return Exported(model, f"skl2onnx {skl2onnx.__version__} (zipmap=False)", self.parity_notes)

    def golden_inputs(self) -> list[Batch]:
        """Standard normal rows in batches of 1, 16, ..., then zeros and large values."""
        rng = np.random.default_rng(0)
        x = rng.standard_normal((max(self.golden_size, 2), self.n_features)).astype(np.float32)
        batches = [{"input": x[:1]}] + [{"input": x[i : i + 16]} for i in range(1, len(x), 16)]
        return batches + [{"input": np.zeros((2, self.n_features), np.float32)},
                          {"input": np.full((2, self.n_features), 1e3, np.float32)}]

    def texts_inputs(self, texts: list[str]) -> list[Batch]:
        raise ConversionError(f"{self.identifier}: a texts file needs a text model",
                              hint="give the golden inputs as an .npz instead")

    def run(self, batch: Batch) -> Batch:
        x = batch["input"].astype(np.float64)
        classifier = self.classifier
        if classifier is not None:
            return {"label": np.asarray(classifier.predict(x)), "probabilities": classifier.predict_proba(x)}
        return {"variable": np.asarray(self.estimator.predict(x)).reshape(len(x), -1)}


def load(path: Path, options: ConvertOptions) -> SklearnSource:
    """Load a scikit-learn model file as a source."""
    estimator = load_estimator(path, options.trust_pickle)
    n = getattr(estimator, "n_features_in_", None)
    if not isinstance(n, int | np.integer) or not isinstance(estimator, Estimator):
        raise ConversionError(f"{path}: holds {type(estimator).__name__}, not a fitted scikit-learn estimator")
    return SklearnSource(estimator, str(path), (path,), int(n), options.golden_size, options.task)
