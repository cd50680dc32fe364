"""Bundles: what the bundle door found, as findings: the manifest, symlinks, unlisted or non-regular files,
files that do not match the manifest's sha256 and size, and the signature.

The scanner never opens a bundle itself: ``trust.scan_bundle`` reads every file once through the door
(``bundle.files.check``, the one files-against-manifest check) and hands these checks its verdicts in
``ScanContext.bundle``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from onnxguard.bundle.files import MANIFEST, SIGNATURE, FileCheck, FileStatus
from onnxguard.scan.interface import BaseCheck, Finding, ScanContext, Severity, quote


def _files(ctx: ScanContext, *statuses: FileStatus) -> Iterator[tuple[FileCheck, str]]:
    view = ctx.bundle
    if view is None:
        return
    for c in view.files:
        if c.status in statuses:
            yield c, str(view.root / c.file)


class Manifest(BaseCheck):
    id = "bundle.manifest"
    severity = Severity.CRITICAL
    title = "the bundle's manifest.json is not valid JSON or does not match the manifest schema"
    scope = "bundle"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        if ctx.bundle is not None and ctx.bundle.manifest_error is not None:
            yield self.finding(ctx, ctx.bundle.manifest_error, file=str(ctx.bundle.root / MANIFEST))


class Symlinks(BaseCheck):
    id = "bundle.symlink"
    severity = Severity.CRITICAL
    title = "the bundle contains a symlink (it can point anywhere once shipped)"
    scope = "bundle"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        for c, where in _files(ctx, FileStatus.SYMLINK):
            yield self.finding(ctx, f"{quote(c.file)} is a symlink; a bundle holds only regular files", file=where)


class UnexpectedFiles(BaseCheck):
    id = "bundle.unexpected-file"
    severity = Severity.HIGH
    title = "the bundle contains a file the manifest does not list, or something that is not a regular file"
    scope = "bundle"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        for c, where in _files(ctx, FileStatus.UNEXPECTED, FileStatus.NOT_REGULAR):
            what = "is not listed in the manifest" if c.status is FileStatus.UNEXPECTED else \
                f"{c.detail} (a bundle holds only regular files)"
            yield self.finding(ctx, f"{quote(c.file)} {what}", file=where)


class Hashes(BaseCheck):
    id = "bundle.hash"
    severity = Severity.CRITICAL
    title = "a file listed in the manifest is missing or its size or sha256 differs"
    scope = "bundle"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        for c, where in _files(ctx, FileStatus.CHANGED, FileStatus.MISSING, FileStatus.UNREADABLE):
            yield self.finding(ctx, f"{quote(c.file)} {c.detail}: the bundle was modified", file=where)


class Signature(BaseCheck):
    id = "bundle.signature"
    severity = Severity.INFO
    title = "the signature was not checked (info), or it is missing or does not verify with the given key (high)"
    scope = "bundle"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        if ctx.bundle is None or ctx.bundle.signature is None:
            return
        status, detail = ctx.bundle.signature
        where = str(ctx.bundle.root / SIGNATURE)
        if status == "failed":
            yield self.finding(ctx, f"{SIGNATURE}: {detail}", severity=Severity.HIGH, file=where)
        elif status != "passed":
            yield self.finding(ctx, f"{SIGNATURE}: {detail}", file=where)


CHECKS = (Manifest(), Symlinks(), UnexpectedFiles(), Hashes(), Signature())
