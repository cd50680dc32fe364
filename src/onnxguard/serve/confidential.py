"""Confidential serving (``serve --confidential``): the attestation endpoint and the encrypted infer endpoint,
as one middleware, innermost (after auth and the rate limit), so that a sealed request goes through the same
auth, limits, audit, validation, batching and output policy as a plain one::

    GET  /v1/attestation?nonce=HEX          the statement for the caller's nonce, quoted by the platform
    POST /v1/models/{name}/confidential     an HPKE envelope (envelope.py) -> opened in memory, its id
                                            admitted once (replay cache), then handed to the plain route
                                            (/v2/models/{name}/infer or /v1/models/{name}:predict); the
                                            route's answer is sealed to the request's response key

The audit middleware, outside, hashes the body it received: the ciphertext. Nothing here writes or logs a
plaintext; the opened request lives in memory for the time of the call.

``start(config, ...)`` makes the platform and the process's ephemeral keys and, with a key broker, attests to
it and gets the sealed bundles' identity (never from disk); ``State.bind(models)`` fixes what the statement
says once every bundle is open.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from onnxguard.confidential import attestation as attestation_lib
from onnxguard.confidential import envelope, keybroker
from onnxguard.confidential.attestation import Attestation, Facts, ModelFacts
from onnxguard.confidential.platform import SimulationPlatform
from onnxguard.confidential.platform.simulation import load_private_key
from onnxguard.errors import InputError
from onnxguard.progress import Event, Progress, silent
from onnxguard.serve import context
from onnxguard.serve.respond import ASGIApp, Receive, Send, error
from onnxguard.trust.policy import TrustPolicy

ATTESTATION_PATH = "/v1/attestation"
CONFIDENTIAL_PATH = re.compile(r"^/v1/models/([^/:]+)/confidential$")
SEALED_HEADER = "onnxguard-confidential"
PASSED_HEADERS = (b"onnxguard-model-digest", b"retry-after")  # public: the digest is in the attestation
HEADER_LENGTH = b"inference-header-content-length"
STALE_KEY = "sealed to another key than this process's (the server restarted?): fetch a fresh attestation"


@dataclass(frozen=True)
class ConfidentialConfig:
    """Confidential mode: the simulation platform's private key, and the key broker that holds the identity."""

    platform_key: Path
    key_broker: str | None = None


@dataclass
class State:
    """The platform, this process's ephemeral keys, what the statement says and the replay cache."""

    platform: SimulationPlatform
    keys: envelope.ServerKeys = field(repr=False)
    announced: tuple[ModelFacts, ...] = ()  # what the key broker was told, checked against what was opened
    facts: Facts | None = None
    replay: envelope.ReplayCache = field(default_factory=envelope.ReplayCache)
    key_ids: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.key_ids = self.keys.ids()

    def bind(self, models: Sequence[Any]) -> None:
        """Fix the statement's models from the opened bundles (``ServedModel``s)."""
        served = tuple(ModelFacts(m.name, m.digest, m.opened.manifest.model.sha256, m.opened.report.signer)
                       for m in models)
        if self.announced and [(m.name, m.bundle_digest) for m in served] != \
                [(m.name, m.bundle_digest) for m in self.announced]:
            raise InputError("the bundles opened are not the ones attested to the key broker (changed on disk "
                             "meanwhile?); not serving")
        self.facts = attestation_lib.facts(self.platform, served, self.keys.public)

    def attest(self, nonce: bytes) -> Attestation:
        assert self.facts is not None
        return attestation_lib.attest(self.facts, self.platform, nonce)


def start(config: ConfidentialConfig, bundles: Sequence[Path], names: Sequence[str | None], trust: TrustPolicy,
          progress: Progress = silent) -> tuple[State, list[object] | None]:
    """The confidential state, and the identity the key broker released (None without a broker)."""
    state = State(SimulationPlatform(load_private_key(config.platform_key)), envelope.ServerKeys.generate())
    progress(Event("serve", "confidential mode: SIMULATION platform (no hardware isolation; the statement is "
                            f"signed by platform key {state.platform.fingerprint})"))
    if config.key_broker is None:
        return state, None
    from onnxguard.bundle import read_manifest
    from onnxguard.trust.opening import Step, examine
    from onnxguard.trust.sealing.identities import identities_from_bytes

    announced = []
    for i, path in enumerate(bundles):
        report, _ = examine(path, trust)  # no identity yet: manifest, files and signature are checked
        bad = [s for s in report.steps if s.step in (Step.MANIFEST, Step.FILES, Step.SIGNATURE) and not s.status.ok]
        if bad or report.digest is None:
            raise InputError(f"{path}: not trusted before the key release ({'; '.join(s.detail for s in bad)})")
        manifest = read_manifest(Path(path))[0]
        name = (names[i] if i < len(names) else None) or manifest.name
        announced.append(ModelFacts(name, report.digest, manifest.model.sha256, report.signer))
    state.announced = tuple(announced)
    facts = attestation_lib.facts(state.platform, announced, state.keys.public)
    text = keybroker.request_identity(config.key_broker, facts, state.platform, state.keys, progress=progress)
    return state, identities_from_bytes(text, "the identity released by the key broker")


async def _send(send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]]) -> None:
    raw = [(b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Confidential:
    """Answers the attestation and opens, admits and reseals confidential requests around the plain routes."""

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["path"] == ATTESTATION_PATH:
                await self._attestation(scope, send)
                return
            match = CONFIDENTIAL_PATH.match(scope["path"])
            if match:
                await self._sealed(scope, receive, send, match.group(1))
                return
        await self.app(scope, receive, send)

    async def _attestation(self, scope: dict[str, Any], send: Send) -> None:
        ctx = context.of(scope)
        if scope["method"] != "GET":
            ctx.reason = "method"
            await error(send, 405, "use GET")
            return
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            nonce = attestation_lib.check_nonce(bytes.fromhex(query.get("nonce", [""])[0]))
        except (ValueError, InputError):
            ctx.reason = "bad nonce"
            await error(send, 400, f"give ?nonce=HEX, {attestation_lib.MIN_NONCE} to {attestation_lib.MAX_NONCE} "
                                    "random bytes")
            return
        body = orjson.dumps(self.state.attest(nonce).to_dict())
        await _send(send, 200, body, [(b"content-type", b"application/json"), (b"cache-control", b"no-store")])

    async def _sealed(self, scope: dict[str, Any], receive: Receive, send: Send, name: str) -> None:
        ctx = context.of(scope)
        if scope["method"] != "POST":
            ctx.reason = "method"
            await error(send, 405, "use POST")
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = dict(scope.get("headers", ()))
        suite = headers.get(envelope.SUITE_HEADER.encode(), b"").decode("latin-1")
        key = headers.get(envelope.KEY_HEADER.encode())
        if key is not None and key.decode("latin-1") != self.state.key_ids.get(suite):
            ctx.reason = "stale key"
            await error(send, 409, STALE_KEY)
            return
        try:
            opened = envelope.open_request(self.state.keys, suite, name, b"".join(chunks))
            self.state.replay.admit(opened)
        except envelope.Replayed as e:
            ctx.reason = "replayed"
            await error(send, 409, e.message)
            return
        except envelope.EnvelopeError as e:
            ctx.reason = "bad envelope"
            await error(send, 400, e.message)
            return
        inner_headers = [(k, v) for k, v in scope.get("headers", ())
                         if k not in (b"content-length", b"content-type", HEADER_LENGTH)]
        inner_headers += [(b"content-length", str(len(opened.body)).encode()),
                          (b"content-type", b"application/json" if opened.header_length is None
                           else b"application/octet-stream")]
        if opened.header_length is not None:
            inner_headers.append((HEADER_LENGTH, str(opened.header_length).encode()))
        path = f"/v2/models/{name}/infer" if opened.route == "infer" else f"/v1/models/{name}:predict"
        inner = {**scope, "path": path, "raw_path": path.encode(), "headers": inner_headers, "query_string": b""}
        delivered = False

        async def plain_receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": opened.body, "more_body": False}
            return await receive()

        start: dict[str, Any] = {}
        parts: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        await self.app(inner, plain_receive, capture)
        status = int(start.get("status", 500))
        answer = dict(start.get("headers", ()))
        length = answer.get(HEADER_LENGTH)
        sealed = envelope.seal_response(opened, status, answer.get(b"content-type", b"").decode("latin-1"),
                                        b"".join(parts), int(length) if length is not None else None)
        out = [(b"content-type", b"application/octet-stream"), (SEALED_HEADER.encode(), b"sealed")]
        out += [(k, v) for k, v in start.get("headers", ()) if k in PASSED_HEADERS]
        await _send(send, status, sealed, out)
