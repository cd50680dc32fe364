"""SARIF 2.1.0, so code-scanning UIs (GitHub, Azure DevOps, VS Code's SARIF viewer) show the findings.

Every check is a rule; a finding is a result with a SARIF level (critical/high: error, medium: warning,
low/info: note), the file as its physical location and the node / tensor as logical locations. Rules carry
``security-severity`` (the numeric score GitHub uses to rank security alerts).
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

from onnxguard import __version__
from onnxguard.scan.interface import Finding, ScanReport, Severity

SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
LEVELS = {Severity.CRITICAL: "error", Severity.HIGH: "error", Severity.MEDIUM: "warning", Severity.LOW: "note",
          Severity.INFO: "note"}
SECURITY_SEVERITY = {Severity.CRITICAL: "9.5", Severity.HIGH: "8.0", Severity.MEDIUM: "5.5", Severity.LOW: "3.0",
                     Severity.INFO: "0.0"}


def uri(path: str) -> str:
    """A SARIF artifact location: a file URI for an absolute path, else the percent-encoded relative path."""
    p = Path(path)
    return p.as_uri() if p.is_absolute() else urllib.parse.quote(p.as_posix())


def _rule(check) -> dict:
    return {
        "id": check.id,
        "shortDescription": {"text": check.title},
        "defaultConfiguration": {"level": LEVELS[check.severity]},
        "properties": {"tags": ["security", "onnx"], "security-severity": SECURITY_SEVERITY[check.severity],
                       "severity": check.severity.label},
    }


def _result(f: Finding, index: dict[str, int]) -> dict:
    logical = []
    if f.location.node is not None:
        logical.append({"name": f.location.node, "kind": "element"})
    if f.location.tensor is not None:
        logical.append({"name": f.location.tensor, "kind": "variable"})
    location: dict = {"physicalLocation": {"artifactLocation": {"uri": uri(f.location.file)}}}
    if logical:
        location["logicalLocations"] = logical
    result: dict[str, Any] = {"ruleId": f.check, "level": LEVELS[f.severity], "message": {"text": f.message},
              "locations": [location], "properties": {"severity": f.severity.label}}
    if f.check in index:
        result["ruleIndex"] = index[f.check]
    return result


def to_dict(report: ScanReport) -> dict:
    """The report as a SARIF 2.1.0 log: one run, one rule per check, one result per finding."""
    rules = [_rule(c) for c in report.checks]
    index = {r["id"]: i for i, r in enumerate(rules)}
    return {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "onnxguard", "version": __version__, "rules": rules}},
            "results": [_result(f, index) for f in report.findings],
            "properties": {"target": report.path, "kind": report.kind, "profile": report.profile},
        }],
    }


def render(report: ScanReport) -> str:
    """The report's SARIF log as indented JSON, ASCII only."""
    return json.dumps(to_dict(report), indent=2, ensure_ascii=True) + "\n"
