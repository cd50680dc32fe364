"""Rate limits on the in-memory storage, and on redis (the storage replicas share), against fakeredis's RESP server
on 127.0.0.1 with its Lua scripting (the sliding window counter runs as a Lua script in redis). The limiter is
asyncio's: each test drives it in one event loop, as the server does."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import pytest
from fakeredis import TcpFakeServer
from limits.errors import StorageError

import onnxguard.serve.limits as serve_limits
from onnxguard.errors import InputError, OnnxguardError
from onnxguard.serve.apikeys import ApiKey
from onnxguard.serve.limits import MIN_RETRY_AFTER_S, RateLimiter

pytestmark = pytest.mark.timeout(60)


def key(rate: str | None, id: str = "k_00000000000000aa") -> ApiKey:
    return ApiKey(id=id, name=id, models=None, rate=rate, budget=None, output="full", deadline_ms=None,
                  created="2024-01-01T00:00:00+00:00", revoked=False)


def test_the_third_party_library_is_the_one_imported():
    import limits

    assert serve_limits.limits_lib is limits
    assert hasattr(limits, "parse") and limits.__name__ == "limits"


def in_loop(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def test_n_allowed_then_refused_with_retry_after():
    async def scenario() -> None:
        limiter, k = RateLimiter(), key("3/minute")
        assert [await limiter.hit(k) for _ in range(3)] == [(True, 0.0)] * 3
        allowed, retry_after = await limiter.hit(k)
        assert not allowed
        assert MIN_RETRY_AFTER_S <= retry_after <= 120 and retry_after == int(retry_after)
        assert (await limiter.hit(k))[0] is False  # still refused: a refused request does not make room
    in_loop(scenario)


def test_window_moves_on():
    async def scenario() -> None:
        limiter, k = RateLimiter(), key("2/second")
        assert (await limiter.hit(k))[0] and (await limiter.hit(k))[0]
        allowed, retry_after = await limiter.hit(k)
        assert not allowed and retry_after >= 1.0  # rounded up to whole seconds, at least the minimum
        await asyncio.sleep(2.05)  # past the next window too: the burst no longer counts
        assert await limiter.hit(k) == (True, 0.0)
    in_loop(scenario)


def test_a_burst_still_counts_in_the_next_window():
    """The previous window's count, weighted by its overlap with the last second, is not forgotten at the window
    boundary (a fixed window would allow a second burst at once)."""
    async def scenario() -> None:
        limiter, k = RateLimiter(), key("10/second")
        await asyncio.sleep(1 - time.time() % 1 + 0.85)  # late in a window
        assert all([(await limiter.hit(k))[0] for _ in range(10)])
        await asyncio.sleep(1 - time.time() % 1 + 0.05)  # just after the boundary: ~95 % of the burst still counts
        assert sum([(await limiter.hit(k))[0] for _ in range(10)]) <= 2
    in_loop(scenario)


def test_keys_are_independent():
    async def scenario() -> None:
        limiter = RateLimiter()
        a, b = key("2/minute", "k_00000000000000aa"), key("2/minute", "k_00000000000000bb")
        assert (await limiter.hit(a))[0] and (await limiter.hit(a))[0]
        assert not (await limiter.hit(a))[0]
        assert (await limiter.hit(b))[0] and (await limiter.hit(b))[0]
        assert not (await limiter.hit(b))[0]
    in_loop(scenario)


def test_limiters_are_independent():
    async def scenario() -> None:
        k = key("1/minute")
        first, second = RateLimiter(), RateLimiter()
        assert (await first.hit(k))[0] and not (await first.hit(k))[0]
        assert (await second.hit(k))[0]  # memory:// is one process's, one limiter's
    in_loop(scenario)


def test_key_without_rate_is_never_limited():
    async def scenario() -> None:
        limiter, k = RateLimiter(), key(None)
        assert all([await limiter.hit(k) == (True, 0.0) for _ in range(2000)])
    in_loop(scenario)


def test_concurrent_hits_allow_exactly_the_rate():
    async def scenario() -> None:
        limiter, k = RateLimiter(), key("50/minute")

        async def caller() -> list[bool]:
            mine = []
            for _ in range(20):
                mine.append((await limiter.hit(k))[0])
                await asyncio.sleep(0)  # interleave with the other callers
            return mine

        results = [ok for mine in await asyncio.gather(*(caller() for _ in range(8))) for ok in mine]
        assert len(results) == 160 and sum(results) == 50
    in_loop(scenario)


def test_bad_rate_on_a_key():
    with pytest.raises(InputError, match="often"):
        in_loop(lambda: RateLimiter().hit(key("often")))


@pytest.mark.parametrize("storage", ["nope://", "not a uri", "memcached://127.0.0.1:11211"])
def test_unknown_storage(storage):
    with pytest.raises(InputError, match="storage") as e:
        RateLimiter(storage)
    assert e.value.hint


def test_storage_failure_is_an_onnxguard_error(monkeypatch):
    async def scenario() -> None:
        limiter = RateLimiter()
        await limiter.hit(key(None))  # no storage made for a key without rate ...
        assert limiter._limiter is None
        await limiter.hit(key("5/minute"))  # ... the first limited key makes it, in this loop

        async def down(*args, **kwargs):
            raise StorageError(ConnectionError("connection refused"))

        monkeypatch.setattr(limiter._limiter, "hit", down)
        with pytest.raises(OnnxguardError, match="connection refused"):
            await limiter.hit(key("1/minute"))
    in_loop(scenario)


@pytest.fixture
def redis_url():
    server = TcpFakeServer(("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_replicas_on_redis_share_one_count(redis_url):
    url, _ = redis_url

    async def scenario() -> None:
        replica_a, replica_b = RateLimiter(url), RateLimiter(url)
        k = key("3/minute")
        assert [(await r.hit(k))[0] for r in (replica_a, replica_b, replica_a)] == [True, True, True]
        allowed, retry_after = await replica_b.hit(k)
        assert not allowed and MIN_RETRY_AFTER_S <= retry_after <= 120
        assert (await replica_a.hit(key("3/minute", id="k_00000000000000bb")))[0]  # another key: its own count
        await replica_a.close()
        await replica_b.close()
    in_loop(scenario)


def test_redis_going_away_fails_closed(redis_url):
    url, server = redis_url

    async def scenario() -> None:
        limiter = RateLimiter(url)
        assert (await limiter.hit(key("5/minute")))[0]
        server.shutdown()
        server.server_close()
        with pytest.raises(OnnxguardError, match="rate limit storage failed"):
            await limiter.hit(key("5/minute"))
        await limiter.close()
    in_loop(scenario)
