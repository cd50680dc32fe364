"""``verify.verify(bundle, TrustPolicy) -> VerifyReport``: is this bundle the one that was built, and does it
still compute the same answers here?

Every step of the bundle door (:mod:`onnxguard.trust.opening`: manifest, files, signature, sealed plaintext,
scan), all reported, none hiding another; then, with ``golden``, the golden set through this machine's ONNX
Runtime and every ``targets`` entry, judged by the same thresholds as ``consistency`` (one vocabulary for the
golden-set contract: :mod:`onnxguard.accuracy.thresholds`).

Fails closed: a signature that was not checked, sealed files that were not decrypted and a model that was not
scanned are failures unless the policy names the waiver (``UnsafeUnsigned``, ``UnsafeUnscanned``). A bundle
that cannot be verified at all (no such directory, no manifest.json, a bad key or identity) raises (exit 2);
any failed check leaves ``passed`` False (the CLI exits 1).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxguard.accuracy import consistency
from onnxguard.accuracy.consistency import ConsistencyReport
from onnxguard.errors import InputError, ModelError
from onnxguard.progress import Event, Progress, silent
from onnxguard.trust.opening import TrustReport, examine
from onnxguard.trust.policy import TrustPolicy
from onnxguard.trust.sealing.identities import IdentitySource

PathLike = str | os.PathLike[str]


class GoldenStatus(enum.Enum):
    """Whether ``verify`` ran the golden set, and with what outcome."""

    NOT_REQUESTED = "not requested"
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"  # the bundle did not pass the door: nothing it holds is run


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found: the door's report, the bundle's name and version, the golden-set check."""

    trust: TrustReport
    name: str | None
    version: str | None
    golden_status: GoldenStatus
    golden: ConsistencyReport | None
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.trust.path, "name": self.name, "version": self.version, "passed": self.passed,
                **{k: v for k, v in self.trust.to_dict().items() if k not in ("path", "passed")},
                "golden_status": self.golden_status.value,
                "golden": self.golden.to_dict() if self.golden is not None else None,
                "failures": list(self.failures)}


def verify(bundle_dir: PathLike, policy: TrustPolicy, golden: bool = False, targets: Sequence[Path] = (),
           identity: IdentitySource = None, passphrase: str | None = None,
           progress: Progress = silent) -> VerifyReport:
    """Every step of the door under ``policy``; with ``golden``, the golden set on this runtime and on each of
    ``targets`` (target directories, other bundles, ``.onnx`` variants) against the source's references."""
    if targets and not golden:
        raise InputError("targets are checked against the golden set; ask for the golden check too")
    report, opened = examine(bundle_dir, policy, identity, passphrase, progress)
    failures = list(report.failures)
    name = version = None
    if opened is not None:
        name, version = opened.manifest.name, opened.manifest.version
        if golden and opened.manifest.golden is None:
            raise InputError(f"{opened.path}: the bundle has no golden set", hint="verify without the golden check")
    drift = None
    if not golden:
        status = GoldenStatus.NOT_REQUESTED
    elif opened is None:
        status = GoldenStatus.SKIPPED
        failures.append("golden: not run, the bundle did not pass the checks above")
    else:
        progress(Event("verify", "running the golden set on ONNX Runtime"))
        try:
            drift = consistency.check(opened, list(targets), policy, identity)
        except ModelError as e:  # the model does not load on this machine's runtime: a failed check
            failures.append(f"golden: {e}")
            status = GoldenStatus.FAILED
        else:
            status = GoldenStatus.PASSED if drift.passed else GoldenStatus.FAILED
            failures += [f"golden: {t.name} drifted from the source's reference outputs ({'; '.join(t.failures)})"
                         for t in drift.targets if not t.passed]
    progress(Event("verify", "passed" if not failures else f"{len(failures)} failure(s)", done=True))
    return VerifyReport(report, name, version, status, drift, tuple(failures))
