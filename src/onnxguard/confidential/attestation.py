"""``attestation.attest(facts, platform, nonce) -> Attestation``: the statement a confidential server makes
about itself, bound to a platform quote.

The statement is canonical JSON (keys sorted, no spaces) of::

    format       "onnxguard-attestation-v1"
    platform     "simulation" | "tdx" | "sev-snp" | "nitro"
    nonce        the verifier's fresh nonce (hex)
    time         unix seconds when the statement was made
    code         {"measurement": sha256 over the installed onnxguard files and the ONNX Runtime version,
                  "onnxguard": version, "onnxruntime": version}
    models       [{"name", "bundle_digest" (sha256 of the signed manifest), "model_sha256" (the plaintext ONNX
                  file's), "signer" (who signed, as the trust door names it: "key sha256:...")}]
    policy       the serving policy: {"auth": "api-key", "output": ..., "payload_logging": "never",
                  "audit": "sha256 of each request body"}
    keys         {suite: base64 public key}: this process's ephemeral HPKE keys

``report_data = sha256(statement bytes)`` (32 bytes): the platform's quote vouches for exactly these bytes. On
the wire: ``{"statement": base64(statement bytes), "evidence": {"platform", "report_data", "quote"}}``; the
verifier hashes the bytes it received before it parses them.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from onnxguard import __version__
from onnxguard.confidential.platform import Evidence, Platform, PlatformError
from onnxguard.errors import InputError

FORMAT = "onnxguard-attestation-v1"
SERVING_POLICY = {"auth": "api-key", "output": "per API key: full, topk:K or label", "payload_logging": "never",
                  "audit": "sha256 of each request body"}
MIN_NONCE, MAX_NONCE = 16, 64  # bytes


@dataclass(frozen=True)
class ModelFacts:
    """What a statement says of one served model."""

    name: str
    bundle_digest: str
    model_sha256: str
    signer: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bundle_digest": self.bundle_digest, "model_sha256": self.model_sha256,
                "signer": self.signer}


@dataclass(frozen=True)
class Facts:
    """What a server attests besides the nonce and the time: its code, models, policy and keys."""

    platform: str
    code: Mapping[str, str]
    models: tuple[ModelFacts, ...]
    keys: Mapping[str, str]
    policy: Mapping[str, str] = field(default_factory=lambda: dict(SERVING_POLICY))


@dataclass(frozen=True)
class Attestation:
    """A statement's bytes and the platform's evidence for them."""

    statement: bytes = field(repr=False)
    evidence: Evidence

    def to_dict(self) -> dict[str, Any]:
        return {"statement": base64.b64encode(self.statement).decode(), "evidence": self.evidence.to_dict()}

    @classmethod
    def from_dict(cls, data: object) -> Attestation:
        """An attestation from its wire form; ``PlatformError`` when malformed."""
        if not isinstance(data, dict) or not isinstance(data.get("statement"), str):
            raise PlatformError("the attestation is not an object with a base64 'statement' and an 'evidence'")
        try:
            statement = base64.b64decode(data["statement"], validate=True)
        except (binascii.Error, ValueError):
            raise PlatformError("the attestation's statement is not base64") from None
        return cls(statement, Evidence.from_dict(data.get("evidence")))

    @property
    def report_data(self) -> bytes:
        return report_data(self.statement)


def report_data(statement: bytes) -> bytes:
    """What the platform quotes for a statement: its sha256."""
    return hashlib.sha256(statement).digest()


def canonical(obj: Mapping[str, Any]) -> bytes:
    """Canonical JSON: keys sorted, no spaces."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def check_nonce(nonce: bytes) -> bytes:
    """``nonce`` when its length is acceptable; ``InputError`` otherwise."""
    if not MIN_NONCE <= len(nonce) <= MAX_NONCE:
        raise InputError(f"a nonce is {MIN_NONCE} to {MAX_NONCE} bytes, not {len(nonce)}")
    return nonce


def statement(facts: Facts, nonce: bytes, now: float | None = None) -> bytes:
    """The canonical statement bytes for ``nonce`` at ``now``."""
    return canonical({
        "format": FORMAT, "platform": facts.platform, "nonce": check_nonce(nonce).hex(),
        "time": time.time() if now is None else now, "code": dict(facts.code),
        "models": [m.to_dict() for m in facts.models], "policy": dict(facts.policy), "keys": dict(facts.keys)})


def attest(facts: Facts, platform: Platform, nonce: bytes, now: float | None = None) -> Attestation:
    """The statement for ``nonce``, quoted by ``platform``."""
    if platform.name != facts.platform:
        raise PlatformError(f"facts for platform {facts.platform!r}, quoted by {platform.name!r}")
    data = statement(facts, nonce, now)
    return Attestation(data, platform.quote(report_data(data)))


@functools.cache
def code() -> dict[str, str]:
    """This process's code measurement: sha256 over every installed onnxguard file (path and sha256, sorted;
    caches excluded) and the ONNX Runtime version; computed once per process, at the first call."""
    import onnxruntime

    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(b"onnxguard-code-measurement-v1\n")
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                       and p.suffix not in (".pyc", ".pyo")):
        h.update(f"{path.relative_to(root).as_posix()}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    h.update(f"onnxruntime\0{onnxruntime.__version__}\n".encode())
    return {"measurement": h.hexdigest(), "onnxguard": __version__, "onnxruntime": onnxruntime.__version__}


def facts(platform: Platform, models: Sequence[ModelFacts], keys: Mapping[str, str]) -> Facts:
    """The facts of this process: its code measurement, ``models`` and ``keys``, on ``platform``."""
    return Facts(platform.name, code(), tuple(models), dict(keys))
