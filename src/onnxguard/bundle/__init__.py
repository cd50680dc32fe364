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
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jsonschema
import onnx
from pydantic import ValidationError

from onnxguard.bundle import digest, golden
from onnxguard.errors import BundleError, InputError
from onnxguard.bundle.golden import GoldenSet
from onnxguard.bundle.manifest import File, Manifest

MANIFEST = "manifest.json"
MODEL = "model.onnx"
GOLDEN = "golden.npz"
SIGNATURE = "model.sig"
# Files that are not listed in the manifest's ``files``: the manifest itself, and the signature over it.
UNLISTED = (MANIFEST, SIGNATURE)


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        """The model's file in the bundle: ``model.onnx``, or ``model.onnx.age`` when sealed."""
        return self.path / self.manifest.model.file

    @property
    def sealed(self) -> bool:
        return self.manifest.sealed is not None

    def _refuse_sealed(self, what: str) -> None:
        if self.sealed:
            raise BundleError(f"{self.path}: the bundle is sealed, its {what} is age-encrypted; open it in memory with "
                              "onnxguard.trust.sealing (open_model, open_golden, load_session) and an identity, "
                              "or `onnxguard unseal` it to a new directory")

    def model_bytes(self) -> bytes:
        self._refuse_sealed(f"model ({self.manifest.model.file})")
        return self.model_path.read_bytes()

    def golden(self) -> GoldenSet:
        if self.manifest.golden is None:
            raise BundleError(f"{self.path}: the bundle has no golden set")
        self._refuse_sealed(f"golden set ({self.manifest.golden.file})")
        return golden.load(self.path / self.manifest.golden.file)


def _schema() -> dict:
    return json.loads(resources.files("onnxguard").joinpath("schemas/manifest-1.schema.json").read_text())


def bundle_files(root: Path) -> dict[str, Path]:
    """Every entry under ``root`` by POSIX relative path; a symlink anywhere is refused."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                raise BundleError(f"{p}: is a symlink; a bundle holds only regular files")
            if p.is_file():
                found[rel] = p
    return found


def load_manifest(path: Path) -> Manifest:
    mfile = path / MANIFEST
    if not path.is_dir():
        raise InputError(f"{path}: no such bundle directory")
    if not mfile.is_file():
        raise BundleError(f"{mfile}: missing; {path} is not a bundle (build one with `onnxguard build`)")
    try:
        data = json.loads(mfile.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mfile}: not valid JSON ({e})") from e
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_schema()).iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise BundleError(f"{mfile}: does not match the manifest schema at {where}: {error.message}")
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        raise BundleError(f"{mfile}: invalid manifest: {e.errors()[0]['msg']}") from e


def read(path: str | os.PathLike[str]) -> Bundle:
    """Read a bundle and verify every file against its manifest."""
    root = Path(path)
    manifest = load_manifest(root)
    present = bundle_files(root)
    for rel, entry in manifest.files.items():
        p = root / rel
        if rel not in present:
            raise BundleError(f"{p}: listed in the manifest but missing from the bundle")
        if p.stat().st_size != entry.size or digest.file(p) != entry.sha256:
            raise BundleError(f"{p}: does not match the sha256 in the manifest; the bundle was modified")
    extra = sorted(set(present) - set(manifest.files) - set(UNLISTED))
    if extra:
        raise BundleError(f"{root / extra[0]}: not listed in the manifest; remove it or rebuild the bundle")
    if manifest.model.file not in manifest.files:
        raise BundleError(f"{root / MANIFEST}: the model file {manifest.model.file!r} is not among its files")
    if manifest.sealed is not None:
        sealed = manifest.sealed.files
        wanted = [manifest.model.file] + ([manifest.golden.file] if manifest.golden else [])
        for rel in [*sealed, *wanted]:
            if rel not in manifest.files or rel not in sealed:
                raise BundleError(f"{root / MANIFEST}: sealed file {rel!r} is not both among its files and its sealed files")
    return Bundle(root, manifest)


def place(tmp: Path, target: Path, overwrite: bool) -> None:
    if target.exists():
        if not overwrite:
            raise InputError(f"{target}: already exists; choose another output or pass --overwrite")
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        target.rename(old / target.name)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)


def check_writable(target: Path, overwrite: bool) -> None:
    """Fail early, before any long work, if ``target`` cannot become a bundle."""
    if target.exists() and not overwrite:
        raise InputError(f"{target}: already exists; choose another output or pass --overwrite")
    parent = target.absolute().parent
    if not parent.is_dir():
        raise InputError(f"{parent}: no such directory for the output bundle")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{parent}: not writable; choose a writable output path")


def write(target: str | os.PathLike[str], manifest: Manifest, model: onnx.ModelProto | bytes,
          golden_set: GoldenSet | None, assets: dict[str, Path] | None = None, overwrite: bool = False) -> Bundle:
    """Write a bundle; ``manifest.files`` and the model's sha256 and size are filled in here."""
    target = Path(target)
    check_writable(target, overwrite)
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.absolute().parent))
    try:
        (tmp / manifest.model.file).write_bytes(data)
        if golden_set is not None:
            golden_set.save(tmp / GOLDEN)
        for rel, src in (assets or {}).items():
            dest = tmp / rel
            if Path(rel).is_absolute() or ".." in Path(rel).parts or rel in (*UNLISTED, GOLDEN, manifest.model.file):
                raise BundleError(f"asset path {rel!r} escapes the bundle or clashes with a bundle file")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        files = {rel: File(sha256=digest.file(p), size=p.stat().st_size) for rel, p in sorted(bundle_files(tmp).items())}
        model_entry = files[manifest.model.file]
        manifest = manifest.model_copy(update={
            "files": files,
            "model": manifest.model.model_copy(update={"sha256": model_entry.sha256, "size": model_entry.size}),
        })
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)
        place(tmp, target, overwrite)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"{target}: cannot write the bundle ({e.strerror or e})") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return read(target)
