"""The kinds of departure ``diff`` reports: one rule each, with a stable id (reports, SARIF rule ids, docs), a
default severity and a title. A rule has the shape of a scan check (``id``, ``severity``, ``title``), so the scan's
renderers take diff findings as they are."""

from __future__ import annotations

from dataclasses import dataclass

from onnxguard.scan.interface import Finding, Location, Severity, printable


@dataclass(frozen=True)
class Rule:
    """One kind of departure of the candidate from the reference."""

    id: str
    severity: Severity
    title: str

    def finding(self, message: str, file: str, node: str | None = None, tensor: str | None = None,
                severity: Severity | None = None) -> Finding:
        return Finding(self.id, self.severity if severity is None else severity, printable(message),
                       Location(file, node, tensor))


OPS = Rule("diff.ops", Severity.LOW, "Operators added, removed or changed")
INITIALIZER = Rule("diff.initializer", Severity.MEDIUM, "Initializer (weights) changed")
BRANCH = Rule("diff.branch", Severity.HIGH, "New data-dependent branch on a graph input")
OUTPUTS = Rule("diff.outputs", Severity.MEDIUM, "Graph outputs rewired or changed")
INPUTS = Rule("diff.inputs", Severity.MEDIUM, "Graph inputs changed")
BEHAVIOUR = Rule("diff.behaviour", Severity.MEDIUM, "Outputs differ on the golden set")
FLIPS = Rule("diff.label-flips", Severity.HIGH, "Predicted labels differ on the golden set")
TRIGGER = Rule("diff.trigger", Severity.HIGH, "A trigger flips the candidate's predictions and not the reference's")
RULES = (BRANCH, TRIGGER, FLIPS, INITIALIZER, OUTPUTS, INPUTS, BEHAVIOUR, OPS)
