"""Helpers shared by the scanner tests (a plain module: test files import it, not conftest)."""

from __future__ import annotations

from pathlib import Path

SARIF_SCHEMA = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"
# Fixtures (conftest.py) holding the ordinary models: none may produce a finding at or above medium.
ORDINARY = ["torch_cnn", "torch_cond", "hf_onnx", "hf_optimized", "hf_quantized", "sklearn_logreg", "sklearn_forest",
            "built_bundle"]
