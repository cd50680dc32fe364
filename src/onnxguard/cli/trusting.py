"""The trust options every verb that opens a bundle takes, and the one call that opens it through the door.

The command line is the only place that reads the environment for secrets: ``ONNXGUARD_AGE_IDENTITY`` (a
path or the ``AGE-SECRET-KEY-1...`` key) when no ``--identity`` is given, and a passphrase from the variable
named by ``--passphrase-env`` (default ``ONNXGUARD_AGE_PASSPHRASE``). The library takes what this found.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from onnxguard.errors import InputError
from onnxguard.progress import Progress, silent
from onnxguard.scan.interface import Severity
from onnxguard.scan.policy import Policy, for_profile
from onnxguard.trust import (
    Certificates,
    OpenedBundle,
    PublicKeys,
    ScanRule,
    SigstoreIdentity,
    TrustPolicy,
    UnsafeUnscanned,
    UnsafeUnsigned,
    open_bundle,
)
from onnxguard.trust.policy import SignaturePolicy
from onnxguard.trust.sealing import identities

IDENTITY_ENV = "ONNXGUARD_AGE_IDENTITY"
PASSPHRASE_ENV = "ONNXGUARD_AGE_PASSPHRASE"

PublicKey = Annotated[list[Path] | None, typer.Option(
    "--public-key", help="EC public key (PEM) the bundle must be signed by; repeat to accept any of several.")]
AllowUnsigned = Annotated[bool, typer.Option(
    "--allow-unsigned", help="UNSAFE: accept a bundle whose signature is absent or not checked.")]
AllowUnscanned = Annotated[bool, typer.Option(
    "--allow-unscanned", help="UNSAFE: accept a sealed bundle opened without its identity, whose model "
    "therefore was not decrypted or scanned.")]
Identity = Annotated[Path | None, typer.Option(
    "--identity", "-i", help=f"age identity or ssh private key for a sealed bundle (default: ${IDENTITY_ENV}, a "
    "path or the key).")]
PassphraseEnv = Annotated[str | None, typer.Option(
    "--passphrase-env", help=f"Read the bundle's passphrase from this environment variable (default: "
    f"{PASSPHRASE_ENV} when set).")]


def env_secret(var: str | None, flag: str) -> str | None:
    """The value of the environment variable named by ``flag`` (never the secret itself on the command line)."""
    if var is None:
        return None
    value = os.environ.get(var)
    if value is None:
        raise InputError(f"{flag} {var}: the environment variable {var} is not set")
    return value


def identity_source(identity: Path | None) -> list[object] | None:
    """``--identity``, else ``$ONNXGUARD_AGE_IDENTITY`` (a path or the key itself), parsed; None when neither."""
    if identity is not None:
        return identities(identity)
    value = os.environ.get(IDENTITY_ENV, "").strip()
    if value:
        return identities(value, where=f"${IDENTITY_ENV}")
    return None


def identity_from_fd(fd: int) -> list[object]:
    """The identity written to an inherited file descriptor (``3<identity.txt``, a pipe from a secret store):
    read once, closed, never a path on disk that the server names."""
    from onnxguard.trust.sealing.identities import MAX_IDENTITY_BYTES, identities_from_bytes

    chunks, size = [], 0
    try:
        while size <= MAX_IDENTITY_BYTES and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise InputError(f"--identity-fd {fd}: cannot read ({e.strerror})") from e
    finally:
        try:
            os.close(fd)
        except OSError:
            pass  # already closed or never open: the read above said so
    return identities_from_bytes(b"".join(chunks), f"--identity-fd {fd}")


def passphrase(passphrase_env: str | None) -> str | None:
    """The passphrase from ``--passphrase-env VAR``, else from ``$ONNXGUARD_AGE_PASSPHRASE`` when set."""
    if passphrase_env is not None:
        return env_secret(passphrase_env, "--passphrase-env")
    return os.environ.get(PASSPHRASE_ENV) or None


def signature_policy(public_key: list[Path] | None, allow_unsigned: bool, certificate_chain: list[Path] | None = None,
                     sigstore_identity: str | None = None, sigstore_issuer: str | None = None
                     ) -> SignaturePolicy | None:
    """The signature rule the options ask for; None when none was given (the door then fails the signature
    step as not checked, and the error names --public-key and --allow-unsigned)."""
    given = [x for x in (public_key, certificate_chain, sigstore_identity) if x]
    if len(given) > 1:
        raise InputError("give one of --public-key, --certificate-chain or --sigstore-identity, not several")
    if (sigstore_identity is None) != (sigstore_issuer is None):
        raise InputError("Sigstore verification needs both --sigstore-identity and --sigstore-issuer")
    if given and allow_unsigned:
        raise InputError("--allow-unsigned skips the signature check; do not give it with a key or certificate")
    if public_key:
        return PublicKeys(tuple(public_key))
    if certificate_chain is not None:
        return Certificates(tuple(certificate_chain))
    if sigstore_identity is not None and sigstore_issuer is not None:
        return SigstoreIdentity(sigstore_identity, sigstore_issuer)
    return UnsafeUnsigned() if allow_unsigned else None


def scan_rule(allow_unscanned: bool, policy: Policy | None = None, fail_on: Severity = Severity.MEDIUM) -> ScanRule:
    rule = UnsafeUnscanned if allow_unscanned else ScanRule
    return rule(policy or for_profile("default"), fail_on)


def open_from_cli(path: Path, *, public_key: list[Path] | None, allow_unsigned: bool, identity: Path | None,
                  passphrase_env: str | None = None, allow_unscanned: bool = False,
                  fail_on: Severity = Severity.MEDIUM, progress: Progress = silent) -> OpenedBundle:
    """Open the bundle at ``path`` through the door with the policy the trust options describe; the door's scan
    refuses the model at a finding of ``fail_on`` or above (a verb's ``--fail-on``)."""
    policy = TrustPolicy(signature_policy(public_key, allow_unsigned), scan_rule(allow_unscanned, fail_on=fail_on))
    return open_bundle(path, policy, identity_source(identity), passphrase(passphrase_env), progress)
