"""A human-readable report: a summary line and a table of findings (rich), returned as a string."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table
from rich.text import Text

from onnxguard.scan.interface import ScanReport, Severity, printable

STYLES = {Severity.CRITICAL: "bold red", Severity.HIGH: "red", Severity.MEDIUM: "yellow", Severity.LOW: "cyan",
          Severity.INFO: "dim"}
WIDTH = 140


def render(report: ScanReport, color: bool = False) -> str:
    """The report as text for a terminal (in colour when ``color``), untrusted names made printable."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=WIDTH, force_terminal=color, no_color=not color, highlight=False,
                      emoji=False, markup=False)
    counts = ", ".join(f"{n} {label}" for label, n in report.counts().items() if n) or "no findings"
    console.print(Text(f"scan {printable(report.path)} ({report.kind}, profile {report.profile}): {counts}"))
    if report.findings:
        table = Table(show_lines=False, expand=False)
        for col in ("severity", "check", "where", "finding"):
            table.add_column(col, overflow="fold")
        for f in report.findings:
            table.add_row(Text(f.severity.label, style=STYLES[f.severity]), Text(f.check),
                          Text(printable(str(f.location))), Text(f.message))
        console.print(table)
    return buffer.getvalue()
