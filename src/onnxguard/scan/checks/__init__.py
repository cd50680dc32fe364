"""Every check, one module per threat family, in the order they run (file checks first)."""

from __future__ import annotations

from onnxguard.scan.interface import BaseCheck, Check, Severity
from onnxguard.scan.checks import bundle, control_flow, domains, external_data, file, functions, graph, metadata, operators, resources


class CheckError(BaseCheck):
    """Not a check of its own: the id under which a check that crashed is reported (the model is not passed)."""

    id = "scan.error"
    severity = Severity.HIGH
    title = "a check could not finish on this model; the model is not passed"

    def run(self, ctx):
        return ()


CHECK_ERROR = CheckError()

ALL_CHECKS: tuple[Check, ...] = (
    *file.CHECKS, *external_data.CHECKS, *domains.CHECKS, *operators.CHECKS, *functions.CHECKS,
    *control_flow.CHECKS, *resources.CHECKS, *graph.CHECKS, *metadata.CHECKS, *bundle.CHECKS, CHECK_ERROR,
)
