"""API keys: who may call the inference server, which models, how fast, how much, and what it is answered.

A key is a secret ``og_<id>_<random>`` handed to its holder once, at creation; the store keeps only its
SHA-256 hash, looked up by the public id part and compared in constant time. Each key carries its policy
(models, rate, query budget, output policy, answer deadline). Query budgets are counted in the same SQLite
file, so restarting the server does not reset them: a budget is a defense against model extraction, and one
a restart could reset would defend nothing.

The store is one SQLite file (WAL, created with mode 0600), table ``keys``::

    id TEXT PRIMARY KEY           public id, "k_" + 16 hex digits (appears in audit records)
    name TEXT                     the operator's label, unique among the keys not revoked
    secret_sha256 BLOB            SHA-256 of the whole secret (32 bytes); the secret itself is never stored
    models TEXT                   JSON array of model names, or NULL for all models
    rate TEXT                     a ``limits`` rate string ("100/minute"), or NULL for no rate limit
    budget INTEGER                queries (rows) the key may ever run, or NULL for unlimited
    used INTEGER                  queries (rows) charged so far
    output TEXT                   "full", "label" or "topk:K"
    deadline_ms REAL              answer no earlier than this after arrival, or NULL
    created TEXT                  ISO 8601 UTC, seconds
    revoked INTEGER               0 or 1

``PRAGMA application_id`` marks the file as a key store and ``PRAGMA user_version`` is the schema version.
Several server processes may share the file: every change is one SQL statement, atomic in SQLite.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import math
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import limits as limits_lib

from onnxguard import staging
from onnxguard.errors import InputError, OnnxguardError

__all__ = [
    "MAX_CHARGE_ROWS",
    "MAX_DEADLINE_MS",
    "KEY_CACHE_SECONDS",
    "MAX_NAME_CHARS",
    "ApiKey",
    "KeyStore",
    "parse_output",
    "parse_rate",
]

# The random part of a secret: 256 bits, so guessing one is hopeless and a plain hash can store it (below).
SECRET_BYTES = 32
# A label is shown in listings and terminals: bounded, printable (no control characters that could rewrite
# what an operator sees).
MAX_NAME_CHARS = 200
# A model name in a key's allow-list: the same reasons as a label.
MAX_MODEL_NAME_CHARS = 200
# One charge is at most one request's rows; bounding it keeps ``used + rows`` inside SQLite's 64-bit integers
# for any number of charges a key could ever make (2**31 rows a charge, 2**32 charges before overflow).
MAX_CHARGE_ROWS = 2**31
# A budget beyond this could overflow ``used + rows``; no real budget comes near it.
MAX_BUDGET = 2**62
# A deadline holds the answer (and its connection) back this long; more than a minute ties up the server for
# nothing and is a mistake (a deadline is a few times the model's slowest answer, in milliseconds).
MAX_DEADLINE_MS = 60_000.0
# How long a statement waits for another process's write to the shared file before failing.
BUSY_TIMEOUT_S = 10.0
# A key authenticated once is trusted from memory this long before its record is read again: a revocation made by
# another process (``onnxguard apikey revoke``) reaches a running server within this time; one made through the
# same store at once. Reading the record for every request cost the server's event loop a SQLite call each
# (with the budget's charge, about a third of its CPU per request on a small model, measured in
# docs/benchmarks.md E).
KEY_CACHE_SECONDS = 1.0

_APPLICATION_ID = 0x6F676B73  # "ogks": this SQLite file is an onnxguard key store
_SCHEMA_VERSION = 1

_ID_PREFIX = "k_"
_ID_HEX = 16  # 8 random bytes: unique among any number of keys an operator will create
_SECRET_PREFIX = "og_"
_SECRET_RANDOM_CHARS = 43  # base64 (URL-safe, unpadded) of SECRET_BYTES bytes
_SECRET_CHARS = len(_SECRET_PREFIX) + len(_ID_PREFIX) + _ID_HEX + 1 + _SECRET_RANDOM_CHARS
_SECRET_RE = re.compile(r"og_(k_[0-9a-f]{16})_[A-Za-z0-9_-]{43}")
# What a malformed secret is hashed and looked up as, so that it costs what a well-formed one does. The id
# is not hex, so it names no key; the hash matches nothing either way.
_MALFORMED_ID = "k_" + "-" * _ID_HEX
_MALFORMED_SECRET = "og_" + _MALFORMED_ID + "_" + "A" * _SECRET_RANDOM_CHARS
_NO_HASH = bytes(32)

_OUTPUT_RE = re.compile(r"full|label|topk:([1-9][0-9]{0,8})")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_sha256 BLOB NOT NULL,
    models TEXT,
    rate TEXT,
    budget INTEGER,
    used INTEGER NOT NULL DEFAULT 0,
    output TEXT NOT NULL,
    deadline_ms REAL,
    created TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS keys_active_name ON keys(name) WHERE revoked = 0;
"""
_COLUMNS = "id, name, models, rate, budget, output, deadline_ms, created, revoked"


@dataclass(frozen=True)
class ApiKey:
    """One key's public record and policy (never its secret)."""

    id: str  # public id, "k_" + 16 hex digits: appears in audit records, not secret
    name: str  # the operator's label, unique among the keys not revoked
    models: tuple[str, ...] | None  # model names it may call; None: all
    rate: str | None  # a `limits` rate string, e.g. "100/minute"; None: no rate limit
    budget: int | None  # total queries (rows) it may ever run; None: unlimited
    output: str  # "full" | "topk:K" | "label"
    deadline_ms: float | None  # answer no earlier than this after arrival (timing side channels); None: off
    created: str  # ISO 8601 UTC
    revoked: bool

    def allows(self, model: str) -> bool:
        """Whether this key may call ``model``."""
        return self.models is None or model in self.models


def parse_output(text: str) -> str:
    """An output policy, ``full``, ``label`` or ``topk:K`` (K >= 1), in its canonical spelling; InputError else."""
    match = _OUTPUT_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InputError(f"output policy {_show(text)} is not one of full, label, topk:K",
                         hint="full answers every score, topk:K the K best labels with scores, label only the best")
    return f"topk:{int(match.group(1))}" if match.group(1) else match.group(0)


def parse_rate(text: str) -> str:
    """A rate limit, one ``limits`` rate string such as ``100/minute`` or ``10 per second``; InputError else."""
    hint = "a rate is one AMOUNT/PERIOD such as 100/minute, 10/second or 5000/day, with AMOUNT at least 1"
    if not isinstance(text, str) or len(text) > 100:
        raise InputError(f"rate {_show(text)} is not a rate limit", hint=hint)
    text = text.strip()
    try:
        items = limits_lib.parse_many(text)
    except ValueError:
        raise InputError(f"rate {_show(text)} is not a rate limit", hint=hint) from None
    if len(items) != 1:
        raise InputError(f"rate {_show(text)} gives {len(items)} limits; a key has one", hint=hint)
    if items[0].amount < 1:
        raise InputError(f"rate {_show(text)} allows no request at all", hint=hint)
    return text


def _show(value: object) -> str:
    """A caller's value, quoted and cut short, for an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _name(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS or not name.isprintable() \
            or name.strip() != name:
        raise InputError(f"key name {_show(name)} is not a label",
                         hint=f"a name is 1 to {MAX_NAME_CHARS} printable characters, without surrounding spaces")
    return name


def _models(models: Iterable[str] | None) -> tuple[str, ...] | None:
    if models is None:
        return None
    if isinstance(models, str | bytes):
        raise InputError(f"models {_show(models)} is one string, not a list of model names",
                         hint="give a list of model names")
    names = tuple(dict.fromkeys(models))
    if not names:
        raise InputError("models is an empty list: the key could call no model",
                         hint="give the model names the key may call, or none at all to allow every model")
    for model in names:
        if not isinstance(model, str) or not model or len(model) > MAX_MODEL_NAME_CHARS or not model.isprintable():
            raise InputError(f"model name {_show(model)} is not a model name",
                             hint=f"a model name is 1 to {MAX_MODEL_NAME_CHARS} printable characters")
    return names


def _budget(budget: int | None) -> int | None:
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= MAX_BUDGET:
        raise InputError(f"budget {_show(budget)} is not a number of queries",
                         hint=f"a budget is a whole number of queries from 1 to {MAX_BUDGET}, or none for unlimited")
    return budget


def _deadline(deadline_ms: float | None) -> float | None:
    if deadline_ms is None:
        return None
    if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, int | float) or not math.isfinite(deadline_ms) \
            or not 0 < deadline_ms <= MAX_DEADLINE_MS:
        raise InputError(f"deadline {_show(deadline_ms)} ms is not a deadline",
                         hint=f"a deadline is more than 0 and at most {MAX_DEADLINE_MS:g} milliseconds, or none")
    return float(deadline_ms)


def _hash(secret: str) -> bytes:
    # A secret holds 256 random bits: there is no dictionary to try, and no faster way to find a preimage of
    # SHA-256 than trying 2**256 of them, so a plain hash protects it as well as a slow KDF (bcrypt, scrypt,
    # argon2) would, and costs microseconds on every request instead of tens of milliseconds.
    return hashlib.sha256(secret.encode("ascii")).digest()


class KeyStore:
    """The API keys of a server, in one SQLite file; safe to share between threads and between processes.

    One connection, used under a lock. ``close`` (or leaving a ``with`` block) closes it.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        staging.private_file(self.path, "the key store")
        # Between the check above and SQLite opening the file, the path could be swapped for a link by someone
        # who can write to its directory; such a someone could replace the store anyway. Keep the store in a
        # directory only the server's user can write.
        self._lock = threading.Lock()
        # Keys authenticated lately, by the SHA-256 of their secret: (key, monotonic time it was read). Only
        # secrets that matched are kept; a wrong one is looked up every time.
        self._known: dict[bytes, tuple[ApiKey, float]] = {}
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as e:
            raise InputError(f"{self.path}: cannot open the key store: {e}") from None
        try:
            self._setup()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise InputError(f"{self.path}: not an onnxguard key store ({e})") from None
        except BaseException:
            self._db.close()
            raise

    def _setup(self) -> None:
        db = self._db
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id != _APPLICATION_ID and (tables or app_id):
            raise InputError(f"{self.path}: a SQLite file, but not an onnxguard key store",
                             hint="give the path of a key store, or of a file that does not exist yet")
        if version > _SCHEMA_VERSION:
            raise InputError(f"{self.path}: key store schema version {version} is newer than this onnxguard's "
                             f"({_SCHEMA_VERSION})", hint="upgrade onnxguard")
        # WAL: readers never block the writer (authentication during a charge); the setting is kept in the file.
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed charge survives the process crashing; only a power loss can lose the
        # last few, a negligible amount of budget, for not waiting on the disk at every request.
        db.execute("PRAGMA synchronous=NORMAL")
        if app_id != _APPLICATION_ID:
            # One transaction: another process creating the same store at once waits, then finds it made.
            try:
                db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA application_id={_APPLICATION_ID}; "
                                 f"PRAGMA user_version={_SCHEMA_VERSION}; COMMIT;")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """The connection, held under the lock; a failure of the file becomes an error naming it."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as e:
                raise OnnxguardError(f"{self.path}: key store: {e}",
                                     hint="check the key store file and the disk it is on") from e

    @staticmethod
    def _key(row: tuple[Any, ...]) -> ApiKey:
        id_, name, models, rate, budget, output, deadline_ms, created, revoked = row
        return ApiKey(id=id_, name=name, models=None if models is None else tuple(json.loads(models)), rate=rate,
                      budget=budget, output=output, deadline_ms=deadline_ms, created=created, revoked=bool(revoked))

    def create(self, name: str, *, models: Iterable[str] | None = None, rate: str | None = None,
               budget: int | None = None, output: str = "full",
               deadline_ms: float | None = None) -> tuple[str, ApiKey]:
        """A new key: its secret (returned this once, never stored) and its record."""
        name = _name(name)
        models_ = _models(models)
        rate = None if rate is None else parse_rate(rate)
        budget = _budget(budget)
        output = parse_output(output)
        deadline_ms = _deadline(deadline_ms)
        key_id = _ID_PREFIX + secrets.token_hex(_ID_HEX // 2)
        secret = f"{_SECRET_PREFIX}{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"
        created = datetime.now(UTC).isoformat(timespec="seconds")
        key = ApiKey(id=key_id, name=name, models=models_, rate=rate, budget=budget, output=output,
                     deadline_ms=deadline_ms, created=created, revoked=False)
        try:
            with self._conn() as db:
                db.execute("INSERT INTO keys (id, name, secret_sha256, models, rate, budget, used, output, "
                           "deadline_ms, created, revoked) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, 0)",
                           (key_id, name, _hash(secret), None if models_ is None else json.dumps(list(models_)),
                            rate, budget, output, deadline_ms, created))
        except sqlite3.IntegrityError:
            raise InputError(f"{self.path}: a key named {name!r} exists",
                             hint="choose another name, or revoke the existing key first") from None
        return secret, key

    def authenticate(self, secret: str) -> ApiKey | None:
        """The key whose secret this is; None if it is unknown, revoked or malformed (never an error for it).

        The same work is done for every secret: parse, hash, look up by id, compare in constant time. A
        malformed secret is hashed and looked up as a fixed placeholder, so only "malformed" can be told
        from the time taken; whether a public id exists may be, which tells nothing secret.
        """
        well_formed = isinstance(secret, str) and len(secret) == _SECRET_CHARS
        match = _SECRET_RE.fullmatch(secret) if well_formed else None
        key_id = match.group(1) if match is not None else _MALFORMED_ID
        digest = _hash(secret if match is not None else _MALFORMED_SECRET)
        now = time.monotonic()
        # Found by the hash of the whole secret, which only its holder can produce (a dictionary lookup compares
        # digests, not secrets: its timing tells nothing about a secret).
        known = self._known.get(digest)
        if known is not None and now - known[1] < KEY_CACHE_SECONDS:
            return known[0]
        with self._conn() as db:
            row = db.execute(f"SELECT secret_sha256, {_COLUMNS} FROM keys WHERE id = ?", (key_id,)).fetchone()
        stored = row[0] if row is not None else _NO_HASH
        equal = hmac.compare_digest(digest, stored)
        if match is None or row is None or not equal:
            self._known.pop(digest, None)
            return None
        key = self._key(row[1:])
        if key.revoked:
            self._known.pop(digest, None)
            return None
        self._known[digest] = (key, now)
        return key

    def charge(self, key: ApiKey, rows: int) -> tuple[bool, int | None]:
        """Add ``rows`` queries to the key's usage if its budget allows: ``(allowed, remaining after)``.

        One atomic UPDATE, so concurrent requests (threads or server processes) never overspend. ``remaining``
        is None for a key without budget; a refused charge adds nothing. A revoked key is refused, remaining 0.
        """
        if isinstance(rows, bool) or not isinstance(rows, int) or not 0 <= rows <= MAX_CHARGE_ROWS:
            raise InputError(f"rows {_show(rows)} is not a number of queries to charge",
                             hint=f"charge a whole number of rows from 0 to {MAX_CHARGE_ROWS}")
        with self._conn() as db:
            row = db.execute("UPDATE keys SET used = used + ? WHERE id = ? AND revoked = 0 "
                             "AND (budget IS NULL OR used + ? <= budget) RETURNING used, budget",
                             (rows, key.id, rows)).fetchone()
            if row is not None:
                used, budget = row
                return True, None if budget is None else budget - used
            row = db.execute("SELECT used, budget, revoked FROM keys WHERE id = ?", (key.id,)).fetchone()
        if row is None:
            raise InputError(f"{self.path}: no key with id {key.id!r}", hint="use a key of this key store")
        used, budget, revoked = row
        if revoked or budget is None:  # a key without budget is refused only when revoked
            return False, 0
        return False, max(0, budget - used)

    def refund(self, key_id: str, rows: int) -> None:
        """Give back ``rows`` charged to the key and not spent (a server's unspent budget lease, at shutdown)."""
        if isinstance(rows, bool) or not isinstance(rows, int) or not 0 <= rows <= MAX_CHARGE_ROWS:
            raise InputError(f"rows {_show(rows)} is not a number of queries to refund",
                             hint=f"refund a whole number of rows from 0 to {MAX_CHARGE_ROWS}")
        with self._conn() as db:
            db.execute("UPDATE keys SET used = max(0, used - ?) WHERE id = ?", (rows, key_id))

    def usage(self, key_id: str) -> int:
        """Queries (rows) charged to the key so far."""
        with self._conn() as db:
            row = db.execute("SELECT used FROM keys WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            raise InputError(f"{self.path}: no key with id {key_id!r}", hint="list the keys to see their ids")
        return int(row[0])

    def list(self) -> builtins.list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        with self._conn() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM keys ORDER BY rowid").fetchall()
        return [self._key(row) for row in rows]

    def revoke(self, name: str) -> ApiKey:
        """Revoke the key named ``name`` (the one not revoked yet); its record, revoked. Its name is free again."""
        with self._conn() as db:
            row = db.execute(f"UPDATE keys SET revoked = 1 WHERE name = ? AND revoked = 0 RETURNING {_COLUMNS}",
                             (name,)).fetchone()
            self._known.clear()
        if row is None:
            raise InputError(f"{self.path}: no key named {_show(name)} that is not revoked",
                             hint="list the keys to see their names")
        return self._key(row)

    def close(self) -> None:
        """Close the file (again: nothing)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
