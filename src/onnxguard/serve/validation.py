"""Every request against the model's signature, before anything runs: ``check(arrays, signature) -> rows``.

Names (none missing, none unknown), datatypes (exactly the model's), rank, every fixed dimension, the batch and
every symbolic dimension within its limit, one value per symbol across inputs (``batch`` is the same for all),
token ids inside the vocabulary and attention masks of 0 and 1, and no NaN or infinity unless allowed. A bad
input is a ``ValidationError`` (HTTP 400) that names the input and what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnxguard.errors import InputError
from onnxguard.model.onnxfile import TensorSpec
from onnxguard.serve.protocol import DATATYPES, datatype_of

# Rows one request may carry: a large batch is a way to buy a lot of compute with one request.
MAX_BATCH = 256
# Any symbolic dimension but the batch (a sequence length, an image side) when the model names no limit.
MAX_DIM = 8192
# Texts in a :predict request, and characters in one text, before tokenizing.
MAX_TEXT_CHARS = 100_000


class ValidationError(InputError):
    """The request does not fit the model's signature (HTTP 400)."""


@dataclass(frozen=True)
class InputSpec:
    """One tensor of the model's signature, as the protocol names it."""

    name: str
    datatype: str  # protocol datatype (FP32, INT64, ...)
    shape: tuple[int | str | None, ...] | None  # int: fixed; str/None: symbolic (dim 0: the batch)

    @classmethod
    def of(cls, spec: TensorSpec) -> InputSpec:
        """The validation spec of a model input as onnxfile describes it."""
        return cls(spec.name, datatype_of(spec.dtype), spec.shape)

    def to_dict(self) -> dict[str, object]:
        """The Open Inference Protocol's tensor metadata (``-1`` for a symbolic dimension)."""
        shape = [d if isinstance(d, int) and d > 0 else -1 for d in (self.shape or ())]
        return {"name": self.name, "datatype": self.datatype, "shape": shape}


@dataclass(frozen=True)
class Signature:
    """What a request must fit: the inputs and the limits on batch, dimensions, token ids and values."""

    inputs: tuple[InputSpec, ...]
    max_batch: int = MAX_BATCH
    max_dim: int = MAX_DIM  # every other symbolic dimension
    vocab_size: int | None = None  # token ids must be below it (text models)
    allow_nonfinite: bool = False


def check(arrays: Mapping[str, np.ndarray], sig: Signature) -> int:
    """Validate ``arrays`` against ``sig``; the number of rows (the batch). ``ValidationError`` otherwise."""
    wanted = {s.name for s in sig.inputs}
    missing = [n for n in wanted if n not in arrays]
    if missing:
        raise ValidationError(f"missing input(s) {sorted(missing)}; the model takes {sorted(wanted)}")
    unknown = [n for n in arrays if n not in wanted]
    if unknown:
        raise ValidationError(f"unknown input(s) {sorted(unknown)}; the model takes {sorted(wanted)}")
    symbols: dict[str, tuple[int, str]] = {}
    rows = None
    for spec in sig.inputs:
        arr = arrays[spec.name]
        expected = DATATYPES[spec.datatype]
        if arr.dtype != expected and not (spec.datatype == "BYTES" and arr.dtype.kind == "O"):
            raise ValidationError(f"input {spec.name!r}: datatype {_name(arr)}, the model takes {spec.datatype}")
        if spec.shape is not None:
            if arr.ndim != len(spec.shape):
                raise ValidationError(f"input {spec.name!r}: rank {arr.ndim} (shape {list(arr.shape)}), the model "
                                      f"takes rank {len(spec.shape)} {_shape(spec.shape)}")
            for axis, (got, dim) in enumerate(zip(arr.shape, spec.shape, strict=True)):
                _dim(spec.name, axis, got, dim, sig, symbols)
        n = arr.shape[0] if arr.ndim else 1
        if rows is not None and n != rows:
            raise ValidationError(f"input {spec.name!r}: batch of {n} rows, another input has {rows}")
        rows = n
        _values(spec.name, arr, sig)
    if not rows:
        raise ValidationError("the request holds no rows")
    return rows


def _dim(name: str, axis: int, got: int, dim: int | str | None, sig: Signature,
         symbols: dict[str, tuple[int, str]]) -> None:
    if isinstance(dim, int) and dim > 0:
        if got != dim:
            raise ValidationError(f"input {name!r}: dimension {axis} is {got}, the model takes {dim}")
        return
    limit = sig.max_batch if axis == 0 else sig.max_dim
    what = "batch" if axis == 0 else f"dimension {axis}"
    if got > limit:
        raise ValidationError(f"input {name!r}: {what} of {got} is over the limit of {limit}")
    if isinstance(dim, str) and dim:
        seen = symbols.setdefault(dim, (got, name))
        if seen[0] != got:
            raise ValidationError(f"input {name!r}: dimension {axis} ({dim!r}) is {got}, but {seen[0]} in input "
                                  f"{seen[1]!r}")


def _values(name: str, arr: np.ndarray, sig: Signature) -> None:
    if arr.dtype.kind == "f" and not sig.allow_nonfinite and arr.size and not np.isfinite(arr).all():
        raise ValidationError(f"input {name!r}: holds NaN or infinity")
    if name == "input_ids" and sig.vocab_size is not None and arr.size:
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or high >= sig.vocab_size:
            raise ValidationError(f"input {name!r}: token ids must lie in [0, {sig.vocab_size}), got {low}..{high}")
    if name == "attention_mask" and arr.size and not _zeros_and_ones(arr):
        raise ValidationError(f"input {name!r}: an attention mask holds only 0 and 1")


def _zeros_and_ones(arr: np.ndarray) -> bool:
    if arr.dtype.kind in "iub":  # integers: two reductions, a tenth of np.isin's time on one request's mask
        return bool(arr.min() >= 0 and arr.max() <= 1)
    return bool(np.isin(arr, (0, 1)).all())


def texts(instances: Sequence[object], max_chars: int = MAX_TEXT_CHARS) -> list[str]:
    """The texts of a :predict request: strings (or ``{"text": ...}`` objects), none too long."""
    out = []
    for i, item in enumerate(instances):
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise ValidationError(f"instance {i}: a text model takes strings (or {{\"text\": ...}})")
        if len(text) > max_chars:
            raise ValidationError(f"instance {i}: {len(text)} characters, over the limit of {max_chars}")
        out.append(text)
    return out


def pairs(instances: Sequence[object], max_chars: int = MAX_TEXT_CHARS) -> list[tuple[str, str]]:
    """The (question, context) pairs of a :predict request to a question-answering model: ``{"question": ...,
    "context": ...}`` objects or two-string lists, none too long."""
    out = []
    for i, item in enumerate(instances):
        pair = (item.get("question"), item.get("context")) if isinstance(item, dict) else item
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ValidationError(f"instance {i}: a question-answering model takes "
                                  '{"question": ..., "context": ...} (or [question, context])')
        if sum(len(x) for x in pair) > max_chars:
            raise ValidationError(f"instance {i}: {sum(len(x) for x in pair)} characters, over the limit of "
                                  f"{max_chars}")
        out.append((pair[0], pair[1]))
    return out


def _name(arr: np.ndarray) -> str:
    if arr.dtype.kind == "O":
        return "BYTES"
    try:
        return datatype_of(arr.dtype.name)
    except InputError:
        return arr.dtype.name


def _shape(shape: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) and d > 0 else str(d or "?") for d in shape) + "]"
