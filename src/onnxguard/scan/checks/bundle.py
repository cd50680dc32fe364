"""Bundles: every file against the manifest's sha256 and size, files the manifest does not list, symlinks,
and the signature.

Nothing here trusts the manifest's paths: only entries found by walking the bundle directory (without
following symlinks) are ever opened, and only regular files.

The signature: ``ScanContext.public_key`` carries a PEM public key when the caller has one; the signature
is then verified with the OpenSSF model-signing library. Without a key, a present signature is only noted.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from onnxguard.bundle import digest
from onnxguard.bundle import MANIFEST, SIGNATURE, UNLISTED
from onnxguard.scan.interface import BaseCheck, Finding, ScanContext, Severity, quote


def entries(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under ``root`` (files, dirs, symlinks, others) by POSIX relative path, with its lstat."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            yield p.relative_to(root).as_posix(), os.lstat(p)


class Manifest(BaseCheck):
    id = "bundle.manifest"
    severity = Severity.CRITICAL
    title = "the bundle's manifest.json is not valid JSON or does not match the manifest schema"
    scope = "bundle"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        if ctx.bundle.manifest_error is not None:
            yield self.finding(ctx, ctx.bundle.manifest_error, file=str(ctx.bundle.root / MANIFEST))


class Symlinks(BaseCheck):
    id = "bundle.symlink"
    severity = Severity.CRITICAL
    title = "the bundle contains a symlink (it can point anywhere once shipped)"
    scope = "bundle"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        for rel, st in entries(ctx.bundle.root):
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(ctx.bundle.root / rel)
                yield self.finding(ctx, f"{quote(rel)} is a symlink to {quote(target)}; a bundle holds only regular "
                                        "files", file=str(ctx.bundle.root / rel))


class UnexpectedFiles(BaseCheck):
    id = "bundle.unexpected-file"
    severity = Severity.HIGH
    title = "the bundle contains a file the manifest does not list, or something that is not a regular file"
    scope = "bundle"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        listed = set(ctx.bundle.manifest.files) if ctx.bundle.manifest else set()
        for rel, st in entries(ctx.bundle.root):
            where = str(ctx.bundle.root / rel)
            if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                yield self.finding(ctx, f"{quote(rel)} is not a regular file (a device, pipe or socket)", file=where)
            elif ctx.bundle.manifest is not None and rel not in listed and rel not in UNLISTED:
                yield self.finding(ctx, f"{quote(rel)} is not listed in the manifest", file=where)


class Hashes(BaseCheck):
    id = "bundle.hash"
    severity = Severity.CRITICAL
    title = "a file listed in the manifest is missing or its size or sha256 differs"
    scope = "bundle"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        manifest, root = ctx.bundle.manifest, ctx.bundle.root
        if manifest is None:
            return
        regular = {rel for rel, st in entries(root) if stat.S_ISREG(st.st_mode)}
        for rel, entry in sorted(manifest.files.items()):
            where = str(root / rel)
            if rel not in regular:
                yield self.finding(ctx, f"{quote(rel)} is listed in the manifest but is not a regular file of the "
                                        "bundle", file=where)
                continue
            size = os.lstat(root / rel).st_size
            if size != entry.size:
                yield self.finding(ctx, f"{quote(rel)} is {size:,} bytes, the manifest says {entry.size:,}: the bundle "
                                        "was modified", file=where)
            elif digest.file(root / rel) != entry.sha256:
                yield self.finding(ctx, f"{quote(rel)} does not match its sha256 in the manifest: the bundle was "
                                        "modified", file=where)
        model = manifest.model
        # model.sha256 is the plaintext's; a sealed bundle lists the ciphertext in files and the plaintext in sealed.
        plain = manifest.sealed.files.get(model.file) if manifest.sealed else manifest.files.get(model.file)
        if model.file not in manifest.files:
            yield self.finding(ctx, f"the model file {quote(model.file)} is not among the manifest's files",
                               file=str(root / MANIFEST))
        elif plain is None or plain.sha256 != model.sha256:
            yield self.finding(ctx, f"the manifest's model sha256 and its files entry for {quote(model.file)} differ",
                               file=str(root / MANIFEST))


class Signature(BaseCheck):
    id = "bundle.signature"
    severity = Severity.INFO
    title = "signature presence; a public key was given but the signature is missing or cannot be verified"
    scope = "bundle"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        sig = ctx.bundle.root / SIGNATURE
        present = sig.is_file() and not sig.is_symlink()
        where = str(sig)
        if ctx.public_key is None:
            if present:
                yield self.finding(ctx, f"{SIGNATURE} is present; scan did not verify it (no public key given)", file=where)
            return
        if not present:
            yield self.finding(ctx, f"a public key was given but the bundle has no {SIGNATURE}: it is unsigned",
                               severity=Severity.HIGH, file=where)
            return
        verdict = self.verify(ctx.bundle.root, ctx.public_key)
        if verdict is False:
            yield self.finding(ctx, f"{SIGNATURE} does not verify with the given public key", severity=Severity.HIGH,
                               file=where)

    def verify(self, root: Path, public_key: bytes) -> bool:
        """True when the bundle's OpenSSF signature verifies with ``public_key`` (PEM)."""
        from onnxguard.trust import signing

        return signing.verify(root, public_key).passed


CHECKS = (Manifest(), Symlinks(), UnexpectedFiles(), Hashes(), Signature())
