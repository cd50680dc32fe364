from __future__ import annotations

import hashlib
import hmac
import os
import re
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from onnxguard.errors import InputError
from onnxguard.serve import apikeys
from onnxguard.serve.apikeys import ApiKey, KeyStore, parse_output, parse_rate

pytestmark = pytest.mark.timeout(60)

SECRET_RE = re.compile(r"og_(k_[0-9a-f]{16})_[A-Za-z0-9_-]{43}")


@pytest.fixture
def store(tmp_path):
    s = KeyStore(tmp_path / "keys.db")
    yield s
    s.close()


def store_bytes(path: Path) -> bytes:
    """The store and its WAL and shared-memory files, as they are on disk."""
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


# -- create and authenticate ---------------------------------------------------------------------------


def test_create_then_authenticate_round_trip(store):
    secret, key = store.create("alice", models=["bert", "mlp", "bert"], rate="100/minute", budget=1000,
                               output="topk:3", deadline_ms=25)
    match = SECRET_RE.fullmatch(secret)
    assert match and match.group(1) == key.id
    assert key == ApiKey(id=key.id, name="alice", models=("bert", "mlp"), rate="100/minute", budget=1000,
                         output="topk:3", deadline_ms=25.0, created=key.created, revoked=False)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", key.created)
    assert store.authenticate(secret) == key
    assert store.list() == [key]
    assert key.allows("bert") and not key.allows("gpt")


def test_defaults_and_distinct_keys(store):
    secret_a, a = store.create("a")
    secret_b, b = store.create("b")
    assert (a.models, a.rate, a.budget, a.output, a.deadline_ms) == (None, None, None, "full", None)
    assert a.allows("anything")
    assert a.id != b.id and secret_a != secret_b
    assert store.authenticate(secret_a) == a and store.authenticate(secret_b) == b
    assert [k.name for k in store.list()] == ["a", "b"]


def test_keys_survive_reopening(tmp_path):
    path = tmp_path / "keys.db"
    with KeyStore(path) as s:
        secret, key = s.create("alice", models=["m"], budget=5, output="label")
    with KeyStore(path) as s:
        assert s.authenticate(secret) == key


def test_the_secret_is_never_stored(tmp_path):
    path = tmp_path / "keys.db"
    s = KeyStore(path)
    made = [s.create(f"key{i}", budget=10)[0] for i in range(5)]
    s.charge(s.authenticate(made[0]), 1)
    for when in ("open", "closed"):
        raw = store_bytes(path)
        for secret in made:
            random_part = secret.split("_", 3)[3]  # og_k_ID_RANDOM; RANDOM (base64url) may hold "_" itself
            assert secret.encode() not in raw and random_part.encode() not in raw, when
            assert hashlib.sha256(secret.encode()).digest() in raw, when  # what is stored, found: the grep reads it
        s.close()


# -- secrets that are not a key's ------------------------------------------------------------------------


def test_wrong_and_malformed_secrets_give_none(store):
    secret, key = store.create("alice")
    other_id = "k_" + ("0" if key.id[2] != "0" else "1") + key.id[3:]
    last = secret[-1]
    bad = [
        "",
        " ",
        "og_",
        secret[:-1],  # truncated
        secret[:20],
        secret + "A",  # too long
        " " + secret,
        secret[:-1] + ("B" if last != "B" else "C"),  # wrong random part
        secret.replace(key.id, other_id),  # unknown id, valid form
        secret.upper(),
        secret[:-1] + "é",  # right length, not ASCII
        "og_" + key.id + "_" + "\u0661" * 43,  # Arabic-Indic digits: digits to Unicode, not to the format
        "\ud800" * len(secret),  # lone surrogates: cannot even be encoded
        "\x00" * len(secret),
        "a" * 1_000_000,
        secret + "A" * 1_000_000,
        "Bearer " + secret,
    ]
    for candidate in bad:
        assert store.authenticate(candidate) is None, candidate[:80]
    for not_a_string in (None, b"og_", 42):
        assert store.authenticate(not_a_string) is None  # type: ignore[arg-type]
    assert store.authenticate(secret) == key  # still works after all that


def test_a_long_secret_costs_no_more_than_a_short_one(store):
    store.create("alice")
    huge = "x" * 1_000_000
    start = time.perf_counter()
    for _ in range(50):
        store.authenticate(huge)
    # A 1 MB secret is refused by its length, without being scanned or hashed: 50 tries well under a second.
    assert time.perf_counter() - start < 1.0


def test_revoked_key_is_refused_and_its_name_is_free_again(store):
    secret, key = store.create("alice")
    revoked = store.revoke("alice")
    assert revoked == ApiKey(**{**key.__dict__, "revoked": True})
    assert store.authenticate(secret) is None
    with pytest.raises(InputError, match="alice"):
        store.revoke("alice")
    secret2, key2 = store.create("alice")
    assert key2.id != key.id
    assert store.authenticate(secret2) == key2 and store.authenticate(secret) is None
    assert [(k.name, k.revoked) for k in store.list()] == [("alice", True), ("alice", False)]
    with pytest.raises(InputError, match="nobody"):
        store.revoke("nobody")


def test_comparison_is_constant_time_for_every_secret(store, monkeypatch):
    secret, _ = store.create("alice")
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(apikeys.hmac, "compare_digest", spy)
    candidates = [secret, secret[:-1] + ("B" if secret[-1] != "B" else "C"), "", "garbage", "z" * 100_000,
                  secret.replace("og_k_", "og_k_0")[: len(secret)]]
    for candidate in candidates:
        before = len(calls)
        store.authenticate(candidate)
        assert len(calls) == before + 1, candidate[:40]  # one constant-time comparison, whatever the secret
    assert all(isinstance(a, bytes) and isinstance(b, bytes) and len(a) == len(b) == 32 for a, b in calls)


def test_store_hashes_with_sha256(store, tmp_path):
    secret, key = store.create("alice")
    db = sqlite3.connect(tmp_path / "keys.db")
    try:
        (stored,) = db.execute("SELECT secret_sha256 FROM keys WHERE id = ?", (key.id,)).fetchone()
    finally:
        db.close()
    assert stored == hashlib.sha256(secret.encode()).digest()


# -- budgets -------------------------------------------------------------------------------------------


def test_budget_charged_until_exhausted_and_kept_across_a_restart(tmp_path):
    path = tmp_path / "keys.db"
    s = KeyStore(path)
    secret, key = s.create("alice", budget=10)
    assert s.charge(key, 3) == (True, 7)
    assert s.charge(key, 3) == (True, 4)
    assert s.charge(key, 5) == (False, 4)  # refused whole: nothing added
    assert s.usage(key.id) == 6
    assert s.charge(key, 4) == (True, 0)
    assert s.charge(key, 1) == (False, 0)
    assert s.charge(key, 0) == (True, 0)
    assert s.usage(key.id) == 10
    s.close()
    s = KeyStore(path)  # a restart
    try:
        key = s.authenticate(secret)
        assert key is not None
        assert s.charge(key, 1) == (False, 0)
        assert s.usage(key.id) == 10
    finally:
        s.close()


def test_key_without_budget_counts_usage(store):
    _, key = store.create("alice")
    assert store.charge(key, 5) == (True, None)
    assert store.charge(key, 7) == (True, None)
    assert store.usage(key.id) == 12


def test_revoked_key_cannot_be_charged(store):
    _, key = store.create("alice", budget=10)
    _, free = store.create("bob")
    store.revoke("alice")
    store.revoke("bob")
    assert store.charge(key, 1) == (False, 0)
    assert store.charge(free, 1) == (False, 0)
    assert store.usage(key.id) == 0


@pytest.mark.parametrize("rows", [-1, True, 1.5, "3", 2**31 + 1])
def test_charge_refuses_what_is_not_a_row_count(store, rows):
    _, key = store.create("alice", budget=10)
    with pytest.raises(InputError, match="rows"):
        store.charge(key, rows)
    assert store.usage(key.id) == 0


def test_unknown_key_id(store):
    _, key = store.create("alice")
    stranger = ApiKey(**{**key.__dict__, "id": "k_0123456789abcdef"})
    with pytest.raises(InputError, match="k_0123456789abcdef"):
        store.charge(stranger, 1)
    with pytest.raises(InputError, match="k_0123456789abcdef"):
        store.usage(stranger.id)


def test_concurrent_charges_never_overspend(tmp_path):
    path = tmp_path / "keys.db"
    # Two stores on one file: two connections, as two server processes would have; threads on both.
    stores = [KeyStore(path), KeyStore(path)]
    try:
        _, key = stores[0].create("alice", budget=150)
        allowed: list[int] = []
        lock = threading.Lock()
        barrier = threading.Barrier(6)

        def worker(s: KeyStore) -> None:
            barrier.wait()
            mine = sum(1 for _ in range(60) if s.charge(key, 1)[0])
            with lock:
                allowed.append(mine)

        threads = [threading.Thread(target=worker, args=(stores[i % 2],)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=50)
        assert not any(t.is_alive() for t in threads)
        assert sum(allowed) == 150  # 360 asked for, exactly the budget granted
        assert stores[1].usage(key.id) == 150
        assert stores[1].charge(key, 1) == (False, 0)
    finally:
        for s in stores:
            s.close()


# -- the file ------------------------------------------------------------------------------------------


def test_new_store_is_private(tmp_path, monkeypatch):
    path = tmp_path / "keys.db"
    old = os.umask(0o022)  # a common umask: the store must still be 0600
    try:
        with KeyStore(path) as s:
            s.create("alice")
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            for side in (Path(f"{path}-wal"), Path(f"{path}-shm")):
                if side.exists():
                    assert stat.S_IMODE(side.stat().st_mode) == 0o600, side
    finally:
        os.umask(old)


def test_refuses_a_symlink(tmp_path):
    real = tmp_path / "real.db"
    KeyStore(real).close()
    link = tmp_path / "link.db"
    link.symlink_to(real)
    with pytest.raises(InputError, match="symbolic link") as e:
        KeyStore(link)
    assert str(link) in str(e.value)
    dangling = tmp_path / "dangling.db"
    dangling.symlink_to(tmp_path / "nowhere.db")
    with pytest.raises(InputError, match="symbolic link"):
        KeyStore(dangling)
    assert not (tmp_path / "nowhere.db").exists()


def test_refuses_what_is_not_a_regular_file(tmp_path):
    with pytest.raises(InputError, match="not a regular file"):
        KeyStore(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        KeyStore(fifo)  # refused without opening it (opening a FIFO would block)


def test_refuses_a_missing_directory(tmp_path):
    with pytest.raises(InputError, match="directory"):
        KeyStore(tmp_path / "missing" / "keys.db")


def test_refuses_a_file_that_is_not_a_key_store(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all, " * 100)
    with pytest.raises(InputError, match="junk.db"):
        KeyStore(junk)
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(InputError, match="not an onnxguard key store"):
        KeyStore(other)


# -- what create accepts -------------------------------------------------------------------------------


def test_duplicate_name_refused(store):
    store.create("alice")
    with pytest.raises(InputError, match="alice"):
        store.create("alice")
    assert len(store.list()) == 1


@pytest.mark.parametrize("kwargs, fragment", [
    ({"name": ""}, "name"),
    ({"name": " alice"}, "name"),
    ({"name": "a\x1b[2Jb"}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"models": "bert"}, "one string"),
    ({"models": []}, "empty"),
    ({"models": ["ok", ""]}, "model name"),
    ({"budget": 0}, "budget"),
    ({"budget": -5}, "budget"),
    ({"budget": True}, "budget"),
    ({"budget": 2.5}, "budget"),
    ({"deadline_ms": 0}, "deadline"),
    ({"deadline_ms": float("nan")}, "deadline"),
    ({"deadline_ms": float("inf")}, "deadline"),
    ({"deadline_ms": 3_600_000}, "deadline"),
    ({"output": "everything"}, "everything"),
    ({"rate": "lots"}, "lots"),
])
def test_create_refuses_bad_policy(store, kwargs, fragment):
    args = {"name": "alice", **kwargs}
    with pytest.raises(InputError, match=re.escape(fragment)) as e:
        store.create(**args)
    assert e.value.hint
    assert store.list() == []


# -- parse_output and parse_rate -----------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("full", "full"), ("label", "label"), ("topk:1", "topk:1"), ("topk:5", "topk:5"), (" topk:10 ", "topk:10"),
])
def test_parse_output_accepts(text, expected):
    assert parse_output(text) == expected


@pytest.mark.parametrize("text", ["", "FULL", "topk", "topk:", "topk:0", "topk:-1", "topk:05", "topk:1.5",
                                  "topk:3 label", "topk:\u0663", "topk:" + "9" * 5000, "labels", "x" * 1_000_000])
def test_parse_output_refuses(text):
    with pytest.raises(InputError, match="output policy") as e:
        parse_output(text)
    assert text[:20] in e.value.message or repr(text)[:20] in e.value.message
    assert len(e.value.message) < 300  # a huge value is cut short in the message
    assert e.value.hint


@pytest.mark.parametrize("text", ["100/minute", "10 per second", "5/2 minutes", "1000/day"])
def test_parse_rate_accepts(text):
    assert parse_rate(text) == text


@pytest.mark.parametrize("text", ["", "lots", "100", "0/minute", "100/fortnight", "1/second;5/minute",
                                  "-1/second", "x" * 1_000_000])
def test_parse_rate_refuses(text):
    with pytest.raises(InputError, match="rate") as e:
        parse_rate(text)
    assert len(e.value.message) < 300
    assert e.value.hint


def test_a_key_is_trusted_from_memory_briefly_and_a_revocation_reaches_it(tmp_path, monkeypatch):
    path = tmp_path / "keys.db"
    server, cli = KeyStore(path), KeyStore(path)  # a running server's store, and the CLI's in another process
    try:
        bob, _ = server.create("bob")
        assert server.authenticate(bob) is not None
        server.revoke("bob")
        assert server.authenticate(bob) is None  # revoked through the same store: at once
        secret, key = cli.create("alice")
        assert server.authenticate(secret) == key
        assert server.authenticate(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None  # never from memory
        cli.revoke("alice")
        assert server.authenticate(secret) == key  # read from memory: the revocation is not seen yet ...
        monkeypatch.setattr(apikeys, "KEY_CACHE_SECONDS", 0.0)
        assert server.authenticate(secret) is None  # ... until the key is read again
    finally:
        server.close()
        cli.close()
