"""What every target kind returns, and its manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from onnxguard.accuracy.parity import ParityReport

if TYPE_CHECKING:
    from onnxguard.trust.opening import OpenedBundle

TARGET_FORMAT = "onnxguard-target/1"


@dataclass(frozen=True)
class TargetResult:
    """What ``target.make`` produced: the directory, its files, the operators it needs, the golden-set check."""

    path: Path
    kind: str
    files: dict[str, int]  # file -> size in bytes
    operators: dict[str, list[str]]  # domain -> ops the reduced runtime must include
    parity: ParityReport | None  # the golden set on this machine's runtime; None where it runs elsewhere (web)
    notes: tuple[str, ...] = field(default=())


def provenance(parent: OpenedBundle) -> dict:
    """The ``parent`` entry of a target manifest: the bundle it came from, by its digest (the sha256 of its
    manifest, which its signature covers) and the sha256 of its model."""
    m = parent.manifest
    return {"name": m.name, "version": m.version, "manifest_sha256": parent.digest, "model_sha256": m.model.sha256}
