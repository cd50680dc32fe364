"""``scan.scan(path, policy) -> ScanReport``: a static security scan of an ONNX model.

The scan never runs the model and never loads external data. It reads the file only when it is within the
policy's size limit, parses the protobuf, and runs every check of :data:`checks.ALL_CHECKS`. A file that is
not an ONNX model is a finding, not an error; only a path that cannot be read raises (``InputError``, exit 2).
Fails closed: a check that crashes is a CRITICAL ``scan.error`` finding, a check that runs out of its work
budget (nodes visited, elements folded, nesting depth, wall time: :mod:`onnxguard.scan.budget`) a CRITICAL
``scan.budget`` one, and a model that could not be scanned a CRITICAL ``scan.not-scanned`` one, so none of
them passes at any ``fail_on`` level.

Bundles are scanned through the bundle door (``onnxguard.trust.scan_bundle``): it reads and checks the files
once and hands the scanner the plaintext model (``scan_bytes``) and what it found (``bundle_report``).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import time
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from onnxguard.bundle.files import kind_of
from onnxguard.errors import InputError, ModelError
from onnxguard.progress import Event, Progress, silent
from onnxguard.scan import budget, walk, wire
from onnxguard.scan.checks import ALL_CHECKS, CHECK_ERROR, NOT_SCANNED, OVER_BUDGET
from onnxguard.scan.checks.file import HEAD_BYTES
from onnxguard.scan.interface import BundleView, Check, Finding, Location, ScanContext, ScanReport, Severity
from onnxguard.scan.policy import Policy, for_profile
from onnxguard.scan.policy import load as load_policy

__all__ = ["ALL_CHECKS", "BundleView", "Check", "Finding", "Location", "Policy", "ScanReport", "Severity",
           "bundle_report", "for_profile", "load_policy", "refuse_unsafe", "scan", "scan_bytes"]

# One check reports at most this many findings; the rest are counted in one more finding. A hostile model
# with a million bad nodes must not turn the report itself into a denial of service.
MAX_FINDINGS_PER_CHECK = 50


def scan(path: str | os.PathLike[str], policy: Policy | None = None, progress: Progress = silent,
         checks: tuple[Check, ...] = ALL_CHECKS) -> ScanReport:
    """Scan an ``.onnx`` file against ``policy`` (default: the ``default`` profile).

    A bundle directory is scanned through its door, ``onnxguard.trust.scan_bundle``, which checks its files
    and signature once and hands the plaintext model here (the scanner never opens a bundle itself).
    """
    policy = policy or for_profile("default")
    p = Path(path)
    if not os.path.lexists(p):
        raise InputError(f"{p}: no such file or directory")
    if p.is_dir() and not p.is_symlink():
        raise InputError(f"{p}: a directory; scan an .onnx file here", hint="scan a bundle directory with "
                         "onnxguard.trust.scan_bundle (the command line does so for a directory)")
    findings = _scan_file(p, str(p), policy, checks, progress)
    return _report(str(p), "model", policy, findings, checks, progress)


def scan_bytes(data: bytes, display: str, policy: Policy | None = None, model_dir: Path | None = None,
               progress: Progress = silent, checks: tuple[Check, ...] = ALL_CHECKS) -> ScanReport:
    """Scan a model held in memory (a bundle's plaintext, decrypted or read once by the bundle door).

    ``model_dir`` is the folder external-data locations are judged against (nothing there is opened)."""
    policy = policy or for_profile("default")
    ctx = _context(data, display, policy, model_dir, len(data))
    return _report(display, "model", policy, _checks(ctx, checks, progress), checks, progress)


def refuse_unsafe(data: bytes, display: str, model_dir: Path, fail_on: Severity = Severity.HIGH) -> ScanReport:
    """Scan a model that is about to be run outside a bundle (a build's ``model.onnx`` source, a side of ``diff``)
    under the default profile; raise ``ModelError`` naming the first finding at or above ``fail_on``."""
    report = scan_bytes(data, display, for_profile("default"), model_dir=model_dir)
    grave = report.at_or_above(fail_on)
    if grave:
        first = grave[0]
        raise ModelError(f"{display}: refused before running it: {len(grave)} scan finding(s) at or above "
                         f"{fail_on.label}, first: {first.severity.label} {first.check}: {first.message}",
                         hint="see onnxguard scan for every finding")
    return report


def bundle_report(view: BundleView, model: ScanReport | None, not_scanned: str | None, policy: Policy | None = None,
                  progress: Progress = silent, checks: tuple[Check, ...] = ALL_CHECKS) -> ScanReport:
    """The scan report of a bundle: the bundle checks over what the door found (``view``), the model's own
    findings (``model``), and, when the model could not be scanned, a finding that says so: CRITICAL, so it
    fails at every level, unless the caller's policy waived it (``not_scanned`` then starts with "waived")."""
    policy = policy or for_profile("default")
    ctx = ScanContext(policy, None, str(view.root), model_dir=view.root.absolute(), bundle=view)
    findings = _run(ctx, [c for c in checks if c.scope == "bundle"], progress)
    findings += list(model.findings) if model is not None else []
    if model is None and not_scanned is not None:
        waived = not_scanned.startswith("waived")
        findings.append(NOT_SCANNED.finding(ctx, not_scanned, severity=Severity.INFO if waived else None))
    return _report(str(view.root), "bundle", policy, findings, checks, progress)


def _report(path: str, kind, policy: Policy, findings: list[Finding], checks: tuple[Check, ...],
            progress: Progress) -> ScanReport:
    progress(Event("scan", f"{len(findings)} finding(s)", done=True))
    findings.sort(key=lambda f: (-f.severity, f.check, f.location.file, f.location.node or "",
                                 f.location.tensor or "", f.message))
    return ScanReport(path, kind, policy.profile, tuple(findings), checks)


def _checks(ctx: ScanContext, checks: tuple[Check, ...], progress: Progress) -> list[Finding]:
    deadline = time.monotonic() + budget.SCAN_SECONDS
    with budget.scan_memo():
        found = _run(ctx, [c for c in checks if c.scope == "file"], progress, deadline)
        if ctx.load_state == "over-budget":
            found.append(OVER_BUDGET.finding(ctx, f"the file was not parsed: {ctx.load_detail}; it is built to exhaust "
                                                  "whoever loads it, and is not passed"))
        if ctx.model is not None:
            too_large = _too_large(ctx, deadline)
            if too_large is not None:
                return [*found, too_large]
            markers = (CHECK_ERROR, NOT_SCANNED, OVER_BUDGET)
            found += _run(ctx, [c for c in checks if c.scope == "model" and c not in markers], progress, deadline)
    return found


def _too_large(ctx: ScanContext, deadline: float) -> Finding | None:
    """A finding when the model holds more nodes than any check may walk (``budget.MAX_MODEL_NODES``): it is
    then not scanned further, and fails."""
    counting = budget.Budget(deadline=deadline, max_nodes=budget.MAX_MODEL_NODES)
    try:
        with budget.charged_to(counting):
            for _ in walk.bodies(ctx.parsed):
                pass
    except budget.BudgetExceeded as e:
        return OVER_BUDGET.finding(ctx, f"the model is too large to scan ({e}; subgraphs and local functions "
                                        "count): it is not passed")
    return None


def _scan_file(path: Path, display: str, policy: Policy, checks: tuple[Check, ...],
               progress: Progress) -> list[Finding]:
    return _checks(_load(path, display, policy), checks, progress)


def _load(path: Path, display: str, policy: Policy) -> ScanContext:
    """Read and parse the file, within the size limit (only its head when it is larger). Never follows
    external data; never blocks on a FIFO; reads a regular file only."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        what = "is a symlink; give the file itself" if e.errno == errno.ELOOP else f"cannot read ({e.strerror})"
        raise InputError(f"{path}: {what}") from e
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path}: is {kind_of(st.st_mode)}, not a regular file",
                             hint="give an .onnx file or a bundle directory")
        limit = HEAD_BYTES if st.st_size > policy.max_file_bytes else policy.max_file_bytes + 1
        data = bytearray()
        while len(data) < limit and (chunk := f.read(min(1 << 20, limit - len(data)))):
            data += chunk
    return _context(bytes(data), display, policy, path.absolute().parent, st.st_size, path)


def _context(data: bytes, display: str, policy: Policy, model_dir: Path | None, size: int,
             path: Path | None = None) -> ScanContext:
    """Parse ``data`` (the file's head only, when it is over the size limit) into a scan context."""
    base = ScanContext(policy, path, display, model_dir=model_dir, file_size=size, head=data[:HEAD_BYTES])
    if size > policy.max_file_bytes or len(data) > policy.max_file_bytes:
        return dataclasses.replace(base, load_state="too-large")
    if not data:
        return dataclasses.replace(base, load_state="empty", load_detail="the file is empty")
    too_costly = _parse_cost(data)
    if too_costly is not None:
        return dataclasses.replace(base, load_state="over-budget", load_detail=too_costly)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as e:
        return dataclasses.replace(base, load_state="decode-error", load_detail=f"protobuf decode failed ({e})")
    if not model.HasField("graph") or model.ir_version == 0:
        return dataclasses.replace(base, load_state="not-a-model",
                                   load_detail="the protobuf has no graph or no IR version")
    # The checker and shape inference are handed these bytes, not a re-serialization of the model (one more copy
    # of every weight while they run: +268 MB on DistilBERT-base). bytes() makes no copy of a bytes object.
    return dataclasses.replace(base, load_state="ok", model=model, data=bytes(data))


def _parse_cost(data: bytes) -> str | None:
    """Why parsing ``data`` would take more memory than ``budget.MAX_PARSE_OVERHEAD`` (measured on the wire
    format; a file too small to get there is not measured), or ``None``."""
    if len(data) * wire.WORST_RATIO <= budget.MAX_PARSE_OVERHEAD:
        return None
    try:
        cost, fields = wire.overhead(data, budget.MAX_PARSE_OVERHEAD, budget.MAX_WIRE_FIELDS)
    except wire.Malformed:
        return None  # the parser reports it (file.decode)
    if cost > budget.MAX_PARSE_OVERHEAD:
        return (f"parsing it would take over {budget.MAX_PARSE_OVERHEAD:,} bytes of memory beyond its tensor data "
                f"(a file of {len(data):,} bytes made of tiny messages)")
    if fields > budget.MAX_WIRE_FIELDS:
        return f"it holds over {budget.MAX_WIRE_FIELDS:,} protobuf fields"
    return None


def _run(ctx: ScanContext, checks: list[Check], progress: Progress, deadline: float | None = None) -> list[Finding]:
    """Run each check under its own budget (``budget.CHECK_SECONDS``, and what is left of the scan's
    ``deadline``). A crash is a ``scan.error`` finding, a budget overrun a ``scan.budget`` one: both CRITICAL,
    kept with whatever the check found before."""
    deadline = time.monotonic() + budget.SCAN_SECONDS if deadline is None else deadline
    found: list[Finding] = []
    for i, check in enumerate(checks):
        progress(Event("scan", f"{ctx.display}: {check.id}", i, len(checks)))
        now = time.monotonic()
        if now >= deadline:
            found.append(OVER_BUDGET.finding(ctx, f"check {check.id} was not run: the scan's wall-time budget of "
                                                  f"{budget.SCAN_SECONDS:.0f} s is spent; the model is not passed"))
            continue
        results: list[Finding] = []
        try:
            with budget.charged_to(budget.Budget(deadline=min(now + budget.CHECK_SECONDS, deadline))):
                for finding in _capped(check, ctx):
                    results.append(finding)
        except budget.BudgetExceeded as e:
            results.append(OVER_BUDGET.finding(ctx, f"check {check.id} ran out of its budget ({e}): the model is "
                                                    "built to stall or exhaust the scanner; it is not passed"))
        except Exception as e:  # noqa: BLE001 -- fails closed: a crash is a CRITICAL finding, failing every level
            results.append(CHECK_ERROR.finding(ctx, f"check {check.id} could not finish: {type(e).__name__}: {e}; "
                                                    "the model is not passed"))
        found += results
    return found


def _capped(check: Check, ctx: ScanContext):
    extra = 0
    for n, finding in enumerate(check.run(ctx)):
        if n < MAX_FINDINGS_PER_CHECK:
            yield finding
        else:
            extra += 1
    if extra:
        yield Finding(check.id, check.severity, f"... and {extra} more finding(s) of {check.id} not listed",
                      Location(ctx.display))
