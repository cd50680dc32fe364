"""Middleware: each key's request rate (the ``limits`` library; memory, or Redis shared by replicas). Over the
rate: 429 with ``Retry-After``. Query budgets are charged by the endpoint, which knows how many rows ran."""

from __future__ import annotations

import math
from typing import Any

from onnxguard.errors import OnnxguardError
from onnxguard.serve import context
from onnxguard.serve.limits import RateLimiter
from onnxguard.serve.respond import ASGIApp, Receive, Send, error


class RateLimit:
    """Refuses a key past its request rate (429 with Retry-After)."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app, self.limiter = app, limiter

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        ctx = context.of(scope) if scope["type"] == "http" else None
        if ctx is not None and ctx.key is not None:
            try:
                allowed, retry_after = await self.limiter.hit(ctx.key)
            except OnnxguardError as e:  # the limit storage is down: refuse rather than let it through
                ctx.reason = "limits unavailable"
                await error(send, 503, f"rate limits cannot be checked now ({e.message})", {"Retry-After": "5"})
                return
            if not allowed:
                ctx.reason = "rate limit"
                await error(send, 429, f"rate limit of this key ({ctx.key.rate}) reached",
                            {"Retry-After": str(max(1, math.ceil(retry_after)))})
                return
        await self.app(scope, receive, send)
