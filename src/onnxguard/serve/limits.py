"""Per-key rate limits: a moving window of the ``limits`` library, keyed by the API key's public id.

The window is exact (a moving window keeps each hit's time), so a key allowed ``100/minute`` never gets more
than 100 answers in any 60 seconds, bursts at window edges included. State lives in the storage named by a
``limits`` storage URI: ``memory://`` for one server process, ``redis://host:port`` for replicas that must
share one count (``pip install onnxguard[redis]``; tested against fakeredis's RESP server with Lua scripting).
"""

from __future__ import annotations

import functools
import math
import time

# This module is onnxguard.serve.limits; absolute imports (every onnxguard module) make this the third-party
# ``limits`` package, imported under another name so that the two are never confused.
import limits as limits_lib
from limits.errors import ConfigurationError, StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from onnxguard.errors import InputError, OnnxguardError
from onnxguard.serve.apikeys import ApiKey, parse_rate

__all__ = ["MIN_RETRY_AFTER_S", "RateLimiter"]

# Retry-After is in whole seconds; telling a client to retry after 0 seconds invites a busy loop of refusals.
MIN_RETRY_AFTER_S = 1.0

_NAMESPACE = "onnxguard-apikey"


@functools.lru_cache(maxsize=1024)
def _item(rate: str) -> limits_lib.RateLimitItem:
    return limits_lib.parse(parse_rate(rate))


class RateLimiter:
    """Whether a key may make one more request now; thread-safe (the storage locks per key)."""

    def __init__(self, storage: str = "memory://") -> None:
        try:
            # wrap_exceptions: a storage failure (redis unreachable) surfaces as one exception type, turned into
            # an OnnxguardError by ``hit`` so that the server refuses the request (fails closed).
            self._storage = storage_from_string(storage, wrap_exceptions=True)
        except ConfigurationError as e:
            raise InputError(f"rate limit storage {storage!r}: {e}",
                             hint="memory:// for one server process, redis://HOST:PORT for several") from None
        try:
            self._limiter = MovingWindowRateLimiter(self._storage)
        except NotImplementedError:
            raise InputError(f"rate limit storage {storage!r} cannot keep a moving window",
                             hint="memory:// for one server process, redis://HOST:PORT for several") from None

    def hit(self, key: ApiKey) -> tuple[bool, float]:
        """Count one request of ``key``: ``(allowed, retry_after_seconds)``.

        A refused request is not counted. ``retry_after`` is 0 when allowed, else the seconds until the oldest
        request in the window leaves it, rounded up to whole seconds, at least ``MIN_RETRY_AFTER_S``. A key
        without rate is always allowed.
        """
        if key.rate is None:
            return True, 0.0
        item = _item(key.rate)
        try:
            if self._limiter.hit(item, _NAMESPACE, key.id):
                return True, 0.0
            stats = self._limiter.get_window_stats(item, _NAMESPACE, key.id)
        except StorageError as e:
            raise OnnxguardError(f"rate limit storage failed: {e.storage_error}",
                                 hint="check that the rate limit storage is reachable") from e
        wait = stats.reset_time - time.time()
        return False, max(MIN_RETRY_AFTER_S, float(math.ceil(wait)))
