"""Middleware: the request body's size is enforced before it is read (HTTP 413), by its declared length first and
then by counting what actually arrives (a chunked body has no declared length). A body that arrives too slowly
(arrival.py marks its request) is refused with 408, and one its client abandoned is recorded as 499 (nginx's
"client closed request"): neither reaches the app as a half-read body."""

from __future__ import annotations

from typing import Any

from onnxguard.serve import context
from onnxguard.serve.arrival import LATE_BODY
from onnxguard.serve.respond import ASGIApp, Receive, Send, error

# A request is refused past this many bytes unless the operator raises it: what one caller may make the server
# hold in memory. The binary tensor extension carries ~16 MiB of float32 in 16 MiB.
MAX_BODY_BYTES = 16 << 20
# The status recorded for a request whose client closed the connection before its body arrived (no one reads it).
CLIENT_CLOSED = 499


class _Refusal(Exception):  # noqa: N818 - internal signal, never leaves this module
    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.headers = status, reason, message, headers


class BodyLimit:
    """Refuses a body over ``max_bytes`` by its declared length, then by counting what arrives (413); one too slow
    (408) or abandoned (499) before the app sees it."""

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
        whole = False
        started = False

        async def counted() -> dict[str, Any]:
            nonlocal seen, whole
            message = await receive()
            if whole:  # after the body: a disconnect the app may listen for
                return message
            if message["type"] != "http.request":
                raise self._cut_off(scope)
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _Refusal(413, "body too large", f"the body is over the limit of {self.max_bytes:,} bytes")
            if not message.get("more_body"):
                whole = True
            elif LATE_BODY in scope:
                raise self._cut_off(scope)
            return message

        async def tracking(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracking)
        except _Refusal as e:
            if not started:
                context.of(scope).reason = e.reason
                await error(send, e.status, e.message, e.headers)

    @staticmethod
    def _cut_off(scope: dict[str, Any]) -> _Refusal:
        """The body stopped short: too slow (arrival.py said so), or its client went away."""
        late = scope.get(LATE_BODY)
        if late is not None:
            return _Refusal(408, "body too slow", late, {"Connection": "close"})
        return _Refusal(CLIENT_CLOSED, "client closed",
                        "the client closed the connection before its body arrived; nothing was answered")
