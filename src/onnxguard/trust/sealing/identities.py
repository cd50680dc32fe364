"""age identities: what opens a sealed bundle (an ``age-keygen`` file, an OpenSSH private key, a literal
``AGE-SECRET-KEY-1...`` string, or the bundle's own passphrase-protected key file).

The library never reads the environment: an identity is given, or there is none. (The command line reads
``ONNXGUARD_AGE_IDENTITY`` and ``ONNXGUARD_AGE_PASSPHRASE`` and passes what it found.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pyrage

from onnxguard.bundle.manifest import Manifest
from onnxguard.errors import InputError, Remedy
from onnxguard.trust.sealing.recipients import SECRET_PREFIX

PathLike = str | os.PathLike[str]
AGE_MAGIC = b"age-encryption.org/v1"
# An identity file is a few lines; a passphrase-protected one a few hundred bytes.
MAX_IDENTITY_BYTES = 1 << 20
# What an identity can be given as: a file path, a literal AGE-SECRET-KEY-1... string, or parsed identities.
IdentitySource = str | os.PathLike[str] | Sequence[object] | None

def _parse_identities(text: bytes, where: str, passphrase: str | None) -> list[object]:
    if text.startswith(AGE_MAGIC):
        if passphrase is None:
            raise InputError(f"{where}: a passphrase-protected identity file, and no passphrase was given",
                             remedy=Remedy.PASSPHRASE)
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


def identities(source: PathLike | str, passphrase: str | None = None, where: str | None = None) -> list[object]:
    """Parse identities from a file path or a literal ``AGE-SECRET-KEY-1...`` string. ``passphrase`` opens a
    passphrase-protected identity file (an age file encrypted with scrypt). ``where`` names the source in
    errors (default: the path)."""
    if isinstance(source, str) and source.strip().startswith(SECRET_PREFIX):
        return _parse_identities(source.strip().encode(), where or "the identity", passphrase)
    from onnxguard.bundle import files  # the one reader of untrusted files

    p = Path(source)
    if not os.path.lexists(p):
        raise InputError(f"{p}: no such identity file", hint="expected an age-keygen identity or an ssh private key")
    data = files.read_regular(p, MAX_IDENTITY_BYTES).data
    return _parse_identities(data, where or str(p), passphrase)


def identities_from_bytes(data: bytes, where: str, passphrase: str | None = None) -> list[object]:
    """Parse identities from bytes already read (a file descriptor the caller was handed, for example)."""
    if len(data) > MAX_IDENTITY_BYTES:
        raise InputError(f"{where}: over {MAX_IDENTITY_BYTES:,} bytes, not an identity file")
    return _parse_identities(data, where, passphrase)


def identities_for(root: PathLike, manifest: Manifest, identity: IdentitySource = None,
            passphrase: str | None = None) -> list[object]:
    """The identities to open the bundle at ``root`` with: ``identity`` (a path, an ``AGE-SECRET-KEY-1...``
    string, or parsed identities), else the bundle's own passphrase key opened with ``passphrase``. Neither:
    ``InputError`` with ``Remedy.IDENTITY``."""
    if identity is not None and not isinstance(identity, str | os.PathLike):
        return list(identity)
    if identity is not None:
        return identities(identity, passphrase)
    if passphrase is not None:
        key_file = manifest.sealed.key_file if manifest.sealed else None
        if key_file is None:
            raise InputError(f"{root}: was not sealed with a passphrase", hint="open it with an age identity",
                             remedy=Remedy.IDENTITY)
        return identities(Path(root) / key_file, passphrase)
    raise InputError(f"{root}: the bundle is sealed and no age identity was given", remedy=Remedy.IDENTITY)



