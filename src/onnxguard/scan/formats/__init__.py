"""Renderers for a :class:`ScanReport`. Each returns a string; the library never prints."""

from __future__ import annotations

from onnxguard.scan.formats import json_format as json
from onnxguard.scan.formats import sarif, text
from onnxguard.scan.interface import ScanReport

FORMATS = ("text", "json", "sarif")


def render(report: ScanReport, fmt: str = "text", color: bool = False) -> str:
    """The report as ``text``, ``json`` or ``sarif``; ``color`` applies to text only."""
    if fmt == "text":
        return text.render(report, color=color)
    if fmt == "json":
        return json.render(report)
    if fmt == "sarif":
        return sarif.render(report)
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
