"""``await asgi.call(app, method, path, ...)``: one HTTP request sent through an ASGI app in-process, without a
socket, and its whole answer. The gRPC front uses it so that every gRPC call passes through the same middleware
and routes as an HTTP request."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from onnxguard.serve.respond import ASGIApp


@dataclass(frozen=True)
class Answer:
    """An HTTP response: status, headers (names in lower case) and body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def message(self) -> str:
        """The ``{"error": ...}`` message of a refusal (or the body as text when it is not one)."""
        try:
            doc = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return self.body.decode("utf-8", "replace")
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return doc["error"]
        return self.body.decode("utf-8", "replace")


class NoAnswer(Exception):  # noqa: N818 - the app broke the ASGI contract
    """The app returned without starting a response."""


async def call(app: ASGIApp, method: str, path: str, *, headers: Sequence[tuple[str, str]] = (), body: bytes = b"",
               client: tuple[str, int] = ("", 0), server: tuple[str, int] = ("", 0),
               scheme: str = "http") -> Answer:
    """Send ``method path`` with ``headers`` and ``body`` through ``app``, as if ``client`` had connected."""
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    if method != "GET":
        raw.append((b"content-length", str(len(body)).encode()))
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "2", "method": method,
        "scheme": scheme, "path": path, "raw_path": path.encode("utf-8"), "query_string": b"", "root_path": "",
        "headers": raw, "client": client, "server": server,
    }
    finished = asyncio.Event()
    delivered = False
    status: int | None = None
    response_headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()  # like a client that stays connected until its answer is complete
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
            response_headers.update((k.decode("latin-1").lower(), v.decode("latin-1"))
                                    for k, v in message.get("headers", ()))
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                finished.set()

    try:
        await app(scope, receive, send)
    finally:
        finished.set()
    if status is None:
        raise NoAnswer(f"{method} {path}: the app sent no response")
    return Answer(status, response_headers, b"".join(chunks) if len(chunks) != 1 else chunks[0])
