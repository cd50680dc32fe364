"""``target.make(bundle, kind, out) -> TargetResult``: the bundle's model for another place it runs.

One module per kind of target: ``ortformat.py`` makes ``mobile`` and ``edge`` targets (ONNX Runtime's
ORT format, with the required-operators configuration a reduced ONNX Runtime build needs). Each target
directory gets a ``manifest.json`` that names its parent bundle by the sha256 of the parent's
``manifest.json``, so its provenance is clear and the parent's signature still covers the model it came from.
A target is accepted only if it passes the parent's golden set against the SOURCE framework's references.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..bundle import Bundle
from ..errors import InputError
from ..progress import Progress, silent
from .interface import TARGET_FORMAT, TargetResult

KINDS = ("mobile", "edge")

__all__ = ["KINDS", "TARGET_FORMAT", "TargetResult", "make"]


def make(parent: Bundle, kind: str, out: str | os.PathLike[str], identity=None, overwrite: bool = False,
         progress: Progress = silent) -> TargetResult:
    """Make the ``kind`` target of ``parent`` in the directory ``out``; sealed bundles need ``identity``."""
    if kind not in KINDS:
        raise InputError(f"--to {kind!r}: use one of {', '.join(KINDS)}")
    from . import ortformat

    return ortformat.make(parent, kind, Path(out), identity, overwrite, progress)
