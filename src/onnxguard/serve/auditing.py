"""Middleware: every request, accepted or refused, gets an audit record (never its payload: the body's sha256,
hashed as it is received), and its response leaves only once that record is durable in the audit log. A fault
in the app (a bug: the server answers 500) is recorded too, before the 500 leaves. ``record_refusal`` records the
requests uvicorn's protocol refuses before the app (arrival.py)."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from onnxguard.errors import OnnxguardError
from onnxguard.serve import context
from onnxguard.serve.audit import AuditLog, Record
from onnxguard.serve.respond import ASGIApp, Receive, Send, error


class Auditing:
    """Records every request in the audit log, holding its response until the record is durable."""

    def __init__(self, app: ASGIApp, log: AuditLog) -> None:
        self.app, self.log = app, log

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/v2/health/"):
            await self.app(scope, receive, send)
            return
        ctx = context.of(scope)
        body_hash = hashlib.sha256()
        got_body = False

        async def hashing() -> dict[str, Any]:
            nonlocal got_body
            message = await receive()
            if message["type"] == "http.request":
                got_body = got_body or bool(message.get("body"))
                body_hash.update(message.get("body", b""))
            return message

        held: dict[str, Any] | None = None
        recorded = False  # the response (or the refusal for want of a record) is covered
        start_sent: bool | None = None  # False once the record failed: the app's response is dropped

        async def holding(message: dict[str, Any]) -> None:
            nonlocal held, start_sent, recorded
            if message["type"] == "http.response.start":
                held = message  # sent with the first body chunk, once the record is durable
                return
            if held is not None:
                start, held = held, None
                recorded = True
                try:
                    await self._record(scope, ctx, start["status"], body_hash.hexdigest() if got_body else None)
                except OnnxguardError:  # fail closed: no answer leaves without its record
                    start_sent = False
                    await error(send, 503, "the audit log cannot record this request; nothing was answered",
                                {"Retry-After": "5"})
                    return
                await send(start)
            elif message["type"] == "http.response.body" and start_sent is False:
                return
            await send(message)

        try:
            await self.app(scope, hashing, holding)
        except Exception:  # noqa: BLE001 - a fault in the app: recorded as the 500 the server answers, raised on
            if not recorded:
                ctx.reason = ctx.reason or "internal error"
                await self._record(scope, ctx, 500, body_hash.hexdigest() if got_body else None)
            raise

    async def _record(self, scope: dict[str, Any], ctx: context.Context, status: int, body_sha: str | None) -> None:
        client = scope.get("client") or ("", 0)
        await self.log.append(Record(
            time=ctx.wall, key_id=ctx.key.id if ctx.key else None, client=f"{client[0]}:{client[1]}",
            model=ctx.model, digest=ctx.digest, request_sha256=body_sha, status=status,
            latency_ms=(time.monotonic() - ctx.arrival) * 1e3, batch_id=ctx.batch_id, reason=ctx.reason))


async def record_refusal(log: AuditLog, client: str, status: int, reason: str, seconds: float) -> None:
    """A request the protocol refused before any app saw it (arrival.py), with what is known of it: no key, no
    model, no body."""
    await log.append(Record(time=time.time() - seconds, key_id=None, client=client, model=None, digest=None,
                            request_sha256=None, status=status, latency_ms=seconds * 1e3, batch_id=None,
                            reason=reason))
