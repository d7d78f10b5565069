"""Verification: recompute the hash chain from the stored events and check every checkpoint.

The chain is streamed without building ORM objects, and every link is checked whatever order
the rows arrive in. On PostgreSQL the database renders each canonical record itself (COPY text
format is the canonical escaping) and streams them in insertion order, the cheapest join, so
Python only hashes bytes; elsewhere rows are read in seq-keyset chunks and rendered in Python.
"""

from __future__ import annotations

import hashlib
import select
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq
from sqlalchemy import Connection, Engine
from sqlalchemy import select as sql_select

from casehub.audit import canonical
from casehub.audit.chain import EVENT_COLUMNS, chain_head, pending_count
from casehub.audit.checkpoints import (
    Checkpoint,
    CheckpointKey,
    load_checkpoints,
    sign_head,
    signature_holds,
)
from casehub.models.audit import AuditChain, AuditEvent

CHUNK = 10_000
Records = Generator[tuple[bytes, bytes], None, None]  # (stored hash, canonical record)


@dataclass
class VerifyResult:
    ok: bool = True
    events: int = 0  # chained events whose hashes were recomputed
    head_seq: int = 0
    head_hash: str = canonical.GENESIS_HASH
    checkpoints: int = 0
    pending: int = 0  # committed events not yet chained (the sequencer's queue)
    first_bad_seq: int | None = None
    problem: str | None = None
    seconds: float = 0.0
    from_seq: int = 0  # hashes were recomputed after this seq (0: the whole chain)

    def fail(self, seq: int, problem: str) -> None:
        """Keep the earliest break: the first bad seq is what an investigator needs."""
        if self.first_bad_seq is None or seq < self.first_bad_seq:
            self.ok = False
            self.first_bad_seq, self.problem = seq, problem

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "checkpoints": self.checkpoints,
            "pending": self.pending,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
            "seconds": round(self.seconds, 3),
            "from_seq": self.from_seq,
        }


def verify(
    bind: Engine | Connection,
    *,
    key: CheckpointKey | None,
    after: tuple[int, str] | None = None,
    all_checkpoints: bool = True,
) -> VerifyResult:
    """Check the chain (from seq 1, or from a trusted `after` = (seq, hash)) and checkpoints:
    every checkpoint, or (`all_checkpoints=False`) those from `after` on, which the trusted
    start vouches for the rest of (it was signed only once the chain up to it verified).

    `bind` is an Engine (each read on a fresh connection, so SQLite's writers are not held up)
    or a Connection (reads stay in its transaction).
    """
    started = time.perf_counter()
    result = VerifyResult()
    with _connection(bind) as connection:
        # Checkpoints first: the chain can only grow after this, never lose a signed head.
        from_seq = 0 if all_checkpoints or after is None else after[0]
        checkpoints = load_checkpoints(connection, from_seq=from_seq)
        head_seq, head_hash = chain_head(connection)
        result.pending = pending_count(connection)
        fast = connection.dialect.name == "postgresql"
    result.head_seq, result.head_hash = head_seq, head_hash
    start_seq, start_hash = after or (0, canonical.GENESIS_HASH)
    signed: dict[int, list[Checkpoint]] = {}
    for checkpoint in checkpoints:
        result.checkpoints += 1
        if not signature_holds(checkpoint, key):
            result.fail(checkpoint.seq, f"checkpoint {checkpoint.id} has no valid signature")
        elif checkpoint.seq == 0 and checkpoint.hash != canonical.GENESIS_HASH:
            result.fail(0, f"checkpoint {checkpoint.id} does not match the chain")
        elif checkpoint.seq > start_seq:
            signed.setdefault(checkpoint.seq, []).append(checkpoint)

    result.from_seq = start_seq
    if start_seq > 0:
        # The trusted start must still be the chain's row at that seq: a changed hash there
        # would otherwise pass, since the next row links to the trusted value, not the stored.
        with _connection(bind) as connection:
            stored = connection.execute(
                sql_select(AuditChain.hash).where(AuditChain.seq == start_seq)
            ).scalar_one_or_none()
        if stored != start_hash:
            result.fail(start_seq, f"seq {start_seq} no longer matches its signed checkpoint")
    if head_seq < start_seq or (head_seq == start_seq and head_hash != start_hash):
        result.fail(head_seq if head_seq == start_seq else head_seq + 1, "the chain lost its head")
    rows = (_pg_records if fast else _records)(bind, start_seq, head_seq)
    # Rows may come in any order (PostgreSQL streams them in insertion order, which is cheaper
    # to join and almost always seq order): each link is checked when both its ends are seen.
    hash_of: dict[int, bytes] = {start_seq: start_hash.encode()}  # until seq + 1 arrives
    prev_of: dict[int, bytes] = {}  # until seq - 1 arrives
    sha256 = hashlib.sha256
    for stored_hash, record in rows:
        seq_text, prev_hash, _ = record.split(b"\t", 2)
        seq = int(seq_text)
        if sha256(record).hexdigest().encode() != stored_hash:
            result.fail(seq, f"the event at seq {seq} does not match its hash")
        before = hash_of.pop(seq - 1, None)
        if before is None:
            prev_of[seq] = prev_hash
        elif before != prev_hash:
            result.fail(seq, f"seq {seq} does not link to seq {seq - 1}")
        after = prev_of.pop(seq + 1, None)
        if after is None:
            hash_of[seq] = stored_hash
        elif after != stored_hash:
            result.fail(seq + 1, f"seq {seq + 1} does not link to seq {seq}")
        for checkpoint in signed.pop(seq, ()):
            if checkpoint.hash.encode() != stored_hash:
                result.fail(seq, f"checkpoint {checkpoint.id} does not match seq {seq}")
        result.events += 1
    for seq in prev_of:
        result.fail(seq - 1, f"seq {seq - 1} is missing")
    for seq in hash_of:
        if seq < head_seq:
            result.fail(seq + 1, f"seq {seq + 1} is missing")
    for checkpoint_seq, unmatched in signed.items():
        for checkpoint in unmatched:
            where = "past the chain's end" if checkpoint_seq > head_seq else "which is missing"
            result.fail(
                checkpoint_seq, f"checkpoint {checkpoint.id} signs seq {checkpoint_seq}, {where}"
            )
    rows.close()
    result.seconds = time.perf_counter() - started
    return result


def newest_checkpoint(connection: Connection, key: CheckpointKey | None) -> tuple[int, str] | None:
    """(seq, hash) of the newest checkpoint whose signature holds: the chain up to it was
    verified when it was signed. Read newest first, so normally one signature is checked
    however many hourly checkpoints years of service have left."""
    if key is None:
        return None
    for checkpoint in load_checkpoints(connection, newest=NEWEST_FIRST):
        if signature_holds(checkpoint, key):
            return checkpoint.seq, checkpoint.hash
    # None of the newest holds (a rotated-out key, or tampering): look further back.
    for checkpoint in reversed(load_checkpoints(connection)):
        if signature_holds(checkpoint, key):
            return checkpoint.seq, checkpoint.hash
    return None


NEWEST_FIRST = 20  # checkpoints read before falling back to all of them


def verify_tail(connection: Connection, *, key: CheckpointKey | None) -> VerifyResult:
    """What `GET /v1/audit/verify` answers: the newest checkpoint whose signature holds, that
    it still matches its row, every hash after it recomputed and the signatures of the
    checkpoints from it on — the work since the last checkpoint, not since the first event or
    the first checkpoint. Every checkpoint and the whole chain are `casehub audit verify`'s."""
    return verify(
        connection, key=key, after=newest_checkpoint(connection, key), all_checkpoints=False
    )


def make_checkpoint(
    connection: Connection, key: CheckpointKey
) -> tuple[Checkpoint | None, VerifyResult]:
    """Verify the chain from the newest valid checkpoint to the head, then sign that head.

    Nothing is signed (None) when verification fails: a checkpoint vouches for the chain.
    """
    result = verify(connection, key=key, after=newest_checkpoint(connection, key))
    if not result.ok:
        return None, result
    return sign_head(connection, key, (result.head_seq, result.head_hash)), result


class _connection:
    """A context manager that borrows a Connection, or opens (and closes) one from an Engine."""

    def __init__(self, bind: Engine | Connection) -> None:
        self.bind = bind
        self.opened: Connection | None = None

    def __enter__(self) -> Connection:
        if isinstance(self.bind, Connection):
            return self.bind
        self.opened = self.bind.connect()
        return self.opened

    def __exit__(self, *exc: object) -> None:
        if self.opened is not None:
            self.opened.close()


def _records(bind: Engine | Connection, start: int, end: int) -> Records:
    """(hash, canonical record) per chained event, rendered in Python, in keyset chunks."""
    last = start
    while last < end:
        stmt = (
            sql_select(AuditChain.seq, AuditChain.prev_hash, AuditChain.hash, *EVENT_COLUMNS)
            .join(AuditEvent, AuditEvent.pos == AuditChain.event_pos)
            .where(AuditChain.seq > last, AuditChain.seq <= end)
            .order_by(AuditChain.seq)
            .limit(CHUNK)
        )
        with _connection(bind) as connection:
            rows = connection.execute(stmt).all()
        if not rows:
            return
        for row in rows:
            yield row.hash.encode(), canonical.record(row.seq, row.prev_hash, row[3:])
        last = rows[-1].seq


def _pg_column(name: str) -> str:
    if name == "occurred_at":
        return f"to_char(e.occurred_at AT TIME ZONE 'UTC', '{canonical.PG_TIME_FORMAT}')"
    if name == "subject_ids":
        return "e.subject_ids::text"
    return f"e.{name}"


# Built from the constant field list only; the seq bounds are formatted as integers.
PG_COPY_SQL = (
    "COPY (SELECT c.hash, c.seq, c.prev_hash, "  # noqa: S608
    + ", ".join(_pg_column(name) for name in canonical.EVENT_FIELDS)
    + " FROM audit_chain c JOIN audit_events e ON e.pos = c.event_pos"
    " WHERE c.seq > {start:d} AND c.seq <= {end:d} ORDER BY e.pos) TO STDOUT"
)


def _pg_records(bind: Engine | Connection, start: int, end: int) -> Records:
    """(hash, canonical record) per chained event, rendered by PostgreSQL through COPY.

    A COPY text line is `hash<TAB>record<LF>`, and COPY's text escaping is the canonical one.
    Rows are taken straight from libpq (psycopg's own COPY iterator costs a few microseconds
    a row, which is most of the budget), waiting on the socket without holding the GIL.
    """
    with _connection(bind) as connection:
        # An interrupted COPY aborts the transaction: inside a borrowed connection's
        # transaction, confine that to a savepoint.
        nested = connection.begin_nested() if isinstance(bind, Connection) else None
        driver: Any = connection.connection.driver_connection
        # A pooled connection may carry another client encoding; the record is UTF-8.
        driver.execute("SET LOCAL client_encoding TO 'UTF8'")
        pgconn = driver.pgconn
        pgconn.send_query(PG_COPY_SQL.format(start=int(start), end=int(end)).encode())
        result = pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_OUT:
            _drain(pgconn, interrupted=False)
            raise psycopg.OperationalError("the audit chain could not be read")
        finished = False
        try:
            get_copy_data, fileno = pgconn.get_copy_data, pgconn.socket
            while True:
                size, data = get_copy_data(1)
                if size > 0:
                    line = bytes(data)
                    yield line[:64], line[65:-1]
                elif size == 0:  # nothing buffered: wait for the server
                    select.select([fileno], [], [])
                    pgconn.consume_input()
                else:
                    break
            finished = size == -1
        finally:
            if not finished:
                driver.cancel()
            failed = _drain(pgconn, interrupted=not finished) or not finished
            if nested is not None:
                (nested.rollback if failed else nested.commit)()
        if failed:
            raise psycopg.OperationalError("the audit chain could not be read")


def _drain(pgconn: Any, *, interrupted: bool) -> bool:
    """Collect the results that end a COPY; True if any of them is an error."""
    if interrupted:
        try:
            while pgconn.get_copy_data(0)[0] > 0:
                pass  # rows still in flight after the cancel
        except psycopg.OperationalError:
            pass  # the COPY already ended
    failed = False
    while (result := pgconn.get_result()) is not None:
        failed = failed or result.status != pq.ExecStatus.COMMAND_OK
    return failed
