"""The seam where a trusted execution environment plugs in: ``Platform.quote(report_data) -> Evidence`` on the
server, ``Platform.verify(evidence, PlatformPolicy) -> Claims`` on the verifier (the client, the key broker).

A platform knows nothing of models, nonces or keys: it vouches for 64 bytes or fewer of ``report_data`` (here
always the sha256 of the canonical attestation statement) and for the measurements of what runs. Everything
else (the statement, its checks, the encryption) is the same whichever platform signed. Implementations:

    simulation   an Ed25519 key the operator holds (``onnxguard keygen --platform``): proves nothing about the
                 host, and says so (``hardware = False``); policies that demand hardware refuse it
    tdx, sev-snp, nitro   names reserved for hardware quotes (docs/confidential.md: what each puts in
                 report_data and which registers a policy pins); no verifier ships in this build
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from onnxguard.errors import CheckFailed

SIMULATION = "simulation"
HARDWARE = ("tdx", "sev-snp", "nitro")
KNOWN = (SIMULATION, *HARDWARE)
MAX_REPORT_DATA = 64  # what a TDX or SEV-SNP report holds; Nitro's user_data holds more


class PlatformError(CheckFailed):
    """Evidence that does not verify: a bad signature, an untrusted key, a register the policy does not pin."""


@dataclass(frozen=True)
class Evidence:
    """What a platform produced for some ``report_data``: its name and its opaque, signed quote."""

    platform: str
    report_data: bytes
    quote: bytes = field(repr=False)

    def to_dict(self) -> dict[str, str]:
        return {"platform": self.platform, "report_data": self.report_data.hex(),
                "quote": base64.b64encode(self.quote).decode()}

    @classmethod
    def from_dict(cls, data: object) -> Evidence:
        """Evidence from its wire form; ``PlatformError`` when it is malformed."""
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str)
                                                 for k in ("platform", "report_data", "quote")):
            raise PlatformError("the evidence is not an object with string fields platform, report_data, quote")
        try:
            report_data = bytes.fromhex(data["report_data"])
            quote = base64.b64decode(data["quote"], validate=True)
        except (ValueError, binascii.Error) as e:
            raise PlatformError(f"the evidence is malformed ({e})") from None
        return cls(data["platform"], report_data, quote)


@dataclass(frozen=True)
class PlatformPolicy:
    """What a verifier trusts of the platform: the simulation's public keys (PEM), and for hardware the
    measurement registers it pins (register name -> allowed hex values, e.g. ``{"MRTD": {...}}``)."""

    trusted_keys: tuple[bytes, ...] = ()
    registers: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Claims:
    """What verified evidence vouches for: the report data, whether hardware isolates the process, the
    measurement registers (simulation: the fingerprint of the key that signed), and who vouched."""

    platform: str
    hardware: bool
    report_data: bytes
    registers: Mapping[str, str]
    vouched_by: str

    def to_dict(self) -> dict[str, Any]:
        return {"platform": self.platform, "hardware": self.hardware, "report_data": self.report_data.hex(),
                "registers": dict(self.registers), "vouched_by": self.vouched_by}


class Platform(Protocol):
    """A trusted execution environment, or its simulation."""

    name: str
    hardware: bool

    def quote(self, report_data: bytes) -> Evidence:
        """Evidence binding ``report_data`` to this platform and to what runs on it."""
        ...

    def verify(self, evidence: Evidence, policy: PlatformPolicy) -> Claims:
        """The claims of ``evidence`` once it verifies under ``policy``; ``PlatformError`` otherwise."""
        ...
