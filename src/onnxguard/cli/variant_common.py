"""What ``optimize`` and ``quantize`` share: their input (an .onnx file, scanned first, or a bundle opened
through the trust door), their options, and how the kept variant is shown."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import onnx
import typer

from onnxguard.accuracy.parity import Tolerance
from onnxguard.bundle.manifest import Step
from onnxguard.cli import render, trusting
from onnxguard.errors import InputError
from onnxguard.model import onnxfile
from onnxguard.scan.interface import Severity
from onnxguard.speed import select as variants
from onnxguard.trust import OpenedBundle

SEVERITIES = tuple(s.label for s in Severity)

Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUTPUT.")]
Force = Annotated[bool, typer.Option("--force", help="Keep a variant that fails the accuracy gate (recorded).")]
GoldenRefs = Annotated[Path | None, typer.Option(
    "--golden", help="For an .onnx input: a golden .npz with reference outputs to gate against.")]
FailOn = Annotated[str, typer.Option(
    "--fail-on", help="Refuse the input (an .onnx file, or a bundle's model as the trust door scans it) at a "
    "security-scan finding at or above: " + " | ".join(SEVERITIES) + ".")]


def is_bundle(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def severity(fail_on: str) -> Severity:
    if fail_on not in SEVERITIES:
        raise InputError(f"--fail-on {fail_on!r}: use one of {', '.join(SEVERITIES)}")
    return Severity.parse(fail_on)


def open_input(path: Path, output: Path, overwrite: bool, *, fail_on: str, public_key: list[Path] | None,
               allow_unsigned: bool, identity: Path | None,
               passphrase_env: str | None) -> tuple[onnx.ModelProto, OpenedBundle | None]:
    """The model to make a variant of, and its bundle when it came from one (opened through the trust door,
    which checks and scans it); either is refused at a scan finding of ``fail_on`` or above (an .onnx file is
    scanned here). The output is checked before any of the work (``speed.select.check_output``)."""
    level = severity(fail_on)
    if is_bundle(path):
        opened = trusting.open_from_cli(path, public_key=public_key, allow_unsigned=allow_unsigned, identity=identity,
                                        passphrase_env=passphrase_env, fail_on=level)
        variants.check_output(output, parent=opened, overwrite=overwrite, inputs=[path])
        return onnxfile.parse(opened.model_bytes, str(opened.path / opened.model_name)), opened
    variants.check_output(output, overwrite=overwrite, inputs=[path])
    return variants.scanned_model(path, fail_on=level), None


def finish(model: onnx.ModelProto, parent: OpenedBundle | None, step: Step, output: Path, golden_npz: Path | None,
           force: bool, overwrite: bool, tolerance: Tolerance, source: Path) -> None:
    """Gate ``model`` against the source's outputs and write it (a bundle for a bundle, else an .onnx file)."""
    title = "accuracy gate vs the source framework" if parent else "accuracy gate vs the reference outputs"
    try:
        kept = variants.keep(model, output, step, parent=parent, golden_npz=golden_npz, tolerance=tolerance,
                             force=force, overwrite=overwrite, inputs=[source])
    except variants.GateFailed as e:
        render.parity_report(e.report, title)
        raise
    if kept.gate is not None:
        render.parity_report(kept.gate, title)
    else:
        render.out.print("note: not gated (give a bundle, or --golden with reference outputs, to compare with the "
                         "source)")
    if kept.bundle is not None:
        render.out.print(f"wrote bundle {kept.path} ({render.size(kept.size)} model)")
    else:
        render.out.print(f"wrote {kept.path} ({render.size(kept.size)})")
