"""Rate limits on the in-memory storage, and on redis (the storage replicas share), against fakeredis's RESP server
on 127.0.0.1 with its Lua scripting (the moving window runs as a Lua script in redis)."""

from __future__ import annotations

import threading
import time

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


def test_n_allowed_then_refused_with_retry_after():
    limiter = RateLimiter()
    k = key("3/minute")
    assert [limiter.hit(k) for _ in range(3)] == [(True, 0.0)] * 3
    allowed, retry_after = limiter.hit(k)
    assert not allowed
    assert MIN_RETRY_AFTER_S <= retry_after <= 60 and retry_after == int(retry_after)
    assert limiter.hit(k)[0] is False  # still refused: a refused request does not make room


def test_window_moves_on():
    limiter = RateLimiter()
    k = key("2/second")
    assert limiter.hit(k)[0] and limiter.hit(k)[0]
    allowed, retry_after = limiter.hit(k)
    assert not allowed and retry_after == 1.0  # under a second to wait, rounded up to the minimum
    time.sleep(1.1)
    assert limiter.hit(k) == (True, 0.0)


def test_keys_are_independent():
    limiter = RateLimiter()
    a, b = key("2/minute", "k_00000000000000aa"), key("2/minute", "k_00000000000000bb")
    assert limiter.hit(a)[0] and limiter.hit(a)[0]
    assert not limiter.hit(a)[0]
    assert limiter.hit(b)[0] and limiter.hit(b)[0]
    assert not limiter.hit(b)[0]


def test_limiters_are_independent():
    k = key("1/minute")
    first, second = RateLimiter(), RateLimiter()
    assert first.hit(k)[0] and not first.hit(k)[0]
    assert second.hit(k)[0]  # memory:// is one process's, one limiter's


def test_key_without_rate_is_never_limited():
    limiter = RateLimiter()
    k = key(None)
    assert all(limiter.hit(k) == (True, 0.0) for _ in range(2000))


def test_concurrent_hits_allow_exactly_the_rate():
    limiter = RateLimiter()
    k = key("50/minute")
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        mine = [limiter.hit(k)[0] for _ in range(20)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert len(results) == 160 and sum(results) == 50


def test_bad_rate_on_a_key():
    with pytest.raises(InputError, match="often"):
        RateLimiter().hit(key("often"))


@pytest.mark.parametrize("storage", ["nope://", "not a uri"])
def test_unknown_storage(storage):
    with pytest.raises(InputError, match="storage") as e:
        RateLimiter(storage)
    assert e.value.hint


def test_storage_failure_is_an_onnxguard_error(monkeypatch):
    limiter = RateLimiter()

    def down(*args, **kwargs):
        raise StorageError(ConnectionError("connection refused"))

    monkeypatch.setattr(limiter._limiter, "hit", down)
    with pytest.raises(OnnxguardError, match="connection refused"):
        limiter.hit(key("1/minute"))


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
    replica_a, replica_b = RateLimiter(url), RateLimiter(url)
    k = key("3/minute")
    assert [replica_a.hit(k)[0], replica_b.hit(k)[0], replica_a.hit(k)[0]] == [True, True, True]
    allowed, retry_after = replica_b.hit(k)
    assert not allowed and MIN_RETRY_AFTER_S <= retry_after <= 60
    assert replica_a.hit(key("3/minute", id="k_00000000000000bb"))[0]  # another key has its own count


def test_redis_going_away_fails_closed(redis_url):
    url, server = redis_url
    limiter = RateLimiter(url)
    assert limiter.hit(key("5/minute"))[0]
    server.shutdown()
    server.server_close()
    with pytest.raises(OnnxguardError, match="rate limit storage failed"):
        limiter.hit(key("5/minute"))
