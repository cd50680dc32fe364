"""What a source framework plugs into: a loaded ``Source`` that can export itself and run itself.

One file per framework implements it (``torch.py``, ``hf.py``, ``sklearn.py``); ``convert.load`` picks the
right one from the source spec. Framework imports stay inside those files, so ``import onnxguard``
never loads torch, transformers or scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import onnx

from onnxguard.bundle.golden import Batch
from onnxguard.errors import ConversionError
from onnxguard.progress import Progress

__all__ = ["ConversionError", "ConvertOptions", "Exported", "Source"]


@dataclass(frozen=True)
class ConvertOptions:
    """How to load and export a source model (each field applies to the frameworks named beside it)."""

    opset: int | None = None  # None: the converter's default
    exporter: str = "auto"  # torch: auto | dynamo | torchscript
    input_shapes: tuple[str, ...] = ()  # torch modules: NAME=DIMS[:DTYPE] or DIMS
    task: str | None = None  # transformers (None: the saved architecture's): text-classification |
    # token-classification | question-answering | image-classification | feature-extraction
    pooling: str = "mean"  # feature-extraction: mean | cls
    max_length: int | None = None  # transformers: longest sequence in the golden set
    trust_pickle: bool = False  # scikit-learn .pkl/.joblib, only after a pickle scan
    golden_size: int = 64  # examples generated for the golden set when none are given
    attn_implementation: str = "eager"  # transformers: eager exports cleanly; bench compares with "sdpa", the default


@dataclass(frozen=True)
class Exported:
    """An exported model and how it was made."""

    model: onnx.ModelProto
    exporter: str
    notes: tuple[str, ...] = ()


class Source(Protocol):
    """A source model loaded in its own framework.

    Its data members are read-only: a source may hold them as fields or compute them (``labels``,
    ``output_roles``), and may narrow them (a Transformers source always knows its ``task``)."""

    @property
    def framework(self) -> str: ...  # "pytorch" | "transformers" | "sklearn"

    @property
    def framework_version(self) -> str: ...

    @property
    def identifier(self) -> str: ...  # the spec the user gave

    @property
    def task(self) -> str | None: ...

    @property
    def files(self) -> tuple[Path, ...]: ...  # the source files, hashed into the manifest

    @property
    def labels(self) -> list[str] | None: ...  # class labels, index-aligned with score outputs

    @property
    def output_roles(self) -> dict[str, str]: ...  # output name -> parity role

    @property
    def preprocessing(self) -> dict[str, Any] | None: ...

    @property
    def assets(self) -> dict[str, Path]: ...  # bundle-relative path -> file to copy in (tokenizer files)

    @property
    def architecture(self) -> dict[str, Any] | None: ...  # transformers: model_type, num_heads, hidden_size

    def export(self, opset: int | None, exporter: str, progress: Progress) -> Exported: ...

    def golden_inputs(self) -> list[Batch]: ...

    def texts_inputs(self, texts: list[str]) -> list[Batch]: ...

    def run(self, batch: Batch) -> Batch: ...
