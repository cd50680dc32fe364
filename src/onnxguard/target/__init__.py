"""``target.make(bundle, kind, out) -> TargetResult``: the bundle's model for another place it runs.

One module per kind of target: ``ortformat.py`` makes ``mobile`` and ``edge`` targets (ONNX Runtime's
ORT format, with the required-operators configuration a reduced ONNX Runtime build needs); ``web.py`` makes
a static folder that runs the model in the browser with onnxruntime-web. ``operators.py`` refuses, first, a
model with ops a target's runtime cannot run. Each target directory gets a ``manifest.json`` that names its
parent bundle by the sha256 of the parent's ``manifest.json``, so its provenance is clear and the parent's
signature still covers the model it came from. A sealed bundle is decrypted in memory; its plaintext is
written only inside the target directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from onnxguard import staging
from onnxguard.errors import InputError
from onnxguard.progress import Progress, silent
from onnxguard.target.interface import TARGET_FORMAT, TargetResult
from onnxguard.trust.opening import OpenedBundle

KINDS = ("mobile", "edge", "web")

__all__ = ["KINDS", "TARGET_FORMAT", "TargetResult", "make"]


def make(parent: OpenedBundle, kind: str, out: str | os.PathLike[str], overwrite: bool = False,
         progress: Progress = silent) -> TargetResult:
    """Make the ``kind`` target of the opened bundle ``parent`` in the directory ``out``.

    The model and golden set are the bytes the bundle door hashed (decrypted in memory when sealed: the bundle
    must have been opened with its identity). ``out`` is checked before any work: never the bundle itself,
    inside it or around it, never a system directory."""
    if kind not in KINDS:
        raise InputError(f"target kind {kind!r}: use one of {', '.join(KINDS)}")
    out = Path(out)
    staging.check_output(out, inputs=[parent.path], overwrite=overwrite)
    data, golden = parent.model_bytes, parent.golden()
    if golden.references is None:
        raise InputError(f"{parent.path}: the golden set has no reference outputs to check the target against")
    if kind == "web":
        from onnxguard.target import web

        return web.make(parent, data, golden, out, overwrite, progress)
    from onnxguard.target import ortformat

    return ortformat.make(parent, data, golden, kind, out, overwrite, progress)
