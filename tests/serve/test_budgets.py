"""Query budgets spent from leases: never more than the budget, unspent leases given back, exact at the end."""

from __future__ import annotations

import threading

import pytest

from onnxguard.serve.apikeys import KeyStore
from onnxguard.serve.budgets import LEASE_ROWS, Budgets


@pytest.fixture
def store(tmp_path):
    with KeyStore(tmp_path / "keys.db") as s:
        yield s


def test_requests_are_charged_from_a_lease_and_the_rest_is_given_back(store):
    _, key = store.create("alice", budget=10_000)
    budgets = Budgets(store)
    assert budgets.charge(key, 1) == (True, 9_999)
    leased = store.usage(key.id)
    assert leased == 1 + LEASE_ROWS  # one write took a lease
    for _ in range(LEASE_ROWS):
        assert budgets.charge(key, 1)[0]
    assert store.usage(key.id) == leased  # ... and the requests after it were charged from memory
    assert budgets.charge(key, 1) == (True, 10_000 - 2 - LEASE_ROWS)  # the next lease
    budgets.close()
    assert store.usage(key.id) == 2 + LEASE_ROWS  # exactly what was charged


def test_a_small_budget_is_charged_exactly(store):
    _, key = store.create("alice", budget=5)
    budgets = Budgets(store)
    assert [budgets.charge(key, 2) for _ in range(3)] == [(True, 3), (True, 1), (False, 1)]
    assert store.usage(key.id) == 4
    assert budgets.charge(key, 1) == (True, 0)
    assert budgets.charge(key, 1) == (False, 0)


def test_a_key_without_budget_is_not_charged(store):
    _, key = store.create("alice")
    budgets = Budgets(store)
    assert budgets.charge(key, 3) == (True, None)
    assert store.usage(key.id) == 0


def test_a_server_killed_without_closing_costs_the_key_at_most_a_lease(tmp_path):
    path = tmp_path / "keys.db"
    with KeyStore(path) as s:
        _, key = s.create("alice", budget=1_000)
        budgets = Budgets(s)  # never closed: the process "dies" holding its lease
        assert all(budgets.charge(key, 1)[0] for _ in range(10))
    with KeyStore(path) as s:
        assert 10 <= s.usage(key.id) <= 10 + LEASE_ROWS


def test_two_servers_on_one_store_grant_exactly_the_budget(tmp_path):
    path = tmp_path / "keys.db"
    stores = [KeyStore(path), KeyStore(path)]  # two connections, as two server processes have
    try:
        _, key = stores[0].create("alice", budget=1_000)
        budgets = [Budgets(s) for s in stores]
        allowed: list[int] = []
        lock = threading.Lock()
        barrier = threading.Barrier(6)

        def worker(b: Budgets) -> None:
            barrier.wait()
            mine = sum(1 for _ in range(400) if b.charge(key, 1)[0])
            with lock:
                allowed.append(mine)

        threads = [threading.Thread(target=worker, args=(budgets[i % 2],)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=50)
        assert not any(t.is_alive() for t in threads)
        # 2400 asked for: every row of the budget granted (a server holding a lease keeps being asked, so it spends
        # it), none more
        assert sum(allowed) == 1_000
        for b in budgets:
            b.close()
        assert stores[1].usage(key.id) == 1_000
    finally:
        for s in stores:
            s.close()
