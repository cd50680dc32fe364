"""What every target kind returns, and its manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..parity import ParityReport

TARGET_FORMAT = "onnxguard-target/1"


@dataclass(frozen=True)
class TargetResult:
    path: Path
    kind: str
    files: dict[str, int]  # file -> size in bytes
    operators: dict[str, list[str]]  # domain -> ops the reduced runtime must include
    parity: ParityReport | None  # the golden set on this machine's runtime; None where it runs elsewhere (web)
    notes: tuple[str, ...] = field(default=())
