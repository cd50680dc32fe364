"""The simulation platform: attestation signed by an Ed25519 key the operator holds. It proves only that the
holder of that key vouched for the statement; nothing isolates the process from the host, and every statement
it signs says ``"platform": "simulation"``. It exists so the whole protocol (statement, verification, key
release, encryption) runs and is tested where no enclave is available; a hardware platform replaces it behind
the same interface.

Key files (``onnxguard keygen --platform --out DIR``)::

    DIR/platform-key.pem      Ed25519 private key, PKCS#8 PEM (mode 0600): ``serve --platform-key``
    DIR/platform-key.pub.pem  its public key: what verifiers trust (``predict --platform-key``, the broker policy)

The quote is ``{"key": "sha256:<fingerprint>", "signature": <Ed25519 over DOMAIN || report_data>}`` (JSON).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from onnxguard.confidential.platform.interface import (
    MAX_REPORT_DATA,
    SIMULATION,
    Claims,
    Evidence,
    PlatformError,
    PlatformPolicy,
)
from onnxguard.errors import InputError, Remedy
from onnxguard.trust import keys

PRIVATE_KEY = "platform-key.pem"
PUBLIC_KEY = "platform-key.pub.pem"
DOMAIN = b"onnxguard-simulation-quote-v1\n"


@dataclass(frozen=True)
class PlatformKeyPaths:
    """The files ``generate_key`` writes."""

    private_key: Path
    public_key: Path
    fingerprint: str

    def to_dict(self) -> dict[str, str]:
        return {"private_key": str(self.private_key), "public_key": str(self.public_key),
                "fingerprint": self.fingerprint}


def fingerprint(key: Ed25519PublicKey) -> str:
    """``sha256:`` of the key's DER SubjectPublicKeyInfo."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The platform's private key from a PEM file (``InputError`` when it is not an unencrypted Ed25519 key)."""
    return keys.ed25519_private(path, "platform key", "give the simulation platform's private key (platform-key.pem)")


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """A trusted platform public key (PEM bytes), checked to be Ed25519."""
    return keys.ed25519_public(path, "platform public key",
                               "give the platform-key.pub.pem written beside the platform key")[1]


def generate_key(out_dir: str | os.PathLike[str]) -> PlatformKeyPaths:
    """Write a platform key pair into ``out_dir`` (created); existing files are never overwritten."""
    out = Path(out_dir)
    private, public = out / PRIVATE_KEY, out / PUBLIC_KEY
    for p in (private, public):
        if os.path.lexists(p):
            raise InputError(f"{p}: already exists (keys are never overwritten)", remedy=Remedy.OUTPUT)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out}: cannot create the key directory ({e.strerror or e})") from None
    key = Ed25519PrivateKey.generate()
    pems = (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    written: list[Path] = []
    try:
        for p, data, mode in ((private, pems[0], 0o600), (public, pems[1], 0o644)):
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
            written.append(p)
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)
                f.write(data)
    except OSError as e:
        for p in written:  # both or none
            p.unlink(missing_ok=True)
        raise InputError(f"{e.filename or out}: cannot write the platform key ({e.strerror})") from None
    return PlatformKeyPaths(private, public, fingerprint(key.public_key()))


class SimulationPlatform:
    """Quotes with the operator's platform key (``private_key``); verifies against trusted public keys."""

    name = SIMULATION
    hardware = False

    def __init__(self, private_key: Ed25519PrivateKey | None = None) -> None:
        self._key = private_key
        self.fingerprint = fingerprint(private_key.public_key()) if private_key is not None else None

    def quote(self, report_data: bytes) -> Evidence:
        if self._key is None:
            raise InputError("the simulation platform needs its private key to quote",
                             hint="give the simulation platform's private key (platform-key.pem)")
        if len(report_data) > MAX_REPORT_DATA:
            raise InputError(f"report data of {len(report_data)} bytes, over {MAX_REPORT_DATA}")
        signature = self._key.sign(DOMAIN + report_data)
        quote = orjson.dumps({"key": self.fingerprint, "signature": base64.b64encode(signature).decode()})
        return Evidence(SIMULATION, report_data, quote)

    def verify(self, evidence: Evidence, policy: PlatformPolicy) -> Claims:
        if evidence.platform != SIMULATION:
            raise PlatformError(f"evidence from platform {evidence.platform!r}, not {SIMULATION!r}")
        try:
            doc = orjson.loads(evidence.quote)
            key_id, signature = doc["key"], base64.b64decode(doc["signature"], validate=True)
        except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error, ValueError):
            raise PlatformError("the simulation quote is malformed") from None
        trusted: dict[str, Ed25519PublicKey] = {}
        for pem in policy.trusted_keys:
            loaded = serialization.load_pem_public_key(pem)
            if isinstance(loaded, Ed25519PublicKey):
                trusted[fingerprint(loaded)] = loaded
        if not trusted:
            raise PlatformError("no platform public key is trusted, so no simulation quote can verify")
        key = trusted.get(key_id) if isinstance(key_id, str) else None
        if key is None:
            raise PlatformError(f"signed by platform key {str(key_id)[:23]}..., which the policy does not trust")
        try:
            key.verify(signature, DOMAIN + evidence.report_data)
        except InvalidSignature:
            raise PlatformError(f"the quote's signature does not verify under platform key {key_id[:23]}...") from None
        return Claims(SIMULATION, False, evidence.report_data, {"platform_key": key_id}, f"platform key {key_id}")
