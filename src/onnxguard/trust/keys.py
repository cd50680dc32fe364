"""``keys.generate(out_dir) -> KeyPaths``: a signing key pair and an age identity, for ``sign`` and ``seal``.

::

    out_dir/
      signing-key.pem       EC P-256 private key, PKCS#8 PEM (mode 0600): ``onnxguard sign --key``
      signing-key.pub.pem   its public key, SubjectPublicKeyInfo PEM: ``onnxguard verify --public-key``,
                            ``model_signing verify key --public_key``
      age-identity.txt      age X25519 identity, the format of ``age-keygen`` (mode 0600): ``unseal --identity``
      age-recipient.txt     its recipient (``age1...``): ``seal --recipient`` / ``--recipients-file``

P-256 is the first of the curves the OpenSSF ``model-signing`` key signer accepts (P-256, P-384, P-521).
Existing key files are never overwritten: a lost key cannot be recovered, so ``generate`` refuses before
writing anything.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyrage
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from onnxguard.bundle.manifest import now
from onnxguard.errors import InputError, Remedy

PRIVATE_KEY = "signing-key.pem"
PUBLIC_KEY = "signing-key.pub.pem"
AGE_IDENTITY = "age-identity.txt"
AGE_RECIPIENT = "age-recipient.txt"


@dataclass(frozen=True)
class KeyPaths:
    """The files ``generate`` writes (signing key pair, age identity and recipient) and the recipient."""

    private_key: Path
    public_key: Path
    age_identity: Path
    age_recipient: Path
    recipient: str  # the age recipient string, age1...

    def to_dict(self) -> dict[str, Any]:
        return {"private_key": str(self.private_key), "public_key": str(self.public_key),
                "age_identity": str(self.age_identity), "age_recipient": str(self.age_recipient),
                "recipient": self.recipient}


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # the umask may have narrowed it; never widened beyond ``mode``


def existing(out_dir: str | os.PathLike[str]) -> KeyPaths | None:
    """The key set ``generate`` wrote into ``out_dir``, or None when any of its files is missing."""
    out = Path(out_dir)
    paths = KeyPaths(out / PRIVATE_KEY, out / PUBLIC_KEY, out / AGE_IDENTITY, out / AGE_RECIPIENT, "")
    if not all(p.is_file() for p in (paths.private_key, paths.public_key, paths.age_identity, paths.age_recipient)):
        return None
    recipient = paths.age_recipient.read_text(encoding="utf-8").strip()
    return dataclasses.replace(paths, recipient=recipient)


def generate(out_dir: str | os.PathLike[str]) -> KeyPaths:
    """Write a P-256 signing key pair and an age identity with its recipient into ``out_dir`` (created)."""
    out = Path(out_dir)
    paths = KeyPaths(out / PRIVATE_KEY, out / PUBLIC_KEY, out / AGE_IDENTITY, out / AGE_RECIPIENT, "")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory; give a directory for the keys")
    existing = [p for p in (paths.private_key, paths.public_key, paths.age_identity, paths.age_recipient)
                if os.path.lexists(p)]
    if existing:
        raise InputError(f"{existing[0]}: already exists (keys are never overwritten)", remedy=Remedy.OUTPUT)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out}: cannot create the key directory ({e.strerror or e})") from e

    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    identity = pyrage.x25519.Identity.generate()
    recipient = str(identity.to_public())
    identity_text = f"# created: {now()}\n# public key: {recipient}\n{identity}\n"
    written: list[Path] = []
    try:
        for path, data, mode in ((paths.private_key, private_pem, 0o600), (paths.public_key, public_pem, 0o644),
                                 (paths.age_identity, identity_text.encode(), 0o600),
                                 (paths.age_recipient, f"{recipient}\n".encode(), 0o644)):
            _write(path, data, mode)
            written.append(path)
    except OSError as e:
        for p in written:  # all four or none: a half-written key set is worse than none
            p.unlink(missing_ok=True)
        raise InputError(f"{out}: cannot write the keys ({e.strerror or e})") from e
    return KeyPaths(paths.private_key, paths.public_key, paths.age_identity, paths.age_recipient, recipient)


# A PEM key is well under a kilobyte; reading more is reading something that is not a key.
MAX_KEY_BYTES = 64 * 1024


def _key_bytes(path: Path, what: str) -> bytes:
    from onnxguard.bundle import files  # the one reader of untrusted files

    return files.read_regular(path, MAX_KEY_BYTES, what=what).data


def ed25519_private(path: str | os.PathLike[str], what: str, hint: str) -> Ed25519PrivateKey:
    """An unencrypted Ed25519 private key from a PEM file (the audit log's checkpoint key, a platform key);
    ``InputError`` naming ``what``, with ``hint``, when the file is not one."""
    p = Path(path)
    try:
        key = serialization.load_pem_private_key(_key_bytes(p, what), password=None)
    except (ValueError, TypeError) as e:
        raise InputError(f"{p}: not an unencrypted PEM private key ({str(e).splitlines()[0]})", hint=hint) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{p}: the {what} must be an Ed25519 key, not {type(key).__name__}", hint=hint)
    return key


def ed25519_public(path: str | os.PathLike[str], what: str, hint: str) -> tuple[Ed25519PublicKey, bytes]:
    """An Ed25519 public key from a PEM file, and the file's bytes; ``InputError`` as :func:`ed25519_private`."""
    p = Path(path)
    data = _key_bytes(p, what)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise InputError(f"{p}: not a PEM public key ({str(e).splitlines()[0]})", hint=hint) from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{p}: the {what} must be an Ed25519 key, not {type(key).__name__}", hint=hint)
    return key, data
