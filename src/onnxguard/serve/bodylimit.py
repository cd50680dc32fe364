"""Middleware: the request body's size is enforced before it is read (HTTP 413), by its declared length first and
then by counting what actually arrives (a chunked body has no declared length)."""

from __future__ import annotations

from typing import Any

from onnxguard.serve import context
from onnxguard.serve.respond import ASGIApp, Receive, Send, error

# A request is refused past this many bytes unless the operator raises it: what one caller may make the server
# hold in memory. The binary tensor extension carries ~16 MiB of float32 in 16 MiB.
MAX_BODY_BYTES = 16 << 20


class _TooLarge(Exception):  # noqa: N818 - internal signal, never leaves this module
    pass


class BodyLimit:
    """Refuses a body over ``max_bytes`` by its declared length, then by counting what arrives (413)."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await error(send, 400, "Content-Length is not a number")
                return
            if length > self.max_bytes:
                context.of(scope).reason = "body too large"
                await error(send, 413, f"the body is {length:,} bytes, over the limit of {self.max_bytes:,}")
                return
        seen = 0
        started = False

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        async def tracking(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracking)
        except _TooLarge:
            if not started:
                context.of(scope).reason = "body too large"
                await error(send, 413, f"the body is over the limit of {self.max_bytes:,} bytes")
