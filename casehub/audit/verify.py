"""Verification: recompute the hash chain from the stored events and check every checkpoint.

The chain is streamed in `seq` order without building ORM objects. On PostgreSQL the database
renders each canonical record itself (COPY text format is the canonical escaping), so Python
only hashes bytes; elsewhere rows are read in keyset chunks and rendered in Python.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, select

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
    _found: list[tuple[int, str]] = field(default_factory=list, repr=False)

    def fail(self, seq: int, problem: str) -> None:
        self._found.append((seq, problem))

    def settle(self) -> None:
        if self._found:
            self.ok = False
            self.first_bad_seq, self.problem = min(self._found, key=lambda item: item[0])

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
        }


def verify(
    bind: Engine | Connection,
    *,
    key: CheckpointKey | None,
    after: tuple[int, str] | None = None,
) -> VerifyResult:
    """Check the chain (from seq 1, or from a trusted `after` = (seq, hash)) and checkpoints.

    `bind` is an Engine (each read on a fresh connection, so SQLite's writers are not held up)
    or a Connection (reads stay in its transaction).
    """
    started = time.perf_counter()
    result = VerifyResult()
    with _connection(bind) as connection:
        # Checkpoints first: the chain can only grow after this, never lose a signed head.
        checkpoints = load_checkpoints(connection)
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

    if head_seq < start_seq or (head_seq == start_seq and head_hash != start_hash):
        result.fail(head_seq if head_seq == start_seq else head_seq + 1, "the chain lost its head")
    rows = (_pg_records if fast else _records)(bind, start_seq, head_seq)
    seq, last = start_seq, start_hash.encode()
    for stored_hash, record in rows:
        seq += 1
        prefix = b"%d\t%s\t" % (seq, last)
        if not record.startswith(prefix):
            found_seq = int(record.split(b"\t", 1)[0])
            if found_seq != seq:
                result.fail(seq, f"seq {seq} is missing")
            else:
                result.fail(seq, f"seq {seq} does not link to seq {seq - 1}")
            break
        if hashlib.sha256(record).hexdigest().encode() != stored_hash:
            result.fail(seq, f"the event at seq {seq} does not match its hash")
            break
        for checkpoint in signed.pop(seq, ()):
            if checkpoint.hash.encode() != stored_hash:
                result.fail(seq, f"checkpoint {checkpoint.id} does not match seq {seq}")
        result.events += 1
        last = stored_hash
    else:
        for checkpoint_seq, beyond in signed.items():
            for checkpoint in beyond:
                result.fail(
                    checkpoint_seq,
                    f"checkpoint {checkpoint.id} signs seq {checkpoint_seq}, past the chain's end",
                )
    rows.close()
    result.settle()
    result.seconds = time.perf_counter() - started
    return result


def make_checkpoint(
    connection: Connection, key: CheckpointKey
) -> tuple[Checkpoint | None, VerifyResult]:
    """Verify the chain from the newest valid checkpoint to the head, then sign that head.

    Nothing is signed (None) when verification fails: a checkpoint vouches for the chain.
    """
    trusted = [c for c in load_checkpoints(connection) if signature_holds(c, key)]
    newest = max(trusted, key=lambda c: (c.seq, c.id), default=None)
    result = verify(connection, key=key, after=(newest.seq, newest.hash) if newest else None)
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
            select(AuditChain.seq, AuditChain.prev_hash, AuditChain.hash, *EVENT_COLUMNS)
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


# Built from the constant field list only; the seq bounds are bound parameters.
PG_COPY_SQL = (
    "COPY (SELECT c.hash, c.seq, c.prev_hash, "  # noqa: S608
    + ", ".join(_pg_column(name) for name in canonical.EVENT_FIELDS)
    + " FROM audit_chain c JOIN audit_events e ON e.pos = c.event_pos"
    " WHERE c.seq > %s AND c.seq <= %s ORDER BY c.seq) TO STDOUT"
)


def _pg_records(bind: Engine | Connection, start: int, end: int) -> Records:
    """(hash, canonical record) per chained event, rendered by PostgreSQL through COPY.

    A COPY text line is `hash<TAB>record<LF>`, and COPY's text escaping is the canonical one.
    """
    with _connection(bind) as connection:
        # Stopping early cancels the COPY, which aborts the transaction: inside a borrowed
        # connection's transaction, confine that to a savepoint.
        nested = connection.begin_nested() if isinstance(bind, Connection) else None
        driver: Any = connection.connection.driver_connection
        # A pooled connection may carry another client encoding; the record is UTF-8.
        driver.execute("SET LOCAL client_encoding TO 'UTF8'")
        try:
            with driver.cursor() as cursor, cursor.copy(PG_COPY_SQL, (start, end)) as copy:
                for chunk in copy:  # libpq hands COPY data over one row at a time
                    line = bytes(chunk)
                    yield line[:64], line[65:-1]
        except BaseException:
            if nested is not None:
                nested.rollback()
            raise
        if nested is not None:
            nested.commit()
