"""The scanner's vocabulary: severities, findings, the report, the context a check reads, and the Check protocol.

A check is an object with a stable ``id`` (``family.name``, used in reports, SARIF rule ids and docs), a
default ``severity``, a one-line ``title``, a ``scope`` saying what it reads, and ``run(ctx)`` yielding
:class:`Finding` values. A check that cannot decide reports a finding; it never fails open.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import onnx

    from onnxguard.bundle.files import FileCheck
    from onnxguard.bundle.manifest import Manifest
    from onnxguard.scan.policy import Policy

# Names taken from a model are shown quoted and cut to this length, so a hostile name cannot flood a report.
NAME_SHOWN = 80


class Severity(enum.IntEnum):
    """Ordered: ``INFO < LOW < MEDIUM < HIGH < CRITICAL``."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown severity {text!r}; use one of {', '.join(s.label for s in cls)}") from None


@dataclass(frozen=True)
class Location:
    """Where a finding is: always a file; a node and/or tensor name when the finding is inside the graph."""

    file: str
    node: str | None = None
    tensor: str | None = None

    def to_dict(self) -> dict:
        return {"file": self.file, "node": self.node, "tensor": self.tensor}

    def __str__(self) -> str:
        parts = [self.file]
        if self.node is not None:
            parts.append(f"node {quote(self.node)}")
        if self.tensor is not None:
            parts.append(f"tensor {quote(self.tensor)}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Finding:
    """One problem a check found: which check, how severe, what, and where in the model."""

    check: str
    severity: Severity
    message: str
    location: Location

    def to_dict(self) -> dict:
        return {"check": self.check, "severity": self.severity.label, "message": self.message,
                "location": self.location.to_dict()}


REPORT_FORMAT = "onnxguard-scan/1"


@dataclass(frozen=True)
class ScanReport:
    """The outcome of one scan. ``findings`` are sorted: most severe first, then by check id and location."""

    path: str
    kind: Literal["model", "bundle"]
    profile: str
    findings: tuple[Finding, ...]
    checks: tuple[Check, ...] = field(repr=False, compare=False, default=())

    def counts(self) -> dict[str, int]:
        c = Counter(f.severity for f in self.findings)
        return {s.label: c.get(s, 0) for s in sorted(Severity, reverse=True)}

    @property
    def max_severity(self) -> Severity | None:
        return max((f.severity for f in self.findings), default=None)

    def at_or_above(self, level: Severity) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity >= level)

    def to_dict(self) -> dict:
        """The stable JSON form (documented in docs/scan.md)."""
        return {
            "format": REPORT_FORMAT,
            "path": self.path,
            "kind": self.kind,
            "profile": self.profile,
            "summary": self.counts(),
            "findings": [f.to_dict() for f in self.findings],
        }


Scope = Literal["file", "model", "bundle"]


@dataclass(frozen=True)
class BundleView:
    """What the bundle door found in a bundle directory, for the bundle checks to report: the manifest (or why
    it could not be read), every file's verdict against it, and the signature step's status and detail."""

    root: Path
    manifest: Manifest | None
    manifest_error: str | None
    files: tuple[FileCheck, ...] = ()
    signature: tuple[str, str] | None = None  # (status: passed | failed | not checked | waived, detail)


@dataclass(frozen=True)
class ScanContext:
    """What the checks read. ``model`` is ``None`` when the file could not be parsed (the file checks say why).

    ``load_state`` is one of ``ok``, ``too-large``, ``empty``, ``decode-error``, ``not-a-model``, ``missing``,
    ``over-budget`` (parsing would take more memory than the scan's budget) and ``load_detail`` carries the
    parser's message. ``data`` is the very bytes ``model`` was parsed from (empty when there is no model): ONNX's
    C++ passes (checker, shape inference) are handed these rather than a re-serialization of ``model``, which
    would hold one more copy of every weight while they run.
    """

    policy: Policy
    path: Path | None
    display: str
    model_dir: Path | None = None
    file_size: int = 0
    head: bytes = b""
    load_state: str = "ok"
    load_detail: str = ""
    model: onnx.ModelProto | None = None
    bundle: BundleView | None = None
    data: bytes = field(default=b"", repr=False, compare=False)

    @property
    def parsed(self) -> onnx.ModelProto:
        """The parsed model, for the model checks: they run only when there is one (a crash otherwise is a
        ``scan.error`` finding, so nothing passes unscanned)."""
        if self.model is None:
            raise ValueError(f"{self.display}: no parsed model to check")
        return self.model

    @property
    def serialized(self) -> bytes:
        """The parsed model as protobuf bytes, for ONNX's C++ passes: the bytes it was parsed from when the
        context holds them (no copy), a serialization of ``model`` otherwise (a context built without them)."""
        model = self.parsed
        return self.data if self.data else model.SerializeToString()


@runtime_checkable
class Check(Protocol):
    """What every check is: an id, a severity, a one-line title, a scope, and ``run`` yielding findings.

    Read-only members, so that a check class may fix them more narrowly (``scope = "file"``)."""

    @property
    def id(self) -> str: ...

    @property
    def severity(self) -> Severity: ...

    @property
    def title(self) -> str: ...

    @property
    def scope(self) -> Scope: ...

    def run(self, ctx: ScanContext) -> Iterable[Finding]: ...


class BaseCheck:
    """Convenience base: ``finding`` fills in the check id, its default severity and the file."""

    id: str
    severity: Severity
    title: str
    scope: Scope = "model"

    def finding(self, ctx: ScanContext, message: str, node: str | None = None, tensor: str | None = None,
                severity: Severity | None = None, file: str | None = None) -> Finding:
        return Finding(self.id, self.severity if severity is None else severity, printable(message),
                       Location(file or ctx.display, node, tensor))

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        raise NotImplementedError


def quote(name: str) -> str:
    """A name taken from a model, made safe to print: control characters escaped, cut to ``NAME_SHOWN``."""
    shown = name if len(name) <= NAME_SHOWN else name[:NAME_SHOWN] + "..."
    return repr(shown)


def printable(text: str) -> str:
    """``text`` with every non-printable character (control, bidi override, ...) escaped as ``\\uXXXX``."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)
