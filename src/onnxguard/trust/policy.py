"""``TrustPolicy``: what a bundle must prove before ``trust.open_bundle`` hands it on.

Two parts, each a rule or an explicit, loudly named waiver:

- ``signature``: ``PublicKeys`` (any one of a set of EC public keys), ``Certificates`` (an X.509 chain),
  ``SigstoreIdentity`` (keyless: signer identity and OIDC issuer), or ``UnsafeUnsigned`` — the only way to
  accept a bundle whose signature is absent or was not checked.
- ``scan``: ``ScanRule`` (a scan policy and the severity that fails), or ``UnsafeUnscanned`` — the only way to
  accept a model that could not be scanned (a sealed bundle opened without its identity). Findings at or above
  ``fail_on`` fail under either.

There is no default signature rule: with ``signature=None`` the signature step is "not checked", a failure,
so a caller that does not say how the bundle is trusted cannot open it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from onnxguard.scan.interface import Severity
from onnxguard.scan.policy import Policy, for_profile

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class PublicKeys:
    """The bundle must be signed by one of these EC public keys (PEM files, or PEM bytes)."""

    keys: tuple[Path | bytes, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("PublicKeys needs at least one key")


@dataclass(frozen=True)
class Certificates:
    """The bundle must be signed with a certificate that chains to these PEM certificates (empty: the system's)."""

    chain: tuple[Path, ...] = ()


@dataclass(frozen=True)
class SigstoreIdentity:
    """Keyless: the bundle must carry a Sigstore signature by ``identity`` from ``issuer``. Needs a network."""

    identity: str
    issuer: str
    staging: bool = False


@dataclass(frozen=True)
class UnsafeUnsigned:
    """UNSAFE: accept a bundle whose signature is absent or is not checked. A present signature is still
    reported as not checked; nothing about who made the bundle is known."""


SignatureRule = PublicKeys | Certificates | SigstoreIdentity
SignaturePolicy = SignatureRule | UnsafeUnsigned


@dataclass(frozen=True)
class ScanRule:
    """Scan the plaintext model under ``policy``; a finding at or above ``fail_on`` fails. A model that could
    not be scanned fails too."""

    policy: Policy = field(default_factory=lambda: for_profile("default"))
    fail_on: Severity = Severity.MEDIUM


@dataclass(frozen=True)
class UnsafeUnscanned(ScanRule):
    """UNSAFE: like ``ScanRule``, but a model that could not be scanned (sealed, opened without its identity)
    is accepted. Whatever is scanned still fails at ``fail_on``."""


@dataclass(frozen=True)
class TrustPolicy:
    """What the door requires: a signature rule (None: the signature step fails) and a scan rule."""

    signature: SignaturePolicy | None  # None: no rule given; the signature step is not checked, and fails
    scan: ScanRule = field(default_factory=ScanRule)

    @property
    def unsafe(self) -> tuple[str, ...]:
        """The waivers this policy grants, by name (empty for a policy that waives nothing)."""
        return tuple(type(p).__name__ for p in (self.signature, self.scan)
                     if isinstance(p, UnsafeUnsigned | UnsafeUnscanned))
