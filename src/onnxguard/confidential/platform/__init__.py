"""Platforms that attest: the interface and its implementations (see interface.py)."""

from __future__ import annotations

from onnxguard.confidential.platform.interface import (
    HARDWARE,
    KNOWN,
    SIMULATION,
    Claims,
    Evidence,
    Platform,
    PlatformError,
    PlatformPolicy,
)
from onnxguard.confidential.platform.simulation import SimulationPlatform

__all__ = ["HARDWARE", "KNOWN", "SIMULATION", "Claims", "Evidence", "Platform", "PlatformError", "PlatformPolicy",
           "SimulationPlatform", "verifier"]


def verifier(name: str) -> Platform:
    """The platform that verifies evidence named ``name``; ``PlatformError`` for one this build cannot check."""
    if name == SIMULATION:
        return SimulationPlatform()
    if name in HARDWARE:
        raise PlatformError(f"no {name} quote verifier ships in this build (docs/confidential.md: what it would check)")
    raise PlatformError(f"unknown platform {name!r}; known: {', '.join(KNOWN)}")
