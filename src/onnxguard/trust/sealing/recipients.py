"""age recipients: who a sealed bundle is encrypted to (X25519 ``age1...``, ``ssh-ed25519``/``ssh-rsa`` keys)."""

from __future__ import annotations

import os
from pathlib import Path

import pyrage

from onnxguard.errors import InputError

PathLike = str | os.PathLike[str]
SECRET_PREFIX = "AGE-SECRET-KEY-1"
SSH_TYPES = ("ssh-ed25519", "ssh-rsa")
# A recipients file is a few lines of public keys; far more is not one, and is not read.
MAX_RECIPIENTS_BYTES = 1 << 20

def parse_recipient(text: str, where: str = "recipient") -> tuple[object, str]:
    """A pyrage recipient and its canonical text (an ssh key's comment is dropped); errors begin with ``where``."""
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
    from onnxguard.bundle import files  # the one reader of files a caller names

    p = Path(path)
    if not os.path.lexists(p):
        raise InputError(f"{p}: no such file (expected a recipients file, one age1... or ssh key per line)")
    try:
        lines = files.read_regular(p, MAX_RECIPIENTS_BYTES, what="a recipients file").data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: cannot read as text ({e})") from e
    found = []
    for n, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#"):
            parse_recipient(line, f"{p}:{n}")
            found.append(line.strip())
    if not found:
        raise InputError(f"{p}: holds no recipients")
    return found

