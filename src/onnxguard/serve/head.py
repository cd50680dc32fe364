"""The request head (request line and headers) is bounded as it arrives, in size and in time, before any middleware
sees it.

uvicorn's httptools protocol keeps every byte of the URL and every header until the head ends, without a limit:
measured here, four connections that each sent 50 MB of URL and never ended it grew the server by 205 MB, and one
that sent 200,000 headers by 38 MB, no key needed. Nor does it time a head out: a connection that sends nothing, or
a head a byte at a time, is kept as long as the client likes (slowloris), each holding a socket and its buffers.
This protocol counts the head as the parser hands it over and, past a limit, answers 414 (request line) or 431
(headers); a head not complete within ``head_seconds`` of the connection or of its first byte gets 408. Each answer
is ``{"error": ...}``, and the connection is closed.
"""

from __future__ import annotations

import asyncio

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

# The head one request may make the server hold. Node.js answered CVE-2018-12121 (a denial of service by large HTTP
# headers) with a limit of 8 KiB, since raised to 16 KiB; nginx reads a head into four 8 KiB buffers. Everything
# this server reads from a head (a model name, an API key, a tensor header's length, a nonce) fits many times over.
MAX_HEAD_BYTES = 16 << 10
# Headers in one request (Apache's LimitRequestFields): each is a list entry the server keeps until the answer.
MAX_HEADERS = 100
# Seconds a request head may take to arrive, from the connection (or the head's first byte, between requests on a
# kept-alive connection) to its end: nginx's client_header_timeout is 60 s, Apache's mod_reqtimeout 20-40 s; a
# real client sends its head at once. ``serve.toml``'s ``head_seconds`` changes it.
HEAD_SECONDS = 20.0
MAX_HEAD_SECONDS = 3600.0


class _TooLarge(Exception):  # noqa: N818 - internal signal, turned into the 414 or 431 below
    pass


class BoundedHead(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the request head limited to ``MAX_HEAD_BYTES``, ``MAX_HEADERS`` and
    ``head_seconds`` (:func:`bounded` makes one with another time)."""

    head_seconds = HEAD_SECONDS
    _head_bytes = 0
    _in_head = True  # from the connection until its first head ends, then from each head's first byte to its end
    _head_start = 0.0  # the event loop's time when the current head began (or the connection was made)
    _timer: asyncio.TimerHandle | None = None
    _refusal: tuple[int, str] | None = None

    # One timer per connection, not one per request: a head's start is only noted, and the timer, when it fires,
    # looks at the head in progress (none: it lapses until the next head begins).

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_start = self.loop.time()
        self._arm(self.head_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._in_head = True
        self._head_start = self.loop.time()
        if self._timer is None:
            self._arm(self.head_seconds)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def _arm(self, seconds: float) -> None:
        self._timer = self.loop.call_later(seconds, self._too_slow)

    def _too_slow(self) -> None:
        self._timer = None
        if not self._in_head or self.transport.is_closing():
            return
        left = self._head_start + self.head_seconds - self.loop.time()
        if left > 0:  # an earlier head ended in time; this one began later
            self._arm(left)
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm(self.head_seconds)  # a pipelined head behind an answer still on its way: that answer goes first
            return
        self._answer(408, f"the request head did not arrive within {self.head_seconds:g} s")

    def on_url(self, url: bytes) -> None:
        self._count(len(url), 414, f"the request line is over the limit of {MAX_HEAD_BYTES:,} bytes")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, 431, f"the request head is over the limit of {MAX_HEAD_BYTES:,} bytes")
        if len(self.headers) >= MAX_HEADERS:
            self._refuse(431, f"the request has more than {MAX_HEADERS} headers")
        super().on_header(name, value)

    def _count(self, n: int, status: int, message: str) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(status, message)

    def _refuse(self, status: int, message: str) -> None:
        self._refusal = (status, message)
        raise _TooLarge  # the parser stops and uvicorn answers it as a bad request: send_400_response below

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            super().send_400_response(msg)
        else:
            self._answer(*self._refusal)

    def _answer(self, status: int, message: str) -> None:
        """``{"error": message}`` with ``status``, and the connection closed."""
        body = orjson.dumps({"error": message})
        self.transport.write(b"".join([
            STATUS_LINE[status], b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n", body]))
        self.transport.close()


def bounded(head_seconds: float = HEAD_SECONDS) -> type[BoundedHead]:
    """The protocol class for uvicorn (``uvicorn.Config(http=...)``), with heads timed out after ``head_seconds``."""
    return type("BoundedHead", (BoundedHead,), {"head_seconds": float(head_seconds)})
