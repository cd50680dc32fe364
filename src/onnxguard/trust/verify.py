"""``verify.verify(bundle) -> VerifyReport``: is this bundle the one that was built, and does it still compute
the same answers here?

Checks, in order, all reported (a failed check does not hide the others):

- signature: with a public key (or a certificate chain, or a Sigstore identity), ``model.sig`` must verify with
  the OpenSSF ``model-signing`` library; without one, a present signature is reported as "signed, not checked"
  and is not a failure.
- files: every file in the manifest has its size and sha256; no file is missing, unexpected or a symlink.
- sealed plaintext: with an identity, every sealed file is decrypted (streaming, to nowhere) and its plaintext
  sha256 compared with the manifest's.
- golden (``golden=True``): the golden inputs run through this machine's ONNX Runtime (decrypted in memory
  for a sealed bundle) and the outputs are compared with the SOURCE framework's reference outputs stored in the
  bundle, with the tolerance the bundle was built with (``parity.tolerance``) and each output's role: the
  cross-runtime consistency check.

A bundle that cannot be verified at all (no such directory, no manifest.json, a bad key or identity) raises
(exit 2). Any failed check leaves ``passed`` False; the CLI prints the report, then exits 1.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from onnxguard import bundle as bundle_lib
from onnxguard.bundle import digest
from onnxguard.accuracy import parity
from onnxguard.trust import sealing, signing
from onnxguard.bundle import MANIFEST, UNLISTED
from onnxguard.errors import BundleError, InputError, ModelError
from onnxguard.bundle.manifest import Manifest
from onnxguard.accuracy.parity import ParityReport, Tolerance
from onnxguard.progress import Event, Progress, silent

PathLike = str | os.PathLike[str]

# Signature states.
VERIFIED = "verified"
FAILED = "failed"
NOT_CHECKED = "signed, not checked"
UNSIGNED = "unsigned"


@dataclass(frozen=True)
class FileCheck:
    file: str
    status: str  # ok | changed | missing | unexpected | symlink | unreadable
    detail: str = ""

    def to_dict(self) -> dict:
        return {"file": self.file, "status": self.status, "detail": self.detail}


@dataclass(frozen=True)
class VerifyReport:
    bundle: str
    name: str | None
    version: str | None
    signature: str  # verified | failed | signed, not checked | unsigned
    signature_method: str | None  # key | certificate | sigstore, when checked
    signature_detail: str
    files: tuple[FileCheck, ...]
    sealed: bool
    plaintext: str  # checked | not checked (...) | n/a (not sealed) | skipped (...)
    golden: ParityReport | None
    golden_status: str  # not requested | passed | failed | skipped (...)
    build_max_abs: dict[str, float]  # each output's max |diff| against the source when the bundle was built
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        golden = None
        if self.golden is not None:
            golden = {**self.golden.to_dict(), "build_max_abs": self.build_max_abs}
        return {
            "bundle": self.bundle, "name": self.name, "version": self.version, "passed": self.passed,
            "signature": {"status": self.signature, "method": self.signature_method, "detail": self.signature_detail},
            "files": [f.to_dict() for f in self.files],
            "sealed": self.sealed, "plaintext": self.plaintext,
            "golden_status": self.golden_status, "golden": golden,
            "failures": list(self.failures),
        }


def check_files(root: Path, manifest: Manifest) -> list[FileCheck]:
    """Every file against the manifest, all reported: changed, missing, unexpected, symlinks."""
    present: dict[str, Path] = {}
    checks: list[FileCheck] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                checks.append(FileCheck(rel, "symlink", "a bundle holds only regular files"))
            elif p.is_file():
                present[rel] = p
    for rel, entry in manifest.files.items():
        p = present.get(rel)
        if p is None:
            if not any(c.file == rel for c in checks):
                checks.append(FileCheck(rel, "missing", "listed in the manifest, not in the bundle"))
            continue
        try:
            size = p.stat().st_size
            same = size == entry.size and digest.file(p) == entry.sha256
        except OSError as e:
            checks.append(FileCheck(rel, "unreadable", e.strerror or str(e)))
            continue
        if size != entry.size:
            checks.append(FileCheck(rel, "changed", f"{size:,} bytes, the manifest says {entry.size:,}"))
        elif not same:
            checks.append(FileCheck(rel, "changed", "sha256 differs from the manifest"))
        else:
            checks.append(FileCheck(rel, "ok"))
    for rel in sorted(set(present) - set(manifest.files) - set(UNLISTED)):
        checks.append(FileCheck(rel, "unexpected", "not listed in the manifest"))
    return sorted(checks, key=lambda c: (c.status == "ok", c.file))


def _consistency(manifest: Manifest) -> list[str]:
    """The manifest's own promises: the model file is listed; a plain model's entry has the plaintext sha256."""
    m = manifest
    problems = []
    if m.model.file not in m.files:
        problems.append(f"manifest: the model file {m.model.file!r} is not among its files")
    elif m.sealed is None and m.files[m.model.file].sha256 != m.model.sha256:
        problems.append(f"manifest: model.sha256 and the files entry of {m.model.file!r} differ")
    if m.sealed is not None:
        for rel in [m.model.file] + ([m.golden.file] if m.golden else []):
            if rel not in m.sealed.files:
                problems.append(f"manifest: {rel!r} is not among the sealed files")
        model_entry = m.sealed.files.get(m.model.file)
        if model_entry is not None and model_entry.sha256 != m.model.sha256:
            problems.append("manifest: model.sha256 and the sealed model's plaintext sha256 differ")
    return problems


def verify(bundle_dir: PathLike, public_key: PathLike | bytes | None = None, golden: bool = False,
           identity: sealing.IdentitySource = None, passphrase: str | None = None,
           certificate_chain: Sequence[PathLike] | None = None, sigstore_identity: str | None = None,
           sigstore_issuer: str | None = None, progress: Progress = silent) -> VerifyReport:
    """Check a bundle's signature, every hash in its manifest and, with ``golden``, its outputs on this runtime."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise InputError(f"{root}: no such bundle directory")
    if not (root / MANIFEST).is_file():
        raise BundleError(f"{root / MANIFEST}: missing; {root} is not a bundle (build one with `onnxguard build`)")
    if sum(x is not None for x in (public_key, certificate_chain, sigstore_identity)) > 1:
        raise InputError("give one of a public key, a certificate chain or a Sigstore identity, not several")
    if (sigstore_identity is None) != (sigstore_issuer is None):
        raise InputError("Sigstore verification needs both the signer's identity and its OIDC issuer")
    failures: list[str] = []

    # The manifest: unreadable or off-schema is a failed check (the file was damaged), not a usage error.
    try:
        manifest = bundle_lib.load_manifest(root)
    except BundleError as e:
        manifest = None
        failures.append(str(e))
    ids = None
    if manifest is not None and manifest.sealed is not None and (golden or identity is not None or passphrase is not None):
        ids = sealing.identities_for(root, manifest, identity, passphrase)  # bad identity: exit 2, before any work
    if golden and manifest is not None and manifest.golden is None:
        raise InputError(f"{root}: the bundle has no golden set; verify without --golden")

    # Signature.
    progress(Event("verify", "signature"))
    method = None
    if public_key is not None or certificate_chain is not None or sigstore_identity is not None:
        if public_key is not None:
            report = signing.verify(root, public_key)
        elif certificate_chain is not None:
            report = signing.verify_certificate(root, certificate_chain)
        else:
            report = signing.verify_sigstore(root, sigstore_identity, sigstore_issuer)
        method, sig_detail = report.method, report.detail
        sig_status = VERIFIED if report.passed else FAILED
        if not report.passed:
            failures.append(f"signature: {report.detail}")
    elif signing.is_signed(root):
        sig_status, sig_detail = NOT_CHECKED, "model.sig is present; give a public key to check it"
    else:
        sig_status, sig_detail = UNSIGNED, "no model.sig"

    # Files and the manifest's own consistency.
    progress(Event("verify", "hashes"))
    files: tuple[FileCheck, ...] = ()
    if manifest is not None:
        files = tuple(check_files(root, manifest))
        failures += [f"{c.file}: {c.status} ({c.detail})" for c in files if c.status != "ok"]
        failures += _consistency(manifest)
    intact = manifest is not None and all(c.status == "ok" for c in files) and not _consistency(manifest)
    b = bundle_lib.read(root) if intact else None

    # Sealed plaintext.
    sealed = manifest is not None and manifest.sealed is not None
    if not sealed:
        plaintext = "n/a (not sealed)"
    elif b is None:
        plaintext = "skipped (the files do not match the manifest)"
    elif ids is None:
        plaintext = "not checked (sealed; give an identity to check the plaintext)"
    else:
        progress(Event("verify", "decrypting the sealed files to check their plaintext"))
        try:
            sealing.check(b, ids)
            plaintext = "checked"
        except BundleError as e:
            plaintext = "failed"
            failures.append(str(e))

    # Golden set on this machine's runtime.
    gold: ParityReport | None = None
    build_max_abs: dict[str, float] = {}
    if not golden:
        golden_status = "not requested"
    elif b is None or plaintext == "failed":
        golden_status = "skipped (the bundle does not match its manifest)"
        failures.append("golden: not run, the bundle does not match its manifest")
    else:
        progress(Event("verify", "running the golden set on ONNX Runtime"))
        m = b.manifest
        tolerance = Tolerance(**m.parity.tolerance) if m.parity else Tolerance()
        roles = {o.name: o.role for o in m.model.outputs if o.role}
        notes = tuple(m.parity.notes) if m.parity else ()
        build_max_abs = {o.name: o.max_abs for o in m.parity.outputs} if m.parity else {}
        try:
            gold = parity.parity(sealing.open_model(b, ids), sealing.open_golden(b, ids), roles, tolerance, notes)
        except ModelError as e:  # the built model does not load on this machine's runtime: a failed check
            golden_status = "failed"
            failures.append(f"golden: {e}")
        else:
            golden_status = "passed" if gold.passed else "failed"
        for o in gold.outputs if gold else ():
            if not o.passed:
                failures.append(f"golden: output {o.name!r} drifted from the source's reference outputs "
                                f"({'; '.join(o.failures)})")
    progress(Event("verify", "passed" if not failures else f"{len(failures)} failure(s)", done=True))
    return VerifyReport(
        bundle=str(root), name=manifest.name if manifest else None, version=manifest.version if manifest else None,
        signature=sig_status, signature_method=method, signature_detail=sig_detail, files=files, sealed=sealed,
        plaintext=plaintext, golden=gold, golden_status=golden_status, build_max_abs=build_max_abs,
        failures=tuple(failures))
