"""The diff report (:class:`DiffReport`) and its renderings: text, the stable JSON (``onnxguard-diff/1``) and SARIF.

The findings are scan findings (:class:`onnxguard.scan.interface.Finding`) under the rules of
:mod:`onnxguard.diff.rules`, so SARIF is the scan's own renderer over :meth:`DiffReport.as_scan`, with the
reference added to the run's properties.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Literal, cast

from rich.console import Console
from rich.table import Table
from rich.text import Text

from onnxguard.diff.behaviour import BehaviourDiff
from onnxguard.diff.rules import RULES
from onnxguard.diff.structural import StructuralDiff
from onnxguard.diff.triggers import TriggerSearch
from onnxguard.scan.formats import FORMATS, sarif
from onnxguard.scan.formats.text import STYLES, WIDTH
from onnxguard.scan.interface import Check, Finding, ScanReport, Severity, printable

REPORT_FORMAT = "onnxguard-diff/1"
PROFILE = "diff"

__all__ = ["FORMATS", "REPORT_FORMAT", "DiffReport", "render"]


@dataclass(frozen=True)
class DiffReport:
    """The candidate against the reference: structure, behaviour on the golden inputs, the trigger search, and
    the findings they made, most severe first."""

    reference: str
    candidate: str
    kinds: tuple[str, str]  # model | bundle, for the reference and the candidate
    thresholds: Mapping[str, float | int]
    structure: StructuralDiff
    behaviour: BehaviourDiff | None
    triggers: TriggerSearch | None
    findings: tuple[Finding, ...]
    notes: tuple[str, ...] = ()

    def counts(self) -> dict[str, int]:
        c = Counter(f.severity for f in self.findings)
        return {s.label: c.get(s, 0) for s in sorted(Severity, reverse=True)}

    def at_or_above(self, level: Severity) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity >= level)

    def as_scan(self) -> ScanReport:
        """The findings as a scan report of the candidate (profile ``diff``), for the scan's renderers."""
        kind = cast(Literal["model", "bundle"], self.kinds[1])
        # A rule is not a check (nothing to run); the scan's renderers read only its id, title and severity.
        return ScanReport(self.candidate, kind, PROFILE, self.findings, cast(tuple[Check, ...], RULES))

    def to_dict(self) -> dict:
        """The stable JSON form (documented in docs/scan.md)."""
        return {
            "format": REPORT_FORMAT,
            "reference": {"path": self.reference, "kind": self.kinds[0]},
            "candidate": {"path": self.candidate, "kind": self.kinds[1]},
            "thresholds": dict(self.thresholds),
            "summary": self.counts(),
            "findings": [f.to_dict() for f in self.findings],
            "structure": self.structure.to_dict(),
            "behaviour": self.behaviour.to_dict() if self.behaviour is not None else None,
            "triggers": self.triggers.to_dict() if self.triggers is not None else None,
            "notes": list(self.notes),
        }


def _where(f: Finding) -> str:
    parts = [f"node {f.location.node!r}" if f.location.node else "", f"tensor {f.location.tensor!r}"
             if f.location.tensor else ""]
    return printable(", ".join(p for p in parts if p)) or "graph"


def _figure(x: float | int | None) -> str:
    return "-" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def text(report: DiffReport, color: bool = False) -> str:
    """The report for a terminal: a summary line, the findings, the outputs compared, the trigger search."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=WIDTH, force_terminal=color, no_color=not color, highlight=False,
                      emoji=False, markup=False)
    counts = ", ".join(f"{n} {label}" for label, n in report.counts().items() if n) or "no findings"
    line = partial(console.print, soft_wrap=True)  # one line each, however long the paths
    line(Text(f"diff {printable(report.reference)} ({report.kinds[0]}) -> {printable(report.candidate)} "
              f"({report.kinds[1]}): {counts}"))
    if report.findings:
        table = Table(expand=False)
        for col in ("severity", "check", "where", "finding"):
            table.add_column(col, overflow="fold")
        for f in report.findings:
            table.add_row(Text(f.severity.label, style=STYLES[f.severity]), Text(f.check), Text(_where(f)),
                          Text(f.message))
        console.print(table)
    s = report.structure
    line(Text(f"structure: {'same graph' if s.same else 'differs'}; {s.weights_compared} initializer(s) "
                       f"compared, {len(s.weights)} differ"))
    b = report.behaviour
    if b is not None:
        line(Text(f"behaviour: {b.items} golden example(s) in {b.batches} batch(es), {b.origin}"
                           + (f"; the candidate failed: {b.error}" if b.error else "")))
        if b.outputs:
            table = Table(expand=False)
            for col in ("output", "role", "max |diff|", "mean |diff|", "label flips"):
                table.add_column(col, justify="left" if col in ("output", "role") else "right")
            for o in b.outputs:
                table.add_row(Text(printable(o.name)), o.role, _figure(o.max_abs), _figure(o.mean_abs),
                              _figure(o.flips))
            console.print(table)
    t = report.triggers
    if t is not None:
        line(Text(f"trigger search ({t.kind}, output {printable(t.output)}): {t.triggers} trigger(s) x "
                           f"{t.inputs} input(s), {t.rows} rows in {t.seconds:.1f} s: {len(t.hits)} found"
                           + (f", {t.scattered} scattered flip(s)" if t.scattered else "")))
    for note in report.notes:
        line(Text(f"note: {note}"))
    return buffer.getvalue()


def render(report: DiffReport, fmt: str = "text", color: bool = False) -> str:
    """The report as ``text``, ``json`` or ``sarif`` (the scan's formats); ``color`` applies to text only."""
    if fmt == "text":
        return text(report, color)
    if fmt == "json":
        # ensure_ascii: names from a hostile model reach the terminal or a log only as \u escapes.
        return json.dumps(report.to_dict(), indent=2, ensure_ascii=True) + "\n"
    if fmt == "sarif":
        log = sarif.to_dict(report.as_scan())
        log["runs"][0]["properties"]["reference"] = report.reference
        return json.dumps(log, indent=2, ensure_ascii=True) + "\n"
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
