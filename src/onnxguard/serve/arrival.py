"""A request's arrival is bounded before any middleware sees it: its head (request line and headers) in size and in
time, its body in time.

uvicorn's httptools protocol keeps every byte of the URL and every header until the head ends, without a limit:
measured here, four connections that each sent 50 MB of URL and never ended it grew the server by 205 MB, and one
that sent 200,000 headers by 38 MB, no key needed. Nor does it time a request out: a connection that sends nothing,
a head a byte at a time (slowloris) or a body a byte at a time (slow POST) is kept as long as the client likes, each
holding a socket, its buffers and, for a body, the request's task.

This protocol counts the head as the parser hands it over and, past a limit, answers 414 (request line) or 431
(headers); a head not complete within ``head_seconds`` of the connection or of its first byte gets 408, and one that
is not HTTP 400. Each answer is ``{"error": ...}``, and the connection is closed. No app sees these requests, so the
protocol hands each to ``refused`` (the server's: an audit record and a count, as for any request) and answers
once that has returned.

A body must arrive within ``body_seconds`` of its head's end, plus a second for every ``MIN_BODY_RATE`` bytes
received. Past that, the request's scope is marked ``LATE_BODY`` and its ``receive`` woken: the body limit
(bodylimit.py) answers 408 through the middleware, so the refusal is audited and counted like any other. If the app
is not reading the body (it answered already, or never asks), the connection is closed instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from onnxguard.errors import OnnxguardError

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
# Seconds a request body may take from its head's end, plus one for every MIN_BODY_RATE bytes received: Apache's
# mod_reqtimeout default (body=20,MinRate=500), against slow POST ("R-U-Dead-Yet"). A real client sends its body at
# the network's speed. ``serve.toml``'s ``body_seconds`` changes the first part.
BODY_SECONDS = 20.0
MIN_BODY_RATE = 500
MAX_SECONDS = 3600.0  # the most either may be set to
# How long the app of a request whose body came too late has to answer its 408 before the connection is closed.
LATE_GRACE_SECONDS = 1.0
# The scope key that marks a request whose body came too late; its value is the 408's message.
LATE_BODY = "onnxguard.late_body"

_HEAD, _BODY, _BETWEEN = 0, 1, 2

# Called for a request the protocol refuses itself, with the client ("ip:port"), the status, a short reason and the
# seconds since the request began; the answer leaves once it returns. An OnnxguardError (the audit log cannot
# record) makes the answer a 503 instead: no answer without its record.
Refused = Callable[[str, int, str, float], Awaitable[None]]


class _TooLarge(Exception):  # noqa: N818 - internal signal, turned into the 414 or 431 below
    pass


class BoundedArrival(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the request head limited to ``MAX_HEAD_BYTES``, ``MAX_HEADERS`` and
    ``head_seconds``, and its body to ``body_seconds`` and ``MIN_BODY_RATE`` (:func:`bounded` sets the times)."""

    head_seconds = HEAD_SECONDS
    body_seconds = BODY_SECONDS
    refused: Refused | None = None
    _head_bytes = 0
    _body_bytes = 0
    _phase = _HEAD  # what the parser is in: a head (from the connection, then from each head's first byte), a body
    _since = 0.0  # the event loop's time when that phase began
    _timer: asyncio.TimerHandle | None = None
    _refusal: tuple[int, str, str] | None = None  # a refusal raised inside the parser: status, message, reason
    _answering: asyncio.Task[None] | None = None  # the refusal on its way: the connection takes nothing more
    _answered: asyncio.Event | None = None  # set when an answer goes out whole, or the connection is lost

    # One timer per connection, not one per request: a phase's start is only noted, and the timer, when it fires,
    # looks at the phase in progress (none: it lapses until the next head begins).

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._since = self.loop.time()
        self._arm(self.head_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)
        if self._answered is not None:
            self._answered.set()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._answered is not None:
            self._answered.set()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._phase, self._since = _HEAD, self.loop.time()
        if self._timer is None:
            self._arm(self.head_seconds)

    def on_headers_complete(self) -> None:
        self._phase, self._since, self._body_bytes = _BODY, self.loop.time(), 0
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = _BETWEEN
        super().on_message_complete()

    def _arm(self, seconds: float) -> None:
        self._timer = self.loop.call_later(seconds, self._too_slow)

    def _too_slow(self) -> None:
        self._timer = None
        if self._phase == _BETWEEN or self.transport.is_closing():
            return
        if self._phase == _HEAD:
            self._late_head()
        else:
            self._late_body()

    def _late_head(self) -> None:
        left = self._since + self.head_seconds - self.loop.time()
        if left > 0:  # an earlier head ended in time; this one began later
            self._arm(left)
        else:
            self._answer(408, f"the request head did not arrive within {self.head_seconds:g} s", "head too slow")

    def _late_body(self) -> None:
        now, cycle = self.loop.time(), self.cycle
        if cycle is None:  # an upgrade this server does not take
            self.transport.close()
            return
        if self.flow.read_paused or cycle.waiting_for_100_continue:  # the server is not reading yet (a pipelined
            self._since, self._body_bytes = now, 0  # request waits its turn, the app has yet to take what came or to
            self._arm(self.body_seconds)  # ask for the body): the client is not the one late
            return
        left = self._since + self.body_seconds + self._body_bytes / MIN_BODY_RATE - now
        if left > 0:
            self._arm(left)
        elif not cycle.response_started and LATE_BODY not in cycle.scope:
            # Told through the scope, its receive woken: the body limit answers 408 (audited) and closes.
            scope = cast("dict[str, Any]", cycle.scope)
            scope[LATE_BODY] = (f"the request body did not arrive within {self.body_seconds:g} s and a second for "
                                f"every {MIN_BODY_RATE} bytes received")
            cycle.message_event.set()
            self._arm(LATE_GRACE_SECONDS)
        elif cycle.response_started and not cycle.response_complete:
            self._arm(LATE_GRACE_SECONDS)  # an answer on its way goes out first
        else:  # answered without the rest of the body, or told and not answering: nothing more to wait for
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self._count(len(url), 414, f"the request line is over the limit of {MAX_HEAD_BYTES:,} bytes",
                    "request line too long")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, 431, f"the request head is over the limit of {MAX_HEAD_BYTES:,} bytes",
                    "head too large")
        if len(self.headers) >= MAX_HEADERS:
            self._refuse(431, f"the request has more than {MAX_HEADERS} headers", "too many headers")
        super().on_header(name, value)

    def _count(self, n: int, status: int, message: str, reason: str) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(status, message, reason)

    def _refuse(self, status: int, message: str, reason: str) -> None:
        self._refusal = (status, message, reason)
        raise _TooLarge  # the parser stops and uvicorn answers it as a bad request: send_400_response below

    def data_received(self, data: bytes) -> None:
        """uvicorn's, without its log lines: a refusal is audited and counted, and any client could fill the
        server's output by sending what is not HTTP or asking for an upgrade."""
        if self._answering is not None:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.send_400_response("")
        except httptools.HttpParserUpgrade:
            pass  # no WebSocket here (the server runs uvicorn with ws="none"): answered as the plain request it is

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what the parser refused (a plain-text 400 otherwise)."""
        self._answer(*(self._refusal or (400, "the request is not valid HTTP/1.1", "malformed request")))

    def _answer(self, status: int, message: str, reason: str) -> None:
        """``{"error": message}`` with ``status`` once ``refused`` has returned, and the connection closed."""
        if self._answering is not None:
            return
        self.transport.pause_reading()
        self._answering = self.loop.create_task(self._recorded(status, message, reason))

    async def _recorded(self, status: int, message: str, reason: str) -> None:
        try:
            if self.refused is not None:
                client = f"{self.client[0]}:{self.client[1]}" if self.client else ":0"
                try:
                    await self.refused(client, status, reason, self.loop.time() - self._since)
                except OnnxguardError:
                    status, message = 503, "the audit log cannot record this request; nothing was answered"
            # Behind requests pipelined before it, whose answers are still on their way: those go out first, whole
            # (but a body the parser refused is the request in flight's own: its answer could never be right).
            while (self._phase != _BODY and self.cycle is not None and not self.cycle.response_complete
                   and not self.transport.is_closing()):
                self._answered = asyncio.Event()
                await self._answered.wait()
            if not self.transport.is_closing():
                body = orjson.dumps({"error": message})
                self.transport.write(b"".join([
                    STATUS_LINE[status], b"content-type: application/json\r\n",
                    b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n", body]))
        finally:  # whatever happened above: the connection, which takes nothing more, is not left open
            self.transport.close()


def bounded(head_seconds: float = HEAD_SECONDS, body_seconds: float = BODY_SECONDS,
            refused: Refused | None = None) -> type[BoundedArrival]:
    """The protocol class for uvicorn (``uvicorn.Config(http=...)``), with these times, handing the requests it
    refuses itself to ``refused``."""
    return type("BoundedArrival", (BoundedArrival,), {"head_seconds": float(head_seconds),
                                                      "body_seconds": float(body_seconds),
                                                      "refused": staticmethod(refused) if refused else None})
