"""``Budgets(keys).charge(key, rows)``: a server's query budgets, spent from leases taken from the key store.

The key store's charge is exact and atomic across processes, but it is a write to a SQLite file: made for every
request on the event loop, it and the key's record lookup cost about a third of the server's CPU per request on a
small model (docs/benchmarks.md E). So a server takes a key's budget in leases: one charge to the store for up to
``LEASE_ROWS`` rows, then requests are charged from the lease in memory.

- Never more than the budget: every leased row was charged to the store, atomically, before it is spent.
- Near the end of a budget the leases shrink (at most ``1 / LEASE_SHARE`` of what was left), and the last rows are
  charged exactly, so several server processes sharing the store hold back little of it from each other.
- Rows leased and not spent are given back when the server stops (``close``). A server killed outright loses its
  leases: they stay counted as spent, so a crash can cost a key at most ``LEASE_ROWS`` rows, never give it more.
"""

from __future__ import annotations

import threading

from onnxguard.serve.apikeys import ApiKey, KeyStore

# Rows one charge to the key store may lease beyond what the request needs: one write per this many rows.
LEASE_ROWS = 64
# A lease takes at most this share of what is left of the budget (exact charges when little is left).
LEASE_SHARE = 8


class Budgets:
    """The query budgets of the keys calling one server; safe to use from several threads."""

    def __init__(self, keys: KeyStore) -> None:
        self._keys = keys
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}  # key id -> rows leased and not spent yet
        self._left: dict[str, int] = {}  # key id -> the store's remaining budget after this server's last charge

    def charge(self, key: ApiKey, rows: int) -> tuple[bool, int | None]:
        """Charge ``rows`` to ``key``'s budget: ``(allowed, remaining)``, as ``KeyStore.charge``; a key without a
        budget is not charged (None remaining)."""
        if key.budget is None:
            return True, None
        with self._lock:
            held = self._held.get(key.id, 0)
            if held >= rows:
                self._held[key.id] = held - rows
                return True, self._left.get(key.id, 0) + held - rows
            need = rows - held
            left = self._left.get(key.id, key.budget)
            extra = min(LEASE_ROWS, max(0, left - need) // LEASE_SHARE)
            allowed, remaining = self._keys.charge(key, need + extra)
            if not allowed and extra:  # the store has less left than it seemed: charge exactly
                extra = 0
                allowed, remaining = self._keys.charge(key, need)
            self._left[key.id] = remaining or 0
            if not allowed:
                return False, (remaining or 0) + held
            self._held[key.id] = extra
            return True, (remaining or 0) + extra

    def close(self) -> None:
        """Give the rows leased and not spent back to the key store."""
        with self._lock:
            held, self._held = self._held, {}
        for key_id, rows in held.items():
            if rows:
                self._keys.refund(key_id, rows)
