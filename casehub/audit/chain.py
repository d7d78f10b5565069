"""The sequencer: the chain's only writer. It takes committed events from the pending queue in
insertion order, gives each the next `seq`, `prev_hash` and `hash`, and appends them to
`audit_chain` (plus the subject index) in one transaction that also empties those queue rows.

Requests never touch the chain, so they never wait for its head. One sequencer runs at a time:
on PostgreSQL it holds an advisory transaction lock; on SQLite the database's single-writer lock
(every casehub transaction begins IMMEDIATE) does the same job. Events committed out of
insertion order simply appear in the queue later and are chained then — nothing is skipped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

from flask import Flask, current_app
from sqlalchemy import Connection, Engine, Text, cast, func, insert, select, text

from casehub.audit import canonical
from casehub.db import get_db, utcnow
from casehub.models.audit import AuditChain, AuditEvent, AuditEventSubject, AuditPending

log = logging.getLogger("casehub.audit.chain")

# pg advisory lock key for "the sequencer" ("casehub" + 1 as 8 bytes).
SEQUENCER_LOCK = 0x6361736568756201
BATCH = 2000
SUBJECT_ID_MAX = 64

# The event's canonical fields, read with SQL types that map onto canonical.field_text.
EVENT_COLUMNS = tuple(
    cast(AuditEvent.subject_ids, Text).label("subject_ids")
    if name == "subject_ids"
    else getattr(AuditEvent, name)
    for name in canonical.EVENT_FIELDS
)
_SUBJECTS_AT = canonical.EVENT_FIELDS.index("subject_ids")
_INSERT_CHAIN = insert(AuditChain.__table__)
_INSERT_SUBJECTS = insert(AuditEventSubject.__table__)
_PG_COPY_CHAIN = (
    "COPY audit_chain (seq, event_pos, prev_hash, hash, sequenced_at) FROM STDIN"
)
_PG_COPY_SUBJECTS = "COPY audit_event_subjects (subject_id, seq) FROM STDIN"
# One bound parameter for the whole batch, whatever its size.
_PG_DEQUEUE = text("DELETE FROM audit_pending WHERE pos = ANY(:done)")
_SQLITE_DEQUEUE = text(
    "DELETE FROM audit_pending WHERE pos IN (SELECT value FROM json_each(:done))"
)


def chain_head(connection: Connection) -> tuple[int, str]:
    """(seq, hash) of the newest chained event, or (0, genesis) for an empty chain."""
    row = connection.execute(
        select(AuditChain.seq, AuditChain.hash).order_by(AuditChain.seq.desc()).limit(1)
    ).first()
    return (int(row.seq), str(row.hash)) if row else (0, canonical.GENESIS_HASH)


def _take_lock(connection: Connection, *, wait: bool) -> bool:
    if connection.dialect.name != "postgresql":
        return True  # SQLite: this transaction already holds the write lock (BEGIN IMMEDIATE)
    if wait:
        connection.execute(select(func.pg_advisory_xact_lock(SEQUENCER_LOCK)))
        return True
    return bool(connection.scalar(select(func.pg_try_advisory_xact_lock(SEQUENCER_LOCK))))


def subject_index_ids(stored_json: str | None) -> list[str]:
    """The subject ids to index for one event's stored JSON array (unique, in order)."""
    try:
        values = json.loads(stored_json) if stored_json else []
    except ValueError:
        return []
    if not isinstance(values, list):
        return []
    ids = (str(value) for value in values if value is not None)
    return [sid for sid in dict.fromkeys(ids) if len(sid) <= SUBJECT_ID_MAX]


def sequence_pending(connection: Connection, *, limit: int = BATCH, wait: bool = True) -> int:
    """Chain up to `limit` pending events within the connection's current transaction.

    Returns how many were chained; 0 when nothing is pending, or when `wait` is False and
    another sequencer holds the lock. The caller commits.
    """
    if not _take_lock(connection, wait=wait):
        return 0
    rows = connection.execute(
        select(AuditPending.pos, *EVENT_COLUMNS)
        .join(AuditEvent, AuditEvent.pos == AuditPending.pos)
        .order_by(AuditPending.pos)
        .limit(limit)
    ).all()
    if not rows:
        return 0
    seq, prev_hash = chain_head(connection)
    now = utcnow()
    chain_rows: list[tuple[int, int, str, str, Any]] = []
    subject_rows: list[tuple[str, int]] = []
    for row in rows:
        seq += 1
        values = row[1:]
        digest = canonical.digest(canonical.record(seq, prev_hash, values))
        chain_rows.append((seq, row.pos, prev_hash, digest, now))
        subject_rows.extend((sid, seq) for sid in subject_index_ids(values[_SUBJECTS_AT]))
        prev_hash = digest
    _append(connection, chain_rows, subject_rows)
    # Exactly the rows chained: a lower `pos` committed since the SELECT stays queued.
    done = [row.pos for row in rows]
    if connection.dialect.name == "postgresql":
        connection.execute(_PG_DEQUEUE, {"done": done})
    else:
        connection.execute(_SQLITE_DEQUEUE, {"done": json.dumps(done)})
    return len(rows)


def _append(
    connection: Connection,
    chain_rows: list[tuple[int, int, str, str, Any]],
    subject_rows: list[tuple[str, int]],
) -> None:
    if connection.dialect.name != "postgresql":
        keys = ("seq", "event_pos", "prev_hash", "hash", "sequenced_at")
        connection.execute(_INSERT_CHAIN, [dict(zip(keys, r, strict=True)) for r in chain_rows])
        if subject_rows:
            connection.execute(
                _INSERT_SUBJECTS, [{"subject_id": sid, "seq": seq} for sid, seq in subject_rows]
            )
        return
    # COPY is an order of magnitude cheaper than row-by-row INSERTs for a batch.
    driver: Any = connection.connection.driver_connection
    with driver.cursor() as cursor:
        with cursor.copy(_PG_COPY_CHAIN) as copy:
            for chain_row in chain_rows:
                copy.write_row(chain_row)
        if subject_rows:
            with cursor.copy(_PG_COPY_SUBJECTS) as copy:
                for subject_row in subject_rows:
                    copy.write_row(subject_row)


def sequence_once(engine: Engine, *, limit: int = BATCH, wait: bool = True) -> int:
    """One sequencing transaction on its own connection; returns how many events it chained."""
    with engine.begin() as connection:
        return sequence_pending(connection, limit=limit, wait=wait)


def sequence_all(engine: Engine, *, limit: int = BATCH) -> int:
    """Chain everything pending now (waiting for the lock); returns how many were chained."""
    total = 0
    while True:
        chained = sequence_once(engine, limit=limit, wait=True)
        total += chained
        if chained < limit:
            return total


def pending_count(connection: Connection) -> int:
    return int(connection.scalar(select(func.count()).select_from(AuditPending)) or 0)


class BackgroundSequencer:
    """Runs sequencing passes every `interval` seconds in a daemon thread of a serving process.

    Every worker may run one; the advisory lock (or SQLite's write lock) lets only one pass
    run at a time, and a busy worker simply skips its turn.
    """

    def __init__(self, engine: Engine, *, interval: float, limit: int = BATCH) -> None:
        self.engine = engine
        self.interval = interval
        self.limit = limit
        self.pid: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def ensure_running(self) -> None:
        """Start the thread in this process (after a fork, the parent's thread is gone)."""
        if self.pid == os.getpid():
            return
        with self._lock:
            if self.pid == os.getpid():
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=self.run, name="casehub-audit-sequencer", daemon=True
            )
            self._thread.start()
            self.pid = os.getpid()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.pid = None

    def run(self) -> None:
        """Sequencing passes until stopped (the thread's body; `casehub audit sequence`)."""
        failures = 0
        while not self._stop.is_set():
            try:
                chained = sequence_once(self.engine, limit=self.limit, wait=False)
                failures = 0
            except Exception:
                failures += 1
                log.exception("audit sequencing pass failed")
                self._stop.wait(min(30.0, self.interval * 2**failures))
                continue
            if chained < self.limit:  # caught up: rest; otherwise keep draining the queue
                self._stop.wait(self.interval)


def init_app(app: Flask) -> None:
    """Serving processes chain events in the background unless configured not to (then run
    `casehub audit sequence`); tests and CLI commands call the sequencer directly."""
    if not app.config.get("AUDIT_SEQUENCER", True):
        return
    engine = get_db(app).engine
    assert engine is not None
    interval = app.config.get("AUDIT_SEQUENCE_INTERVAL_MS", 500) / 1000
    sequencer = BackgroundSequencer(engine, interval=interval)
    app.extensions["casehub.audit.sequencer"] = sequencer

    def _start_sequencer() -> None:
        if not current_app.testing:
            sequencer.ensure_running()

    app.before_request(_start_sequencer)
