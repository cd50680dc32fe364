"""Helpers shared by the scanner tests (a plain module: test files import it, not conftest)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SARIF_SCHEMA = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"
# The real entry point: the console script installed next to this interpreter.
ONNXGUARD = Path(sys.executable).parent / "onnxguard"
# Fixtures (conftest.py) holding the ordinary models: none may produce a finding at or above medium.
ORDINARY = ["torch_cnn", "torch_cond", "hf_onnx", "hf_optimized", "hf_quantized", "sklearn_logreg", "sklearn_forest",
            "built_bundle"]


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def run_scan(*args: str | os.PathLike[str]) -> Run:
    """``onnxguard scan ARGS...`` as a real process, through the console script."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "PYTHONWARNINGS": ""}
    proc = subprocess.run([str(ONNXGUARD), "scan", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    return Run(proc.returncode, proc.stdout, proc.stderr)
