"""Sealing: the bundle's model and golden set encrypted at rest with age (pyrage), opened in memory only.

``seal(bundle, recipients)`` replaces ``model.onnx`` and ``golden.npz`` by ``model.onnx.age`` and
``golden.npz.age`` (the age format, ``age-encryption.org/v1``), streaming: the files are read and written in
chunks, so a 2 GB model needs no 2 GB of memory. The manifest then lists the ``.age`` files with their sha256,
``model.file`` and ``golden.file`` name them, and ``sealed`` records the recipients and, for each sealed file,
the sha256 of its plaintext, which is checked after every decryption. That check matters: age encrypts, it does
not authenticate the sender, so anyone holding a recipient's public key can make a ``model.onnx.age`` that
decrypts. The plaintext sha256 in a signed manifest is what ties the decrypted model to the one that was built:
seal first, then sign.

Recipients: ``age1...`` (X25519), ``ssh-ed25519 ...`` and ``ssh-rsa ...`` public keys, and a passphrase.
pyrage's passphrase API takes and returns whole byte strings, so a passphrase cannot stream; instead the files
are also sealed to a fresh X25519 identity, and that identity is stored in the bundle as
``passphrase-identity.age``, encrypted with the passphrase (age's scrypt recipient). The age command line
reads such a passphrase-protected identity file directly (``age -d -i passphrase-identity.age model.onnx.age``).

Opening: ``open_model`` / ``open_golden`` / ``load_session`` decrypt into memory and never write plaintext to
disk. Identities come from a file (``age-keygen`` format, or an OpenSSH private key), a literal
``AGE-SECRET-KEY-1...`` string, or the environment: ``ONNXGUARD_AGE_IDENTITY`` (a path or the key itself),
else ``ONNXGUARD_AGE_PASSPHRASE``. ``unseal`` writes a plaintext bundle to an explicit new directory, for
operators.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyrage

from onnxguard import bundle as bundle_lib
from onnxguard.bundle import digest, golden
from onnxguard.bundle import MANIFEST, SIGNATURE, Bundle
from onnxguard.errors import BundleError, InputError
from onnxguard.bundle.golden import GoldenSet
from onnxguard.bundle.manifest import File, Manifest, Sealed, SealedFile
from onnxguard.progress import Event, Progress, silent

PathLike = str | os.PathLike[str]
SUFFIX = ".age"
KEY_FILE = "passphrase-identity.age"
IDENTITY_ENV = "ONNXGUARD_AGE_IDENTITY"
PASSPHRASE_ENV = "ONNXGUARD_AGE_PASSPHRASE"
SECRET_PREFIX = "AGE-SECRET-KEY-1"
AGE_MAGIC = b"age-encryption.org/v1"
SSH_TYPES = ("ssh-ed25519", "ssh-rsa")
CHUNK = 1 << 20
# What an identity can be given as: a file path, a literal AGE-SECRET-KEY-1... string, or parsed identities.
IdentitySource = str | os.PathLike[str] | Sequence[object] | None


@dataclass(frozen=True)
class SealResult:
    bundle: Bundle
    recipients: tuple[str, ...]
    passphrase: bool
    files: tuple[tuple[str, str], ...]  # (plaintext name, sealed name)
    dropped_signature: bool = False  # sealed into a new directory: the source's model.sig does not apply there

    def to_dict(self) -> dict:
        return {"bundle": str(self.bundle.path), "recipients": list(self.recipients), "passphrase": self.passphrase,
                "files": {plain: sealed for plain, sealed in self.files}, "dropped_signature": self.dropped_signature}


# -- recipients ------------------------------------------------------------------------------------------

def parse_recipient(text: str, where: str = "--recipient") -> tuple[object, str]:
    """A pyrage recipient and its canonical text (an ssh key's comment is dropped)."""
    s = text.strip()
    try:
        if s.startswith("age1"):
            return pyrage.x25519.Recipient.from_str(s), s
        kind = s.split(maxsplit=1)[0] if s else ""
        if kind in SSH_TYPES:
            canonical = " ".join(s.split()[:2])
            return pyrage.ssh.Recipient.from_str(canonical), canonical
    except pyrage.RecipientError as e:
        raise InputError(f"{where}: {_short(s)} is not a valid recipient ({e})") from e
    if s.startswith(SECRET_PREFIX):
        raise InputError(f"{where}: that is a secret key (AGE-SECRET-KEY-1...); give its public recipient (age1...)")
    raise InputError(f"{where}: {_short(s)} is not a recipient; expected an age1... X25519 recipient or an "
                     f"ssh-ed25519 / ssh-rsa public key")


def _short(s: str) -> str:
    return repr(s if len(s) <= 40 else s[:37] + "...")


def read_recipients_file(path: PathLike) -> list[str]:
    """One recipient per line, ``#`` comments and blank lines skipped (the format of ``age -R``)."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as e:
        raise InputError(f"{p}: no such file (expected a recipients file, one age1... or ssh key per line)") from e
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot read as text ({e})") from e
    found = []
    for n, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#"):
            parse_recipient(line, f"{p}:{n}")
            found.append(line.strip())
    if not found:
        raise InputError(f"{p}: holds no recipients")
    return found


# -- identities ------------------------------------------------------------------------------------------

def _parse_identities(text: bytes, where: str, passphrase: str | None) -> list[object]:
    if text.startswith(AGE_MAGIC):
        if passphrase is None:
            raise InputError(f"{where}: a passphrase-protected identity file; give the passphrase "
                             f"(--passphrase-env VAR, or {PASSPHRASE_ENV})")
        try:
            text = pyrage.passphrase.decrypt(text, passphrase)
        except pyrage.DecryptError as e:
            raise InputError(f"{where}: wrong passphrase, or not a passphrase-protected identity ({e})") from e
    if b"-----BEGIN" in text and b"PRIVATE KEY-----" in text:
        try:
            return [pyrage.ssh.Identity.from_buffer(text)]
        except pyrage.IdentityError as e:
            hint = "; remove its passphrase for onnxguard (ssh-keygen -p) or use an age identity" if \
                "decrypted" in str(e) else ""
            raise InputError(f"{where}: cannot use this ssh private key ({e}){hint}") from e
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"{where}: not an age identity file (not text)") from e
    found = []
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if not s.startswith(SECRET_PREFIX):
            what = "an age plugin identity (not supported)" if s.startswith("AGE-PLUGIN-") else \
                "a recipient (public); decryption needs the identity (AGE-SECRET-KEY-1...)" if s.startswith("age1") \
                else "not an age identity (AGE-SECRET-KEY-1...)"
            raise InputError(f"{where}:{n}: {what}")
        try:
            found.append(pyrage.x25519.Identity.from_str(s))
        except pyrage.IdentityError as e:
            raise InputError(f"{where}:{n}: not a valid age identity ({e})") from e
    if not found:
        raise InputError(f"{where}: holds no age identity (AGE-SECRET-KEY-1...)")
    return found


def identities(source: PathLike | None = None, passphrase: str | None = None) -> list[object]:
    """Parse identities from a file path or a literal ``AGE-SECRET-KEY-1...`` string.

    With ``source`` None, ``ONNXGUARD_AGE_IDENTITY`` is read (a path or the key). ``passphrase`` opens a
    passphrase-protected identity file (an age file encrypted with scrypt).
    """
    where = "--identity"
    if source is None:
        value = os.environ.get(IDENTITY_ENV, "").strip()
        if not value:
            raise InputError(f"no age identity: give --identity FILE or set {IDENTITY_ENV} (a path or the "
                             "AGE-SECRET-KEY-1... key)")
        source, where = value, f"${IDENTITY_ENV}"
    if isinstance(source, str) and source.strip().startswith(SECRET_PREFIX):
        return _parse_identities(source.strip().encode(), where, passphrase)
    p = Path(source)
    if not p.is_file():
        raise InputError(f"{p}: no such identity file (expected an age-keygen identity or an ssh private key)")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror or e})") from e
    return _parse_identities(data, str(p), passphrase)


def identities_for(root: PathLike, manifest: Manifest, identity: IdentitySource = None,
                   passphrase: str | None = None) -> list[object]:
    """The identities to open the bundle at ``root`` with: ``identity`` (a path, an ``AGE-SECRET-KEY-1...``
    string, or parsed identities), else the bundle's passphrase key opened with ``passphrase``, else the
    environment (``ONNXGUARD_AGE_IDENTITY``, then ``ONNXGUARD_AGE_PASSPHRASE``)."""
    if identity is not None and not isinstance(identity, str | os.PathLike):
        return list(identity)
    if identity is not None:
        return identities(identity, passphrase)
    if passphrase is None and not os.environ.get(IDENTITY_ENV):
        passphrase = os.environ.get(PASSPHRASE_ENV) or None
    if passphrase is not None:
        key_file = manifest.sealed.key_file if manifest.sealed else None
        if key_file is None:
            raise InputError(f"{root}: was not sealed with a passphrase; give an identity (--identity FILE)")
        return identities(Path(root) / key_file, passphrase)
    return identities(None)


def _resolve(b: Bundle, identity: IdentitySource, passphrase: str | None) -> list[object]:
    return identities_for(b.path, b.manifest, identity, passphrase)


# -- sealing ---------------------------------------------------------------------------------------------

class _HashingReader:
    """A file wrapper that hashes what pyrage reads from it."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data


class _HashingWriter:
    """A file wrapper that hashes what pyrage writes to it."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _tmpdir(target: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.absolute().parent))


def _finish(tmp: Path, manifest: Manifest, target: Path, overwrite: bool, mode: int = 0o755) -> Bundle:
    files = {rel: File(sha256=digest.file(p), size=p.stat().st_size)
             for rel, p in sorted(bundle_lib.files.regular_files(tmp).items()) if rel != MANIFEST}
    manifest = manifest.model_copy(update={"files": files})
    (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.chmod(tmp, mode)
    bundle_lib.place(tmp, target, overwrite)
    return bundle_lib.read(target)


def _copy_assets(b: Bundle, tmp: Path, skip: set[str]) -> None:
    for rel in b.manifest.files:
        if rel not in skip:
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(b.path / rel, dest)


def seal(bundle_dir: PathLike, recipients: Sequence[str] = (), out_dir: PathLike | None = None,
         passphrase: str | None = None, progress: Progress = silent) -> SealResult:
    """Encrypt the model and golden set of a bundle to ``recipients`` (and/or a passphrase), streaming.

    In place when ``out_dir`` is None (refused for a signed bundle: seal first, then sign); otherwise a new
    sealed bundle is written to ``out_dir`` and the source is left as it was. Either way the sealed bundle is
    built beside its target and renamed into place, so a failure leaves nothing half-sealed.
    """
    b = bundle_lib.read(bundle_dir)
    if b.sealed:
        raise InputError(f"{b.path}: is already sealed (to {', '.join(b.manifest.sealed.recipients) or 'a passphrase'})")
    parsed: dict[str, object] = {}
    for r in recipients:
        obj, canonical = parse_recipient(r)
        parsed.setdefault(canonical, obj)
    if passphrase is not None and not passphrase:
        raise InputError("the passphrase is empty; give a non-empty passphrase")
    if not parsed and passphrase is None:
        raise InputError("no recipient: give --recipient age1... (or an ssh public key), --recipients-file, "
                         "or a passphrase")
    signed = (b.path / SIGNATURE).exists()
    target = b.path if out_dir is None else Path(out_dir)
    if out_dir is None and signed:
        raise InputError(f"{b.path / SIGNATURE}: the bundle is signed and sealing changes its files, voiding the "
                         "signature; seal first, then sign: seal into a new directory (-o DIR) or delete model.sig, "
                         "then sign the sealed bundle")
    if out_dir is not None:
        bundle_lib.check_writable(target, overwrite=False)

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
    tmp = _tmpdir(target)
    try:
        sealed_files: dict[str, SealedFile] = {}
        for i, rel in enumerate(plain):
            progress(Event("seal", f"encrypting {rel} ({m.files[rel].size:,} bytes)", i, len(plain)))
            with open(b.path / rel, "rb") as src, open(tmp / (rel + SUFFIX), "wb") as dst:
                reader = _HashingReader(src)
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
        manifest = m.model_copy(update={
            "sealed": sealed,
            "model": m.model.model_copy(update={"file": m.model.file + SUFFIX}),
            "golden": m.golden.model_copy(update={"file": m.golden.file + SUFFIX}) if m.golden else None,
        })
        result = _finish(tmp, manifest, target, overwrite=out_dir is None)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"{target}: cannot write the sealed bundle ({e.strerror or e})") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(Event("seal", f"sealed {', '.join(plain)} to {len(parsed)} recipient(s)"
                           f"{' and a passphrase' if passphrase is not None else ''}", done=True))
    return SealResult(result, tuple(parsed), passphrase is not None, tuple((rel, rel + SUFFIX) for rel in plain),
                      dropped_signature=signed and out_dir is not None)


# -- opening ---------------------------------------------------------------------------------------------

def _bundle(source: Bundle | PathLike) -> Bundle:
    return source if isinstance(source, Bundle) else bundle_lib.read(source)


def _decrypt_error(path: Path, b: Bundle, e: Exception) -> InputError | BundleError:
    """A wrong identity is the caller's input (exit 2); a damaged file is the bundle's fault."""
    text = str(e)
    if "No matching keys" in text:
        to = ", ".join(b.manifest.sealed.recipients) or "a passphrase only"
        return InputError(f"{path}: none of the given identities can decrypt it (the bundle is sealed to {to})")
    return BundleError(f"{path}: cannot decrypt ({text or type(e).__name__}); the file is damaged or not an age file")


def _decrypt(b: Bundle, rel: str, ids: list[object], writer) -> SealedFile:
    """Stream-decrypt the sealed file ``rel`` into ``writer`` and check the plaintext's sha256."""
    entry = b.manifest.sealed.files[rel]
    path = b.path / rel
    w = _HashingWriter(writer)
    with open(path, "rb") as f:
        try:
            pyrage.decrypt_io(f, w, ids)
        except pyrage.DecryptError as e:
            raise _decrypt_error(path, b, e) from e
        except OSError as e:
            if e.errno is not None:  # a real I/O error (disk full, ...), not pyrage's "decryption error"
                raise
            raise _decrypt_error(path, b, e) from e
    if w.sha.hexdigest() != entry.sha256 or w.size != entry.size:
        raise BundleError(f"{path}: decrypts to a {entry.plaintext} whose sha256 is not the manifest's; the sealed file "
                          "was replaced (anyone with a recipient's public key can encrypt a file: check the signature)")
    return entry


class _Discard:
    def write(self, data) -> int:
        return len(data)


def check(source: Bundle | PathLike, identity: IdentitySource = None, passphrase: str | None = None) -> list[str]:
    """Decrypt every sealed file to nowhere (streaming) and check its plaintext sha256; the files checked."""
    b = _bundle(source)
    if not b.sealed:
        return []
    ids = _resolve(b, identity, passphrase)
    return [_decrypt(b, rel, ids, _Discard()).plaintext for rel in b.manifest.sealed.files]


def require_identity(b: Bundle, identity: IdentitySource, purpose: str = "decrypt it in memory") -> None:
    """Refuse, with the flag to give, a sealed bundle opened without an identity (the CLI's --identity)."""
    if b.manifest.sealed is not None and identity is None:
        raise InputError(f"{b.path}: the bundle is sealed; give --identity to {purpose}")


def open_file(source: Bundle | PathLike, rel: str, identity: IdentitySource = None,
              passphrase: str | None = None) -> bytes:
    """The plaintext of the bundle file ``rel`` (``model.onnx``, ``golden.npz``, or their ``.age`` names), in memory."""
    b = _bundle(source)
    if not b.sealed:
        if rel not in b.manifest.files:
            raise InputError(f"{b.path / rel}: not a file of the bundle")
        return (b.path / rel).read_bytes()
    names = {rel, rel + SUFFIX}
    match = [name for name, entry in b.manifest.sealed.files.items() if name in names or entry.plaintext == rel]
    if not match:
        raise InputError(f"{b.path / rel}: not a sealed file of the bundle (sealed: {', '.join(b.manifest.sealed.files)})")
    buf = io.BytesIO()
    _decrypt(b, match[0], _resolve(b, identity, passphrase), buf)
    return buf.getvalue()


def open_model(source: Bundle | PathLike, identity: IdentitySource = None, passphrase: str | None = None) -> bytes:
    """The bundle's ONNX model as bytes: decrypted in memory when sealed (never written to disk), sha256-checked."""
    b = _bundle(source)
    return open_file(b, b.manifest.model.file, identity, passphrase)


def open_golden(source: Bundle | PathLike, identity: IdentitySource = None, passphrase: str | None = None) -> GoldenSet:
    """The bundle's golden set, decrypted in memory when sealed."""
    b = _bundle(source)
    if b.manifest.golden is None:
        raise BundleError(f"{b.path}: the bundle has no golden set")
    return golden.from_bytes(open_file(b, b.manifest.golden.file, identity, passphrase), str(b.path / b.manifest.golden.file))


def load_session(source: Bundle | PathLike, identity: IdentitySource = None, passphrase: str | None = None,
                 threads: int = 0):
    """An ONNX Runtime CPU session over the bundle's model, built from bytes in memory."""
    from onnxguard.accuracy import parity

    return parity.session(open_model(source, identity, passphrase), threads)


def unseal(source: Bundle | PathLike, identity: IdentitySource, out_dir: PathLike, passphrase: str | None = None,
           progress: Progress = silent) -> Bundle:
    """Write a plaintext copy of a sealed bundle to ``out_dir`` (a new directory, mode 0700): for operators only.

    The copy is not signed (its manifest differs from the signed one); sign it again if it is shipped.
    """
    b = _bundle(source)
    if not b.sealed:
        raise InputError(f"{b.path}: is not sealed; there is nothing to unseal")
    if out_dir is None or str(out_dir) == "":
        raise InputError("unseal writes plaintext to an explicit new directory only: give -o OUT_DIR")
    target = Path(out_dir)
    if target.absolute() == b.path.absolute():
        raise InputError(f"{target}: unseal into a new directory, not into the sealed bundle itself")
    bundle_lib.check_writable(target, overwrite=False)
    ids = _resolve(b, identity, passphrase)
    m, sealed = b.manifest, b.manifest.sealed
    tmp = _tmpdir(target)
    try:
        for i, (rel, entry) in enumerate(sealed.files.items()):
            progress(Event("unseal", f"decrypting {rel}", i, len(sealed.files)))
            with open(tmp / entry.plaintext, "wb") as out:
                _decrypt(b, rel, ids, out)
        _copy_assets(b, tmp, set(sealed.files) | ({sealed.key_file} if sealed.key_file else set()))
        plain = {rel: e.plaintext for rel, e in sealed.files.items()}
        manifest = m.model_copy(update={
            "sealed": None,
            "model": m.model.model_copy(update={"file": plain[m.model.file]}),
            "golden": m.golden.model_copy(update={"file": plain[m.golden.file]}) if m.golden else None,
        })
        result = _finish(tmp, manifest, target, overwrite=False, mode=0o700)  # plaintext: its owner only
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"{target}: cannot write the unsealed bundle ({e.strerror or e})") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(Event("unseal", f"unsealed to {target}", done=True))
    return result


__all__ = ["IDENTITY_ENV", "KEY_FILE", "PASSPHRASE_ENV", "SealResult", "check", "identities", "identities_for", "load_session", "open_file",
           "open_golden", "open_model", "parse_recipient", "read_recipients_file", "seal", "unseal"]
