"""The stable JSON report (``format: onnxguard-scan/1``; keys documented in docs/scan.md)."""

from __future__ import annotations

import json

from onnxguard.scan.interface import ScanReport


def render(report: ScanReport) -> str:
    """The report as indented JSON."""
    # ensure_ascii: names from a hostile model reach the terminal or a log only as \u escapes.
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=True) + "\n"
