"""What ``optimize`` and ``quantize`` share: reading MODEL|BUNDLE, gating, and writing the result."""

from __future__ import annotations

from pathlib import Path

import onnx

from onnxguard import bundle
from onnxguard.bundle import golden
from onnxguard.model import onnxfile
from onnxguard.speed import select as variants
from onnxguard.errors import CheckFailed, InputError
from onnxguard.bundle.golden import GoldenSet
from onnxguard.bundle.manifest import Step
from onnxguard.accuracy.parity import Tolerance
from onnxguard.cli import render


def is_bundle(path: Path) -> bool:
    return (path / bundle.MANIFEST).is_file()


def load_model(path: Path) -> tuple[onnx.ModelProto, bundle.Bundle | None]:
    if is_bundle(path):
        b = bundle.read(path)
        return onnxfile.parse(b.model_bytes(), str(b.model_path)), b
    return onnxfile.load(path), None


def finish(model: onnx.ModelProto, parent: bundle.Bundle | None, step: Step, output: Path, golden_npz: Path | None,
           force: bool, overwrite: bool, tolerance: Tolerance) -> None:
    """Gate ``model`` against the source's outputs and write it: a bundle for a bundle, else an .onnx file."""
    if parent is not None:
        roles = {o.name: o.role for o in parent.manifest.model.outputs if o.role}
        report = variants.gate(model, parent.golden(), roles, tolerance)
        render.parity_report(report, "accuracy gate vs the source framework")
        if not report.passed and not force:
            raise CheckFailed(f"the variant fails the accuracy gate; nothing written to {output} (--force keeps it)")
        b = variants.derive(parent, model, step, report, output, forced=not report.passed, overwrite=overwrite)
        render.out.print(f"wrote bundle {b.path} ({render.size(b.manifest.model.size)} model)")
        return
    if output.exists() and not overwrite:
        raise InputError(f"{output}: already exists; choose another output or pass --overwrite")
    if golden_npz is not None:
        g: GoldenSet = golden.load(golden_npz)
        if g.references is None:
            raise InputError(f"{golden_npz}: holds inputs only; the gate needs reference outputs (a bundle's golden.npz)")
        report = variants.gate(model, g, {}, tolerance)
        render.parity_report(report, "accuracy gate vs the reference outputs")
        if not report.passed and not force:
            raise CheckFailed(f"the variant fails the accuracy gate; nothing written to {output} (--force keeps it)")
    else:
        render.out.print("note: not gated (give a bundle, or --golden with reference outputs, to compare with the source)")
    size = onnxfile.save(model, output)
    render.out.print(f"wrote {output} ({render.size(size)})")
