"""Rate limits on the in-memory storage. The redis storage (for replicas) is not tested: no redis server here."""

from __future__ import annotations

import threading
import time

import pytest
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
