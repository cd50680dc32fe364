"""Every check, one module per threat family, in the order they run (file checks first)."""

from __future__ import annotations

from onnxguard.scan.checks import (
    bundle,
    control_flow,
    domains,
    ep_context,
    external_data,
    file,
    function_depth,
    functions,
    graph,
    loops,
    metadata,
    operators,
    resources,
    session_config,
    tree_ensembles,
)
from onnxguard.scan.interface import BaseCheck, Check, Severity


class CheckError(BaseCheck):
    """Not a check of its own: the id under which a check that crashed is reported. CRITICAL, so the model
    fails at every ``fail_on`` level: a crash inside any check, the external-data CVE check included, can
    never pass a model."""

    id = "scan.error"
    severity = Severity.CRITICAL
    title = "a check could not finish on this model; the model is not passed"

    def run(self, ctx):
        return ()


class NotScanned(BaseCheck):
    """Not a check of its own: the id under which a model that could not be scanned is reported (a sealed
    bundle opened without its identity). CRITICAL unless the caller's policy waives it (then INFO)."""

    id = "scan.not-scanned"
    severity = Severity.CRITICAL
    title = "the model could not be scanned; it is not passed"
    scope = "bundle"

    def run(self, ctx):
        return ()


class OverBudget(BaseCheck):
    """Not a check of its own: the id under which a check that ran out of its budget (nodes visited, elements
    folded, nesting depth, wall time; see :mod:`onnxguard.scan.budget`) is reported, and a model too large to
    scan at all. CRITICAL, like a crash: a model built to exhaust the scanner is never passed."""

    id = "scan.budget"
    severity = Severity.CRITICAL
    title = "a check ran out of its work budget on this model (built to stall or exhaust it); the model is not passed"

    def run(self, ctx):
        return ()


CHECK_ERROR = CheckError()
NOT_SCANNED = NotScanned()
OVER_BUDGET = OverBudget()

ALL_CHECKS: tuple[Check, ...] = (
    *file.CHECKS, *external_data.CHECKS, *ep_context.CHECKS, *domains.CHECKS, *operators.CHECKS, *functions.CHECKS,
    *function_depth.CHECKS, *control_flow.CHECKS, *loops.CHECKS, *resources.CHECKS, *tree_ensembles.CHECKS,
    *graph.CHECKS, *metadata.CHECKS, *session_config.CHECKS, *bundle.CHECKS, CHECK_ERROR, NOT_SCANNED, OVER_BUDGET,
)
