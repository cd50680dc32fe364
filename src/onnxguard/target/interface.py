"""What every target kind returns, and its manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from onnxguard import bundle
from onnxguard.bundle import digest
from onnxguard.bundle import Bundle
from onnxguard.accuracy.parity import ParityReport

TARGET_FORMAT = "onnxguard-target/1"


@dataclass(frozen=True)
class TargetResult:
    path: Path
    kind: str
    files: dict[str, int]  # file -> size in bytes
    operators: dict[str, list[str]]  # domain -> ops the reduced runtime must include
    parity: ParityReport | None  # the golden set on this machine's runtime; None where it runs elsewhere (web)
    notes: tuple[str, ...] = field(default=())


def provenance(parent: Bundle) -> dict:
    """The ``parent`` entry of a target manifest: the bundle it came from, by the sha256 of its manifest
    (which its signature covers) and of its model."""
    m = parent.manifest
    return {"name": m.name, "version": m.version, "manifest_sha256": digest.file(parent.path / bundle.MANIFEST),
            "model_sha256": m.model.sha256}
