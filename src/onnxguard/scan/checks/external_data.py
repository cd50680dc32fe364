"""External data: tensors whose bytes live in another file named by ``location``.

Every location must be a relative path that stays inside the model's directory after normalisation and after
resolving symlinks, must name an existing regular file that is not hardlinked elsewhere, and ``offset`` +
``length`` must lie inside it. This module only ever calls ``os.path`` functions and ``os.stat`` on paths it
has proven to be inside the model's directory: it never opens an external-data file, and never calls onnx's
external-data loading. (policy.EXTERNAL_DATA_CVES lists the advisories this answers.)
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath

import onnx

from onnxguard.scan import tensors
from onnxguard.scan.interface import BaseCheck, Finding, ScanContext, Severity, quote
from onnxguard.scan.policy import EXTERNAL_DATA_CVES
from onnxguard.scan.walk import StoredTensor, stored_tensors

CVES = ", ".join(EXTERNAL_DATA_CVES[:3]) + " and later"


@dataclass(frozen=True)
class Reference:
    stored: StoredTensor
    entries: dict[str, str]

    @property
    def name(self) -> str:
        return self.stored.tensor.name


def external_tensors(model: onnx.ModelProto) -> list[Reference]:
    """Every tensor the model stores as external data, with its external_data entries."""
    return [Reference(s, {e.key: e.value for e in s.tensor.external_data})
            for s in stored_tensors(model) if s.tensor.data_location == onnx.TensorProto.EXTERNAL]


def resolve(model_dir: str, location: str) -> tuple[str | None, str | None]:
    """``(path, None)`` for a location proven inside ``model_dir``, else ``(None, why not)``. Opens nothing."""
    if not location:
        return None, "has no 'location'"
    if "\x00" in location:
        return None, f"location {quote(location)} contains a NUL byte"
    if (PurePosixPath(location).is_absolute() or PureWindowsPath(location).is_absolute()
            or PureWindowsPath(location).drive or location.startswith(("/", "\\"))):
        return None, f"location {quote(location)} is an absolute path"
    # Backslashes separate paths on Windows: judge the location as the most permissive platform would read it.
    joined = os.path.normpath(os.path.join(model_dir, location.replace("\\", "/")))
    if os.path.commonpath([model_dir, joined]) != model_dir or joined == model_dir:
        return None, f"location {quote(location)} leaves the model's directory"
    real_dir, real = os.path.realpath(model_dir), os.path.realpath(joined)
    if os.path.commonpath([real_dir, real]) != real_dir or real == real_dir:
        return None, (f"location {quote(location)} resolves through a symlink to {quote(real)}, outside the model's "
                      "directory")
    return real, None


def _about(check: BaseCheck, ctx: ScanContext, ref: Reference, message: str) -> Finding:
    """A finding of ``check`` naming the node and tensor of the external reference ``ref``."""
    return check.finding(ctx, message, node=ref.stored.node, tensor=ref.name)


def unsafe_locations(ctx: ScanContext) -> list[str]:
    """Why each external-data location not proven inside the model's directory is unsafe."""
    model_dir = str(ctx.model_dir)
    return [why for ref in external_tensors(ctx.parsed)
            for _, why in [resolve(model_dir, ref.entries.get("location", ""))] if why is not None]


def _safe_files(ctx: ScanContext) -> Iterator[tuple[Reference, str, os.stat_result | None]]:
    """External references whose location is safe, with the stat of their file (``None``: missing)."""
    for ref in external_tensors(ctx.parsed):
        path, _ = resolve(str(ctx.model_dir), ref.entries.get("location", ""))
        if path is not None:  # a location proven inside the model's directory
            try:
                st = os.stat(path)
            except FileNotFoundError:
                st = None
            yield ref, path, st


class Location(BaseCheck):
    id = "external-data.path"
    severity = Severity.CRITICAL
    title = "external data location is absolute, escapes the model's directory, or escapes through a symlink"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        for ref in external_tensors(ctx.parsed):
            _, why = resolve(str(ctx.model_dir), ref.entries.get("location", ""))
            if why is not None:
                yield self.finding(ctx, f"external data of tensor {quote(ref.name)} {why} ({CVES}); "
                                        "the scanner did not open it", node=ref.stored.node, tensor=ref.name)


class File(BaseCheck):
    id = "external-data.file"
    severity = Severity.HIGH
    title = "external data file missing, not a regular file, or hardlinked"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        for ref, _, st in _safe_files(ctx):
            location = quote(ref.entries["location"])
            if st is None:
                yield _about(self, ctx, ref, f"external data file {location} of tensor {quote(ref.name)} does not "
                                             "exist")
            elif not stat.S_ISREG(st.st_mode):
                yield _about(self, ctx, ref, f"external data {location} of tensor {quote(ref.name)} is not a regular "
                                             "file (a device or pipe can hang or leak the loader)")
            elif st.st_nlink > 1:
                yield _about(self, ctx, ref, f"external data file {location} of tensor {quote(ref.name)} has "
                                             f"{st.st_nlink} hard links: it may be a file from outside the model's "
                                             "directory")


class Range(BaseCheck):
    id = "external-data.range"
    severity = Severity.HIGH
    title = "external data offset/length invalid, past the end of the file, or not matching the tensor's dims"

    def run(self, ctx: ScanContext) -> Iterable[Finding]:
        for ref, _, st in _safe_files(ctx):
            if st is None or not stat.S_ISREG(st.st_mode):
                continue
            label = f"external data of tensor {quote(ref.name)} in {quote(ref.entries['location'])}"
            numbers: dict[str, int] = {}
            for key in ("offset", "length"):
                raw = ref.entries.get(key)
                if raw is None:
                    continue
                if not raw.isdigit():
                    yield _about(self, ctx, ref, f"{label}: {key} {quote(raw)} is not a non-negative integer")
                    break
                numbers[key] = int(raw)
            else:
                yield from self._range(ctx, ref, st.st_size, numbers, label)

    def _range(self, ctx: ScanContext, ref: Reference, size: int, numbers: dict[str, int],
               label: str) -> Iterator[Finding]:
        offset = numbers.get("offset", 0)
        count = tensors.element_count(ref.stored.tensor)
        expected = None if count is None else tensors.nbytes(ref.stored.tensor.data_type, count)
        length = numbers.get("length", expected)
        if expected is not None and length != expected:
            yield _about(self, ctx, ref, f"{label}: length {length:,} bytes, but its dims and type need {expected:,}")
        if length is None:
            yield _about(self, ctx, ref, f"{label}: no length, and its dims and type do not give one")
        elif offset + length > size:
            yield _about(self, ctx, ref, f"{label}: offset {offset:,} + length {length:,} is past the end of the "
                                         f"{size:,}-byte file")


CHECKS = (Location(), File(), Range())
