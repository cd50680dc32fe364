"""The golden set: input batches and the SOURCE framework's outputs on them.

Every variant and target of a model is judged against these reference outputs, so the set holds what
breaks variants (padding on both sides, the longest and shortest sequences, edge values), in batches
of different sizes so that the dynamic axes are exercised too.

On disk it is one ``.npz`` file, keys ``b{i}:in:{name}`` and ``b{i}:out:{name}``. A plain ``.npz`` whose
keys are the model's input names is read as one batch of inputs with no references.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxguard.bundle import files
from onnxguard.errors import InputError

Batch = dict[str, np.ndarray]
# A golden or calibration set given as a file (--golden, --calibration) is read whole and every array is then
# unpacked in memory: a few thousand examples are megabytes to a few hundred MiB, so 1 GiB leaves room for real
# sets while a wrong or hostile path is refused from its size, before anything is allocated.
MAX_GOLDEN_BYTES = 1 << 30
# A texts file (one text per line) is read whole and every line tokenized: 64 MiB is hundreds of thousands of
# texts, far more than a golden or calibration set uses.
MAX_TEXTS_BYTES = 64 << 20
_KEY = re.compile(r"^b(\d+):(in|out):(.+)$")


@dataclass(frozen=True)
class GoldenSet:
    """Golden input batches and, once the source has run on them, its reference outputs (one per batch)."""

    inputs: tuple[Batch, ...]
    references: tuple[Batch, ...] | None = None

    @property
    def items(self) -> int:
        """Number of examples (rows along the batch axis) over all batches."""
        return sum(len(next(iter(b.values()))) for b in self.inputs if b)

    def with_references(self, references: list[Batch]) -> GoldenSet:
        return GoldenSet(tuple(self.inputs), tuple(references))

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        for i, batch in enumerate(self.inputs):
            arrays.update({f"b{i}:in:{k}": v for k, v in batch.items()})
        for i, batch in enumerate(self.references or ()):
            arrays.update({f"b{i}:out:{k}": v for k, v in batch.items()})
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]  # numpy types **kwds as its allow_pickle
        return buf.getvalue()

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_bytes(self.to_bytes())


def from_bytes(data: bytes, name: str = "<golden>") -> GoldenSet:
    """Parse a golden ``.npz``; pickled object arrays are refused (``allow_pickle=False``)."""
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy array
            raise InputError(f"{name}: a single array, not an .npz archive; save with numpy.savez(path, name=array)")
        with loaded as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"{name}: not a readable .npz file ({e})") from e
    if not arrays:
        raise InputError(f"{name}: holds no arrays")
    if not any(_KEY.match(k) for k in arrays):
        return GoldenSet((arrays,))
    inputs: dict[int, Batch] = {}
    outputs: dict[int, Batch] = {}
    for key, value in arrays.items():
        m = _KEY.match(key)
        if not m:
            raise InputError(f"{name}: unexpected key {key!r} in a golden set")
        (inputs if m[2] == "in" else outputs).setdefault(int(m[1]), {})[m[3]] = value
    n = max(inputs) + 1
    if sorted(inputs) != list(range(n)) or (outputs and sorted(outputs) != list(range(n))):
        raise InputError(f"{name}: batches are not numbered 0..{n - 1} for both inputs and outputs")
    refs = tuple(outputs[i] for i in range(n)) if outputs else None
    return GoldenSet(tuple(inputs[i] for i in range(n)), refs)


def load(path: str | os.PathLike[str]) -> GoldenSet:
    """The golden set (or plain inputs) in the ``.npz`` file ``path``, read through the one reader of untrusted
    files (regular files only, never blocking, refused over ``MAX_GOLDEN_BYTES`` before reading)."""
    data = files.read_regular(path, MAX_GOLDEN_BYTES, what="a golden set .npz").data
    return from_bytes(data, str(path))


def split(arrays: Batch, batch_size: int) -> list[Batch]:
    """Cut arrays that share a first axis into batches of at most ``batch_size`` rows."""
    n = len(next(iter(arrays.values())))
    return [{k: v[i : i + batch_size] for k, v in arrays.items()} for i in range(0, n, batch_size)]


# A text model's golden set when no --texts is given: real sentences, whose class margins mean something (random
# token ids give a sentiment head near-zero margins, so a gate on them judges noise). Written for onnxguard:
# reviews good and bad, news, questions, instructions, numbers, one-word answers and long sentences, in English,
# French, German, Spanish, Italian, Portuguese, Dutch, Swedish and Polish.
BUILTIN_TEXTS = "sentences.txt"


def builtin_texts() -> list[str]:
    """The built-in sentences (package data ``onnxguard/bundle/sentences.txt``), one per line."""
    from importlib import resources

    data = resources.files("onnxguard.bundle").joinpath(BUILTIN_TEXTS).read_text(encoding="utf-8")
    return [line.strip() for line in data.splitlines() if line.strip()]


def read_texts(path: str | os.PathLike[str]) -> list[str]:
    """The texts in the UTF-8 file ``path``, one per line, blank lines skipped; read like any untrusted file
    (regular files only, never blocking, refused over ``MAX_TEXTS_BYTES`` before reading)."""
    p = Path(path)
    data = files.read_regular(p, MAX_TEXTS_BYTES, what="a texts file, one text per line").data
    try:
        texts = [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: cannot read as UTF-8 text ({e})") from e
    if not texts:
        raise InputError(f"{p}: holds no texts")
    return texts
