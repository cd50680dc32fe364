"""``seal.seal(bundle, recipients)``: a bundle's model and golden set encrypted at rest (age), streaming;
``seal.unseal``: the plaintext copy, for operators, into an explicit new directory."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyrage

from onnxguard import bundle as bundle_lib
from onnxguard import staging
from onnxguard.bundle import MANIFEST, SIGNATURE, Bundle, digest, files
from onnxguard.bundle.manifest import File, Manifest, Sealed, SealedFile
from onnxguard.errors import BundleError, InputError, Remedy
from onnxguard.progress import Event, Progress, silent
from onnxguard.trust.sealing.decrypt import SUFFIX, decrypt_to
from onnxguard.trust.sealing.identities import IdentitySource, identities_for
from onnxguard.trust.sealing.recipients import parse_recipient

PathLike = str | os.PathLike[str]
KEY_FILE = "passphrase-identity.age"


@dataclass(frozen=True)
class SealResult:
    """A sealed bundle, who can open it, and which files were replaced by their ``.age``."""

    bundle: Bundle
    recipients: tuple[str, ...]
    passphrase: bool
    files: tuple[tuple[str, str], ...]  # (plaintext name, sealed name)
    dropped_signature: bool = False  # sealed into a new directory: the source's model.sig does not apply there

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle.path), "recipients": list(self.recipients), "passphrase": self.passphrase,
                "files": {plain: sealed for plain, sealed in self.files}, "dropped_signature": self.dropped_signature}



def _write_manifest(tmp: Path, manifest: Manifest) -> None:
    """List every file written into the staging directory ``tmp`` in the manifest, then write it."""
    listed = {rel: File(sha256=digest.file(p), size=p.stat().st_size)
              for rel, p in sorted(files.regular_files(tmp).items()) if rel != MANIFEST}
    (tmp / MANIFEST).write_text(manifest.model_copy(update={"files": listed}).model_dump_json(indent=2) + "\n",
                                encoding="utf-8")


def _copy_assets(b: Bundle, tmp: Path, skip: set[str]) -> None:
    for rel in b.manifest.files:
        if rel not in skip:
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(b.data[rel])  # the bytes hashed when the bundle was read, not a second read


def seal(bundle_dir: PathLike, recipients: Sequence[str] = (), out_dir: PathLike | None = None,
         passphrase: str | None = None, progress: Progress = silent) -> SealResult:
    """Encrypt the model and golden set of a bundle to ``recipients`` (and/or a passphrase), streaming.

    In place when ``out_dir`` is None (refused for a signed bundle: seal first, then sign); otherwise a new
    sealed bundle is written to ``out_dir`` and the source is left as it was. Either way the sealed bundle is
    built beside its target and renamed into place, so a failure leaves nothing half-sealed.
    """
    m0 = bundle_lib.read_manifest(Path(bundle_dir))[0]
    big = {m0.model.file} | ({m0.golden.file} if m0.golden else set())
    b = bundle_lib.read(bundle_dir, keep=lambda rel: rel not in big)  # the model and golden set are streamed
    if b.manifest.sealed is not None:
        whom = ", ".join(b.manifest.sealed.recipients) or "a passphrase"
        raise InputError(f"{b.path}: is already sealed (to {whom})")
    parsed: dict[str, object] = {}
    for r in recipients:
        obj, canonical = parse_recipient(r)
        parsed.setdefault(canonical, obj)
    if passphrase is not None and not passphrase:
        raise InputError("the passphrase is empty; give a non-empty passphrase")
    if not parsed and passphrase is None:
        raise InputError(f"{b.path}: no recipient and no passphrase to seal to", remedy=Remedy.RECIPIENT)
    signed = (b.path / SIGNATURE).exists()
    target = b.path if out_dir is None else Path(out_dir)
    if out_dir is None and signed:
        raise InputError(f"{b.path / SIGNATURE}: the bundle is signed, and sealing it in place would void the "
                         "signature: seal first, then sign", hint="seal into a new directory, or delete model.sig "
                         "and sign the sealed bundle", remedy=Remedy.OUTPUT)
    if out_dir is not None:
        staging.check_output(target, inputs=[b.path])

    to = list(parsed.values())
    key_text = None
    if passphrase is not None:
        ephemeral = pyrage.x25519.Identity.generate()
        to.append(ephemeral.to_public())
        key_text = pyrage.passphrase.encrypt(
            f"# onnxguard: the key of a passphrase-sealed bundle\n{ephemeral}\n".encode(), passphrase)

    m = b.manifest
    plain = [m.model.file] + ([m.golden.file] if m.golden else [])
    expected = {m.model.file: m.model.sha256, **{rel: m.files[rel].sha256 for rel in plain[1:]}}
    try:
        with staging.atomic_dir(target, overwrite=out_dir is None) as tmp:
            sealed_files: dict[str, SealedFile] = {}
            for i, rel in enumerate(plain):
                progress(Event("seal", f"encrypting {rel} ({m.files[rel].size:,} bytes)", i, len(plain)))
                src, _ = files.open_regular(b.path / rel, m.files[rel].size)
                with src, open(tmp / (rel + SUFFIX), "wb") as dst:
                    reader = files.HashingReader(src, m.files[rel].size, b.path / rel)  # hashed as it is encrypted
                    try:
                        pyrage.encrypt_io(reader, dst, to)
                    except pyrage.EncryptError as e:
                        raise InputError(f"{b.path / rel}: cannot encrypt ({e})") from e
                if reader.sha.hexdigest() != expected[rel]:
                    raise BundleError(f"{b.path / rel}: changed while it was being sealed; nothing was sealed")
                sealed_files[rel + SUFFIX] = SealedFile(plaintext=rel, sha256=expected[rel], size=reader.size)
            if key_text is not None:
                (tmp / KEY_FILE).write_bytes(key_text)
            _copy_assets(b, tmp, set(plain))
            sealed = Sealed(recipients=list(parsed), passphrase=passphrase is not None,
                            key_file=KEY_FILE if key_text is not None else None, files=sealed_files)
            _write_manifest(tmp, m.model_copy(update={
                "sealed": sealed,
                "model": m.model.model_copy(update={"file": m.model.file + SUFFIX}),
                "golden": m.golden.model_copy(update={"file": m.golden.file + SUFFIX}) if m.golden else None,
            }))
    except OSError as e:
        raise InputError(f"{target}: cannot write the sealed bundle ({e.strerror or e})") from e
    result = bundle_lib.read(target, keep=False)  # checked, streamed: a 2 GB model needs no 2 GB of memory
    progress(Event("seal", f"sealed {', '.join(plain)} to {len(parsed)} recipient(s)"
                           f"{' and a passphrase' if passphrase is not None else ''}", done=True))
    return SealResult(result, tuple(parsed), passphrase is not None, tuple((rel, rel + SUFFIX) for rel in plain),
                      dropped_signature=signed and out_dir is not None)


def unseal(source: Bundle | PathLike, identity: IdentitySource, out_dir: PathLike, passphrase: str | None = None,
           progress: Progress = silent) -> Bundle:
    """Write a plaintext copy of a sealed bundle to ``out_dir`` (a new directory, mode 0700): for operators only.

    The copy is not signed (its manifest differs from the signed one); sign it again if it is shipped.
    """
    b = source if isinstance(source, Bundle) else bundle_lib.read(source, keep=lambda rel: not rel.endswith(SUFFIX))
    if not b.sealed:
        raise InputError(f"{b.path}: is not sealed; there is nothing to unseal")
    if out_dir is None or str(out_dir) == "":
        raise InputError(f"{b.path}: unseal writes plaintext to an explicit new directory only", remedy=Remedy.OUTPUT)
    target = Path(out_dir)
    if target.absolute() == b.path.absolute():
        raise InputError(f"{target}: unseal into a new directory, not into the sealed bundle itself")
    staging.check_output(target, inputs=[b.path])
    ids = identities_for(b.path, b.manifest, identity, passphrase)
    m, sealed = b.manifest, b.manifest.sealed
    assert sealed is not None  # checked above
    try:
        with staging.atomic_dir(target, mode=0o700) as tmp:  # plaintext: its owner only
            for i, (rel, entry) in enumerate(sealed.files.items()):
                progress(Event("unseal", f"decrypting {rel}", i, len(sealed.files)))
                with open(tmp / entry.plaintext, "wb") as out:
                    decrypt_to(b, rel, ids, out)
            _copy_assets(b, tmp, set(sealed.files) | ({sealed.key_file} if sealed.key_file else set()))
            plain = {rel: e.plaintext for rel, e in sealed.files.items()}
            _write_manifest(tmp, m.model_copy(update={
                "sealed": None,
                "model": m.model.model_copy(update={"file": plain[m.model.file]}),
                "golden": m.golden.model_copy(update={"file": plain[m.golden.file]}) if m.golden else None,
            }))
    except OSError as e:
        raise InputError(f"{target}: cannot write the unsealed bundle ({e.strerror or e})") from e
    result = bundle_lib.read(target, keep=False)
    progress(Event("unseal", f"unsealed to {target}", done=True))
    return result
