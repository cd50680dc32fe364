"""Per-key rate limits: the sliding window counter of the ``limits`` library, keyed by the API key's public id.

A key allowed ``100/minute`` is counted in fixed one-minute windows; a request is allowed while the current
window's count plus the previous window's, weighted by the share of the last minute that still overlaps it,
stays within 100. At a steady rate that is the rate over the last minute; a burst at the end of one window is
still counted against the next (a fixed window would forget it). State lives in the storage named by a
``limits`` storage URI: ``memory://`` for one server process, ``redis://host:port`` for replicas that must
share one count (``pip install onnxguard[redis]``; tested against fakeredis's RESP server with Lua scripting).

Why this strategy and the library's asyncio side (``limits.aio``), run in the server's event loop: a Redis
round trip never blocks the loop, and the memory storage expires counters in a task of that loop. The library's
other memory paths cost the event loop under load (py-spy profiles of benchmark E at concurrency 16, on a
2-core host): its synchronous storage starts a new timer thread every 10 ms and the loop waited for each to
start (9 % of the loop's time); its asyncio moving window expires old hits through a worker thread while
holding the key's lock, so requests of that key queued behind a thread hop. Query budgets (``apikeys``), not
rate limits, are the exact defence against model extraction.
"""

from __future__ import annotations

import functools
import math
import time
import urllib.parse

# This module is onnxguard.serve.limits; absolute imports (every onnxguard module) make this the third-party
# ``limits`` package, imported under another name so that the two are never confused.
import limits as limits_lib
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import ConfigurationError, StorageError
from limits.storage import storage_from_string

from onnxguard.errors import InputError, OnnxguardError
from onnxguard.serve.apikeys import ApiKey, parse_rate

__all__ = ["MIN_RETRY_AFTER_S", "RateLimiter"]

# Retry-After is in whole seconds; telling a client to retry after 0 seconds invites a busy loop of refusals.
MIN_RETRY_AFTER_S = 1.0

_NAMESPACE = "onnxguard-apikey"


@functools.lru_cache(maxsize=1024)
def _item(rate: str) -> limits_lib.RateLimitItem:
    return limits_lib.parse(parse_rate(rate))


# The storages that keep a sliding window counter, as the operator names them; each runs as its ``async+`` variant.
SCHEMES = ("memory", "redis", "rediss", "redis+sentinel", "redis+cluster")
_STORAGE_HINT = "memory:// for one server process, redis://HOST:PORT for several"


class RateLimiter:
    """Whether a key may make one more request now; used from one event loop (the server's)."""

    def __init__(self, storage: str = "memory://") -> None:
        scheme = urllib.parse.urlparse(storage).scheme
        if scheme not in SCHEMES:
            raise InputError(f"rate limit storage {storage!r}: not one of {', '.join(s + '://' for s in SCHEMES)}",
                             hint=_STORAGE_HINT)
        self.storage = storage
        self._limiter: SlidingWindowCounterRateLimiter | None = None
        if scheme != "memory":  # made now so that a missing client library stops the server before it starts
            self._limiter = self._make()

    def _make(self) -> SlidingWindowCounterRateLimiter:
        # redis-py's asyncio client (the redis extra); wrap_exceptions: a storage failure (redis unreachable)
        # surfaces as one exception type, turned into an OnnxguardError by ``hit`` so that the request is refused.
        options: dict[str, float | str | bool] = {"wrap_exceptions": True}
        if not self.storage.startswith("memory"):
            options["implementation"] = "redispy"
        try:
            return SlidingWindowCounterRateLimiter(storage_from_string("async+" + self.storage, **options))
        except ConfigurationError as e:
            raise InputError(f"rate limit storage {self.storage!r}: {e}", hint=_STORAGE_HINT) from None

    async def hit(self, key: ApiKey) -> tuple[bool, float]:
        """Count one request of ``key``: ``(allowed, retry_after_seconds)``.

        A refused request is not counted. ``retry_after`` is 0 when allowed, else the seconds until the window
        has room again, rounded up to whole seconds, at least ``MIN_RETRY_AFTER_S``. A key without rate is always
        allowed.
        """
        if key.rate is None:
            return True, 0.0
        item = _item(key.rate)
        if self._limiter is None:  # the memory storage starts its expiry task in the running loop
            self._limiter = self._make()
        try:
            if await self._limiter.hit(item, _NAMESPACE, key.id):
                return True, 0.0
            stats = await self._limiter.get_window_stats(item, _NAMESPACE, key.id)
        except StorageError as e:
            raise OnnxguardError(f"rate limit storage failed: {e.storage_error}",
                                 hint="check that the rate limit storage is reachable") from e
        wait = stats.reset_time - time.time()
        return False, max(MIN_RETRY_AFTER_S, float(math.ceil(wait)))

    async def close(self) -> None:
        """Close the storage's connections (a Redis client's pool); the server calls it as it stops."""
        client = getattr(getattr(getattr(self._limiter, "storage", None), "bridge", None), "storage", None)
        if client is not None:  # the redis-py asyncio client that limits' Redis storage holds
            await client.aclose()
