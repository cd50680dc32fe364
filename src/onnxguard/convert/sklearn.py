"""scikit-learn sources: ``.skops`` files, and pickles (``.pkl``/``.joblib``) only when trusted explicitly.

Loading a pickle runs code chosen by whoever wrote the file, so a pickle is loaded only after a
static scan (picklescan) that finished reading the whole stream, found no dangerous global, and found
only globals from the scientific stack. A ``.skops`` file is loaded with skops' own type allow-list.

Classifiers export without ZipMap: ``label`` and a plain ``probabilities`` tensor, with the class
labels kept in the manifest. Outlier detectors (IsolationForest, OneClassSVM, LocalOutlierFactor with
``novelty=True``, ...) export ``label`` (``predict``: 1 inlier, -1 outlier) and ``scores``
(``decision_function``), both (rows, 1). scikit-learn computes in float64 and the ONNX graph in float32; the
parity report states that difference instead of hiding it.

Inputs: one float tensor ``input`` (rows, features), except for a pipeline that starts with a ColumnTransformer:
that one gets one typed input per column, named after the column it was fitted on (``feature_names_in_``, or
``x0``, ``x1``, ... when it was fitted on an array), ``string`` for the columns its encoders saw as strings and
``float32`` for the others. The manifest's ``preprocessing`` records the columns (see
:mod:`onnxguard.preprocess.table`), and the golden set uses the same inputs.
"""

from __future__ import annotations

import importlib
import io
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import onnx
import skl2onnx
import sklearn
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.base import is_outlier_detector
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.pipeline import Pipeline

from onnxguard.accuracy.parity import LABELS, SCORES, VALUES
from onnxguard.bundle.golden import Batch
from onnxguard.convert.interface import ConversionError, ConvertOptions, Exported
from onnxguard.errors import Remedy
from onnxguard.model import onnxfile
from onnxguard.preprocess import table
from onnxguard.preprocess.table import Column
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
OUTLIER_NOTE = "outlier detector: 'label' is predict (1 inlier, -1 outlier), 'scores' is decision_function"
# A converter's error message can hold a whole model dump: the error shows its first line, cut to this length.
MAX_MESSAGE_CHARS = 300
UNSEEN = "<unseen>"  # a category no encoder saw, in the golden set of encoders that accept one
HIST_GRADIENT_BOOSTING = (HistGradientBoostingClassifier, HistGradientBoostingRegressor)


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


def final_estimator(estimator: object) -> object:
    """The estimator that predicts: the last step of a (nested) Pipeline, else ``estimator`` itself."""
    while isinstance(estimator, Pipeline):
        estimator = estimator.steps[-1][1]
    return estimator


def column_transformer(estimator: object) -> ColumnTransformer | None:
    """The ColumnTransformer a pipeline starts with (or the estimator itself), else None."""
    while isinstance(estimator, Pipeline):
        estimator = estimator.steps[0][1]
    return estimator if isinstance(estimator, ColumnTransformer) else None


def _selected(selection: Any, names: tuple[str, ...]) -> list[int]:
    """A fitted ColumnTransformer's column selection (names, indices, a slice, a mask) as column indices."""
    if isinstance(selection, str | int | np.integer):
        selection = [selection]
    if isinstance(selection, slice):
        start, stop = (names.index(v) if isinstance(v, str) else v for v in (selection.start, selection.stop))
        stop = stop + 1 if isinstance(selection.stop, str) else stop  # a slice of names includes its end
        return list(range(len(names)))[slice(start, stop, selection.step)]
    values = list(selection)
    if values and all(isinstance(v, bool | np.bool_) for v in values):
        return [i for i, v in enumerate(values) if v]
    return [names.index(str(v)) if isinstance(v, str) else int(v) for v in values]


def _steps(transformer: object) -> list[object]:
    return [s for _, s in transformer.steps] if isinstance(transformer, Pipeline) else [transformer]


def _encoder(transformer: object) -> Any:
    """The first step of ``transformer`` that learned categories (OneHotEncoder, OrdinalEncoder), else None."""
    return next((s for s in _steps(transformer) if hasattr(s, "categories_")), None)


def _learned_strings(transformer: object, k: int) -> bool:
    """Whether the ``k``-th column a ColumnTransformer's transformer takes held strings when it was fitted."""
    for step in _steps(transformer):
        categories = getattr(step, "categories_", None)
        if categories is not None and k < len(categories):
            return any(isinstance(v, str) for v in categories[k])
        statistics = getattr(step, "statistics_", None)  # a SimpleImputer in front of the encoder
        if statistics is not None and k < len(statistics) and isinstance(statistics[k], str):
            return True
    return False


@dataclass(frozen=True)
class TableLayout:
    """A ColumnTransformer pipeline's columns, and how the golden set fills them."""

    columns: tuple[Column, ...]
    by_name: bool  # the ColumnTransformer selects columns by name: scikit-learn runs it on a DataFrame only
    categories: dict[str, tuple[str, ...]]  # string column -> categories its encoder learned
    unseen_ok: frozenset[str]  # string columns whose encoder accepts an unseen category
    scale: dict[str, tuple[float, float]]  # numeric column -> (mean, scale) its scaler learned


def table_layout(estimator: object) -> TableLayout | None:
    """The typed columns of a pipeline that starts with a ColumnTransformer, from its fitted state; else None."""
    ct = column_transformer(estimator)
    if ct is None:
        return None
    given = getattr(ct, "feature_names_in_", None)
    names = tuple(str(n) for n in given) if given is not None else tuple(f"x{i}" for i in range(ct.n_features_in_))
    strings: set[int] = set()
    categories: dict[str, tuple[str, ...]] = {}
    unseen_ok: set[str] = set()
    scale: dict[str, tuple[float, float]] = {}
    by_name = False
    for _, transformer, selection in ct.transformers_:
        by_name = by_name or isinstance(selection, str) or (
            isinstance(selection, list | tuple | np.ndarray) and any(isinstance(v, str) for v in selection))
        if isinstance(transformer, str):  # "drop" or "passthrough": numbers as they are
            continue
        indices = _selected(selection, names)
        encoder, first = _encoder(transformer), _steps(transformer)[0]
        for k, i in enumerate(indices):
            if _learned_strings(transformer, k):
                strings.add(i)
                if encoder is not None:
                    categories[names[i]] = tuple(str(v) for v in encoder.categories_[k] if isinstance(v, str))
                    if getattr(encoder, "handle_unknown", "error") != "error":
                        unseen_ok.add(names[i])
            elif hasattr(first, "mean_") and hasattr(first, "scale_") and first.mean_ is not None:
                scale[names[i]] = (float(first.mean_[k]), float(first.scale_[k]))
    columns = tuple(Column(n, table.STRING if i in strings else table.FLOAT, n) for i, n in enumerate(names))
    return TableLayout(columns, by_name, categories, frozenset(unseen_ok), scale)


def refusal(estimator: object) -> str | None:
    """Why ``estimator`` cannot become a correct ONNX model with skl2onnx 1.20.0, or None."""
    final = final_estimator(estimator)
    categorical = getattr(final, "is_categorical_", None)  # None when no feature is categorical
    if isinstance(final, HIST_GRADIENT_BOOSTING) and categorical is not None and np.any(categorical):
        return (f"{type(final).__name__} with categorical features: skl2onnx {skl2onnx.__version__} ignores "
                "categorical splits, so the ONNX model would predict differently; refit it without "
                "categorical_features (encode those columns with an OrdinalEncoder or OneHotEncoder instead)")
    if is_outlier_detector(final) and not hasattr(final, "decision_function"):
        return (f"{type(final).__name__} cannot score new rows (no decision_function); fit it with novelty=True")
    return None


def _log_link(estimator: object) -> bool:
    """A HistGradientBoostingRegressor whose loss predicts ``exp(raw)`` (poisson, gamma): skl2onnx 1.20.0 leaves
    the exp out."""
    final = final_estimator(estimator)
    link = getattr(getattr(final, "_loss", None), "link", None)
    return isinstance(final, HistGradientBoostingRegressor) and type(link).__name__ == "LogLink"


def _append_to_output(model: onnx.ModelProto, name: str, op_type: str, extra: list[str] | None = None) -> None:
    """Put ``op_type`` between the graph's output ``name`` and the node that made it (same output name)."""
    raw = f"{name}_before_{op_type.lower()}"
    for node in model.graph.node:
        node.output[:] = [raw if o == name else o for o in node.output]
    model.graph.node.append(onnx.helper.make_node(op_type, [raw, *(extra or [])], [name]))


def _as_column(model: onnx.ModelProto, name: str) -> None:
    """Make the 1-D graph output ``name`` a (rows, 1) column, as the other outlier detectors give it."""
    out = next(o for o in model.graph.output if o.name == name)
    dims = out.type.tensor_type.shape.dim
    if len(dims) != 1:
        return
    axes = f"{name}_axes"
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1], np.int64), axes))
    _append_to_output(model, name, "Unsqueeze", [axes])
    dims.add().dim_value = 1


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if len(line) <= MAX_MESSAGE_CHARS else line[:MAX_MESSAGE_CHARS] + "..."


def _dataframe_module(identifier: str) -> Any:
    try:
        return importlib.import_module("pandas")
    except ImportError as e:
        raise ConversionError(f"{identifier}: the pipeline selects columns by name, and scikit-learn runs such a "
                              "pipeline on a DataFrame only; install pandas to build it") from e


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
    assets: dict[str, Path] = field(default_factory=dict)
    architecture: dict | None = None
    layout: TableLayout | None = None  # a ColumnTransformer pipeline: one typed input per column
    feature_names: tuple[str, ...] | None = None  # the names it was fitted with (feature_names_in_)
    parity_notes: tuple[str, ...] = (FLOAT64_NOTE,)  # what any comparison with this source should say

    def __post_init__(self) -> None:
        why = refusal(self.estimator)
        if why is not None:
            raise ConversionError(f"{self.identifier}: {why}")

    @property
    def classifier(self) -> Classifier | None:
        """The estimator when it is a classifier (probabilities and classes), else None."""
        return self.estimator if isinstance(self.estimator, Classifier) else None

    @property
    def is_classifier(self) -> bool:
        return self.classifier is not None

    @property
    def is_outlier_detector(self) -> bool:
        return bool(is_outlier_detector(final_estimator(self.estimator)))

    @property
    def missing(self) -> bool:
        """Whether NaN is a value the model takes (a missing value), not an error."""
        return isinstance(final_estimator(self.estimator), HIST_GRADIENT_BOOSTING)

    @property
    def labels(self) -> list[str] | None:
        classifier = self.classifier
        return [str(c) for c in classifier.classes_] if classifier is not None else None

    @property
    def output_roles(self) -> dict[str, str]:
        if self.is_classifier:
            return {"label": LABELS, "probabilities": SCORES}
        if self.is_outlier_detector:
            return {"label": LABELS, "scores": VALUES}
        return {"variable": VALUES}

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The manifest's table entry: the columns rows are given in, and the inputs they become."""
        if self.layout is not None:
            return table.entry(self.layout.columns, self.missing)
        columns: int | list[str] = list(self.feature_names) if self.feature_names else self.n_features
        return {"kind": "table", "input": "input", "columns": columns, "missing": self.missing}

    def _initial_types(self) -> list[tuple[str, Any]]:
        if self.layout is None:
            return [("input", FloatTensorType([None, self.n_features]))]
        return [(c.input, StringTensorType([None, 1]) if c.dtype == table.STRING else FloatTensorType([None, 1]))
                for c in self.layout.columns]

    def export(self, opset: int | None, exporter: str, progress: Progress) -> Exported:
        progress(Event("convert", f"converting with skl2onnx {skl2onnx.__version__}"))
        final = final_estimator(self.estimator)
        options = {id(final): {"zipmap": False}} if self.is_classifier else None
        kind = type(final).__name__
        try:
            with warnings.catch_warnings(record=True):  # converter chatter is not the user's business
                model = skl2onnx.convert_sklearn(self.estimator, initial_types=self._initial_types(),
                                                 target_opset={"": opset or DEFAULT_OPSET, "ai.onnx.ml": 3},
                                                 options=options)
        except (RuntimeError, NotImplementedError, ValueError, TypeError, KeyError, AttributeError,
                IndexError) as e:
            raise ConversionError(f"{self.identifier}: skl2onnx {skl2onnx.__version__} cannot convert {kind}: "
                                  f"{_first_line(e)}") from e
        for value in [*model.graph.input, *model.graph.output]:  # skl2onnx leaves the batch axis unnamed
            dims = value.type.tensor_type.shape.dim
            if dims and not dims[0].HasField("dim_value") and not dims[0].HasField("dim_param"):
                dims[0].dim_param = "batch"
        names = [o.name for o in model.graph.output]
        notes = self.parity_notes
        if self.is_classifier and names != ["label", "probabilities"]:
            raise ConversionError(f"{self.identifier}: unexpected classifier outputs {names}")
        if self.is_outlier_detector:
            if names != ["label", "scores"]:
                raise ConversionError(f"{self.identifier}: unexpected outlier detector outputs {names}")
            for name in names:
                _as_column(model, name)
            notes += (OUTLIER_NOTE,)
        if _log_link(self.estimator):
            _append_to_output(model, names[0], "Exp")
            notes += (f"{kind}: exp(raw prediction) added to the graph (its loss has a log link, which skl2onnx "
                      f"{skl2onnx.__version__} leaves out)",)
        wanted = [name for name, _ in self._initial_types()]
        if [i.name for i in model.graph.input] != wanted:
            raise ConversionError(f"{self.identifier}: skl2onnx named the inputs "
                                  f"{[i.name for i in model.graph.input]}, not {wanted}")
        return Exported(model, f"skl2onnx {skl2onnx.__version__} (zipmap=False)", notes)

    def golden_inputs(self) -> list[Batch]:
        """Rows in batches of 1, 16, ..., then edge rows: zeros, large values (and missing values where the model
        takes them); for a typed table, every category its encoders learned (and an unseen one where allowed)."""
        rng = np.random.default_rng(0)
        n = max(self.golden_size, 2)
        if self.layout is not None:
            return self._typed_golden(self.layout, rng, n)
        x = rng.standard_normal((n, self.n_features)).astype(np.float32)
        batches = [{"input": x[:1]}] + [{"input": x[i : i + 16]} for i in range(1, len(x), 16)]
        edges = [np.zeros((2, self.n_features), np.float32), np.full((2, self.n_features), 1e3, np.float32)]
        if self.missing:
            edges.append(np.where(np.eye(2, self.n_features) > 0, np.nan, x[:2]).astype(np.float32))
        return batches + [{"input": e} for e in edges]

    @staticmethod
    def _typed_golden(layout: TableLayout, rng: np.random.Generator, n: int) -> list[Batch]:
        arrays: dict[str, np.ndarray] = {}
        edges: list[dict[str, np.ndarray]] = [{}, {}]
        unseen: dict[str, np.ndarray] = {}
        for c in layout.columns:
            if c.dtype == table.STRING:
                cats = layout.categories.get(c.name) or ("a",)
                arrays[c.input] = np.array([cats[i % len(cats)] for i in range(n)], np.str_)[rng.permutation(n)]
                edges[0][c.input], edges[1][c.input] = np.array([cats[0]] * 2, np.str_), np.array([cats[-1]] * 2,
                                                                                                   np.str_)
                unseen[c.input] = np.array([UNSEEN if c.name in layout.unseen_ok else cats[0]] * 2, np.str_)
            else:
                mean, scale = layout.scale.get(c.name, (0.0, 1.0))
                arrays[c.input] = (mean + scale * rng.standard_normal(n)).astype(np.float32)
                edges[0][c.input], edges[1][c.input] = np.zeros(2, np.float32), np.full(2, 1e3, np.float32)
                unseen[c.input] = arrays[c.input][:2]
        if layout.unseen_ok:
            edges.append(unseen)
        columns = {k: v.reshape(-1, 1) for k, v in arrays.items()}
        batches = [{k: v[:1] for k, v in columns.items()}]
        batches += [{k: v[i : i + 16] for k, v in columns.items()} for i in range(1, n, 16)]
        return batches + [{k: v.reshape(-1, 1) for k, v in e.items()} for e in edges]

    def texts_inputs(self, texts: list[str]) -> list[Batch]:
        raise ConversionError(f"{self.identifier}: a texts file needs a text model",
                              hint="give the golden inputs as an .npz instead")

    def _rows(self, batch: Batch) -> Any:
        """``batch`` as scikit-learn takes it: float64 rows, or for a typed table, the columns as fitted."""
        if self.layout is None:
            return batch["input"].astype(np.float64)
        values = {c.name: (batch[c.input].reshape(-1).astype(str) if c.dtype == table.STRING
                           else batch[c.input].reshape(-1).astype(np.float64)) for c in self.layout.columns}
        if self.layout.by_name:
            return _dataframe_module(self.identifier).DataFrame(values)
        rows = np.empty((len(next(iter(values.values()))), len(values)), dtype=object)
        for j, v in enumerate(values.values()):
            rows[:, j] = v
        return rows

    def run(self, batch: Batch) -> Batch:
        x = self._rows(batch)
        with warnings.catch_warnings():  # rows without names, for a model fitted on a DataFrame: same columns
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            classifier = self.classifier
            if classifier is not None:
                return {"label": np.asarray(classifier.predict(x)), "probabilities": classifier.predict_proba(x)}
            if self.is_outlier_detector:
                detector: Any = self.estimator
                return {"label": np.asarray(detector.predict(x)).reshape(len(x), 1),
                        "scores": np.asarray(detector.decision_function(x)).reshape(len(x), 1)}
            return {"variable": np.asarray(self.estimator.predict(x)).reshape(len(x), -1)}


def load(path: Path, options: ConvertOptions) -> SklearnSource:
    """Load a scikit-learn model file as a source."""
    estimator = load_estimator(path, options.trust_pickle)
    n = getattr(estimator, "n_features_in_", None)
    if not isinstance(n, int | np.integer) or not isinstance(estimator, Estimator):
        raise ConversionError(f"{path}: holds {type(estimator).__name__}, not a fitted scikit-learn estimator")
    names = getattr(estimator, "feature_names_in_", None)
    return SklearnSource(estimator, str(path), (path,), int(n), options.golden_size, options.task,
                         layout=table_layout(estimator),
                         feature_names=tuple(str(v) for v in names) if names is not None else None)
