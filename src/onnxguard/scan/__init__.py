"""``scan.scan(path, policy) -> ScanReport``: a static security scan of an ONNX model or a bundle.

The scan never runs the model and never loads external data. It reads the file only when it is within the
policy's size limit, parses the protobuf, and runs every check of :data:`checks.ALL_CHECKS`. A file that is
not an ONNX model is a finding, not an error; only a missing path or a directory that is not a bundle raises
(``InputError``, exit 2). A check that crashes is reported as a ``scan.error`` finding, so a bug in a check
can never let a model pass.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from onnxguard import bundle as bundle_lib
from onnxguard.errors import BundleError, InputError
from onnxguard.progress import Event, Progress, silent
from onnxguard.scan.checks import ALL_CHECKS, CHECK_ERROR
from onnxguard.scan.checks.external_data import resolve
from onnxguard.scan.checks.file import HEAD_BYTES
from onnxguard.scan.interface import BundleView, Check, Finding, Location, ScanContext, ScanReport, Severity
from onnxguard.scan.policy import Policy, for_profile
from onnxguard.scan.policy import load as load_policy

__all__ = ["ALL_CHECKS", "Check", "Finding", "Location", "Policy", "ScanReport", "Severity", "for_profile",
           "load_policy", "scan"]

# One check reports at most this many findings; the rest are counted in one more finding. A hostile model
# with a million bad nodes must not turn the report itself into a denial of service.
MAX_FINDINGS_PER_CHECK = 50


def scan(path: str | os.PathLike[str], policy: Policy | None = None, progress: Progress = silent,
         public_key: bytes | None = None, checks: tuple[Check, ...] = ALL_CHECKS, identity=None) -> ScanReport:
    """Scan an ``.onnx`` file or a bundle directory against ``policy`` (default: the ``default`` profile).

    ``public_key`` (PEM) is passed to the bundle signature check. A sealed bundle's model is decrypted in
    memory with ``identity`` (see ``sealing.identities``) and scanned from there; without one, only the
    bundle itself is scanned, and an info finding says so.
    """
    policy = policy or for_profile("default")
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or directory")
    findings: list[Finding] = []
    if p.is_dir():
        kind = "bundle"
        view = _bundle_view(p)
        ctx = ScanContext(policy, None, str(p), model_dir=p.absolute(), bundle=view, public_key=public_key)
        findings += _run(ctx, [c for c in checks if c.scope == "bundle"], progress)
        rel = view.manifest.model.file if view.manifest else bundle_lib.MODEL
        model_path = _bundle_model(p, rel)
        if view.manifest is not None and view.manifest.sealed is not None:
            findings += _scan_sealed(p, rel, identity, policy, checks, progress)
        elif model_path is not None:
            findings += _scan_file(model_path, str(p / rel), policy, checks, progress)
    else:
        kind = "model"
        findings += _scan_file(p, str(p), policy, checks, progress)
    progress(Event("scan", f"{len(findings)} finding(s)", done=True))
    findings.sort(key=lambda f: (-f.severity, f.check, f.location.file, f.location.node or "",
                                 f.location.tensor or "", f.message))
    return ScanReport(str(p), kind, policy.profile, tuple(findings), checks)


def _bundle_view(root: Path) -> BundleView:
    if not os.path.lexists(root / bundle_lib.MANIFEST):
        raise InputError(f"{root}: a directory without {bundle_lib.MANIFEST}; give an .onnx file or a bundle directory")
    mfile = root / bundle_lib.MANIFEST
    if mfile.is_symlink() or not mfile.is_file():
        return BundleView(root, None, f"{mfile}: not a regular file (a symlink is never followed); not read")
    try:
        return BundleView(root, bundle_lib.load_manifest(root), None)
    except BundleError as e:
        return BundleView(root, None, str(e))


def _bundle_model(root: Path, rel: str) -> Path | None:
    """The bundle's model file when it is a regular file inside the bundle (the bundle checks report otherwise)."""
    inside, _ = resolve(str(root.absolute()), rel)
    if inside is None:
        return None
    p = root / rel
    st = os.lstat(p) if os.path.lexists(p) else None
    return p if st is not None and stat.S_ISREG(st.st_mode) else None


def _scan_sealed(root: Path, rel: str, identity, policy: Policy, checks: tuple[Check, ...],
                 progress: Progress) -> list[Finding]:
    """A sealed model is scanned from its plaintext in memory, never from disk; without an identity, not at all."""
    if identity is None:
        return [Finding("scan.sealed", Severity.INFO, f"{rel} is sealed: the model itself was not scanned (give the "
                        "age identity to scan it in memory)", Location(str(root / rel)))]
    from onnxguard import bundle as bundle_mod
    from onnxguard.trust import sealing

    data = sealing.open_model(bundle_mod.read(root), identity)
    ctx = _context(data, str(root / rel), policy, root.absolute(), len(data))
    found = _run(ctx, [c for c in checks if c.scope == "file"], progress)
    if ctx.model is not None:
        found += _run(ctx, [c for c in checks if c.scope == "model" and c is not CHECK_ERROR], progress)
    return found


def _scan_file(path: Path, display: str, policy: Policy, checks: tuple[Check, ...], progress: Progress) -> list[Finding]:
    ctx = _load(path, display, policy)
    found = _run(ctx, [c for c in checks if c.scope == "file"], progress)
    if ctx.model is not None:
        found += _run(ctx, [c for c in checks if c.scope == "model" and c is not CHECK_ERROR], progress)
    return found


def _load(path: Path, display: str, policy: Policy) -> ScanContext:
    """Read and parse the file, within the size limit. Never follows external data."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from e
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file; give an .onnx file or a bundle directory")
    try:
        with open(path, "rb") as f:
            data = f.read(HEAD_BYTES if st.st_size > policy.max_file_bytes else policy.max_file_bytes + 1)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from e
    return _context(data, display, policy, path.absolute().parent, st.st_size, path)


def _context(data: bytes, display: str, policy: Policy, model_dir: Path, size: int, path: Path | None = None) -> ScanContext:
    """Parse ``data`` (the file's head only, when it is over the size limit) into a scan context."""
    base = dict(policy=policy, path=path, display=display, model_dir=model_dir, file_size=size)
    head = data[:HEAD_BYTES]
    if size > policy.max_file_bytes or len(data) > policy.max_file_bytes:
        return ScanContext(**base, head=head, load_state="too-large")
    if not data:
        return ScanContext(**base, head=head, load_state="empty", load_detail="the file is empty")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as e:
        return ScanContext(**base, head=head, load_state="decode-error", load_detail=f"protobuf decode failed ({e})")
    if not model.HasField("graph") or model.ir_version == 0:
        return ScanContext(**base, head=head, load_state="not-a-model",
                           load_detail="the protobuf has no graph or no IR version")
    return ScanContext(**base, head=head, load_state="ok", model=model)


def _run(ctx: ScanContext, checks: list[Check], progress: Progress) -> list[Finding]:
    found: list[Finding] = []
    for i, check in enumerate(checks):
        progress(Event("scan", f"{ctx.display}: {check.id}", i, len(checks)))
        try:
            results = list(_capped(check, ctx))
        except Exception as e:  # noqa: BLE001 -- fails closed: the crash becomes a high finding, never a pass
            results = [CHECK_ERROR.finding(ctx, f"check {check.id} could not finish: {type(e).__name__}: {e}")]
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
