"""Middleware: who is calling. ``Authorization: Bearer <key>`` checked against the key store (stored hashed,
compared in constant time); no key or a wrong one: 401; a model outside the key's scope: 403. Health needs no
key; metrics need one unless the operator made them public."""

from __future__ import annotations

from typing import Any

from onnxguard.serve import context
from onnxguard.serve.apikeys import KeyStore
from onnxguard.serve.respond import ASGIApp, Receive, Send, error

PUBLIC_PREFIXES = ("/v2/health/",)
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="onnxguard"'}


class Auth:
    """Authenticates the API key and checks its model scope; health (and optionally metrics) are public."""

    def __init__(self, app: ASGIApp, keys: KeyStore, *, public_metrics: bool = False,
                 public_docs: bool = False) -> None:
        self.app, self.keys = app, keys
        public = list(PUBLIC_PREFIXES) + (["/metrics"] if public_metrics else [])
        public += ["/openapi.json", "/docs"] if public_docs else []
        self.public = tuple(public)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.public):
            await self.app(scope, receive, send)
            return
        ctx = context.of(scope)
        header = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
        scheme, _, secret = header.decode("latin-1").partition(" ")
        key = self.keys.authenticate(secret.strip()) if scheme.lower() == "bearer" else None
        if key is None:
            ctx.reason = "no key" if not header else "bad key"
            await error(send, 401, "a valid API key is needed: Authorization: Bearer <key>", CHALLENGE)
            return
        ctx.key = key
        if ctx.model is not None and key.models is not None and ctx.model not in key.models:
            ctx.reason = "out of scope"
            await error(send, 403, f"this key may not call model {ctx.model!r}")
            return
        await self.app(scope, receive, send)
