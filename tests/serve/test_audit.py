"""The audit log: appends from tasks and threads, group commit, backpressure, durability through kill -9, and
verify against an attacker who edits the SQLite file directly."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from onnxguard.errors import InputError, OnnxguardError
from onnxguard.serve import audit
from onnxguard.serve.audit import AuditLog, Record, generate_checkpoint_key, tail, verify

pytestmark = pytest.mark.timeout(60)


def rec(i: int = 0, **changes: object) -> Record:
    fields: dict[str, object] = {
        "time": 1_700_000_000.0 + i / 1000, "key_id": f"k_{i % 7:016x}", "client": f"10.0.0.{i % 250}:{1000 + i}",
        "model": "sentiment", "digest": "ab" * 32, "request_sha256": f"{i:064x}", "status": 200,
        "latency_ms": 1.25 + i, "batch_id": i // 4, "reason": ""}
    fields.update(changes)
    return Record(**fields)  # type: ignore[arg-type]


def write_log(path: Path, n: int, *, key: Path | None = None, every: int = 10) -> None:
    with AuditLog(path, checkpoint_key=key, checkpoint_every=every, flush_interval=0) as log:
        for i in range(n):
            log.append_blocking(rec(i))


@contextmanager
def attacker(path: Path) -> Iterator[sqlite3.Connection]:
    """Write access to the file, as anyone who can open it: drops the append-only triggers, then restores them."""
    db = sqlite3.connect(path, isolation_level=None)
    triggers = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
    try:
        for name, _ in triggers:
            db.execute(f"DROP TRIGGER {name}")
        yield db
        for _, sql in triggers:
            db.execute(sql)
    finally:
        db.close()


def rechain(db: sqlite3.Connection, start: int) -> None:
    """Recompute every record's prev_hash and hash from ``start`` on, as an attacker knowing the format can."""
    log_id = db.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()[0]
    prev = (audit._genesis(log_id) if start == 1 else
            db.execute("SELECT hash FROM records WHERE seq = ?", (start - 1,)).fetchone()[0])
    rows = db.execute(f"SELECT seq, {audit._RECORD_COLUMNS} FROM records WHERE seq >= ? ORDER BY seq",
                      (start,)).fetchall()
    for row in rows:
        record = audit._row_record(row[1:])
        assert isinstance(record, Record)
        hash_ = audit._record_hash(prev, row[0], record)
        db.execute("UPDATE records SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, hash_, row[0]))
        prev = hash_


def record_hash(path: Path, seq: int) -> str:
    with sqlite3.connect(path) as db:
        value: str = db.execute("SELECT hash FROM records WHERE seq = ?", (seq,)).fetchone()[0]
    db.close()
    return value


def failed(report: audit.AuditReport, *fragments: str) -> str:
    """The one failure that names every fragment (the report must not pass)."""
    assert not report.passed
    matching = [f for f in report.failures if all(fr in f for fr in fragments)]
    assert matching, report.failures
    return matching[0]


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "keys").mkdir()
    private = generate_checkpoint_key(tmp_path / "keys" / "audit-key.pem")
    return private, tmp_path / "keys" / "audit-key.pub.pem"


# -- appending -------------------------------------------------------------------------------------------------


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    path = tmp_path / "an audit log?#%.db"  # characters a file: URI must escape
    records = [rec(0), rec(1, key_id=None, model=None, digest=None, request_sha256=None, batch_id=None,
                            status=401, reason="no API key"),
               rec(2, time=5, latency_ms=-0.0, client="[::1]:443", model="modèle ☃"),
               rec(3, time=1e300, latency_ms=0.1, batch_id=-(2**63))]
    with AuditLog(path) as log:
        seqs = [log.append_blocking(r) for r in records]
        assert log.lag == 0
    assert seqs == [1, 2, 3, 4]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    report = verify(path)
    assert report.passed, report.failures
    assert (report.records, report.last_seq, report.checkpoints, report.uncovered) == (4, 4, 1, 0)
    assert report.signed_checkpoints == 0 and not report.signatures_checked
    assert any("unsigned" in n for n in report.notes)
    got = tail(path, 10)
    assert [s for s, _ in got] == seqs
    assert [r for _, r in got] == [records[0], records[1], rec(2, time=5.0, latency_ms=0.0, client="[::1]:443",
                                                               model="modèle ☃"), records[3]]
    assert [s for s, _ in tail(path, 2)] == [3, 4]
    assert tail(path, 0) == []


def test_long_fields_are_cut_and_surrogates_replaced(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditLog(path) as log:
        log.append_blocking(rec(0, model="m" * 100_000, reason="bad \udc80 byte"))
    [(_, got)] = tail(path, 1)
    assert got.model is not None and len(got.model) == audit.MAX_FIELD_CHARS and got.model.endswith("...")
    assert got.reason == "bad ? byte"
    assert verify(path).passed


@pytest.mark.parametrize("changes", [{"status": "200"}, {"time": float("nan")}, {"latency_ms": float("inf")},
                                     {"client": None}, {"batch_id": 2**63}, {"key_id": b"k"}, {"status": True}])
def test_a_malformed_record_is_refused(tmp_path: Path, changes: dict[str, object]) -> None:
    path = tmp_path / "audit.db"
    with AuditLog(path) as log:
        with pytest.raises(InputError, match=str(path)):
            log.append_blocking(rec(0, **changes))
        assert log.append_blocking(rec(1)) == 1  # the log goes on


def test_concurrent_tasks_get_distinct_increasing_seqs(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"

    async def main(log: AuditLog) -> list[list[int]]:
        async def client(c: int) -> list[int]:
            return [await log.append(rec(c * 100 + i)) for i in range(10)]
        return await asyncio.gather(*(client(c) for c in range(30)))

    with AuditLog(path, checkpoint_every=37) as log:
        per_client = asyncio.run(main(log))
    assert all(seqs == sorted(seqs) for seqs in per_client)
    assert sorted(s for seqs in per_client for s in seqs) == list(range(1, 301))
    report = verify(path)
    assert report.passed and report.records == 300 and report.checkpoints == 300 // 37 + 1


def test_concurrent_threads_get_distinct_increasing_seqs(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    results: dict[int, list[int]] = {}
    with AuditLog(path, checkpoint_every=25) as log:
        def work(t: int) -> None:
            results[t] = [log.append_blocking(rec(t * 100 + i)) for i in range(40)]
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert len(results) == 8
    assert all(seqs == sorted(seqs) for seqs in results.values())
    assert sorted(s for seqs in results.values() for s in seqs) == list(range(1, 321))
    assert verify(path).passed


def test_group_commit_groups(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"

    async def main(log: AuditLog) -> list[int]:
        return await asyncio.gather(*(log.append(rec(i)) for i in range(500)))

    with AuditLog(path, flush_interval=0.05) as log:
        seqs = asyncio.run(main(log))
        commits = log.commits
    assert sorted(seqs) == list(range(1, 501))
    assert 1 <= commits <= 5, commits  # 500 records submitted at once: one or a few transactions, not 500


def test_a_full_queue_makes_append_wait_and_drops_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    blocking: list[int] = []

    async def main(log: AuditLog, holder: sqlite3.Connection) -> list[int]:
        tasks = [asyncio.ensure_future(log.append(rec(i))) for i in range(30)]
        await asyncio.sleep(0.3)  # the writer is stuck on the lock the holder keeps: the queue fills
        assert log.lag == 4
        assert not any(t.done() for t in tasks)
        thread = threading.Thread(target=lambda: blocking.append(log.append_blocking(rec(99))))
        thread.start()
        await asyncio.sleep(0.1)
        assert thread.is_alive() and log.lag == 4  # the blocking caller waits for room too
        holder.execute("ROLLBACK")
        seqs = await asyncio.gather(*tasks)
        await asyncio.to_thread(thread.join, 10)
        return seqs

    with AuditLog(path, max_queue=4, flush_interval=0) as log:
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            seqs = asyncio.run(main(log, holder))
        finally:
            holder.close()
    assert sorted(seqs + blocking) == list(range(1, 32))
    assert verify(path).passed


def test_a_cancelled_caller_still_gets_its_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"

    async def main(log: AuditLog) -> None:
        task = asyncio.ensure_future(log.append(rec(1)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with AuditLog(path, flush_interval=0) as log:
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # the commit waits until the caller and its event loop are gone
            asyncio.run(main(log))
            holder.execute("ROLLBACK")
        finally:
            holder.close()
        assert log.append_blocking(rec(2)) == 2
    assert verify(path).records == 2


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_log(path, 5, every=100)
    write_log(path, 5, every=100)
    report = verify(path)
    assert report.passed and report.last_seq == 10 and report.checkpoints == 2  # one at each close
    assert [s for s, _ in tail(path, 3)] == [8, 9, 10]


def test_an_empty_log_closes_with_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    AuditLog(path).close()
    report = verify(path)
    assert report.passed and report.records == 0 and report.checkpoints == 1 and report.first_bad is None


def test_a_closed_log_refuses_appends(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db")
    log.close()
    log.close()  # a second close does nothing
    with pytest.raises(OnnxguardError, match="closed"):
        log.append_blocking(rec())
    with pytest.raises(OnnxguardError, match="closed"):
        asyncio.run(log.append(rec()))


def test_a_failed_commit_fails_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.db"
    monkeypatch.setattr(audit, "BUSY_TIMEOUT_S", 0.05)
    log = AuditLog(path, flush_interval=0)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock past the busy timeout
        with pytest.raises(OnnxguardError, match="could not be written"):
            log.append_blocking(rec())
        holder.execute("ROLLBACK")
        with pytest.raises(OnnxguardError, match="could not be written"):
            log.append_blocking(rec())  # failed closed: nothing more is accepted
        with pytest.raises(OnnxguardError, match=str(path)):
            log.close()
    finally:
        holder.close()
    assert verify(path).records == 0


def test_verify_reads_a_consistent_snapshot_while_the_log_grows(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    stop = threading.Event()
    with AuditLog(path, checkpoint_every=3, flush_interval=0) as log:
        def work() -> None:
            i = 0
            while not stop.is_set():
                log.append_blocking(rec(i))
                i += 1
        writer = threading.Thread(target=work)
        writer.start()
        try:
            deadline = time.monotonic() + 10
            while log.commits < 3 and time.monotonic() < deadline:
                time.sleep(0.001)
            reports = []
            for _ in range(15):
                reports.append(verify(path))
                time.sleep(0.005)
        finally:
            stop.set()
            writer.join(timeout=10)
    assert all(r.passed for r in reports), [r.failures for r in reports if not r.passed]
    assert 0 < reports[0].records < reports[-1].records


# -- tampering -------------------------------------------------------------------------------------------------


def test_the_tables_refuse_update_and_delete(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_log(path, 3)
    with sqlite3.connect(path) as db:
        for sql in ("UPDATE records SET status = 500 WHERE seq = 2", "DELETE FROM records WHERE seq = 3",
                    "DELETE FROM checkpoints", "UPDATE meta SET value = 'x' WHERE key = 'log_id'"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                db.execute(sql)
    db.close()
    assert verify(path).passed


def test_removed_triggers_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_log(path, 3)
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER records_no_update")
    db.close()
    report = verify(path)
    failed(report, "append-only triggers were removed", "records_no_update")
    assert report.first_bad is None  # no record is wrong


def test_an_edited_record_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_log(path, 25)
    with attacker(path) as db:
        db.execute("UPDATE records SET status = 500, key_id = 'k_someone_else' WHERE seq = 7")
    report = verify(path)
    assert failed(report, "record 7", "edited")
    assert report.first_bad == 7 and len(report.failures) == 1  # one edit, one failure


def test_an_edited_record_with_its_hash_recomputed_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_log(path, 25)
    with attacker(path) as db:
        db.execute("UPDATE records SET reason = 'nothing to see' WHERE seq = 7")
        row = db.execute(f"SELECT prev_hash, {audit._RECORD_COLUMNS} FROM records WHERE seq = 7").fetchone()
        record = audit._row_record(row[1:])
        assert isinstance(record, Record)
        db.execute("UPDATE records SET hash = ? WHERE seq = 7", (audit._record_hash(row[0], 7, record),))
    report = verify(path)
    failed(report, "record 8", "prev_hash")
    assert report.first_bad == 8


def test_a_deleted_record_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_log(path, 25)
    with attacker(path) as db:
        db.execute("DELETE FROM records WHERE seq = 12")
    report = verify(path)
    failed(report, "record 12 missing")
    assert report.first_bad == 12


def test_a_deleted_record_with_the_rest_renumbered_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_log(path, 25)
    with attacker(path) as db:
        db.execute("DELETE FROM records WHERE seq = 12")
        db.execute("UPDATE records SET seq = seq - 1 WHERE seq > 12")
    report = verify(path)
    failed(report, "record 12", "prev_hash")
    failed(report, "checkpoint 25", "cut from the end")
    assert report.first_bad == 12


def test_an_inserted_record_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_log(path, 25)
    with attacker(path) as db:
        for seq in range(25, 10, -1):  # make room for a forged record 11, chained properly to record 10
            db.execute("UPDATE records SET seq = seq + 1 WHERE seq = ?", (seq,))
        prev = db.execute("SELECT hash FROM records WHERE seq = 10").fetchone()[0]
        forged = rec(1000, status=200, reason="")
        db.execute(f"INSERT INTO records(seq, {audit._RECORD_COLUMNS}, prev_hash, hash) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (11, forged.time, forged.key_id, forged.client, forged.model, forged.digest,
                    forged.request_sha256, forged.status, forged.latency_ms, forged.batch_id, forged.reason, prev,
                    audit._record_hash(prev, 11, forged)))
    report = verify(path)
    failed(report, "record 12", "prev_hash")
    failed(report, "record 12", "edited")  # the record that was 11 no longer hashes as 12
    assert report.first_bad == 12


def test_an_inserted_record_that_does_not_chain_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_log(path, 25)
    with attacker(path) as db:
        db.execute(f"INSERT INTO records SELECT 26, {audit._RECORD_COLUMNS}, prev_hash, hash FROM records "
                   "WHERE seq = 10")
    report = verify(path)
    failed(report, "record 26", "prev_hash")
    assert report.first_bad == 26


def test_a_record_appended_after_the_last_checkpoint_is_only_uncovered(tmp_path: Path) -> None:
    # The limit the docstring states: a correctly chained record after the last checkpoint is not detectable;
    # verify says how many records no checkpoint covers.
    path = tmp_path / "audit.db"
    write_log(path, 25)
    with attacker(path) as db:
        prev = db.execute("SELECT hash FROM records WHERE seq = 25").fetchone()[0]
        db.execute(f"INSERT INTO records SELECT 26, {audit._RECORD_COLUMNS}, ?, '' FROM records WHERE seq = 25",
                   (prev,))
        rechain(db, 26)
    report = verify(path)
    assert report.passed and report.uncovered == 1
    assert any("1 record(s) after the last checkpoint" in n for n in report.notes)


def test_truncation_at_the_end_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_log(path, 25)  # checkpoints at 10, 20 and, at close, 25
    with attacker(path) as db:
        db.execute("DELETE FROM records WHERE seq > 20")
    report = verify(path)
    failed(report, "checkpoint 25", "ends at record 20", "cut from the end")
    assert report.first_bad == 21 and report.last_seq == 20


def test_truncation_with_its_checkpoint_removed_is_caught_by_an_anchor(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_log(path, 25)
    anchor = (25, record_hash(path, 25))  # the last checkpoint, kept elsewhere
    assert verify(path, anchor=anchor).passed
    with attacker(path) as db:
        db.execute("DELETE FROM records WHERE seq > 20")
        db.execute("DELETE FROM checkpoints WHERE seq > 20")
    assert verify(path).passed  # the limit: the file alone cannot tell
    report = verify(path, anchor=anchor)
    failed(report, "anchor 25", "cut from the end")
    assert report.first_bad == 21
    failed(verify(path, anchor=(20, "0" * 64)), "anchor 20", "does not match")


def test_a_rewritten_chain_breaks_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_log(path, 25)
    with attacker(path) as db:
        db.execute("UPDATE records SET status = 500 WHERE seq = 15")
        rechain(db, 15)
    report = verify(path)
    failed(report, "checkpoint 20", "no longer matches")
    failed(report, "checkpoint 25", "no longer matches")
    assert report.first_bad == 20


def test_an_unsigned_log_rewritten_with_its_checkpoints_passes(tmp_path: Path) -> None:
    # The limit the docstring states: without a signing key the chain proves consistency only.
    path = tmp_path / "audit.db"
    write_log(path, 25)
    with attacker(path) as db:
        db.execute("UPDATE records SET status = 500 WHERE seq = 15")
        rechain(db, 15)
        db.execute("UPDATE checkpoints SET hash = (SELECT hash FROM records WHERE records.seq = checkpoints.seq)")
    report = verify(path)
    assert report.passed and any("unsigned" in n for n in report.notes)


def test_signed_checkpoints_verify(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    path = tmp_path / "audit.db"
    write_log(path, 25, key=private)
    report = verify(path, public)
    assert report.passed, report.failures
    assert report.signatures_checked and report.signed_checkpoints == report.checkpoints == 3
    unchecked = verify(path)
    assert unchecked.passed and not unchecked.signatures_checked
    assert any("not checked" in n for n in unchecked.notes)


def test_a_rewritten_signed_log_fails_its_signatures(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    path = tmp_path / "audit.db"
    write_log(path, 25, key=private)
    with attacker(path) as db:
        db.execute("UPDATE records SET status = 500 WHERE seq = 15")
        rechain(db, 15)
        db.execute("UPDATE checkpoints SET hash = (SELECT hash FROM records WHERE records.seq = checkpoints.seq)")
    assert verify(path).passed  # without the public key nothing tells
    report = verify(path, public)
    failed(report, "checkpoint 20", "signature does not verify", str(public))
    failed(report, "checkpoint 25", "signature does not verify")
    assert report.first_bad == 20 and len(report.failures) == 2


def test_a_forged_checkpoint_signature_fails(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    path = tmp_path / "audit.db"
    write_log(path, 25, key=private)
    forger = Ed25519PrivateKey.generate()
    with attacker(path) as db:
        log_id = db.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()[0]
        seq, hash_, when = db.execute("SELECT seq, hash, time FROM checkpoints WHERE seq = 20").fetchone()
        signature = forger.sign(audit._checkpoint_message(log_id, seq, hash_, when)).hex()
        db.execute("UPDATE checkpoints SET signature = ? WHERE seq = 20", (signature,))
        db.execute("UPDATE checkpoints SET signature = NULL WHERE seq = 25")
        db.execute("UPDATE checkpoints SET signature = 'zz' WHERE seq = 10")
    report = verify(path, public)
    failed(report, "checkpoint 10", "signature does not verify")
    failed(report, "checkpoint 20", "signature does not verify")
    failed(report, "checkpoint 25", "not signed")
    assert report.first_bad == 10


def test_another_public_key_fails_every_checkpoint(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    private, _ = keys
    path = tmp_path / "audit.db"
    write_log(path, 12, key=private)
    other = generate_checkpoint_key(tmp_path / "other.pem")
    report = verify(path, tmp_path / "other.pub.pem")
    assert other == tmp_path / "other.pem"
    assert len(report.failures) == report.checkpoints == 2
    assert all("signature does not verify" in f for f in report.failures)


def test_a_checkpoint_moved_to_another_log_fails(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    write_log(a, 10, key=private)
    write_log(b, 10)
    with attacker(b) as db:
        db.execute("DELETE FROM checkpoints")
        db.execute(f"ATTACH DATABASE '{a}' AS a")
        db.execute("INSERT INTO checkpoints SELECT * FROM a.checkpoints")
        db.execute("DETACH DATABASE a")
    failed(verify(b, public), "checkpoint 10")  # another log id: another genesis, another signed message


# -- files -----------------------------------------------------------------------------------------------------


def test_not_an_audit_log(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 100)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t(x)")
    db.close()
    for bad in (text, other):
        for call in (verify, tail, AuditLog):
            with pytest.raises(InputError, match="not an onnxguard audit log") as e:
                call(bad)
            assert str(bad) in str(e.value) and e.value.hint
    with pytest.raises(InputError, match="not a regular file"):
        verify(tmp_path)
    with pytest.raises(InputError, match="not a regular file"):
        AuditLog(tmp_path)
    with pytest.raises(InputError, match="cannot read"):
        verify(tmp_path / "missing.db")
    with pytest.raises(InputError, match="directory of the audit log does not exist"):
        AuditLog(tmp_path / "missing" / "audit.db")
    link = tmp_path / "link.db"
    write_log(tmp_path / "real.db", 1)
    link.symlink_to(tmp_path / "real.db")
    with pytest.raises(InputError, match="symbolic link"):
        AuditLog(link)
    with pytest.raises(InputError, match="0 or more"):
        tail(tmp_path / "real.db", -1)


def test_a_tampered_meta_is_not_an_audit_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_log(path, 3)
    with attacker(path) as db:
        db.execute("UPDATE meta SET value = '2' WHERE key = 'version'")
    with pytest.raises(InputError, match="version '2'"):
        verify(path)


def test_verify_does_not_write_the_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_log(path, 5)
    before = path.read_bytes()
    path.chmod(0o400)
    try:
        assert verify(path).passed
    finally:
        path.chmod(0o600)
    assert path.read_bytes() == before


def test_generate_checkpoint_key(tmp_path: Path) -> None:
    out = generate_checkpoint_key(tmp_path / "audit-key.pem")
    public = tmp_path / "audit-key.pub.pem"
    assert out == tmp_path / "audit-key.pem"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and stat.S_IMODE(public.stat().st_mode) == 0o644
    assert b"PRIVATE KEY" in out.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    before = out.read_bytes()
    with pytest.raises(InputError, match="never overwritten"):
        generate_checkpoint_key(out)
    assert out.read_bytes() == before
    (tmp_path / "lonely.pub.pem").write_text("x")
    with pytest.raises(InputError, match="lonely.pub.pem"):
        generate_checkpoint_key(tmp_path / "lonely.pem")
    assert not (tmp_path / "lonely.pem").exists()
    assert generate_checkpoint_key(tmp_path / "bare") == tmp_path / "bare"
    assert (tmp_path / "bare.pub.pem").is_file()


def test_a_checkpoint_key_must_be_an_ed25519_private_key(tmp_path: Path) -> None:
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    generate_checkpoint_key(tmp_path / "k.pem")
    for bad, says in ((ec_key, "Ed25519"), (tmp_path / "k.pub.pem", "not an unencrypted PEM private key"),
                      (tmp_path / "none.pem", "no such file")):
        with pytest.raises(InputError, match=says) as e:
            AuditLog(tmp_path / "audit.db", checkpoint_key=bad)
        assert str(bad) in str(e.value)
    with pytest.raises(InputError, match="not a PEM public key"):
        verify(tmp_path / "audit.db", public_key=tmp_path / "k.pem")


# -- durability ------------------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys, threading, time
    from pathlib import Path
    from onnxguard.serve.audit import AuditLog, Record

    log = AuditLog(Path(sys.argv[1]), checkpoint_every=50, flush_interval=0.001, sync=sys.argv[2])
    out = threading.Lock()

    def work(t):
        n = 0
        while True:
            seq = log.append_blocking(Record(time=time.time(), key_id=f"k_{t}", client="127.0.0.1:9", model="m",
                                             digest="d" * 64, request_sha256="e" * 64, status=200,
                                             latency_ms=float(n), batch_id=n, reason="r" * 200))
            with out:
                sys.stdout.write(f"{seq}\\n")
                sys.stdout.flush()
            n += 1

    for t in range(4):
        threading.Thread(target=work, args=(t,), daemon=True).start()
    threading.Event().wait()
""")


def run_and_kill(path: Path, acks: int, sync: str = "full") -> list[int]:
    """Run CHILD until it acknowledged ``acks`` seqs, SIGKILL it, and return every seq it acknowledged."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), sync], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        while len(lines) < acks and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        os.kill(proc.pid, signal.SIGKILL)
        lines.extend(proc.stdout.readlines())  # what it printed before it died
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL, err
    seqs = [int(line) for line in lines if line.endswith("\n")]  # a torn last line was never acknowledged
    assert len(seqs) >= acks, err
    return seqs


@pytest.mark.parametrize("sync", audit.SYNC_MODES)
def test_acknowledged_records_survive_kill_9(tmp_path: Path, sync: str) -> None:
    """Either sync mode keeps every acknowledged record through a kill -9 (normal leaves the last commits in the
    OS's cache, which a process crash does not lose)."""
    path = tmp_path / "audit.db"
    acked: list[int] = []
    for _ in range(2):  # the second run recovers the log the first one left, then is killed too
        acked += run_and_kill(path, 400, sync)
        report = verify(path)
        assert report.passed, report.failures
        assert report.last_seq >= max(acked) and report.records == report.last_seq  # no gap, no torn record
        assert sorted(acked) == sorted(set(acked))
    present = {seq for seq, _ in tail(path, report.last_seq)}
    assert set(acked) <= present
    assert report.checkpoints >= 800 // 50 - 1 and report.uncovered < 50 + audit.MAX_BATCH
    with AuditLog(path) as log:  # and the log goes on after a crash
        assert log.append_blocking(rec()) == report.last_seq + 1
    assert verify(path).passed


def test_an_unknown_sync_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="audit sync 'sometimes'") as e:
        AuditLog(tmp_path / "audit.db", sync="sometimes")
    assert "power loss" in (e.value.hint or "")
    assert not (tmp_path / "audit.db").exists()
