"""One side of a diff: the model's bytes and what came with it (golden set, output roles, tokenizer vocabulary).

A plain ``.onnx`` file is read through the one reader of untrusted files and scanned before anything runs it (a
finding at high or above refuses it); a bundle is handed over already opened
through the door (``trust.open_bundle``), so what is compared is exactly what the door hashed, checked and scanned.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from onnxguard.bundle.golden import GoldenSet
from onnxguard.errors import InputError
from onnxguard.model import onnxfile
from onnxguard.trust import OpenedBundle


@dataclass(frozen=True)
class Subject:
    """A model to compare: ``kind`` is ``model`` (an .onnx file) or ``bundle``."""

    name: str
    kind: str
    model: bytes = field(repr=False)
    golden: GoldenSet | None = field(default=None, repr=False)
    roles: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    vocab_size: int | None = None  # from the bundle's tokenizer
    model_dir: Path | None = None  # where external data may be resolved


def from_file(path: str | os.PathLike[str]) -> Subject:
    """An ``.onnx`` file, read once through the one reader (regular files only, size-limited, never blocking) and
    scanned before it is run (``scan.refuse_unsafe``)."""
    from onnxguard import scan

    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        raise InputError(f"{p}: a directory; open a bundle through trust.open_bundle and pass the opened bundle")
    data = onnxfile.read_file(p)
    scan.refuse_unsafe(data, str(p), p.parent.absolute())
    return Subject(str(p), "model", data, model_dir=p.parent.absolute())


def from_bundle(opened: OpenedBundle) -> Subject:
    """A bundle that passed the door: its model, golden set, output roles and tokenizer vocabulary."""
    from onnxguard.preprocess import tokenizer as tokenizer_lib

    m = opened.manifest
    golden = opened.golden() if m.golden is not None else None
    vocab = None
    if m.preprocessing and m.preprocessing.get("kind", "tokenizer") == "tokenizer":
        tok = tokenizer_lib.load(dict(opened.contents), m.preprocessing, input_names=[t.name for t in m.model.inputs])
        vocab = tok.vocab_size
    return Subject(str(opened.path), "bundle", opened.model_bytes, golden, MappingProxyType(dict(opened.roles)),
                   vocab, opened.path.absolute())
