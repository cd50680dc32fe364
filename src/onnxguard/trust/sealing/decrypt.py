"""Opening a sealed bundle in memory: each sealed file decrypted from the bytes that were hashed when the bundle
was read, its plaintext checked against the manifest's sha256; plaintext never touches the disk."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Protocol

import pyrage

from onnxguard import bundle as bundle_lib
from onnxguard.bundle import Bundle, files, golden
from onnxguard.bundle.golden import GoldenSet
from onnxguard.bundle.manifest import SealedFile
from onnxguard.errors import BundleError, InputError, Remedy
from onnxguard.trust.sealing.identities import IdentitySource, identities_for

PathLike = str | os.PathLike[str]
SUFFIX = ".age"


class Reader(Protocol):
    """What age ciphertext is read from: a file opened for reading, or a reader hashing it on the way."""

    def read(self, n: int = -1, /) -> bytes: ...


class Writer(Protocol):
    """What decrypted plaintext is written to: a file, or a buffer in memory."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


# An identity that opens nothing, or a passphrase that is wrong, is the caller's input (exit 2).
_NO_MATCH = "No matching keys"


def _bundle(source: Bundle | PathLike) -> Bundle:
    """A bundle read without keeping the sealed files' bytes: they are streamed through decryption."""
    if isinstance(source, Bundle):
        return source
    return bundle_lib.read(source, keep=lambda rel: not rel.endswith(SUFFIX))


def _decrypt_error(path: Path, b: Bundle, e: Exception) -> InputError | BundleError:
    """A wrong identity is the caller's input (exit 2); a damaged file is the bundle's fault."""
    text = str(e)
    if _NO_MATCH in text:
        sealed = b.manifest.sealed
        to = ", ".join(sealed.recipients) if sealed and sealed.recipients else "a passphrase only"
        return InputError(f"{path}: none of the given identities can decrypt it (the bundle is sealed to {to})",
                          remedy=Remedy.IDENTITY)
    return BundleError(f"{path}: cannot decrypt ({text or type(e).__name__}); the file is damaged or not an age file")


class _HashingWriter:
    """A file-like sink that hashes and counts what pyrage writes to it, then hands it on."""

    def __init__(self, f: Writer) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return int(self.f.write(data))

    def flush(self) -> None:
        self.f.flush()


def decrypt_to(b: Bundle, rel: str, ids: list[object], writer: Writer) -> SealedFile:
    """Stream-decrypt the sealed file ``rel`` from the bytes hashed when ``b`` was read into ``writer``, and
    check the plaintext's size and sha256 against the manifest."""
    sealed = b.manifest.sealed
    if sealed is None or rel not in sealed.files:
        raise InputError(f"{b.path / rel}: not a sealed file of the bundle")
    entry = sealed.files[rel]
    path = b.path / rel
    w = _HashingWriter(writer)
    if rel in b.data:  # the bytes hashed when the bundle was read
        _decrypt_io(io.BytesIO(b.data[rel]), w, ids, path, b)
    else:  # streamed from disk (constant memory), the ciphertext hashed as it is read and checked again
        listed = b.manifest.files[rel]
        f, _ = files.open_regular(path, listed.size)
        with f:
            reader = files.HashingReader(f, listed.size, path)
            _decrypt_io(reader, w, ids, path, b)
        if reader.sha.hexdigest() != listed.sha256 or reader.size != listed.size:
            raise BundleError(f"{path}: changed after the bundle was read (its sha256 is no longer the manifest's)")
    if w.sha.hexdigest() != entry.sha256 or w.size != entry.size:
        raise BundleError(f"{path}: decrypts to a {entry.plaintext} whose sha256 is not the manifest's; the sealed "
                          "file was replaced",
                          hint="anyone with a recipient's public key can encrypt a file: check the bundle's signature")
    return entry


def _decrypt_io(reader: Reader, writer: Writer, ids: list[object], path: Path, b: Bundle) -> None:
    try:
        pyrage.decrypt_io(reader, writer, ids)
    except pyrage.DecryptError as e:
        raise _decrypt_error(path, b, e) from e
    except OSError as e:
        if e.errno is not None:  # a real I/O error of the writer (disk full, ...), not pyrage's "decryption error"
            raise
        raise _decrypt_error(path, b, e) from e


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass


def check(source: Bundle | PathLike, identity: IdentitySource = None, passphrase: str | None = None) -> list[str]:
    """Decrypt every sealed file to nowhere (streaming) and check its plaintext sha256; the files checked."""
    b = _bundle(source)
    if b.manifest.sealed is None:
        return []
    ids = identities_for(b.path, b.manifest, identity, passphrase)
    return [decrypt_to(b, rel, ids, _Discard()).plaintext for rel in b.manifest.sealed.files]


def open_file(source: Bundle | PathLike, rel: str, identity: IdentitySource = None,
              passphrase: str | None = None) -> bytes:
    """The plaintext of the bundle file ``rel`` (``model.onnx``, ``golden.npz``, or their ``.age`` names), in
    memory, from the bytes hashed when the bundle was read."""
    b = _bundle(source)
    sealed = b.manifest.sealed
    if sealed is None:
        if rel not in b.data:
            raise InputError(f"{b.path / rel}: not a file of the bundle")
        return bytes(b.data[rel])
    match = [name for name, entry in sealed.files.items() if name in (rel, rel + SUFFIX) or entry.plaintext == rel]
    if not match:
        raise InputError(f"{b.path / rel}: not a sealed file of the bundle (sealed: {', '.join(sealed.files)})")
    buf = io.BytesIO()
    decrypt_to(b, match[0], identities_for(b.path, b.manifest, identity, passphrase), buf)
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
    return golden.from_bytes(open_file(b, b.manifest.golden.file, identity, passphrase),
                             str(b.path / b.manifest.golden.file))
