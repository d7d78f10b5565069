"""Verification: recompute the hash chain from the stored events and check every checkpoint.

The chain is streamed without building ORM objects, and every link is checked whatever order
the rows arrive in. On PostgreSQL the database renders each canonical record itself (COPY text
format is the canonical escaping) and streams them in insertion order, the cheapest join, so
Python only hashes bytes; a whole chain is read as two such streams at once, each over half the
events, so that two backends render while Python hashes. Elsewhere rows are read in seq-keyset
chunks and rendered in Python.
"""

from __future__ import annotations

import hashlib
import select
import time
from collections.abc import Generator
from contextlib import ExitStack
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
    archived_seq: int = 0  # the events up to this seq were archived (casehub.audit.archive)

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
            "archived_seq": self.archived_seq,
        }


def digest_of(record: bytes | memoryview) -> bytes:
    return hashlib.sha256(record).hexdigest().encode()


class _Stream:
    """Where one stream of rows stands: its last row, whose link to the next seq is settled
    when the next row of the stream arrives (most often that very seq) or the stream ends."""

    __slots__ = ("last_hash", "last_seq")

    def __init__(self) -> None:
        self.last_seq: int | None = None
        self.last_hash = b""


class _Links:
    """Every link of the chain checked once both its ends are seen, in whatever order rows
    arrive and from however many streams; and each signed checkpoint against its seq."""

    def __init__(
        self,
        result: VerifyResult,
        start_seq: int,
        start_hash: bytes,
        signed: dict[int, list[Checkpoint]],
    ) -> None:
        self.result = result
        self.hash_of: dict[int, bytes] = {start_seq: start_hash}  # until seq + 1 arrives
        self.prev_of: dict[int, bytes] = {}  # until seq - 1 arrives
        self.signed = signed

    def stream(self) -> _Stream:
        return _Stream()

    def check(
        self, stream: _Stream, seq: int, prev_hash: bytes, stored_hash: bytes, digest: bytes
    ) -> None:
        """One row: its hash, its link to seq - 1, and the checkpoints that sign it."""
        result = self.result
        result.events += 1
        if digest != stored_hash:
            result.fail(seq, f"the event at seq {seq} does not match its hash")
        if stream.last_seq is not None and seq == stream.last_seq + 1:
            if prev_hash != stream.last_hash:
                result.fail(seq, f"seq {seq} does not link to seq {seq - 1}")
        else:
            self.settle(stream)
            before = self.hash_of.pop(seq - 1, None)
            if before is None:
                self.prev_of[seq] = prev_hash
            elif before != prev_hash:
                result.fail(seq, f"seq {seq} does not link to seq {seq - 1}")
        stream.last_seq, stream.last_hash = seq, stored_hash
        if seq in self.signed:
            for checkpoint in self.signed.pop(seq):
                if checkpoint.hash.encode() != stored_hash:
                    result.fail(seq, f"checkpoint {checkpoint.id} does not match seq {seq}")

    def settle(self, stream: _Stream) -> None:
        """The link from the stream's last row to the next seq, wherever that row comes from."""
        seq = stream.last_seq
        if seq is None:
            return
        stream.last_seq = None
        after = self.prev_of.pop(seq + 1, None)
        if after is None:
            self.hash_of[seq] = stream.last_hash
        elif after != stream.last_hash:
            self.result.fail(seq + 1, f"seq {seq + 1} does not link to seq {seq}")

    def finish(self, head_seq: int) -> None:
        """What never found its other end: missing seqs, and checkpoints of missing rows."""
        result = self.result
        for seq in self.prev_of:
            result.fail(seq - 1, f"seq {seq - 1} is missing")
        for seq in self.hash_of:
            if seq < head_seq:
                result.fail(seq + 1, f"seq {seq + 1} is missing")
        for checkpoint_seq, unmatched in self.signed.items():
            for checkpoint in unmatched:
                where = "past the chain's end" if checkpoint_seq > head_seq else "which is missing"
                result.fail(
                    checkpoint_seq,
                    f"checkpoint {checkpoint.id} signs seq {checkpoint_seq}, {where}",
                )


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
    from casehub.audit import archive  # it builds on this module's COPY streams

    started = time.perf_counter()
    result = VerifyResult()
    with _connection(bind) as connection:
        # Checkpoints first: the chain can only grow after this, never lose a signed head.
        from_seq = 0 if all_checkpoints or after is None else after[0]
        checkpoints = load_checkpoints(connection, from_seq=from_seq)
        base = archive.base(connection, key)
        head_seq, head_hash = chain_head(connection)
        result.pending = pending_count(connection)
        fast = connection.dialect.name == "postgresql"
    result.head_seq, result.head_hash = head_seq, head_hash
    result.archived_seq = base.seq
    if base.problem is not None:
        result.fail(base.problem_seq, base.problem)
    # The chain in the database begins after the newest archive: a trusted start older than
    # that (a checkpoint signed before the archive) gives way to it.
    from_archive = after is None or after[0] <= base.seq
    if from_archive:
        start_seq, start_hash = base.seq, base.hash
    else:
        assert after is not None
        start_seq, start_hash = after
    signed: dict[int, list[Checkpoint]] = {}
    for checkpoint in checkpoints:
        result.checkpoints += 1
        if not signature_holds(checkpoint, key):
            result.fail(checkpoint.seq, f"checkpoint {checkpoint.id} has no valid signature")
        elif checkpoint.seq == 0 and checkpoint.hash != canonical.GENESIS_HASH:
            result.fail(0, f"checkpoint {checkpoint.id} does not match the chain")
        elif checkpoint.seq > start_seq:
            signed.setdefault(checkpoint.seq, []).append(checkpoint)
        # (a checkpoint in an archived period is checked against its file: verify-archive)

    result.from_seq = start_seq
    if not from_archive:
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
    links = _Links(result, start_seq, start_hash.encode(), signed)
    if fast:
        _pg_check(bind, start_seq, head_seq, links, split=from_archive)
    else:
        stream = links.stream()
        for stored_hash, record in _records(bind, start_seq, head_seq):
            seq_text, prev_hash, _ = record.split(b"\t", 2)
            links.check(stream, int(seq_text), prev_hash, stored_hash, digest_of(record))
        links.settle(stream)
    links.finish(head_seq)
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


# Built from the constant field list only; the bounds are formatted as integers.
PG_COPY_SQL = (
    "COPY (SELECT c.hash, c.seq, c.prev_hash, "  # noqa: S608
    + ", ".join(_pg_column(name) for name in canonical.EVENT_FIELDS)
    + " FROM audit_chain c JOIN audit_events e ON e.pos = c.event_pos"
    " WHERE c.seq > {start:d} AND c.seq <= {end:d}{within} ORDER BY e.pos) TO STDOUT"
)
# One stream's share of the events, by insertion order: both sides of the join start there.
_PG_WITHIN_FROM = " AND c.event_pos > {low:d} AND e.pos > {low:d}"
_PG_WITHIN_TO = " AND c.event_pos <= {high:d} AND e.pos <= {high:d}"
# The same records in seq order, for an archive's file (casehub.audit.archive).
_PG_ARCHIVE_SQL = PG_COPY_SQL.replace("ORDER BY e.pos", "ORDER BY c.seq")
STREAMS = 2  # COPY streams read at once when the whole chain is verified from an Engine
TAB = ord("\t")

Positions = tuple[int | None, int | None]  # (after, up to) in insertion order; None: no bound


def copy_sql(start: int, end: int, positions: Positions = (None, None)) -> bytes:
    low, high = positions
    within = "" if low is None else _PG_WITHIN_FROM.format(low=int(low))
    within += "" if high is None else _PG_WITHIN_TO.format(high=int(high))
    return PG_COPY_SQL.format(start=int(start), end=int(end), within=within).encode()


def archive_copy_sql(start: int, end: int) -> bytes:
    return _PG_ARCHIVE_SQL.format(start=int(start), end=int(end), within="").encode()


def _shares(connection: Connection, count: int, start: int, end: int) -> list[Positions]:
    """`count` ranges of insertion order that split the events after seq `start` about evenly:
    cut at the positions of the events at evenly spaced seqs (one primary-key probe each; seqs
    follow positions closely, and positions jump between partitions, so a cut halfway between
    the lowest and highest position could leave one stream nearly everything)."""
    if count < 2 or end - start < count:
        return [(None, None)]
    cuts = []
    for i in range(1, count):
        pos = connection.scalar(
            sql_select(AuditChain.event_pos).where(
                AuditChain.seq == start + (end - start) * i // count
            )
        )
        if pos is None or (cuts and pos <= cuts[-1]):
            return [(None, None)]
        cuts.append(int(pos))
    return list(zip([None, *cuts], [*cuts, None], strict=True))


def _pg_check(
    bind: Engine | Connection, start: int, end: int, links: _Links, *, split: bool
) -> None:
    """Every chained event after `start` up to `end`, rendered by PostgreSQL and checked here.

    A whole chain (`split`: from its base, every event the database holds) from an Engine
    is read as STREAMS COPYs at once, one per share of the events, each on its own connection:
    the backends render in parallel while this thread hashes whatever has arrived on any."""
    borrowed = isinstance(bind, Connection)
    with ExitStack() as stack:
        shares: list[Positions] = [(None, None)]
        if split and not borrowed:
            with _connection(bind) as connection:
                shares = _shares(connection, STREAMS, start, end)
        streams = []
        for share in shares:
            connection = stack.enter_context(_connection(bind))
            streams.append(
                stack.enter_context(
                    CopyStream(connection, copy_sql(start, end, share), borrowed=borrowed)
                )
            )
        reading = [(stream, links.stream()) for stream in streams]
        while reading:
            waiting = []
            for stream, position in reading:
                if _check_buffered(stream.pgconn, position, links) == 0:
                    waiting.append((stream, position))
                else:
                    stream.finished = True
                    links.settle(position)
            reading = waiting
            if reading:
                ready, _, _ = select.select([stream.fileno for stream, _ in reading], [], [])
                for stream, _ in reading:
                    if stream.fileno in ready:
                        stream.pgconn.consume_input()


def _check_buffered(pgconn: Any, position: _Stream, links: _Links) -> int:
    """Check every row libpq holds for one stream; 0 when it needs more from the server, -1
    when the COPY is done.

    The common row — its hash holds, it follows the stream's last row and links to it, and
    no checkpoint signs it — is checked here without a Python object beyond its bytes and
    digest; any other goes through _Links.check (which does the same, and more, slowly)."""
    get_copy_data = pgconn.get_copy_data
    sha256 = hashlib.sha256
    signed = links.signed
    expected = -1 if position.last_seq is None else position.last_seq + 1
    last_hash = position.last_hash
    plain = 0
    try:
        while True:
            size, data = get_copy_data(1)
            if size <= 0:
                return int(size)
            # `hash<TAB>seq<TAB>prev_hash<TAB>…<LF>`: the record is all after the first tab.
            line = bytes(data)
            if line[64] == TAB:
                digest = sha256(line[65:-1]).hexdigest().encode()
                cut = line.index(TAB, 65)
                seq = int(line[65:cut])
                if (
                    seq == expected
                    and line.startswith(digest)
                    and line.startswith(last_hash, cut + 1)
                    and line[cut + 65] == TAB
                    and seq not in signed
                ):
                    plain += 1
                    expected += 1
                    last_hash = digest
                    continue
            position.last_seq = None if expected < 0 else expected - 1
            position.last_hash = last_hash
            stored_hash, record = line[:-1].split(b"\t", 1)
            seq_text, prev_hash, _ = record.split(b"\t", 2)
            links.check(position, int(seq_text), prev_hash, stored_hash, digest_of(record))
            expected, last_hash = position.last_seq + 1, position.last_hash
    finally:
        position.last_seq = None if expected < 0 else expected - 1
        position.last_hash = last_hash
        links.result.events += plain


class CopyStream:
    """One COPY of canonical records (`hash<TAB>record` lines), read straight from libpq.

    psycopg's own COPY iterator costs a few microseconds a row, which is most of the budget;
    here rows are taken from libpq as they are buffered, and the caller waits on the socket
    (select) without holding the GIL. An interrupted COPY is cancelled and its results
    drained, so that the connection stays usable."""

    def __init__(self, connection: Connection, sql: bytes, *, borrowed: bool) -> None:
        self.connection = connection
        self.sql = sql
        self.borrowed = borrowed
        self.finished = False

    def __enter__(self) -> CopyStream:
        # An interrupted COPY aborts the transaction: inside a borrowed connection's
        # transaction, confine that to a savepoint.
        self.nested = self.connection.begin_nested() if self.borrowed else None
        self.driver: Any = self.connection.connection.driver_connection
        # A pooled connection may carry another client encoding; the record is UTF-8.
        self.driver.execute("SET LOCAL client_encoding TO 'UTF8'")
        self.pgconn = self.driver.pgconn
        self.fileno = self.pgconn.socket
        self.pgconn.send_query(self.sql)
        result = self.pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_OUT:
            _drain(self.pgconn, interrupted=False)
            raise psycopg.OperationalError("the audit chain could not be read")
        return self

    def rows(self) -> Generator[bytes, None, None]:
        """The stream's lines one by one, waiting for each (for tests and small reads)."""
        while True:
            size, data = self.pgconn.get_copy_data(1)
            if size > 0:
                yield bytes(data)
            elif size == 0:
                select.select([self.fileno], [], [])
                self.pgconn.consume_input()
            else:
                self.finished = True
                return

    def __exit__(self, *exc: object) -> None:
        if not self.finished:
            self.driver.cancel()
        failed = _drain(self.pgconn, interrupted=not self.finished)
        if self.nested is not None:
            (self.nested.commit if self.finished and not failed else self.nested.rollback)()
        if failed and self.finished and exc[0] is None:
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
