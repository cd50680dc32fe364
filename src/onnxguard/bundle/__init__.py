"""``bundle.write`` / ``bundle.read``: the bundle directory, the unit that is signed, shipped and served.

::

    bundle/
      manifest.json   what this is and how it was made (schema: schemas/manifest-1.schema.json)
      model.onnx      the model
      golden.npz      golden inputs + the SOURCE framework's reference outputs
      tokenizer/      preprocessing assets, when the model has them
      model.sig       signature over every other file (added by ``sign``)

``read`` validates the manifest against the shipped JSON Schema and checks the size and sha256 of every
file; a missing, changed, unexpected or symlinked file is a ``BundleError`` naming it. ``write`` builds the
bundle in a temporary directory beside the target and renames it into place at the end, so a failed
build never leaves a half-written bundle.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import onnx
from pydantic import ValidationError

from onnxguard import staging
from onnxguard.bundle import digest, files, golden
from onnxguard.bundle.files import MANIFEST, SIGNATURE, UNLISTED
from onnxguard.bundle.golden import GoldenSet
from onnxguard.bundle.manifest import File, Manifest
from onnxguard.errors import BundleError, InputError, Remedy

MODEL = "model.onnx"
GOLDEN = "golden.npz"

__all__ = ["GOLDEN", "MANIFEST", "MODEL", "SIGNATURE", "UNLISTED", "Bundle", "parse_manifest", "read",
           "read_manifest", "write"]


@dataclass(frozen=True)
class Bundle:
    """A bundle whose every file matched its manifest when it was read, with the bytes that were hashed.

    ``data`` holds each listed file's bytes exactly as read and hashed; nothing here reads the disk again.
    ``digest`` is the sha256 of ``manifest.json`` as read: the bundle's identity, which its signature covers.
    """

    path: Path
    manifest: Manifest
    digest: str
    data: Mapping[str, bytes] = field(repr=False)

    @property
    def model_path(self) -> Path:
        """The model's file in the bundle: ``model.onnx``, or ``model.onnx.age`` when sealed."""
        return self.path / self.manifest.model.file

    @property
    def sealed(self) -> bool:
        return self.manifest.sealed is not None

    def _refuse_sealed(self, what: str) -> None:
        if self.sealed:
            raise BundleError(f"{self.path}: the bundle is sealed, its {what} is age-encrypted",
                              hint="open it through onnxguard.trust.open_bundle with the age identity",
                              remedy=Remedy.IDENTITY)

    def model_bytes(self) -> bytes:
        """The model's bytes as hashed when the bundle was read (plain bundles only)."""
        self._refuse_sealed(f"model ({self.manifest.model.file})")
        return self._kept(self.manifest.model.file)

    def _kept(self, rel: str) -> bytes:
        if rel not in self.data:
            raise BundleError(f"{self.path / rel}: the bundle was read without keeping its files' bytes")
        return bytes(self.data[rel])

    def golden(self) -> GoldenSet:
        """The golden set parsed from the bytes hashed when the bundle was read (plain bundles only)."""
        if self.manifest.golden is None:
            raise BundleError(f"{self.path}: the bundle has no golden set")
        self._refuse_sealed(f"golden set ({self.manifest.golden.file})")
        return golden.from_bytes(self._kept(self.manifest.golden.file), str(self.path / self.manifest.golden.file))


def _schema() -> dict[str, Any]:
    text = resources.files("onnxguard").joinpath("schemas/manifest-1.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def parse_manifest(data: bytes, where: Path) -> Manifest:
    """A manifest from the bytes of ``manifest.json``: JSON, the shipped schema, then the pydantic model."""
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{where}: not valid JSON ({e})") from e
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_schema()).iter_errors(parsed))
    if error is not None:
        at = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise BundleError(f"{where}: does not match the manifest schema at {at}: {error.message}")
    try:
        return Manifest.model_validate(parsed)
    except ValidationError as e:
        raise BundleError(f"{where}: invalid manifest: {e.errors()[0]['msg']}") from e


def read_manifest(path: Path) -> tuple[Manifest, str]:
    """The manifest of the bundle at ``path`` and the sha256 of its bytes, read once (``InputError`` when
    ``path`` is no bundle directory; ``BundleError`` when the manifest is damaged)."""
    if not path.is_dir():
        what = "no such bundle directory" if not os.path.lexists(path) else "not a bundle directory"
        raise InputError(f"{path}: {what}")
    mfile = path / MANIFEST
    if not os.path.lexists(mfile):
        raise BundleError(f"{mfile}: missing; {path} is not a bundle", hint="build one with onnxguard build")
    try:
        read_ = files.read_regular(mfile, files.MAX_METADATA_BYTES)
    except InputError as e:
        raise BundleError(str(e)) from e
    return parse_manifest(read_.data, mfile), read_.sha256


def _consistency(root: Path, manifest: Manifest) -> None:
    m = manifest
    if m.model.file not in m.files:
        raise BundleError(f"{root / MANIFEST}: the model file {m.model.file!r} is not among its files")
    if m.sealed is None:
        if m.files[m.model.file].sha256 != m.model.sha256:
            raise BundleError(f"{root / MANIFEST}: model.sha256 and the files entry of {m.model.file!r} differ")
        return
    wanted = [m.model.file] + ([m.golden.file] if m.golden else [])
    for rel in [*m.sealed.files, *wanted]:
        if rel not in m.files or rel not in m.sealed.files:
            raise BundleError(f"{root / MANIFEST}: sealed file {rel!r} is not both among its files and its sealed "
                              "files")
    if m.sealed.files[m.model.file].sha256 != m.model.sha256:
        raise BundleError(f"{root / MANIFEST}: model.sha256 and the sealed model's plaintext sha256 differ")


def consistency(root: Path, manifest: Manifest) -> list[str]:
    """The manifest's own promises (the model file is listed; the model's sha256 agrees), as failures."""
    try:
        _consistency(root, manifest)
    except BundleError as e:
        return [str(e)]
    return []


def read(path: str | os.PathLike[str], keep: bool | Callable[[str], bool] = True) -> Bundle:
    """Read a bundle: every file read once, hashed and checked against the manifest (``BundleError`` naming the
    first that does not match). The bytes that were hashed are kept in the result; with ``keep=False`` the
    files are only streamed through the check (constant memory: sealing a 2 GB model needs no 2 GB); ``keep``
    may also name the files to keep."""
    root = Path(path)
    manifest, manifest_sha = read_manifest(root)
    contents = files.check(root, manifest, keep=keep if callable(keep) else lambda rel: keep)
    if not contents.ok:
        bad = next(c for c in contents.checks if not c.ok)
        raise BundleError(f"{root / bad.file}: {bad.detail}; the bundle was modified",
                          hint="rebuild the bundle, or restore it from its source")
    _consistency(root, manifest)
    return Bundle(root, manifest, manifest_sha, contents.data)


def place(tmp: Path, target: Path, overwrite: bool) -> None:
    """Rename the finished directory ``tmp`` to ``target``, replacing an existing one only with ``overwrite``.
    Prefer :func:`onnxguard.staging.atomic_dir`, which stages, renames and cleans up in one place."""
    staging.publish(tmp, target, overwrite)


def check_writable(target: Path, overwrite: bool, inputs: Sequence[Path] = ()) -> None:
    """Fail early, before any long work, if ``target`` cannot become a bundle (see ``staging.check_output``):
    a writable parent, not an existing path without ``overwrite``, and none of ``inputs``."""
    staging.check_output(target, inputs=inputs, overwrite=overwrite, kind="directory")


def fill(directory: Path, manifest: Manifest, model: onnx.ModelProto | bytes, golden_set: GoldenSet | None,
         assets: Mapping[str, Path | bytes] | None = None) -> Manifest:
    """Write a bundle's files into the empty ``directory`` (a staging directory); returns the manifest written,
    with ``files`` and the model's sha256 and size filled in. An asset is a file to copy or the bytes to write."""
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    (directory / manifest.model.file).write_bytes(data)
    if golden_set is not None:
        golden_set.save(directory / GOLDEN)
    for rel, src in (assets or {}).items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts or rel in (*UNLISTED, GOLDEN, manifest.model.file):
            raise BundleError(f"asset path {rel!r} escapes the bundle or clashes with a bundle file")
        dest = directory / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, bytes):
            dest.write_bytes(src)
        else:
            shutil.copyfile(src, dest)
    listed = {rel: File(sha256=digest.file(p), size=p.stat().st_size)
              for rel, p in sorted(files.regular_files(directory).items())}
    model_entry = listed[manifest.model.file]
    manifest = manifest.model_copy(update={
        "files": listed,
        "model": manifest.model.model_copy(update={"sha256": model_entry.sha256, "size": model_entry.size}),
    })
    (directory / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return manifest


def write(target: str | os.PathLike[str], manifest: Manifest, model: onnx.ModelProto | bytes,
          golden_set: GoldenSet | None, assets: Mapping[str, Path | bytes] | None = None, overwrite: bool = False,
          inputs: Sequence[Path] = ()) -> Bundle:
    """Write a bundle all at once (staged beside ``target``, renamed into place); ``manifest.files`` and the
    model's sha256 and size are filled in here. ``inputs`` (what the bundle is made from) must not be replaced."""
    target = Path(target)
    check_writable(target, overwrite, inputs)
    with staging.atomic_dir(target, overwrite=overwrite) as tmp:
        try:
            fill(tmp, manifest, model, golden_set, assets)
        except OSError as e:
            raise InputError(f"{target}: cannot write the bundle ({e.strerror or e})",
                             hint="free some space", remedy=Remedy.OUTPUT) from e
    return read(target)
