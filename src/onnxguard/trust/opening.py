"""``trust.open_bundle(path, TrustPolicy, identity) -> OpenedBundle``: the one door to a bundle's contents.

Every verb and the server get at a bundle only through here. The door composes the layers below it (the
bundle's data, the signature check, sealing and the scanner; none of them imports it back) in numbered steps,
each with a status, and fails closed: a step that was not checked is a failure unless the policy names a
waiver (``UnsafeUnsigned``, ``UnsafeUnscanned``).

1. manifest   ``manifest.json`` read once (a regular file, size-limited), validated; its sha256 is the bundle
              digest that the server reports and attestation binds.
2. files      every file read once, hashed as read, checked against the manifest (no symlink, no FIFO, nothing
              unlisted); the bytes that were hashed are the bytes handed on.
3. signature  ``model.sig`` checked against the digests of step 1 and 2 under the policy's rule.
4. plaintext  sealed files decrypted in memory from the bytes of step 2; each plaintext's sha256 checked.
5. scan       the plaintext model scanned in memory under the policy's scan rule.

``examine`` runs every step and returns the report (``verify`` and ``scan`` show it whole); ``open_bundle``
returns the opened bundle or raises ``TrustFailed`` (exit 1) carrying that report.
"""

from __future__ import annotations

import enum
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from onnxguard import bundle as bundle_lib
from onnxguard import scan as scanner
from onnxguard.bundle import SIGNATURE, Bundle, files, golden
from onnxguard.bundle.files import FileCheck
from onnxguard.bundle.golden import GoldenSet
from onnxguard.bundle.manifest import Manifest
from onnxguard.errors import BundleError, CheckFailed, InputError, Remedy
from onnxguard.progress import Event, Progress, silent
from onnxguard.scan.interface import BundleView, ScanReport
from onnxguard.trust import sealing, signing
from onnxguard.trust.policy import PublicKeys, ScanRule, SignaturePolicy, TrustPolicy, UnsafeUnscanned, UnsafeUnsigned
from onnxguard.trust.sealing.identities import IdentitySource

PathLike = str | os.PathLike[str]


class Step(enum.Enum):
    """The door's checks, in the order they run."""

    MANIFEST = "manifest"
    FILES = "files"
    SIGNATURE = "signature"
    PLAINTEXT = "plaintext"
    SCAN = "scan"


class Status(enum.Enum):
    """The outcome of one of the door's checks."""

    PASSED = "passed"
    FAILED = "failed"
    NOT_CHECKED = "not checked"  # a failure: nothing vouches for what was not checked
    WAIVED = "waived"  # not checked, and the policy names the waiver (UnsafeUnsigned, UnsafeUnscanned)
    NOT_APPLICABLE = "n/a"  # nothing to check (a plaintext step for a bundle that is not sealed)

    @property
    def ok(self) -> bool:
        return self in (Status.PASSED, Status.WAIVED, Status.NOT_APPLICABLE)


@dataclass(frozen=True)
class StepResult:
    """One check of the door: its outcome and the detail behind it."""

    step: Step
    status: Status
    detail: str

    @property
    def number(self) -> int:
        return list(Step).index(self.step) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.number, "name": self.step.value, "status": self.status.value, "detail": self.detail}


@dataclass(frozen=True)
class TrustReport:
    """Every step of opening one bundle, in order; ``passed`` only when no step failed or went unchecked."""

    path: str
    steps: tuple[StepResult, ...]
    files: tuple[FileCheck, ...] = ()
    scan: ScanReport | None = None
    digest: str | None = None  # sha256 of manifest.json as read
    signer: str | None = None  # who signed, when the signature verified (method and key fingerprint)
    waivers: tuple[str, ...] = ()  # the unsafe waivers of the policy it was opened under

    @property
    def passed(self) -> bool:
        return all(s.status.ok for s in self.steps)

    def step(self, step: Step) -> StepResult:
        return next(s for s in self.steps if s.step is step)

    @property
    def failures(self) -> tuple[str, ...]:
        return tuple(f"{s.step.value}: {s.detail}" for s in self.steps if not s.status.ok)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "passed": self.passed, "digest": self.digest, "signer": self.signer,
                "waivers": list(self.waivers), "steps": [s.to_dict() for s in self.steps],
                "files": [f.to_dict() for f in self.files],
                "scan": self.scan.to_dict() if self.scan is not None else None}


def remedy(report: TrustReport) -> Remedy | None:
    """What the caller can supply to pass: for the first step that was not checked (and only when none failed),
    the key or the identity it lacked."""
    if any(s.status is Status.FAILED for s in report.steps):
        return None
    first = next((s.step for s in report.steps if s.status is Status.NOT_CHECKED), None)
    if first is None:
        return None
    return {Step.SIGNATURE: Remedy.PUBLIC_KEY, Step.PLAINTEXT: Remedy.IDENTITY, Step.SCAN: Remedy.IDENTITY}.get(first)


class TrustFailed(CheckFailed):
    """The bundle did not pass the door under the policy (exit 1); ``report`` says which steps and why."""

    def __init__(self, report: TrustReport) -> None:
        first = report.failures[0] if report.failures else "not trusted"
        more = f" (and {len(report.failures) - 1} more)" if len(report.failures) > 1 else ""
        super().__init__(f"{report.path}: {first}{more}", remedy=remedy(report))
        self.report = report


@dataclass(frozen=True)
class OpenedBundle:
    """A bundle that passed the door: its manifest, its digest, and its files' plaintext exactly as hashed.

    Nothing here reads the disk: a byte changed on disk after the bundle was opened changes nothing that an
    ``OpenedBundle`` hands on. Files are keyed by their plaintext names (``model.onnx``, ``golden.npz``,
    ``tokenizer/tokenizer.json``); sealed files are present only when the bundle was opened with its identity.
    """

    path: Path
    manifest: Manifest
    digest: str
    report: TrustReport
    contents: Mapping[str, bytes] = field(repr=False)
    released: frozenset[str] = frozenset()  # files let go by :meth:`without_model`, no longer in ``contents``

    @property
    def sealed(self) -> bool:
        return self.manifest.sealed is not None

    @property
    def model_name(self) -> str:
        """The model's plaintext file name in the bundle (``model.onnx``)."""
        m = self.manifest
        return m.sealed.files[m.model.file].plaintext if m.sealed else m.model.file

    def file(self, rel: str) -> bytes:
        """The plaintext of the bundle file ``rel``, as hashed when the bundle was opened."""
        if rel in self.contents:
            return self.contents[rel]
        if rel in self.released:
            raise InputError(f"{self.path / rel}: let go once its session was made (without_model); not kept here",
                             hint="open the bundle again through the door for its bytes")
        sealed = self.manifest.sealed
        if sealed is not None and rel in {e.plaintext for e in sealed.files.values()} | set(sealed.files):
            raise InputError(f"{self.path / rel}: sealed, and the bundle was opened without its identity",
                             remedy=Remedy.IDENTITY)
        raise InputError(f"{self.path / rel}: not a file of the bundle")

    @property
    def model_bytes(self) -> bytes:
        return self.file(self.model_name)

    def without_model(self) -> OpenedBundle:
        """This opening less the model's bytes, for a holder that keeps only the session made from them (the
        server, ``runtime.load``): the largest file, otherwise alive as long as the holder (260 MB for FP32
        DistilBERT-base). Nothing is read or checked again: the manifest, digest, report and every other file are
        this opening's; ``model_bytes`` then raises ``InputError``."""
        name = self.model_name
        if name not in self.contents:
            return self
        rest = MappingProxyType({rel: data for rel, data in self.contents.items() if rel != name})
        return replace(self, contents=rest, released=self.released | {name})

    def golden(self) -> GoldenSet:
        m = self.manifest
        if m.golden is None:
            raise BundleError(f"{self.path}: the bundle has no golden set")
        name = m.sealed.files[m.golden.file].plaintext if m.sealed else m.golden.file
        return golden.from_bytes(self.file(name), str(self.path / name))

    @property
    def roles(self) -> dict[str, str]:
        """How each output is judged against the golden set (scores, labels, values)."""
        return {o.name: o.role for o in self.manifest.model.outputs if o.role}


def _signature(root: Path, digests: dict[str, str], policy: TrustPolicy) -> tuple[StepResult, str | None]:
    rule = policy.signature
    present = os.path.lexists(root / SIGNATURE)
    if isinstance(rule, UnsafeUnsigned):
        what = f"{SIGNATURE} is present but was not checked" if present else "the bundle is unsigned"
        return StepResult(Step.SIGNATURE, Status.WAIVED, f"{what} (UnsafeUnsigned)"), None
    if rule is None:
        what = f"{SIGNATURE} is present" if present else "the bundle is unsigned"
        return StepResult(Step.SIGNATURE, Status.NOT_CHECKED, f"{what}; no key was given to check it"), None
    if not present:
        return StepResult(Step.SIGNATURE, Status.FAILED, f"the bundle is not signed ({SIGNATURE} is missing)"), None
    try:
        signature = files.read_regular(root / SIGNATURE, files.MAX_METADATA_BYTES).data
    except InputError as e:
        return StepResult(Step.SIGNATURE, Status.FAILED, str(e)), None
    keys = rule.keys if isinstance(rule, PublicKeys) else (None,)
    report = None
    for key in keys:
        one = PublicKeys((key,)) if key is not None else rule
        report = signing.check(signature, digests, one, root)
        if report.passed:
            signer = f"key {signing.fingerprint(key)}" if key is not None else report.method
            return StepResult(Step.SIGNATURE, Status.PASSED, f"verified ({signer})"), signer
    assert report is not None
    return StepResult(Step.SIGNATURE, Status.FAILED, report.detail), None


def _plaintext(b: Bundle, ids: list[object] | None, policy: TrustPolicy) -> tuple[StepResult, dict[str, bytes]]:
    sealed = b.manifest.sealed
    if sealed is None:
        return StepResult(Step.PLAINTEXT, Status.NOT_APPLICABLE, "not sealed"), {}
    if ids is None:
        status = Status.WAIVED if isinstance(policy.scan, UnsafeUnscanned) else Status.NOT_CHECKED
        waived = " (UnsafeUnscanned)" if status is Status.WAIVED else ""
        return StepResult(Step.PLAINTEXT, status, "sealed, opened without its identity: the plaintext was not "
                                                  f"decrypted{waived}"), {}
    plain: dict[str, bytes] = {}
    for rel, entry in sealed.files.items():
        buf = io.BytesIO()
        try:
            sealing.decrypt.decrypt_to(b, rel, ids, buf)
        except BundleError as e:
            return StepResult(Step.PLAINTEXT, Status.FAILED, str(e)), {}
        plain[entry.plaintext] = buf.getvalue()
    return StepResult(Step.PLAINTEXT, Status.PASSED, f"{len(plain)} sealed file(s) decrypted in memory, sha256 "
                                                      "matches"), plain


def _scan(root: Path, name: str, model: bytes | None, policy: TrustPolicy) -> tuple[StepResult, ScanReport | None]:
    rule = policy.scan
    if model is None:
        status = Status.WAIVED if isinstance(rule, UnsafeUnscanned) else Status.NOT_CHECKED
        return StepResult(Step.SCAN, status, "the model was not scanned (sealed, opened without its identity)"
                          + (" (UnsafeUnscanned)" if status is Status.WAIVED else "")), None
    report = scanner.scan_bytes(model, str(root / name), rule.policy, model_dir=root.absolute())
    failing = report.at_or_above(rule.fail_on)
    if failing:
        worst = failing[0]
        return StepResult(Step.SCAN, Status.FAILED, f"{len(failing)} finding(s) at or above {rule.fail_on.label}, "
                          f"worst: {worst.severity.label} {worst.check}: {worst.message}"), report
    counts = ", ".join(f"{n} {sev}" for sev, n in report.counts().items() if n) or "no findings"
    return StepResult(Step.SCAN, Status.PASSED, f"{counts} (profile {report.profile})"), report


def examine(path: PathLike, policy: TrustPolicy, identity: IdentitySource = None, passphrase: str | None = None,
            progress: Progress = silent) -> tuple[TrustReport, OpenedBundle | None]:
    """Run every step and report them all; the opened bundle too when every step passed.

    Raises only when the call cannot run: no such directory or not a bundle, an identity that cannot be read
    or opens none of the sealed files, a key that is not an EC public key (``InputError``/``BundleError``).
    """
    root = Path(path)
    waivers = policy.unsafe
    progress(Event("open", f"{root}: manifest", 0, len(Step)))
    steps: list[StepResult] = []
    try:
        manifest, manifest_sha = bundle_lib.read_manifest(root)
        problems = bundle_lib.consistency(root, manifest)
    except BundleError as e:
        if not root.is_dir() or not os.path.lexists(root / bundle_lib.MANIFEST):
            raise
        steps.append(StepResult(Step.MANIFEST, Status.FAILED, str(e)))
        steps.append(StepResult(Step.FILES, Status.NOT_CHECKED, "the manifest could not be read"))
        # The signature covers manifest.json too: checked against every regular file, it names what changed.
        steps.append(_signature(root, files.digests(root), policy)[0])
        steps += [StepResult(s, Status.NOT_CHECKED, "the manifest could not be read")
                  for s in (Step.PLAINTEXT, Step.SCAN)]
        return TrustReport(str(root), tuple(steps), waivers=waivers), None
    ids = None
    if manifest.sealed is not None and (identity is not None or passphrase is not None):
        ids = sealing.identities_for(root, manifest, identity, passphrase)  # a bad identity: exit 2, before any work
    described = f"{manifest.name} {manifest.version}, sha256 {manifest_sha[:16]}..."
    steps.append(StepResult(Step.MANIFEST, Status.FAILED if problems else Status.PASSED,
                            "; ".join(problems) or described))

    progress(Event("open", f"{root}: files", 1, len(Step)))
    sealed_names = set(manifest.sealed.files) if manifest.sealed else set()
    # Sealed files are hashed here in constant memory; with an identity, step 4 streams them through decryption,
    # hashing the ciphertext again as it is read, so only the plaintext is ever held (once).
    contents = files.check(root, manifest, keep=lambda rel: rel not in sealed_names)
    steps.append(StepResult(Step.FILES, Status.PASSED if contents.ok else Status.FAILED,
                            f"{len(contents.checks)} file(s) match the manifest" if contents.ok
                            else "; ".join(f"{root / c.file}: {c.detail}" for c in contents.checks if not c.ok)))

    progress(Event("open", f"{root}: signature", 2, len(Step)))
    sig, signer = _signature(root, {**contents.digests, bundle_lib.MANIFEST: manifest_sha}, policy)
    steps.append(sig)

    intact = contents.ok and not problems
    plain: dict[str, bytes] = {}
    if not intact:
        steps.append(StepResult(Step.PLAINTEXT, Status.NOT_CHECKED, "skipped: the files do not match the manifest")
                     if manifest.sealed is not None
                     else StepResult(Step.PLAINTEXT, Status.NOT_APPLICABLE, "not sealed"))
        steps.append(StepResult(Step.SCAN, Status.NOT_CHECKED, "skipped: the files do not match the manifest"))
        scan_report = None
    else:
        progress(Event("open", f"{root}: plaintext", 3, len(Step)))
        b = Bundle(root, manifest, manifest_sha, contents.data)
        step, decrypted = _plaintext(b, ids, policy)
        steps.append(step)
        plain = {rel: data for rel, data in contents.data.items() if rel not in sealed_names} | decrypted
        progress(Event("open", f"{root}: scan", 4, len(Step)))
        model_name = manifest.sealed.files[manifest.model.file].plaintext if manifest.sealed else manifest.model.file
        step, scan_report = (_scan(root, model_name, plain.get(model_name), policy)
                             if step.status is not Status.FAILED else
                             (StepResult(Step.SCAN, Status.NOT_CHECKED, "skipped: the plaintext did not match"), None))
        steps.append(step)
    report = TrustReport(str(root), tuple(steps), contents.checks, scan_report, manifest_sha, signer, waivers)
    progress(Event("open", f"{root}: {'trusted' if report.passed else 'NOT trusted'}", len(Step), len(Step)))
    if not report.passed:
        return report, None
    return report, OpenedBundle(root, manifest, manifest_sha, report, MappingProxyType(plain))


def open_bundle(path: PathLike, policy: TrustPolicy, identity: IdentitySource = None, passphrase: str | None = None,
                progress: Progress = silent) -> OpenedBundle:
    """Open a bundle through every step under ``policy``; ``TrustFailed`` (exit 1) when any step fails."""
    report, opened = examine(path, policy, identity, passphrase, progress)
    if opened is None:
        raise TrustFailed(report)
    return opened


def scan_bundle(path: PathLike, rule: ScanRule | None = None, signature: SignaturePolicy | None = None,
                identity: IdentitySource = None, passphrase: str | None = None,
                progress: Progress = silent) -> ScanReport:
    """A bundle's security scan, through the door: the door's verdicts on the manifest, files and signature
    as bundle findings, then the plaintext model's own findings.

    ``signature`` defaults to ``UnsafeUnsigned``: the scan reports the signature as not checked (info) and
    does not require one; give a rule (``PublicKeys``) to have a missing or bad signature reported as high.
    A model that could not be scanned is a CRITICAL finding unless ``rule`` is ``UnsafeUnscanned``.
    """
    rule = rule if rule is not None else ScanRule()
    report, _ = examine(path, TrustPolicy(signature if signature is not None else UnsafeUnsigned(), rule),
                        identity, passphrase, progress)
    manifest_step, sig_step, scan_step = (report.step(s) for s in (Step.MANIFEST, Step.SIGNATURE, Step.SCAN))
    view = BundleView(Path(path), None,
                      manifest_step.detail if manifest_step.status is Status.FAILED else None, report.files,
                      (sig_step.status.value, sig_step.detail) if manifest_step.status is Status.PASSED else None)
    not_scanned = None
    if report.scan is None and manifest_step.status is Status.PASSED:
        not_scanned = ("waived: " if scan_step.status is Status.WAIVED else "") + scan_step.detail
    return scanner.bundle_report(view, report.scan, not_scanned, rule.policy, progress)
