"""The server's tamper-evident audit log: one record per request, accepted or refused, never the payload.

``AuditLog(path)`` appends; ``verify(path)`` checks a log; ``tail(path)`` reads its last records;
``generate_checkpoint_key(out)`` makes the Ed25519 key that signs its checkpoints.

The log is one SQLite file in WAL mode (created with mode 0600; ``PRAGMA application_id`` marks it)::

    meta(key TEXT PRIMARY KEY, value TEXT)     format "onnxguard-audit", version "1", log_id (32 random hex
                                               digits), created (ISO 8601 UTC)
    records(seq INTEGER PRIMARY KEY,           1, 2, 3, ... with no gap
            time REAL, key_id TEXT, client TEXT, model TEXT, digest TEXT, request_sha256 TEXT,
            status INTEGER, latency_ms REAL, batch_id INTEGER, reason TEXT,
            prev_hash TEXT,                    the hash of record seq-1 (the genesis hash for record 1)
            hash TEXT)                         sha256(prev_hash || canonical JSON of the record), hex
    checkpoints(seq INTEGER PRIMARY KEY,       the record it covers (0: the empty log)
                hash TEXT, time REAL,          that record's hash, when the checkpoint was written
                signature TEXT)                Ed25519 over the log id, seq, hash and time (hex), or NULL

The genesis hash is ``sha256("onnxguard-audit-genesis-v1\\n" || log_id)``, so two logs never share a chain and
a record cannot be moved from one log to another. The canonical JSON of a record is its fields and its seq,
keys sorted, no spaces, ASCII only. Triggers refuse ``UPDATE`` and ``DELETE`` on every table: that stops
mistakes, not an attacker who can write the file (he can drop the triggers), which is what the hash chain and
the signed checkpoints are for.

One writer thread owns the connection and commits in groups: it takes every record queued (and, with
``flush_interval`` > 0, waits that long for more), inserts them all in one transaction, commits, and only then
tells each caller its seq, so a response sent after ``append`` returns is always covered by a durable record.
By default it does not wait: a lone request pays one commit and no delay, and under load the records that
arrive while a commit is being synced form the next group. A checkpoint is written at every multiple
of ``checkpoint_every`` and at ``close``, signed when a key is given.

What ``verify`` detects and what it cannot:

* detected: a record edited (its hash no longer matches), a record inserted or deleted anywhere before the
  last record (a gap in seq, a ``prev_hash`` that does not chain, or hashes that no longer match once seqs
  are renumbered), records cut from the end up to a checkpoint (the checkpoint names a record that no longer
  exists), a chain rewritten from some record on (a signed checkpoint's hash no longer matches, or the
  re-signed checkpoint fails with the public key), a checkpoint signature that does not verify, a checkpoint
  that lost its signature while a public key is given, removed append-only triggers, a file that is not an
  audit log.
* not detected: the hash is a plain SHA-256, so someone who can write the file can recompute the chain. What
  stops him is a checkpoint signed with a key he does not hold: the records after the last checkpoint are
  covered by nothing (``AuditReport.uncovered`` says how many), and he can cut or append among them
  unnoticed. Without a key, checkpoints are unsigned and he can rewrite them too: the chain then proves only
  that the log is internally consistent. And since the checkpoints live in the same file, cutting the end of
  the log *together with* the checkpoints that cover it is detected only against a checkpoint kept elsewhere
  (``verify(..., anchor=(seq, hash))``), for instance the last one shipped off the host.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import secrets
import sqlite3
import stat
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from onnxguard import staging
from onnxguard.errors import CheckFailed, InputError, OnnxguardError
from onnxguard.trust import keys

# Records waiting to be committed (queued, or in the transaction being written). A record is a few hundred
# bytes (strings are cut to MAX_FIELD_CHARS), so the queue holds a few MB at most; when it is full ``append``
# waits: a slow disk slows the server down (and its own bounded request queue answers 503) instead of the
# audit log growing memory without bound, and a record is never dropped.
MAX_QUEUE = 10_000
# How a commit reaches the disk (SQLite's synchronous setting, in WAL mode). "full": the WAL is synced at every
# commit, so an acknowledged request's record survives an OS crash or a power loss; it costs an fsync per group
# (on this project's 2-core hosts 0.25 ms median, several ms at the 90th percentile), which a lone request waits
# for. "normal": no sync at commit; the record is in the WAL file in the OS's cache when the response leaves, so it
# survives a kill -9 of the server (tested) but an OS crash or a power loss can lose the last groups. The server
# defaults to "normal" (serve.server: a lone request's wait for its record falls from 0.34-0.40 ms to 0.11-0.13 ms,
# in process on the AVX2-only EPYC); the key broker, whose records are few, keeps this class's default, "full".
SYNC_MODES = ("full", "normal")
# Records in one transaction: bounds how long one commit holds the write lock and how long the first record of
# a group waits for the last one.
MAX_BATCH = 1_000
# Characters kept of each text field of a record. The fields come from the request (the model name is in the
# URL) and the log must not become a place to store payloads; a longer field is cut and ends with "...".
MAX_FIELD_CHARS = 512
# How long a commit waits for another process holding the write lock (a second writer on the same file)
# before the log fails: long enough for any commit, short enough that a stuck lock surfaces as an error.
BUSY_TIMEOUT_S = 10.0

_APPLICATION_ID = 0x6F67616C  # "ogal": this SQLite file is an onnxguard audit log
_FORMAT = "onnxguard-audit"
_VERSION = "1"
_GENESIS_PREFIX = b"onnxguard-audit-genesis-v1\n"
_CHECKPOINT_PREFIX = b"onnxguard-audit-checkpoint-v1\n"
_HEX64 = frozenset("0123456789abcdef")
_INT64 = 2**63
_CUT = "..."

_TABLES = ("meta", "records", "checkpoints")
_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE records(
    seq INTEGER PRIMARY KEY, time REAL NOT NULL, key_id TEXT, client TEXT NOT NULL, model TEXT, digest TEXT,
    request_sha256 TEXT, status INTEGER NOT NULL, latency_ms REAL NOT NULL, batch_id INTEGER,
    reason TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE checkpoints(seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, time REAL NOT NULL, signature TEXT);
""" + "".join(
    f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
    f"BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;\n"
    for table in _TABLES for op in ("UPDATE", "DELETE"))
_TRIGGERS = frozenset(f"{table}_no_{op}" for table in _TABLES for op in ("update", "delete"))
_RECORD_COLUMNS = ("time, key_id, client, model, digest, request_sha256, status, latency_ms, batch_id, reason")


@dataclass(frozen=True)
class Record:
    """One request, accepted or refused; never the payload."""

    time: float  # unix seconds, arrival
    key_id: str | None  # the API key's id (never the secret), None when no or an invalid key
    client: str  # client address "ip:port"
    model: str | None  # model name
    digest: str | None  # the bundle digest (sha256 hex of its manifest)
    request_sha256: str | None  # sha256 of the request body
    status: int  # HTTP status sent
    latency_ms: float
    batch_id: int | None
    reason: str = ""  # why refused, short


@dataclass(frozen=True)
class AuditReport:
    """What ``verify`` found. ``passed`` is True when ``failures`` is empty.

    ``uncovered`` counts the records after the last checkpoint: nothing but the plain hash chain protects them
    (see the module's docstring). ``notes`` says what was not checked, without being a failure.
    """

    passed: bool
    records: int
    checkpoints: int
    failures: tuple[str, ...]
    first_bad: int | None  # the first seq where something is wrong (a missing record's seq when cut)
    path: Path
    log_id: str
    last_seq: int  # the last record's seq (0 for an empty log)
    signed_checkpoints: int
    signatures_checked: bool  # a public key was given and every signed checkpoint was checked with it
    uncovered: int
    notes: tuple[str, ...]


# -- hashing ---------------------------------------------------------------------------------------------------


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _genesis(log_id: str) -> str:
    return hashlib.sha256(_GENESIS_PREFIX + log_id.encode("ascii")).hexdigest()


def _record_hash(prev_hash: str, seq: int, record: Record) -> str:
    fields = {"seq": seq, "time": record.time, "key_id": record.key_id, "client": record.client,
              "model": record.model, "digest": record.digest, "request_sha256": record.request_sha256,
              "status": record.status, "latency_ms": record.latency_ms, "batch_id": record.batch_id,
              "reason": record.reason}
    return hashlib.sha256(prev_hash.encode("ascii") + _canonical(fields)).hexdigest()


def _checkpoint_message(log_id: str, seq: int, hash_: str, when: float) -> bytes:
    return _CHECKPOINT_PREFIX + _canonical({"log_id": log_id, "seq": seq, "hash": hash_, "time": when})


def _is_hash(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX64


# -- records in and out ----------------------------------------------------------------------------------------


def _text(path: Path, name: str, value: object, *, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InputError(f"{path}: audit record field {name} must be a string, not {type(value).__name__}")
    # Lone surrogates cannot be stored as UTF-8: replaced, like any other character that cannot.
    text = value.encode("utf-8", "replace").decode("utf-8")
    if len(text) > MAX_FIELD_CHARS:
        text = text[:MAX_FIELD_CHARS - len(_CUT)] + _CUT
    return text


def _number(path: Path, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{path}: audit record field {name} must be a finite number, not {value!r}")
    # SQLite stores a whole REAL as an integer and reads it back as a float, so -0.0 would come back 0.0 and
    # no longer hash the same: + 0.0 makes it 0.0 before it is hashed.
    return float(value) + 0.0


def _integer(path: Path, name: str, value: object, *, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -_INT64 <= value < _INT64:
        raise InputError(f"{path}: audit record field {name} must be a 64-bit integer, not {value!r}")
    return value


def _normalized(path: Path, record: Record) -> Record:
    """The record as it will be stored and read back: the exact values that are hashed."""
    if not isinstance(record, Record):
        raise InputError(f"{path}: an audit record must be a Record, not {type(record).__name__}")
    status = _integer(path, "status", record.status, optional=False)
    assert status is not None
    client = _text(path, "client", record.client, optional=False)
    reason = _text(path, "reason", record.reason, optional=False)
    assert client is not None and reason is not None
    return Record(time=_number(path, "time", record.time), key_id=_text(path, "key_id", record.key_id, optional=True),
                  client=client, model=_text(path, "model", record.model, optional=True),
                  digest=_text(path, "digest", record.digest, optional=True),
                  request_sha256=_text(path, "request_sha256", record.request_sha256, optional=True),
                  status=status, latency_ms=_number(path, "latency_ms", record.latency_ms),
                  batch_id=_integer(path, "batch_id", record.batch_id, optional=True), reason=reason)


def _row_record(row: tuple[Any, ...]) -> Record | str:
    """A Record from the columns of ``_RECORD_COLUMNS``, or what is wrong with them."""
    time_, key_id, client, model, digest, request_sha256, status, latency_ms, batch_id, reason = row
    for name, value, kinds in (("time", time_, (float,)), ("key_id", key_id, (str, type(None))),
                               ("client", client, (str,)), ("model", model, (str, type(None))),
                               ("digest", digest, (str, type(None))),
                               ("request_sha256", request_sha256, (str, type(None))), ("status", status, (int,)),
                               ("latency_ms", latency_ms, (float,)), ("batch_id", batch_id, (int, type(None))),
                               ("reason", reason, (str,))):
        if not isinstance(value, kinds) or (isinstance(value, float) and not math.isfinite(value)):
            return f"field {name} holds {type(value).__name__} {value!r:.40}"
    return Record(time=time_, key_id=key_id, client=client, model=model, digest=digest,
                  request_sha256=request_sha256, status=status, latency_ms=latency_ms, batch_id=batch_id,
                  reason=reason)


# -- files -----------------------------------------------------------------------------------------------------


def _read_meta(path: Path, db: sqlite3.Connection) -> str:
    """The log id, after checking that ``db`` is an onnxguard audit log; InputError if not."""
    hint = "give the path of an onnxguard audit log"
    try:
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if app_id != _APPLICATION_ID or not set(_TABLES) <= names:
            raise InputError(f"{path}: a SQLite file, but not an onnxguard audit log", hint=hint)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as e:
        raise InputError(f"{path}: not an onnxguard audit log ({e})", hint=hint) from None
    if meta.get("format") != _FORMAT:
        raise InputError(f"{path}: not an onnxguard audit log (format {meta.get('format')!r})", hint=hint)
    if meta.get("version") != _VERSION:
        raise InputError(f"{path}: audit log format version {meta.get('version')!r} is not supported "
                         f"(this onnxguard reads version {_VERSION})", hint="use the onnxguard that wrote it")
    log_id = meta.get("log_id")
    if not isinstance(log_id, str) or len(log_id) != 32 or not set(log_id) <= _HEX64:
        raise CheckFailed(f"{path}: the audit log's id is malformed ({log_id!r:.80}): the log was tampered with")
    return log_id


@contextmanager
def _open_readonly(path: Path) -> Iterator[tuple[sqlite3.Connection, str]]:
    """A read-only connection to an existing audit log (a regular file) and its log id."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise InputError(f"{path}: cannot read the audit log: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: the audit log is not a regular file", hint="give the path of a regular file")
    uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as e:
        raise InputError(f"{path}: cannot open the audit log: {e}") from None
    try:
        try:
            # The file may come from anyone: its schema must not run functions with side effects.
            db.execute("PRAGMA trusted_schema=OFF")
            db.execute("BEGIN")  # one snapshot: a writer committing meanwhile changes nothing we read
        except sqlite3.DatabaseError as e:
            raise InputError(f"{path}: not an onnxguard audit log ({e})",
                             hint="give the path of an onnxguard audit log") from None
        yield db, _read_meta(path, db)
    finally:
        db.close()


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    return keys.ed25519_private(path, "checkpoint key", "give the Ed25519 private key made by generate_checkpoint_key")


def _load_public_key(path: Path) -> Ed25519PublicKey:
    return keys.ed25519_public(path, "checkpoint public key", "give the .pub.pem written beside the checkpoint key")[0]


def _public_key_path(private: Path) -> Path:
    name = private.name[:-len(".pem")] if private.name.endswith(".pem") else private.name
    return private.with_name(name + ".pub.pem")


def generate_checkpoint_key(out: Path) -> Path:
    """Write an Ed25519 private key (PEM, mode 0600) to ``out`` and its public key beside it; return ``out``.

    The public key goes to ``out`` with ``.pem`` replaced by ``.pub.pem`` (``audit-key.pem`` ->
    ``audit-key.pub.pem``). Existing files are never overwritten: a replaced key would orphan every checkpoint
    it signed, so nothing is written when either file exists.
    """
    out = Path(out)
    public = _public_key_path(out)
    for p in (out, public):
        if os.path.lexists(p):
            raise InputError(f"{p}: already exists; a checkpoint key is never overwritten",
                             hint="choose another path for the key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    written: list[Path] = []
    try:
        for p, data, mode in ((out, private_pem, 0o600), (public, public_pem, 0o644)):
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
            written.append(p)
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)  # exactly ``mode``, whatever the umask
                f.write(data)
    except OSError as e:
        for p in written:  # both or none: a private key without its public key (or the reverse) is no use
            p.unlink(missing_ok=True)
        raise InputError(f"{e.filename or out}: cannot write the checkpoint key: {e.strerror}") from None
    return out


# -- the writer ------------------------------------------------------------------------------------------------


class _Waiter:
    """Where the writer hands a caller its seq, or its error: an asyncio future or a threading event."""

    __slots__ = ("loop", "future", "event", "seq", "error")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop
        self.future: asyncio.Future[int] | None = loop.create_future() if loop is not None else None
        self.event = threading.Event() if loop is None else None
        self.seq = 0
        self.error: OnnxguardError | None = None

    def settle(self) -> None:
        """Hand over ``seq`` or ``error``: in the caller's event loop for a future."""
        future = self.future
        if future is None or future.done():  # cancelled by its caller
            return
        if self.error is not None:
            future.set_exception(self.error)
        else:
            future.set_result(self.seq)


def _settle_all(settled: list[_Waiter]) -> None:
    """Wake every waiter: events at once, futures with one call into each event loop (not one per record)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Waiter]] = {}
    for waiter in settled:
        if waiter.event is not None:
            waiter.event.set()
        elif waiter.loop is not None:
            by_loop.setdefault(waiter.loop, []).append(waiter)
    for loop, waiters in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_in_loop, waiters)
        except RuntimeError:  # the caller's event loop is closed: nobody is waiting any more
            pass


def _settle_in_loop(waiters: list[_Waiter]) -> None:
    for waiter in waiters:
        waiter.settle()


def _wake(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    def done() -> None:
        if not future.done():
            future.set_result(None)
    try:
        loop.call_soon_threadsafe(done)
    except RuntimeError:  # that event loop is closed
        pass


class AuditLog:
    """Appends records to the audit log at ``path`` (created when missing) from any thread or event loop.

    One writer thread owns the SQLite connection. ``append`` returns a record's seq once it is committed;
    when ``MAX_QUEUE`` records wait to be committed, ``append`` waits for room (backpressure), it never drops
    a record. If a commit fails (disk full, the file removed), the log fails closed: that group and every
    later ``append`` raise ``OnnxguardError``. Several processes may append to the same file: every group is
    chained to the last committed record inside its own write transaction. ``close`` (or leaving a ``with``
    block) commits what is queued, writes a final checkpoint and stops the thread.
    """

    def __init__(self, path: Path, *, checkpoint_key: Path | None = None, checkpoint_every: int = 1000,
                 flush_interval: float = 0.0, max_queue: int = MAX_QUEUE, sync: str = "full") -> None:
        self.path = Path(path)
        if sync not in SYNC_MODES:
            raise InputError(f"{self.path}: audit sync {sync!r} is not one of {', '.join(SYNC_MODES)}",
                             hint="full: records survive a power loss; normal: a crash of the server process")
        self.sync = sync
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise InputError(f"{self.path}: checkpoint_every must be a whole number of records, at least 1, "
                             f"not {checkpoint_every!r}")
        if not isinstance(flush_interval, int | float) or not 0 <= flush_interval <= 1:
            raise InputError(f"{self.path}: flush_interval must be between 0 and 1 second, not {flush_interval!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or not 1 <= max_queue <= MAX_QUEUE:
            raise InputError(f"{self.path}: max_queue must be between 1 and {MAX_QUEUE}, not {max_queue!r}")
        self._key = _load_private_key(checkpoint_key) if checkpoint_key is not None else None
        self._every = checkpoint_every
        self._flush_interval = float(flush_interval)
        self._max_queue = max_queue
        staging.private_file(self.path, "the audit log")
        # Between the check above and SQLite opening the file, the path could be swapped for a link by someone
        # who can write to its directory; keep the log in a directory only the server's user can write.
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                       check_same_thread=False)  # made here, then used by the writer only
        except sqlite3.Error as e:
            raise InputError(f"{self.path}: cannot open the audit log: {e}") from None
        try:
            self._log_id = self._setup()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise InputError(f"{self.path}: not an onnxguard audit log ({e})",
                             hint="give the path of an audit log, or of a file that does not exist yet") from None
        except BaseException:
            self._db.close()
            raise
        self._genesis = _genesis(self._log_id)
        self._lock = threading.Lock()
        self._has_records = threading.Condition(self._lock)  # the writer waits here for records
        self._has_room = threading.Condition(self._lock)  # blocking callers wait here for room in the queue
        self._pending: deque[tuple[Record, _Waiter]] = deque()
        self._room_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []  # async callers
        self._uncommitted = 0
        self._commits = 0
        self._closing = False
        self._failure: OnnxguardError | None = None
        self._close_error: OnnxguardError | None = None
        self._thread = threading.Thread(target=self._run, name=f"onnxguard-audit:{self.path.name}", daemon=True)
        self._thread.start()

    def _setup(self) -> str:
        db = self._db
        if not self._is_empty_or_ours():  # before changing anything in someone else's file
            raise InputError(f"{self.path}: a SQLite file, but not an onnxguard audit log",
                             hint="give the path of an audit log, or of a file that does not exist yet")
        # WAL: ``verify`` and ``tail`` read while the server writes, and a commit is one append to the WAL file.
        if db.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
            raise InputError(f"{self.path}: the audit log cannot be put in WAL mode",
                             hint="keep the audit log on a local file system")
        # FULL by default: in WAL mode NORMAL already keeps a committed record through a kill -9 of the process
        # (the commit is in the WAL file, in the OS's cache), but an OS crash or a power loss could still lose
        # the last records after their responses were sent. FULL syncs the WAL at every commit; group commit
        # makes that one sync per group, not per request (SYNC_MODES has what each costs).
        db.execute(f"PRAGMA synchronous={self.sync.upper()}")
        db.execute("BEGIN IMMEDIATE")  # two processes creating the same log: one creates it, the other reads it
        try:
            if db.execute("PRAGMA application_id").fetchone()[0] != _APPLICATION_ID:
                if not self._is_empty_or_ours():
                    raise InputError(f"{self.path}: a SQLite file, but not an onnxguard audit log",
                                     hint="give the path of an audit log, or of a file that does not exist yet")
                # One statement at a time: executescript would commit the transaction first.
                for statement in _SCHEMA.strip().split(";\n"):
                    db.execute(statement)
                log_id = secrets.token_hex(16)
                created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
                db.executemany("INSERT INTO meta(key, value) VALUES (?, ?)",
                               [("format", _FORMAT), ("version", _VERSION), ("log_id", log_id),
                                ("created", created)])
                db.execute(f"PRAGMA application_id={_APPLICATION_ID}")
            else:
                log_id = _read_meta(self.path, db)
            db.execute("COMMIT")
        finally:
            if db.in_transaction:
                db.execute("ROLLBACK")
        return log_id

    def _is_empty_or_ours(self) -> bool:
        app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
        return bool(app_id == _APPLICATION_ID or
                    (app_id == 0 and self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0))

    # -- the public API ----------------------------------------------------------------------------------------

    @property
    def lag(self) -> int:
        """Records queued but not yet committed (a metric)."""
        return self._uncommitted

    @property
    def commits(self) -> int:
        """Transactions committed so far by this writer (group commit: usually far fewer than records)."""
        return self._commits

    @property
    def log_id(self) -> str:
        """The random id of this log, stored in its ``meta`` table and bound into its genesis hash."""
        return self._log_id

    async def append(self, record: Record) -> int:
        """Queue ``record`` and return its seq once it is committed (durable); waits while the queue is full."""
        record = _normalized(self.path, record)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop)
        while True:
            with self._lock:
                self._check_open()
                if self._uncommitted < self._max_queue:
                    self._enqueue(record, waiter)
                    break
                room: asyncio.Future[None] = loop.create_future()
                self._room_waiters.append((loop, room))
            await room
        assert waiter.future is not None
        return await waiter.future

    def append_blocking(self, record: Record) -> int:
        """Queue ``record`` and return its seq once it is committed (durable), for callers outside asyncio."""
        record = _normalized(self.path, record)
        waiter = _Waiter()
        with self._lock:
            self._check_open()
            while self._uncommitted >= self._max_queue:
                self._has_room.wait()
                self._check_open()
            self._enqueue(record, waiter)
        assert waiter.event is not None
        waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error
        return waiter.seq

    def close(self) -> None:
        """Commit what is queued, write a final checkpoint and stop the writer; a second call does nothing.

        Raises ``OnnxguardError`` when the log failed or the final checkpoint could not be written.
        """
        with self._lock:
            self._closing = True
            self._has_records.notify_all()
            self._has_room.notify_all()
            room_waiters, self._room_waiters = self._room_waiters, []
        for loop, room in room_waiters:  # they look again, and find the log closed
            _wake(loop, room)
        if threading.current_thread() is not self._thread:
            self._thread.join()
        error, self._close_error = self._close_error, None
        if error is not None:
            raise error

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inside the lock ---------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing:
            raise OnnxguardError(f"{self.path}: the audit log is closed",
                                 hint="open the audit log again to append records")

    def _enqueue(self, record: Record, waiter: _Waiter) -> None:
        self._pending.append((record, waiter))
        self._uncommitted += 1
        self._has_records.notify()

    # -- the writer thread -------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                self._commit(batch)
            if self._failure is None:
                self._final_checkpoint()
            elif self._close_error is None:
                self._close_error = self._failure
        finally:
            self._db.close()
            with self._lock:  # only if the loop above ended by a bug: nobody may wait forever
                left = list(self._pending)
                self._pending.clear()
            error = OnnxguardError(f"{self.path}: the audit log's writer stopped")
            for _, waiter in left:
                waiter.error = error
            _settle_all([waiter for _, waiter in left])

    def _next_batch(self) -> list[tuple[Record, _Waiter]] | None:
        """The next group of records: waits for one, takes all that are queued, and with ``flush_interval`` > 0 waits
        that long for more. None once closed."""
        with self._lock:
            while not self._pending and not self._closing:
                self._has_records.wait()
            if not self._pending:
                return None
            deadline = time.monotonic() + self._flush_interval
            while len(self._pending) < MAX_BATCH and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._has_records.wait(remaining)
            return [self._pending.popleft() for _ in range(min(len(self._pending), MAX_BATCH))]

    def _head(self) -> tuple[int, str]:
        row = self._db.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        return (0, self._genesis) if row is None else (int(row[0]), str(row[1]))

    def _checkpoint(self, seq: int, hash_: str) -> None:
        when = time.time()
        signature = (self._key.sign(_checkpoint_message(self._log_id, seq, hash_, when)).hex()
                     if self._key is not None else None)
        self._db.execute("INSERT OR IGNORE INTO checkpoints(seq, hash, time, signature) VALUES (?, ?, ?, ?)",
                         (seq, hash_, when, signature))

    def _commit(self, batch: list[tuple[Record, _Waiter]]) -> None:
        db = self._db
        seqs: list[int] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            seq, hash_ = self._head()  # read inside the write lock: another process may have appended
            rows = []
            checkpoints = []
            for record, _ in batch:
                seq += 1
                prev, hash_ = hash_, _record_hash(hash_, seq, record)
                rows.append((seq, record.time, record.key_id, record.client, record.model, record.digest,
                             record.request_sha256, record.status, record.latency_ms, record.batch_id,
                             record.reason, prev, hash_))
                seqs.append(seq)
                if seq % self._every == 0:
                    checkpoints.append((seq, hash_))
            db.executemany(f"INSERT INTO records(seq, {_RECORD_COLUMNS}, prev_hash, hash) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            for checkpoint in checkpoints:
                self._checkpoint(*checkpoint)
            db.execute("COMMIT")
        except sqlite3.Error as e:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:  # the transaction may already be gone; the log is failing anyway
                    pass
            self._fail(batch, OnnxguardError(f"{self.path}: the audit log could not be written ({e})",
                                             hint="check the disk holding the audit log; no request can be "
                                                  "recorded until it is opened again"))
            return
        self._commits += 1
        with self._lock:
            self._uncommitted -= len(batch)
            self._has_room.notify_all()
            room_waiters, self._room_waiters = self._room_waiters, []
        for loop, room in room_waiters:
            _wake(loop, room)
        for (_, waiter), s in zip(batch, seqs, strict=True):
            waiter.seq = s
        _settle_all([waiter for _, waiter in batch])

    def _fail(self, batch: list[tuple[Record, _Waiter]], error: OnnxguardError) -> None:
        with self._lock:
            self._failure = error
            batch = batch + list(self._pending)
            self._pending.clear()
            self._uncommitted = 0
            self._has_room.notify_all()
            room_waiters, self._room_waiters = self._room_waiters, []
        for loop, room in room_waiters:
            _wake(loop, room)
        for _, waiter in batch:
            waiter.error = error
        _settle_all([waiter for _, waiter in batch])

    def _final_checkpoint(self) -> None:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            seq, hash_ = self._head()
            last = db.execute("SELECT max(seq) FROM checkpoints").fetchone()[0]
            if last is None or last < seq:
                self._checkpoint(seq, hash_)
            db.execute("COMMIT")
        except sqlite3.Error as e:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:  # already rolled back by SQLite
                    pass
            self._close_error = OnnxguardError(f"{self.path}: the final checkpoint could not be written ({e})",
                                               hint="check the disk holding the audit log")


# -- reading ---------------------------------------------------------------------------------------------------


def _parse_anchor(anchor: tuple[int, str] | None) -> tuple[int, str] | None:
    if anchor is None:
        return None
    seq, hash_ = anchor
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0 or not _is_hash(hash_):
        raise InputError(f"the anchor must be a seq (0 or more) and a sha256 hex hash, not {anchor!r:.120}")
    return seq, hash_


def verify(path: Path, public_key: Path | None = None, *, anchor: tuple[int, str] | None = None) -> AuditReport:
    """Recompute the audit log's hash chain from its genesis and check every checkpoint against it.

    With ``public_key`` every checkpoint must carry a signature that verifies with it; without, signatures
    are not checked (``notes`` says so). ``anchor`` is a ``(seq, hash)`` kept outside the file, such as the
    last checkpoint shipped elsewhere: the chain must reach it. The module's docstring lists what this
    detects and what it cannot. InputError when the file is not an audit log (or the key not a public key).
    """
    path = Path(path)
    anchor = _parse_anchor(anchor)
    key = _load_public_key(public_key) if public_key is not None else None
    failures: list[tuple[int | None, str]] = []  # (the seq it concerns, None for the file; message)
    with _open_readonly(path) as (db, log_id):
        try:
            triggers = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
            checkpoints = db.execute("SELECT seq, hash, time, signature FROM checkpoints").fetchall()
            wanted = {row[0] for row in checkpoints} | ({anchor[0]} if anchor is not None else set())
            genesis = _genesis(log_id)
            chain: dict[int, str] = {0: genesis}  # the chain's hash at the seqs checkpoints and anchor name
            prev, last, count = genesis, 0, 0
            for row in db.execute(f"SELECT seq, {_RECORD_COLUMNS}, prev_hash, hash FROM records ORDER BY seq"):
                seq, fields, prev_hash, hash_ = row[0], row[1:-2], row[-2], row[-1]
                count += 1
                if isinstance(seq, bool) or not isinstance(seq, int) or seq <= last:
                    failures.append((last + 1, f"record {seq!r:.40}: a seq that cannot follow {last} (inserted)"))
                    continue
                if seq != last + 1:
                    gap = f"record {last + 1}" if seq == last + 2 else f"records {last + 1} to {seq - 1}"
                    failures.append((last + 1, f"{gap} missing (deleted): record {seq} follows record {last}"))
                elif prev_hash != prev:
                    failures.append((seq, f"record {seq}: its prev_hash is not the hash of record {last} "
                                          "(a record before it was edited, inserted or deleted)"))
                record = _row_record(fields)
                if isinstance(record, str):
                    failures.append((seq, f"record {seq}: malformed, {record}"))
                elif not _is_hash(prev_hash) or not _is_hash(hash_):
                    failures.append((seq, f"record {seq}: its hashes are malformed"))
                elif _record_hash(prev_hash, seq, record) != hash_:
                    failures.append((seq, f"record {seq}: its contents do not match its hash (edited)"))
                # Go on from the stored hash: one edit is one failure, not one for every record after it.
                prev, last = (hash_ if isinstance(hash_, str) else ""), seq
                if seq in wanted:
                    chain[seq] = prev
        except sqlite3.DatabaseError as e:
            raise InputError(f"{path}: the audit log cannot be read ({e})",
                             hint="give the path of an onnxguard audit log") from None

    missing = sorted(_TRIGGERS - triggers)
    if missing:
        failures.append((None, f"the append-only triggers were removed ({', '.join(missing)}): the file was "
                               "written by something other than onnxguard"))
    signed, covered, cut = 0, 0, False
    for seq, hash_, when, signature in checkpoints:
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0 or not _is_hash(hash_) \
                or not isinstance(when, float) or not isinstance(signature, str | None):
            failures.append((None, f"checkpoint {seq!r:.40}: malformed"))
            continue
        if seq > last:
            cut = True
            failures.append((last + 1, f"checkpoint {seq}: names record {seq}, but the log ends at record {last} "
                                       "(records were cut from the end)"))
        elif seq not in chain:
            failures.append((seq, f"checkpoint {seq}: record {seq} is missing (deleted)"))
        elif chain[seq] != hash_:
            failures.append((seq, f"checkpoint {seq}: record {seq}'s hash no longer matches the checkpoint "
                                  "(the chain was rewritten)"))
        else:
            covered = max(covered, seq)
        signed += signature is not None
        if key is None:
            continue
        if signature is None:
            failures.append((seq, f"checkpoint {seq}: not signed, but a public key was given "
                                  "(its signature was removed, or the checkpoint forged)"))
            continue
        try:
            key.verify(bytes.fromhex(signature), _checkpoint_message(log_id, seq, hash_, when))
        except (InvalidSignature, ValueError):
            failures.append((seq, f"checkpoint {seq}: its signature does not verify with {public_key}"))

    if anchor is not None:
        a_seq, a_hash = anchor
        if a_seq > last:
            failures.append((last + 1, f"anchor {a_seq}: the log ends at record {last} "
                                       "(records were cut from the end)"))
        elif chain.get(a_seq) != a_hash:
            failures.append((a_seq, f"anchor {a_seq}: record {a_seq}'s hash does not match the anchor"))

    notes: list[str] = []
    uncovered = 0 if cut else last - covered
    if uncovered:
        notes.append(f"{uncovered} record(s) after the last checkpoint are covered by no checkpoint: only the "
                     "hash chain protects them, and records cut from the end among them would go unnoticed")
    if checkpoints and key is None:
        notes.append("checkpoint signatures not checked: no public key given" if signed else
                     "checkpoints are unsigned: anyone who can write the file could rewrite the whole chain")
    failures.sort(key=lambda f: -1 if f[0] is None else f[0])
    bad = [s for s, _ in failures if s is not None]
    return AuditReport(passed=not failures, records=count, checkpoints=len(checkpoints),
                       failures=tuple(message for _, message in failures), first_bad=min(bad, default=None),
                       path=path, log_id=log_id, last_seq=last, signed_checkpoints=signed,
                       signatures_checked=key is not None, uncovered=uncovered, notes=tuple(notes))


def tail(path: Path, n: int = 20) -> list[tuple[int, Record]]:
    """The last ``n`` records of the audit log at ``path``, oldest first, as ``(seq, record)``; not verified."""
    path = Path(path)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InputError(f"{path}: the number of records to show must be 0 or more, not {n!r}")
    out: list[tuple[int, Record]] = []
    with _open_readonly(path) as (db, _):
        try:
            rows = db.execute(f"SELECT seq, {_RECORD_COLUMNS} FROM records ORDER BY seq DESC LIMIT ?",
                              (n,)).fetchall()
        except sqlite3.DatabaseError as e:
            raise InputError(f"{path}: the audit log cannot be read ({e})") from None
    for row in reversed(rows):
        record = _row_record(row[1:])
        if isinstance(record, str):
            raise CheckFailed(f"{path}: record {row[0]!r} is malformed ({record})",
                              hint="verify the audit log: it was tampered with")
        out.append((int(row[0]), record))
    return out
