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

from onnxguard.trust.sealing.decrypt import SUFFIX, check, open_file, open_golden, open_model
from onnxguard.trust.sealing.identities import IdentitySource, identities, identities_for
from onnxguard.trust.sealing.recipients import parse_recipient, read_recipients_file
from onnxguard.trust.sealing.seal import KEY_FILE, SealResult, seal, unseal

__all__ = ["KEY_FILE", "SUFFIX", "IdentitySource", "SealResult", "check", "identities", "identities_for",
           "open_file", "open_golden", "open_model", "parse_recipient", "read_recipients_file", "seal", "unseal"]
