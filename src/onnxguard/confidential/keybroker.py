"""The key broker: holds a sealed bundle's age identity and releases it only to a server whose fresh
attestation matches the owner's policy, wrapped to that server's attested ephemeral key.

The host operator never holds the model key: the server asks the broker at start (``serve --key-broker URL``)::

    server                                  broker
      POST /v1/nonce                  ->    a fresh single-use nonce (expires after NONCE_TTL_S)
      attest(facts, nonce)
      POST /v1/release {attestation}  ->    verify (policy.py: platform, quote, binding, nonce issued here and
                                            not used, freshness, code measurement, every bundle digest)
                                      <-    {"suite", "wrapped": HPKE(identity, the statement's key,
                                                     info = RELEASE_INFO || sha256(statement))}
      open with its ephemeral private key (in memory only), then open the sealed bundles with it

Every request, released or refused, is an audit record (the server's tamper-evident ``AuditLog``; the body's
sha256, the bundle digest, the reason); a refusal answers 403 naming the failed check.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.middleware import Middleware
from fastapi.responses import Response

from onnxguard import __version__
from onnxguard.confidential import attestation as attestation_lib
from onnxguard.confidential import envelope, policy
from onnxguard.confidential.attestation import Attestation
from onnxguard.confidential.platform import Platform, PlatformError
from onnxguard.errors import InputError, OnnxguardError
from onnxguard.progress import Event, Progress, silent
from onnxguard.serve import context
from onnxguard.serve.audit import AuditLog
from onnxguard.serve.auditing import Auditing
from onnxguard.serve.bodylimit import BodyLimit

RELEASE_INFO = b"onnxguard key release v1\n"
NONCE_TTL_S = 60.0
MAX_NONCES = 10_000
MAX_BODY_BYTES = 256 << 10
SUITE = envelope.DEFAULT_SUITE


class ReleaseRefused(OnnxguardError):
    """The broker refused to release the identity (its answer names the failed check)."""


class NonceStore:
    """Nonces this broker issued and that were not used yet; each is consumed by its first use. Thread-safe."""

    def __init__(self, ttl: float = NONCE_TTL_S, capacity: int = MAX_NONCES) -> None:
        self.ttl, self.capacity = ttl, capacity
        self._issued: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def issue(self, now: float | None = None) -> bytes:
        """A fresh nonce, remembered until used or expired."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._expire(now)
            if len(self._issued) >= self.capacity:
                raise ReleaseRefused("too many outstanding nonces; retry in a minute")
            nonce = secrets.token_bytes(32)
            self._issued[nonce] = now
            return nonce

    def consume(self, nonce: bytes, now: float | None = None) -> bool:
        """Whether ``nonce`` was issued here, is unexpired and unused; it is used from now on either way."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._expire(now)
            return self._issued.pop(nonce, None) is not None

    def _expire(self, now: float) -> None:
        while self._issued:
            nonce, at = next(iter(self._issued.items()))
            if now - at <= self.ttl:
                break
            del self._issued[nonce]


@dataclass(frozen=True)
class Release:
    """The outcome of one release request, as audited."""

    released: bool
    reason: str
    digest: str | None
    response: dict[str, Any] = field(repr=False)


class Broker:
    """Releases ``identity`` (the text of an age identity file) to servers that satisfy ``expected``."""

    def __init__(self, identity: bytes, expected: policy.ExpectedPolicy) -> None:
        from onnxguard.trust.sealing.identities import identities_from_bytes

        identities_from_bytes(identity, "the broker's identity")  # an identity, or InputError now, not later
        if expected.model is not None:
            raise InputError("a broker policy covers every bundle a server serves; it names no single model")
        self._identity = identity
        self.policy = expected
        self.nonces = NonceStore()

    def nonce(self) -> dict[str, Any]:
        """A fresh nonce for a server to attest with."""
        return {"nonce": self.nonces.issue().hex(), "expires_in_s": self.nonces.ttl}

    def release(self, body: bytes, now: float | None = None) -> Release:
        """Verify the attestation in ``body`` and wrap the identity to its key, or refuse naming the check."""
        try:
            doc = orjson.loads(body)
            att = Attestation.from_dict(doc.get("attestation") if isinstance(doc, dict) else None)
        except orjson.JSONDecodeError:
            return Release(False, "malformed: not JSON", None, {"error": "the request is not JSON"})
        except PlatformError as e:
            return Release(False, "malformed attestation", None, {"error": e.message})
        claimed = _claimed(att.statement)
        digest = claimed.get("digest")
        try:
            nonce: bytes | None = bytes.fromhex(str(claimed.get("nonce", "")))
        except ValueError:
            nonce = None
        if not nonce or not self.nonces.consume(nonce):
            nonce = None
        result = policy.verify(att, self.policy, nonce, suite=SUITE, now=now)
        failed = result.failed
        if failed is not None:
            detail = f"refused at step {failed.check.number} ({failed.check.value}): {failed.detail}"
            return Release(False, f"refused: {failed.check.value}", digest, {"error": detail,
                                                                             "verification": result.to_dict()})
        assert result.statement is not None
        public = result.statement["keys"][SUITE]
        wrapped = envelope.suite(SUITE).encrypt(self._identity, envelope.decode_public(SUITE, public),
                                                info=RELEASE_INFO + attestation_lib.report_data(att.statement))
        return Release(True, "released", digest, {"suite": SUITE, "wrapped": base64.b64encode(wrapped).decode(),
                                                  "verification": result.to_dict()})


def _claimed(statement: bytes) -> dict[str, str]:
    """What an (unverified) statement claims, for the audit record and the nonce lookup only."""
    try:
        doc = orjson.loads(statement)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(doc, dict):
        return {}
    models = doc.get("models")
    digests = [str(m.get("bundle_digest")) for m in models if isinstance(m, dict)] if isinstance(models, list) else []
    out = {"nonce": str(doc.get("nonce", ""))}
    if digests:
        out["digest"] = ",".join(digests)
    return out


def create_app(broker: Broker, audit: AuditLog) -> FastAPI:
    """The broker as an ASGI app: body limit and audit (the server's middleware), then two routes."""
    def answer(data: dict[str, Any], status: int = 200) -> Response:
        return Response(orjson.dumps(data), status, media_type="application/json")

    app = FastAPI(title="onnxguard key broker", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None, middleware=[Middleware(Auditing, log=audit),
                                                Middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)])

    @app.post("/v1/nonce")
    async def nonce(request: Request) -> Response:
        try:
            return answer(broker.nonce())
        except ReleaseRefused as e:
            context.of(request.scope).reason = "nonces exhausted"
            return answer({"error": e.message}, 503)

    @app.post("/v1/release")
    async def release(request: Request) -> Response:
        result = broker.release(await request.body())
        ctx = context.of(request.scope)
        ctx.reason, ctx.digest = result.reason, result.digest
        return answer(result.response, 200 if result.released else 403)

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return answer({"ready": True})

    return app


def request_identity(url: str, facts: attestation_lib.Facts, platform: Platform, keys: envelope.ServerKeys,
                     *, timeout: float = 30.0, progress: Progress = silent) -> bytes:
    """The server's side: attest to the broker at ``url`` and unwrap the identity it releases (in memory)."""
    import httpx

    base = url.rstrip("/")
    progress(Event("serve", f"key broker {base}: attesting"))
    try:
        with httpx.Client(timeout=timeout) as http:
            r = http.post(f"{base}/v1/nonce")
            nonce = bytes.fromhex(_json(r, base)["nonce"])
            att = attestation_lib.attest(facts, platform, nonce)
            r = http.post(f"{base}/v1/release", content=orjson.dumps({"attestation": att.to_dict()}),
                          headers={"Content-Type": "application/json"})
            reply = _json(r, base)
    except httpx.HTTPError as e:
        raise InputError(f"{base}: the key broker cannot be reached ({e})") from None
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{base}: the key broker's answer is malformed") from None
    try:
        wrapped = base64.b64decode(reply["wrapped"], validate=True)
        suite = reply["suite"]
        identity: bytes = envelope.suite(suite).decrypt(wrapped, keys.private[suite],
                                                        info=RELEASE_INFO + att.report_data)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise InputError(f"{base}: the key broker's release does not open with this process's key") from None
    progress(Event("serve", f"key broker {base}: identity released"))
    return identity


def _json(response: Any, base: str) -> dict[str, Any]:
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if response.status_code != 200 or not isinstance(doc, dict):
        why = doc.get("error") if isinstance(doc, dict) else response.text[:200]
        raise ReleaseRefused(f"{base}: the key broker refused (HTTP {response.status_code}): {why}")
    return doc

