"""The sequencer: the chain's only writer. It takes committed events from the pending queue in
insertion order, gives each the next `seq`, `prev_hash` and `hash`, and appends them to
`audit_chain` (plus the subject and reach indexes) in one transaction that also empties those
queue rows.

Requests never touch the chain, so they never wait for its head. One sequencer runs at a time:
on PostgreSQL it holds an advisory transaction lock; on SQLite the database's single-writer lock
(every casehub transaction begins IMMEDIATE) does the same job. Events committed out of
insertion order simply appear in the queue later and are chained then — nothing is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, current_app
from sqlalchemy import (
    Connection,
    Engine,
    String,
    Text,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    select,
)
from sqlalchemy import text as sql_text
from sqlalchemy.orm import aliased

from casehub.audit import canonical
from casehub.db import get_db, utcnow
from casehub.models.audit import (
    REACH_ALL,
    AuditChain,
    AuditEvent,
    AuditEventAgency,
    AuditEventSubject,
    AuditPending,
)
from casehub.models.referral import Referral

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
_OCCURRED_AT = canonical.EVENT_FIELDS.index("occurred_at")
# The event fields a reach row copies (its filter columns), in the reach table's order.
REACH_FIELDS = (
    "actor_agency",
    "actor_client_id",
    "actor_user_id",
    "action",
    "outcome",
    "referral_id",
)
_REACH_AT = tuple(canonical.EVENT_FIELDS.index(name) for name in REACH_FIELDS)
_REACH_KEYS = ("agency", "seq", *REACH_FIELDS, "occurred_max", "late_max_us")
# The lead agency of an event's referral now (by the referral's primary key, event by event).
_LEAD_NOW = (
    select(Referral.lead_agency)
    .where(Referral.id == AuditEvent.referral_id)
    .scalar_subquery()
    .label("lead_agency")
)
_INSERT_CHAIN = insert(AuditChain.__table__)
_INSERT_SUBJECTS = insert(AuditEventSubject.__table__)
_INSERT_REACH = insert(AuditEventAgency.__table__)
_PG_COPY_CHAIN = "COPY audit_chain (seq, event_pos, prev_hash, hash, sequenced_at) FROM STDIN"
_PG_COPY_SUBJECTS = "COPY audit_event_subjects (subject_id, seq) FROM STDIN"
_PG_COPY_REACH = f"COPY audit_event_agencies ({', '.join(_REACH_KEYS)}) FROM STDIN"
# One bound parameter for the whole batch, whatever its size.
_PG_DEQUEUE = sql_text("DELETE FROM audit_pending WHERE pos = ANY(:done)")
_SQLITE_DEQUEUE = sql_text(
    "DELETE FROM audit_pending WHERE pos IN (SELECT value FROM json_each(:done))"
)


def pg_field(name: str) -> str:
    """An event field as PostgreSQL renders it into the canonical record (the same rendering
    as verification's, casehub.audit.verify: COPY's text escaping is the canonical one)."""
    if name == "occurred_at":
        return f"to_char(e.occurred_at AT TIME ZONE 'UTC', '{canonical.PG_TIME_FORMAT}')"
    if name == "subject_ids":
        return "e.subject_ids::text"
    return f"e.{name}"


# A COPY line per pending event: pos, the canonical record after seq and prev_hash, and the
# lead agency of its referral now. Each pending event is fetched by its own index probe (the
# LATERAL ... LIMIT 1 keeps it so): left to choose, PostgreSQL may merge-join the queue with
# every event from the first, chained or not, which after an outage or a bulk load re-reads
# millions a batch. Built from constants; the limit is formatted as an integer.
_PG_PENDING = (
    "COPY (SELECT p.pos, "  # noqa: S608
    + ", ".join(pg_field(name) for name in canonical.EVENT_FIELDS)
    + ", (SELECT r.lead_agency FROM referrals r WHERE r.id = e.referral_id)"
    " FROM (SELECT pos FROM audit_pending{below} ORDER BY pos LIMIT {limit:d}) p"
    " CROSS JOIN LATERAL (SELECT * FROM audit_events e WHERE e.pos = p.pos LIMIT 1) e"
    " ORDER BY p.pos) TO STDOUT"
)
# REACH_ALL written into the SQL, not bound, so that the partial indexes over its rows match
# in a prepared statement's generic plan too.
EVERY = literal_column(f"'{REACH_ALL}'", String)
_PG_NULL = canonical.NULL.encode()
_PG_ALL = REACH_ALL.encode()
_COPY_UNESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_COPY_ESCAPED = re.compile(r"\\(.)")
_MICROSECOND = timedelta(microseconds=1)


def chain_head(connection: Connection) -> tuple[int, str]:
    """(seq, hash) of the newest chained event, or (0, genesis) for an empty chain."""
    row = connection.execute(
        select(AuditChain.seq, AuditChain.hash).order_by(AuditChain.seq.desc()).limit(1)
    ).first()
    return (int(row.seq), str(row.hash)) if row else (0, canonical.GENESIS_HASH)


def reach_head(connection: Connection) -> tuple[int, datetime | None, int]:
    """(seq, occurred_max, late_max_us) of the newest event in the reach index, or (0, None, 0)."""
    every = AuditEventAgency
    row = connection.execute(
        select(every.seq, every.occurred_max, every.late_max_us)
        .where(every.agency == REACH_ALL)
        .order_by(every.seq.desc())
        .limit(1)
    ).first()
    if row is None:
        return 0, None, 0
    return int(row.seq), row.occurred_max, int(row.late_max_us or 0)


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


class TimeMarks:
    """The time marks of the reach rows under REACH_ALL, carried along the chain in seq order:
    the latest `occurred_at` so far, and the most any event so far occurred before it.

    `high` is compared as it comes (datetimes, or canonical time texts, whose order is time
    order); `parse` turns it into a datetime when an event arrives late.
    """

    __slots__ = ("high", "late_us", "parse")

    def __init__(self, high: Any, late_us: int, parse: Any = None) -> None:
        self.high = high
        self.late_us = late_us
        self.parse = parse or (lambda value: value)

    def observe(self, occurred: Any) -> None:
        high = self.high
        if high is None or occurred > high:
            self.high = occurred
        elif occurred < high:
            late = (self.parse(high) - self.parse(occurred)) // _MICROSECOND
            self.late_us = max(self.late_us, late)


# Actions whose events, when they name a referral, are notices to its lead of another agency's
# request: a match that found the lead's child, an access request to the lead (or withdrawn).
# The asking agency keeps its own record of the request (an event without the referral or the
# children), so a notice reaches the referral's lead (and partnership auditors) only: an asker
# never learns, not even from its own audit trail, which referral or child was found.
HOLDER_NOTICES = frozenset({"subject.match", "access_request.create", "access_request.withdraw"})
_PG_HOLDER_NOTICES = frozenset(action.encode() for action in HOLDER_NOTICES)


def reach_agencies(
    actor_agency: Any, lead_agency: Any, null: Any = None, action: Any = None
) -> tuple[Any, ...]:
    """The agencies besides REACH_ALL whose `audit:read` reaches an event: its actor's agency
    and the lead agency of its referral, once each; a holder's notice (HOLDER_NOTICES, with a
    referral) its lead only."""
    if lead_agency != null and (action in HOLDER_NOTICES or action in _PG_HOLDER_NOTICES):
        return (lead_agency,)
    if actor_agency == null:
        return () if lead_agency == null else (lead_agency,)
    if lead_agency in (null, actor_agency):
        return (actor_agency,)
    return actor_agency, lead_agency


def _reach_rows(
    seq: int, occurred_at: datetime, fields: Sequence[Any], lead: str | None, marks: TimeMarks
) -> list[dict[str, Any]]:
    """One event's reach rows (`fields` follow REACH_FIELDS)."""
    marks.observe(occurred_at)
    copied = dict(zip(REACH_FIELDS, fields, strict=True))
    rows = [
        {
            "agency": REACH_ALL,
            "seq": seq,
            **copied,
            "occurred_max": marks.high,
            "late_max_us": marks.late_us,
        }
    ]
    rows.extend(
        {"agency": agency, "seq": seq, **copied, "occurred_max": None, "late_max_us": None}
        for agency in reach_agencies(copied["actor_agency"], lead, None, copied["action"])
    )
    return rows


def sequence_pending(
    connection: Connection, *, limit: int = BATCH, wait: bool = True, below: int | None = None
) -> int:
    """Chain up to `limit` pending events within the connection's current transaction.

    Returns how many were chained; 0 when nothing is pending, or when `wait` is False and
    another sequencer holds the lock. The caller commits. Chained events that have no reach
    rows yet (chained by an earlier release during a rolling upgrade) are indexed first, and
    count as chained here. `below` leaves the events at that pos and after queued (a roll of
    the partitions chains exactly those before its cut: casehub.audit.partitions).
    """
    if not _take_lock(connection, wait=wait):
        return 0
    seq, prev_hash = chain_head(connection)
    indexed, high, late_us = reach_head(connection)
    caught_up = 0
    if indexed < seq:
        upto = min(seq, indexed + limit)
        high, late_us = _index_chained(connection, indexed, upto, TimeMarks(high, late_us))
        if upto < seq:
            return limit  # more to index: the caller comes back at once
        caught_up = upto - indexed
    if connection.dialect.name == "postgresql":
        high_text = None if high is None else canonical.field_text(high).encode()
        marks = TimeMarks(high_text, late_us, _canonical_time)
        return caught_up + _pg_chain(connection, limit, seq, prev_hash, marks, below)
    marks = TimeMarks(high, late_us)
    return caught_up + _chain(connection, limit, seq, prev_hash, marks, below)


def _index_chained(
    connection: Connection, after: int, upto: int, marks: TimeMarks
) -> tuple[datetime | None, int]:
    """Reach rows for the chained events after..upto; returns the time marks at `upto`."""
    rows = connection.execute(
        select(
            AuditChain.seq,
            AuditEvent.occurred_at,
            *(getattr(AuditEvent, name) for name in REACH_FIELDS),
            _LEAD_NOW,
        )
        .join(AuditEvent, AuditEvent.pos == AuditChain.event_pos)
        .where(AuditChain.seq > after, AuditChain.seq <= upto)
        .order_by(AuditChain.seq)
    ).all()
    reach: list[dict[str, Any]] = []
    for row in rows:
        reach.extend(_reach_rows(row[0], row[1], row[2:-1], row[-1], marks))
    if reach:
        connection.execute(_INSERT_REACH, reach)
    return marks.high, marks.late_us


def _chain(
    connection: Connection,
    limit: int,
    seq: int,
    prev_hash: str,
    marks: TimeMarks,
    below: int | None = None,
) -> int:
    """The sequencing pass on SQLite: records rendered and rows inserted from Python."""
    stmt = select(AuditPending.pos, *EVENT_COLUMNS, _LEAD_NOW).join(
        AuditEvent, AuditEvent.pos == AuditPending.pos
    )
    if below is not None:
        stmt = stmt.where(AuditPending.pos < below)
    rows = connection.execute(stmt.order_by(AuditPending.pos).limit(limit)).all()
    if not rows:
        return 0
    now = utcnow()
    chain_rows: list[dict[str, Any]] = []
    subject_rows: list[dict[str, Any]] = []
    reach_rows: list[dict[str, Any]] = []
    for row in rows:
        seq += 1
        values = row[1:-1]
        digest = canonical.digest(canonical.record(seq, prev_hash, values))
        chain_rows.append(
            {
                "seq": seq,
                "event_pos": row.pos,
                "prev_hash": prev_hash,
                "hash": digest,
                "sequenced_at": now,
            }
        )
        subject_rows.extend(
            {"subject_id": sid, "seq": seq} for sid in subject_index_ids(values[_SUBJECTS_AT])
        )
        fields = [values[at] for at in _REACH_AT]
        reach_rows.extend(_reach_rows(seq, values[_OCCURRED_AT], fields, row[-1], marks))
        prev_hash = digest
    connection.execute(_INSERT_CHAIN, chain_rows)
    if subject_rows:
        connection.execute(_INSERT_SUBJECTS, subject_rows)
    connection.execute(_INSERT_REACH, reach_rows)
    # Exactly the rows chained: a lower `pos` committed since the SELECT stays queued.
    connection.execute(_SQLITE_DEQUEUE, {"done": json.dumps([row.pos for row in rows])})
    return len(rows)


def _canonical_time(value: bytes) -> datetime:
    return datetime.fromisoformat(value.decode())


def _copy_text(value: bytes) -> str:
    """A field of a COPY text line, unescaped."""
    decoded = value.decode()
    if "\\" not in decoded:
        return decoded
    return _COPY_ESCAPED.sub(lambda m: _COPY_UNESCAPES.get(m[1], m[1]), decoded)


def _pg_chain(
    connection: Connection,
    limit: int,
    seq: int,
    prev_hash: str,
    marks: TimeMarks,
    below: int | None = None,
) -> int:
    """The sequencing pass on PostgreSQL, in COPY text both ways.

    PostgreSQL renders each pending event's canonical record (as verification does), so
    Python only hashes bytes and writes the chain, subject and reach rows as COPY lines,
    passing the already escaped fields through.
    """
    driver: Any = connection.connection.driver_connection
    lines: list[bytes] = []
    with driver.cursor() as cursor:
        # A pooled connection may carry another client encoding; the record is UTF-8.
        cursor.execute("SET LOCAL client_encoding TO 'UTF8'")
        below_sql = "" if below is None else f" WHERE pos < {int(below):d}"
        with cursor.copy(_PG_PENDING.format(limit=int(limit), below=below_sql)) as copy:
            while data := copy.read():
                lines.append(bytes(data))
    if not lines:
        return 0
    now = utcnow().isoformat().encode()
    prev = prev_hash.encode()
    sha256 = hashlib.sha256
    chain_out: list[bytes] = []
    subject_out: list[bytes] = []
    reach_out: list[bytes] = []
    done: list[int] = []
    for line in lines:
        first, last = line.index(b"\t"), line.rindex(b"\t")
        pos, tail, lead = line[:first], line[first + 1 : last], line[last + 1 : -1]
        seq += 1
        seq_text = b"%d" % seq
        digest = sha256(b"%s\t%s\t%s" % (seq_text, prev, tail)).hexdigest().encode()
        chain_out.append(b"%s\t%s\t%s\t%s\t%s\n" % (seq_text, pos, prev, digest, now))
        fields = tail.split(b"\t")
        for sid in subject_index_ids(_copy_text(fields[_SUBJECTS_AT])):
            subject_out.append(b"%s\t%s\n" % (canonical.field_text(sid).encode(), seq_text))
        marks.observe(fields[_OCCURRED_AT])
        copied = b"\t".join([fields[at] for at in _REACH_AT])
        reach_out.append(
            b"%s\t%s\t%s\t%s\t%d\n" % (_PG_ALL, seq_text, copied, marks.high, marks.late_us)
        )
        for agency in reach_agencies(fields[_REACH_AT[0]], lead, _PG_NULL, fields[_REACH_AT[3]]):
            reach_out.append(b"%s\t%s\t%s\t\\N\t\\N\n" % (agency, seq_text, copied))
        done.append(int(pos))
        prev = digest
    # COPY is an order of magnitude cheaper than row-by-row INSERTs for a batch.
    with driver.cursor() as cursor:
        for sql, out in (
            (_PG_COPY_CHAIN, chain_out),
            (_PG_COPY_SUBJECTS, subject_out),
            (_PG_COPY_REACH, reach_out),
        ):
            if out:
                with cursor.copy(sql) as copy:
                    copy.write(b"".join(out))
    # Exactly the rows chained: a lower `pos` committed since the COPY stays queued.
    connection.execute(_PG_DEQUEUE, {"done": done})
    return len(lines)


def move_lead_reach(
    connection: Connection, *, referral_id: uuid.UUID, old_lead: str, new_lead: str
) -> None:
    """After a transfer of the lead: the new lead's `audit:read` reaches the referral's chained
    events, and the old lead's keeps only its own actors' (CONTRACT §3: referrals its agency
    leads now). Call it in the transfer's transaction, after the referral is changed.

    It takes the sequencer's lock until that transaction ends, so a sequencing pass either
    chained the referral's events before (they are moved here) or chains them after the
    transfer commits, reading the new lead.
    """
    _take_lock(connection, wait=True)
    reach = AuditEventAgency
    every = aliased(AuditEventAgency, name="every")
    of_referral = (every.agency == EVERY, every.referral_id == referral_id)
    others = select(every.seq).where(*of_referral, every.actor_agency.is_distinct_from(old_lead))
    connection.execute(delete(reach).where(reach.agency == old_lead, reach.seq.in_(others)))
    moved = select(
        literal(new_lead, reach.agency.type),
        every.seq,
        *(getattr(every, name) for name in REACH_FIELDS),
    ).where(
        *of_referral,
        every.actor_agency.is_distinct_from(new_lead),
        ~exists().where(reach.agency == new_lead, reach.seq == every.seq),
    )
    connection.execute(insert(reach).from_select(["agency", "seq", *REACH_FIELDS], moved))


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
                from casehub.audit import partitions  # (it imports this module)

                # A roll of the partitions that died midway leaves a constraint the next seq
                # breaks: drop it, and the open period simply spans on.
                if partitions.recover(self.engine):
                    log.warning("freed the chain partitions of an interrupted roll")
                    continue
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
